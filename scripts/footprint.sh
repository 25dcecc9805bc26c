#!/usr/bin/env bash
# footprint: what the agent costs a device, measured on this machine.
#
#   - the stripped agent binary (built as make build does): at most 10 MiB;
#   - its resident memory (VmRSS) idle and connected to a controller, 10 s
#     after it came online: at most 12 MiB;
#   - the CPU time it uses over 60 s idle (utime+stime in clock ticks from
#     /proc/PID/stat): 0, or the few ticks of its 30 s MQTT keepalive
#     (at most 5);
#   - its peak resident memory (VmHWM) after it ran a flow whose step
#     sleeps 5 s: at most 25 MiB.
#
# Prints each number with its target and PASS or FAIL, and exits 1 if any
# failed. IDLE=N measures the idle CPU over N seconds instead of 60.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
idle=${IDLE:-60}

${MAKE:-make} --no-print-directory BIN="$bin" build >/dev/null
edgeflow=$bin/edgeflow
agent=$bin/edgeflow-agent

work=$(mktemp -d "${TMPDIR:-/tmp}/edgeflow-footprint.XXXXXX")
pids=()
cleanup() {
	trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
	echo "footprint: $*" >&2
	for log in "$work"/serve.log "$work"/agent.log; do
		[ -s "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
	done
	exit 1
}

failed=0
# report NAME VALUE UNIT TARGET: one line, PASS when VALUE <= TARGET.
report() {
	local verdict=PASS
	if ! awk -v v="$2" -v t="$4" 'BEGIN { exit !(v <= t) }'; then
		verdict=FAIL
		failed=1
	fi
	printf '%-34s %8s %-6s target <= %s %-6s %s\n' "$1" "$2" "$3" "$4" "$3" "$verdict"
}
mib() { awk -v kb="$1" 'BEGIN { printf "%.2f", kb / 1024 }'; }
status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$2/status"; }
# cpu_ticks PID: utime + stime (fields 14 and 15; the name in field 2 is
# cut off first, since it may hold spaces).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

echo "footprint of $agent on $(uname -m), $(nproc) CPUs ($(date -u +%Y-%m-%d))"
echo
report "agent binary (stripped)" "$(mib "$(awk -v b="$(stat -c %s "$agent")" 'BEGIN { print b / 1024 }')")" MiB 10

"$edgeflow" keygen --out "$work/release" >/dev/null
mkdir -p "$work/controller" "$work/device"
"$edgeflow" serve --data "$work/controller" --listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 --log-level warn \
	>"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 1 100); do
	[ -s "$work/serve.out" ] && break
	sleep 0.1
done
ready=$(head -n 1 "$work/serve.out")
api=$(sed -n 's/^edgeflow controller: API on \([^,]*\), MQTT broker \([^ ]*\) .*/\1/p' <<<"$ready")
broker=$(sed -n 's/^edgeflow controller: API on \([^,]*\), MQTT broker \([^ ]*\) .*/\2/p' <<<"$ready")
[ -n "$api" ] && [ -n "$broker" ] || die "edgeflow serve did not start"
export EDGEFLOW_CONTROLLER=$api

(cd "$work/device" && exec "$OLDPWD/$agent" run --device-id footprint-1 --broker "$broker" --state-dir "$work/device/state" \
	--trusted-key "$work/release.pub" --label role=footprint --log-level warn >"$work/agent.log" 2>&1) &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 1 120); do
	"$edgeflow" devices footprint-1 2>/dev/null | grep -q ' online ' && break
	sleep 0.5
done
"$edgeflow" devices footprint-1 2>/dev/null | grep -q ' online ' || die "the agent did not come online"

sleep 10
report "agent RSS, idle and connected" "$(mib "$(status_kb VmRSS "$agent_pid")")" MiB 12

hz=$(getconf CLK_TCK)
before=$(cpu_ticks "$agent_pid")
sleep "$idle"
ticks=$(($(cpu_ticks "$agent_pid") - before))
report "agent CPU over ${idle} s idle (1/${hz} s)" "$ticks" ticks 5

cat >"$work/flow.yaml" <<'EOF'
version: 1
name: footprint
steps:
  - name: sleep
    script: { run: "sleep 5; echo slept" }
EOF
"$edgeflow" deploy "$work/flow.yaml" --device footprint-1 --key "$work/release.key" --wait --timeout 2m >/dev/null 2>"$work/deploy.log" ||
	die "the deployment did not succeed: $(cat "$work/deploy.log")"
report "agent peak RSS (VmHWM), ran a flow" "$(mib "$(status_kb VmHWM "$agent_pid")")" MiB 25

echo
if [ "$failed" = 1 ]; then
	echo "footprint: some numbers are over their targets"
	exit 1
fi
echo "footprint: every number is within its target"
