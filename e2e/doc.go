// Package e2e holds edgeflow's end-to-end tests: the controller
// (`edgeflow serve`, with its embedded MQTT broker or connected to a real
// Mosquitto), several `edgeflow-agent run` daemons and the operator CLI,
// all as real processes (internal/fleettest), driven as an operator would
// and checked by what an operator sees: the CLI's exit codes and output,
// the controller's record of every device's events, and the files the
// flows installed.
//
// The scenarios: a deployment that succeeds on every selected device; the
// broker restarted, the controller killed and an agent killed while steps
// run; a dispatch delivered twice; a step that fails on one device, which
// rolls back; rollouts in waves with a manual pause (a canary that
// succeeds, one that fails), an abort threshold that trips and the retry
// of the failed devices; guided failure answered with Retry, Exclude and
// a group's Ignore; mark-failed refused and allowed; and a guided pause
// that times out on a device cut off from the broker. Tests that need
// Mosquitto skip loudly without it, unless
// EDGEFLOW_REQUIRE_SERVICES=1.
//
//	go test -race -count=1 ./e2e/
package e2e
