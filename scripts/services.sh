#!/usr/bin/env bash
# services: make sure what the tests need is here, on a fresh machine too:
# a running Docker engine and a Compose CLI (Debian's docker-compose, and
# the `docker compose` v2 plugin when scripts/compose-v2.sh can build it),
# and the mosquitto MQTT broker (Debian's package; tests start their own).
# Without EDGEFLOW_REQUIRE_SERVICES=1 a service that cannot be had is only
# reported: the tests that need it then skip, loudly. With it set, this
# script fails instead.
set -uo pipefail
require=${EDGEFLOW_REQUIRE_SERVICES:-0}
problem() {
	echo "services: $*" >&2
	if [ "$require" = 1 ]; then exit 1; fi
}
as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}
apt_install() {
	command -v apt-get >/dev/null || return 1
	as_root apt-get update -qq >/dev/null 2>&1
	DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null 2>&1
}

# The Docker engine.
if ! command -v docker >/dev/null; then
	apt_install docker.io || problem "no docker CLI, and installing docker.io failed"
fi
if command -v docker >/dev/null && ! docker info >/dev/null 2>&1; then
	if command -v dockerd >/dev/null; then
		echo "services: starting dockerd" >&2
		(as_root dockerd >/tmp/edgeflow-dockerd.log 2>&1 &)
		for _ in $(seq 1 60); do
			docker info >/dev/null 2>&1 && break
			sleep 1
		done
	fi
	docker info >/dev/null 2>&1 || problem "the Docker engine does not answer (see /tmp/edgeflow-dockerd.log)"
fi

# Compose v1 from Debian.
if ! command -v docker-compose >/dev/null; then
	apt_install docker-compose || problem "no docker-compose, and installing it failed"
fi

# Compose v2, the CLI plugin, built from the Go module proxy.
if ! docker compose version >/dev/null 2>&1; then
	"$(dirname "$0")/compose-v2.sh" || echo "services: no docker compose v2 plugin; compose tests run with v1 only" >&2
fi

# Mosquitto, the MQTT broker the transport tests run beside the embedded
# one (internal/brokertest starts its own processes on loopback ports; the
# system service is not started here). The package brings mosquitto_passwd
# too, for the per-device ACL test.
if [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null; then
	# A policy-rc.d that says no keeps the package from starting the
	# system service (where one could start).
	policy=/usr/sbin/policy-rc.d
	own_policy=0
	if [ ! -e "$policy" ] && printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy"; then
		own_policy=1
	fi
	apt_install mosquitto
	installed=$?
	if [ "$own_policy" = 1 ]; then as_root rm -f "$policy"; fi
	[ "$installed" = 0 ] || problem "no mosquitto, and installing the Debian package mosquitto failed"
fi
if [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null; then
	command -v mosquitto_passwd >/dev/null || problem "mosquitto is installed but mosquitto_passwd is missing"
fi
exit 0
