#!/usr/bin/env bash
# compose-v2.sh: build the `docker compose` v2 CLI plugin from the Go module
# proxy (no other download is reachable here) and install it for this user
# at ~/.docker/cli-plugins/docker-compose. The build is kept in
# ~/.cache/edgeflow, so later runs only copy it.
set -euo pipefail
version=${COMPOSE_V2_VERSION:-v2.40.3}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/edgeflow
bin=$cache/docker-compose-$version
plugin=$HOME/.docker/cli-plugins/docker-compose
if [ ! -x "$bin" ]; then
	echo "compose-v2: building docker compose $version from the Go module proxy" >&2
	work=$(mktemp -d)
	trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
	cd "$work"
	go mod init build >/dev/null 2>&1
	dir=$(go mod download -json "github.com/docker/compose/v2@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] || { echo "compose-v2: module not served" >&2; exit 1; }
	cp -r "$dir" src && chmod -R u+w src && cd src
	mkdir -p "$cache"
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$version" -o "$bin.tmp" ./cmd
	mv "$bin.tmp" "$bin"
fi
mkdir -p "$(dirname "$plugin")"
install -m 0755 "$bin" "$plugin"
docker compose version
