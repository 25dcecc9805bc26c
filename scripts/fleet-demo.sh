#!/usr/bin/env bash
# The fleet demo: a controller (edgeflow serve, with its embedded MQTT
# broker) and three kiosk agents (edgeflow-agent run), all on this machine.
# Deploy kiosk UI 2.0 to every kiosk: it succeeds on two, and its health
# check fails on the third, which rolls back to exactly the config it had.
#
# Needs bin/edgeflow and bin/edgeflow-agent (make build; make fleet-demo
# builds them). Everything runs from a temporary directory on free
# loopback ports, and is stopped and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
edgeflow=$bin/edgeflow
agent=$bin/edgeflow-agent
for b in "$edgeflow" "$agent"; do
	if [ ! -x "$b" ]; then
		echo "fleet-demo: $b is missing: run make build first (or make fleet-demo)" >&2
		exit 1
	fi
done

demo=$(mktemp -d "${TMPDIR:-/tmp}/edgeflow-fleet-demo.XXXXXX")
pids=()
cleanup() {
	trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$demo"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*"; }
fail() {
	echo "fleet-demo: $*" >&2
	for log in "$demo"/serve.log "$demo"/*/agent.log; do
		[ -s "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
	done
	exit 1
}

kiosks=(kiosk-1 kiosk-2 kiosk-3)
declare -A display=([kiosk-1]=4k [kiosk-2]=4k [kiosk-3]=hd)

say "edgeflow keygen: the agents run only bundles signed with this key"
"$edgeflow" keygen --out "$demo/release"

say "edgeflow serve: the controller and its embedded MQTT broker, on free loopback ports"
mkdir "$demo/controller"
"$edgeflow" serve --data "$demo/controller" --listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 --log-level warn \
	>"$demo/serve.out" 2>"$demo/serve.log" &
pids+=($!)
for _ in $(seq 1 100); do
	[ -s "$demo/serve.out" ] && break
	kill -0 "${pids[0]}" 2>/dev/null || fail "edgeflow serve exited"
	sleep 0.1
done
cat "$demo/serve.out"
ready=$(head -n 1 "$demo/serve.out")
api=$(sed -n 's/^edgeflow controller: API on \([^,]*\), MQTT broker \([^ ]*\) .*/\1/p' <<<"$ready")
broker=$(sed -n 's/^edgeflow controller: API on \([^,]*\), MQTT broker \([^ ]*\) .*/\2/p' <<<"$ready")
[ -n "$api" ] && [ -n "$broker" ] || fail "edgeflow serve did not say where it listens"
export EDGEFLOW_CONTROLLER=$api

say "edgeflow-agent run: three kiosks (role=kiosk), each with kiosk config 1.0 installed"
echo "kiosk-3 has an hd display; kiosk UI 2.0 needs 4k. Each agent runs in a directory"
echo "of its own that stands in for its kiosk's disk (see testdata/fleet-demo/flow.yaml)."
for k in "${kiosks[@]}"; do
	dir=$demo/$k
	mkdir -p "$dir/state"
	cp testdata/fleet-demo/kiosk-1.0.conf "$dir/kiosk.conf"
	(cd "$dir" && exec "$OLDPWD/$agent" run --device-id "$k" --broker "$broker" --state-dir "$dir/state" \
		--trusted-key "$demo/release.pub" --label role=kiosk --label "display=${display[$k]}" --log-level warn \
		>"$dir/agent.log" 2>&1) &
	pids+=($!)
done

say "edgeflow devices (waiting until all three are online)"
for _ in $(seq 1 120); do
	online=$("$edgeflow" devices 2>/dev/null | grep -c ' online ' || true)
	[ "$online" = 3 ] && break
	sleep 0.5
done
[ "$online" = 3 ] || fail "the agents did not come online"
"$edgeflow" devices

say "edgeflow deploy testdata/fleet-demo/flow.yaml --selector role=kiosk --key release.key --wait"
set +e
"$edgeflow" deploy testdata/fleet-demo/flow.yaml --selector role=kiosk --key "$demo/release.key" --wait --timeout 2m |
	tee "$demo/deploy.out"
code=${PIPESTATUS[0]}
set -e
echo "(exit status $code: 1 because not every kiosk succeeded)"
id=$(head -n 1 "$demo/deploy.out")
case $id in dep-*) ;; *) fail "edgeflow deploy printed no deployment id" ;; esac

say "edgeflow deployment show $id"
"$edgeflow" deployment show "$id"

say "edgeflow logs $id --device kiosk-3"
"$edgeflow" logs "$id" --device kiosk-3

say "the kiosks' config files"
for k in "${kiosks[@]}"; do
	echo "--- $k: kiosk.conf"
	cat "$demo/$k/kiosk.conf"
done
echo
if cmp -s testdata/fleet-demo/kiosk-1.0.conf "$demo/kiosk-3/kiosk.conf"; then
	echo "kiosk-3 rolled back: its kiosk.conf is byte for byte the 1.0 config it had before."
else
	fail "kiosk-3's kiosk.conf is not its old 1.0 config"
fi
