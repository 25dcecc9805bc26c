// Package script runs script steps (spec 2) and the command and script
// rollback actions (spec 6) as shell commands in their own process group,
// and gives other step types the same way to run a command through Exec:
// a shell command (verify's command probe), or a program with its
// arguments, with no shell in between (Command.Argv: the compose step's
// Compose CLI), optionally with stderr apart from stdout (Command.Stderr).
//
// # Running
//
// Runner.RunScript expands the script's run text and every env value with
// Env.Expand (spec 9), then runs the text with its shell (default
// flow.DefaultShell, "/bin/sh -c") in the working directory:
//
//   - no workdir: the flow's directory (Env.Root);
//   - a relative workdir: resolved inside Env.Root with securejoin, so that
//     neither ".." nor a symbolic link takes it outside ("../.." is Root);
//   - an absolute workdir: used as written.
//
// The script sees the agent's environment, then the script's env, then
// these, which win over both:
//
//	EDGEFLOW_OUTPUT      file to append NAME=value output lines to
//	EDGEFLOW_DEVICE_ID   the device id
//	EDGEFLOW_EXECUTION   the flow execution id
//	EDGEFLOW_FLOW        the flow's name
//	EDGEFLOW_STEP        the step's name
//	EDGEFLOW_GROUP       the step's group, empty outside a group
//	EDGEFLOW_ATTEMPT     the attempt number
//
// The output file is output-ATTEMPT in the step's private Env.WorkDir,
// created fresh and empty before every run. Stdout and stderr both go to
// Env.Log, which keeps the head and the tail of a long output.
//
// Runner.RunCommand runs a command rollback action: its text is a script
// with every key at its default.
//
// # Results
//
//   - Exit 0 is success. The output file is then read: each non-empty line
//     is NAME=value, NAME matching [A-Za-z_][A-Za-z0-9_]*, value the rest of
//     the line as written; a later line wins over an earlier one with the
//     same name. The outputs go to Env.Outputs only when every line is well
//     formed; a malformed line, or a file over MaxOutputFile bytes, fails the
//     step with kind Unknown naming the line.
//   - A non-zero exit fails the step with the kind the script's errorTypes
//     give its exit code, else Unknown, and a message such as
//     "exit status 75: cannot reach registry" (an *ExitError: the status and
//     the last non-empty line of output, so an operator sees why). A
//     process killed by a signal exits 128+signal.
//   - A shell or working directory that cannot be used fails with the
//     path and a kind from its errno (onfailure.Classify: missing is
//     Unknown, permission denied is Authorization).
//   - An expansion error fails with kind Unknown naming run or the env key.
//
// # Stopping
//
// A script's timeout, an operator marking the step as failed, or any other
// end of the step's context stops the whole process group: SIGTERM, then
// SIGKILL after Runner.Grace to whatever is left, children that ignore
// SIGTERM included. The error wraps context.Cause, so its kind is the
// cause's: Timeout ("script timed out after 2m0s") for the script's own
// timeout, the engine's cause for a mark-as-failed.
//
// When the agent itself dies (SIGKILL, the OOM killer), the kernel sends
// the command it started SIGKILL (the parent-death signal), as a power cut
// would: a step resumed after the restart never runs beside an orphan of
// its earlier run. The command's own children are not reached by it; the
// service manager's cgroup is (docs/operations.md).
//
// A script that exits while a process it started in the background still
// runs leaves that process running (a script may start a service), but the
// step does not wait for it: if it keeps the output open, the step stops
// reading it Grace after the script exits, and the process's later writes
// to it fail (SIGPIPE). Background processes should redirect their output
// (cmd >/var/log/app.log 2>&1 &).
package script
