#!/usr/bin/env bash
# The demo: a device runs demo-app 1.0; apply the 2.0 flow, whose health
# check fails, and watch edgeflow roll the device back to exactly 1.0.
set -euo pipefail
cd "$(dirname "$0")/.."
agent=${AGENT:-bin/edgeflow-agent}
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT

rm -rf /tmp/edgeflow-demo && mkdir -p /tmp/edgeflow-demo
printf 'version=1.0\nhealthy=yes\n' > /tmp/edgeflow-demo/app.conf
echo "== before: /tmp/edgeflow-demo/app.conf"; cat /tmp/edgeflow-demo/app.conf
echo
echo "== edgeflow-agent apply testdata/demo/flow.yaml --allow-path /tmp/edgeflow-demo"
set +e
"$agent" apply testdata/demo/flow.yaml --state-dir "$state" --device-id demo-1 --allow-path /tmp/edgeflow-demo
code=$?
set -e
echo "(exit status $code: 1 because the flow did not succeed)"
echo
echo "== after: /tmp/edgeflow-demo/app.conf (restored); env (did not exist before: removed)"
cat /tmp/edgeflow-demo/app.conf
ls /tmp/edgeflow-demo
