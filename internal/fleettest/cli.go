package fleettest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Result is how a CLI command ended.
type Result struct {
	// Program is the command run: empty for `edgeflow`, else such as
	// "edgeflow-agent" (Agent.CLI).
	Program string
	// Args are the command's arguments, after the program's name.
	Args []string
	// Code is the exit code (-1: ended by a signal).
	Code           int
	Stdout, Stderr string
}

// String shows the command with its exit code and output, for a failure
// message.
func (r Result) String() string {
	prog := r.Program
	if prog == "" {
		prog = "edgeflow"
	}
	return fmt.Sprintf("%s %s: exit %d\n--- stdout:\n%s--- stderr:\n%s", prog, strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// Command is an operator command running in the background.
type Command struct {
	t              testing.TB
	args           []string
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	done           chan struct{}
}

// CLI runs `edgeflow ARGS` against the controller, as an operator would
// in a shell ($EDGEFLOW_CONTROLLER names the controller; output to pipes,
// not a terminal), and returns how it ended. It waits at most Deadline.
func (c *Controller) CLI(args ...string) Result {
	c.t.Helper()
	return c.StartCLI(args...).Wait()
}

// StartCLI starts `edgeflow ARGS` against the controller and returns at
// once; Wait collects its result. It is killed when t ends.
func (c *Controller) StartCLI(args ...string) *Command {
	c.t.Helper()
	cmd := exec.Command(c.bins.Edgeflow, args...)
	cmd.Env = cliEnv("EDGEFLOW_CONTROLLER=" + c.api)
	r := &Command{t: c.t, args: args, cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = r.stdout, r.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("run edgeflow %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		_ = cmd.Wait()
		close(r.done)
	}()
	c.t.Cleanup(func() {
		if !closed(r.done) {
			_ = cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// cliEnv is the test's environment without the edgeflow CLI's own
// variables, plus extra.
func cliEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EDGEFLOW_CONTROLLER=") && !strings.HasPrefix(kv, "EDGEFLOW_TOKEN=") && !strings.HasPrefix(kv, "EDGEFLOW_SIGNING_KEY=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// Stdout returns what the command printed on stdout so far.
func (r *Command) Stdout() string { return r.stdout.String() }

// Done is closed once the command has exited.
func (r *Command) Done() <-chan struct{} { return r.done }

// Wait waits at most Deadline for the command to exit (then kills it and
// fails t) and returns how it ended.
func (r *Command) Wait() Result {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(Deadline):
		_ = r.cmd.Process.Kill()
		<-r.done
		r.t.Errorf("edgeflow %s did not exit within %v; killed", strings.Join(r.args, " "), Deadline)
	}
	return Result{Args: r.args, Code: r.cmd.ProcessState.ExitCode(), Stdout: r.stdout.String(), Stderr: r.stderr.String()}
}
