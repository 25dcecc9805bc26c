// Package verify runs verify steps (spec 2): one probe, http, tcp or
// command, repeated every Interval until it passes or Timeout runs out.
//
// # Probes
//
//   - http: GET the step's URL, after expanding its ${{ }} expressions
//     (spec 9) with Env.Expand. It passes when the response status is
//     ExpectStatus (default 200) and, if Body is set, the first MaxBody bytes
//     of the body contain Body. Redirects are not followed: the status
//     compared is the one the URL itself answers. Every probe opens a new
//     connection. Proxies named by the agent's environment (HTTP_PROXY,
//     HTTPS_PROXY, NO_PROXY) are used as curl would; loopback never is.
//   - tcp: dial Address. It passes when the connection is established.
//   - command: run the text with the default shell (flow.DefaultShell) in
//     its own process group, through script.Exec, in the flow's directory
//     (Env.Root). It passes on exit 0. Its output goes to Env.Log.
//
// Only the http URL is expanded; the tcp address and the command text are
// used as written, as spec 9 says.
//
// # Timing
//
// The first probe runs at once. Probe n+1 starts Interval after probe n
// started, or as soon as probe n ends if it took longer. No probe starts
// once Timeout (counted from the first probe) has run out, nor with less
// than 10ms of it left: so short a deadline measures the agent, not the
// target.
//
// Each probe has its own deadline, min(max(Interval, MinProbeTimeout), time
// left): an interval, but never less than MinProbeTimeout while the time
// left allows it, so that a short interval does not make every probe give
// up before a slow but healthy target can answer. No probe runs past
// Timeout.
//
// # Verdicts
//
// A probe either passes, fails with a verdict, or gives no verdict.
//
//   - A verdict is the target answering and saying no: an HTTP response with
//     the wrong status or a body without the expected text; a TCP connection
//     refused or reset (on an http probe too: nothing listens, or the peer
//     hung up); an http server that closed the connection without an answer,
//     or whose TLS handshake failed; a command that exited non-zero.
//   - No verdict is the probe itself failing to get an answer: the probe's
//     deadline passed (connect, TLS, response or body read), a DNS failure,
//     no route, host or network unreachable, a command stopped because it
//     was still running at the probe's deadline. Any other error that is not
//     an answer from the target counts as no verdict too.
//
// Errors are read with errors.Is and errors.As (syscall.ECONNREFUSED,
// syscall.ECONNRESET, net.Error's Timeout, *net.DNSError,
// os.ErrDeadlineExceeded, context.DeadlineExceeded), never by their text.
//
// When a probe passes, the step succeeds. When the time runs out:
//
//   - if any probe gave a verdict, the latest verdict decides (a verdict is
//     always a no, since a pass ends the step): the step fails with kind
//     onfailure.Verification, the message of that verdict and the number of
//     probes, for example
//     "verify failed after 12 probes: GET http://127.0.0.1:8080/health: status 503, want 200";
//   - if no probe ever gave a verdict, the step fails with kind
//     onfailure.Timeout, for example
//     "no answer from http://127.0.0.1:8080/health within 1m0s (12 probes): timed out after 5s".
//
// The loop, per step:
//
//	start --> probe n ---- passes -----------------------> Succeeded
//	            ^   |
//	            |   fails: verdict or none (a line to Env.Log)
//	            |   v
//	       yes: +-- time left? -- no --> any verdict? -- yes --> Verification
//	  wait, n+1                               |                  (the latest)
//	                                          no --------------> Timeout
//
// A probe that cannot run at all (a URL that is not http or https after
// expansion, a shell that cannot start) fails the step at once with that
// error.
//
// # Stopping
//
// When the step's context ends for any other reason (an operator marked the
// step as failed, the step's own timeout key or the flow's timeout ran out,
// the agent stops), Run stops at once, stopping a running command probe's
// process group (SIGTERM, then SIGKILL after Runner.Grace), and returns an
// error wrapping context.Cause(ctx), so the kind is the cause's.
//
// # Log
//
// Each failed probe writes one line to Env.Log, such as
// "probe 3: status 503, want 200" or "probe 4: no answer: timed out after 2s".
// The lines are bounded: the first few probes are always written, later
// probes only when their message differs from the one before (repeats are
// counted in one line), and at most MaxLogLines lines per step.
package verify
