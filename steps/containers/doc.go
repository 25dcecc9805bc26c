// Package containers is what the compose and container steps share: Engine,
// the narrow interface to the Docker engine they declare (steps/docker, the
// one package that imports the Docker SDK, implements it), the state of a
// container as the engine reports it, and the health wait.
//
// # Health wait
//
// Wait is the rule that turns a series of container states into a
// verdict within a step's waitHealthy window.
//
// The rule, checked at every poll:
//
//   - a container whose health check reports unhealthy fails the wait at
//     once (Verification, with the check's last output);
//   - a container that restarted more than MaxRestarts times since the wait
//     began fails it at once (Verification, with the restart count), so a
//     crash loop is found in seconds, not at the timeout;
//   - a container that exited or died and is not being restarted fails it at
//     once (Verification, with the exit code);
//   - the wait succeeds when every expected container is present and
//     running, those with a health check are healthy, and none of them has
//     restarted or stopped for Settle;
//   - otherwise, when Window runs out, the wait fails with Timeout, naming
//     what was still not ready.
//
// Per container, as the polls see it:
//
//	       ┌──────── restarted / stopped ───────┐
//	       v                                    │
//	[not ready] ── running (+healthy) ──> [settling] ── Settle passed ──> ready
//	  │   │                                    │
//	  │   └── unhealthy, exited, restarts > MaxRestarts ──> fail (Verification)
//	  └── Window over ──> fail (Timeout)
package containers
