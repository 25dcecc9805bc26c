package fleettest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// AgentOptions configure StartAgent.
type AgentOptions struct {
	// ID is the device id (--device-id).
	ID string
	// Broker is the MQTT broker's URL (Controller.BrokerURL).
	Broker string
	// TrustedKey is the public key file the agent trusts (Key.Public);
	// empty means --allow-unsigned.
	TrustedKey string
	// Labels are the device's labels (--label K=V).
	Labels map[string]string
	// Args are more flags for `edgeflow-agent run`.
	Args []string
}

// Agent is an `edgeflow-agent run` process: one device of the fleet.
type Agent struct {
	*process
	bins Binaries
	opts AgentOptions
	// ID is the device id.
	ID string
	// Dir is the device's directory and the agent's working directory: a
	// flow's file step with dest /proc/self/cwd/NAME installs Dir/NAME
	// (see the package doc).
	Dir string
	// StateDir is the agent's state dir (--state-dir): its journal,
	// downloads and backups.
	StateDir string
}

// StartAgent starts `edgeflow-agent run` in a new device directory with a
// new state dir. It does not wait for the agent to connect (see
// Fleet.WaitOnline). It is killed when t ends.
func StartAgent(t testing.TB, bins Binaries, opts AgentOptions) *Agent {
	t.Helper()
	if opts.ID == "" || opts.Broker == "" {
		t.Fatalf("StartAgent: an ID and a Broker are required (got %q, %q)", opts.ID, opts.Broker)
	}
	base := t.TempDir()
	a := &Agent{
		bins: bins, opts: opts, ID: opts.ID,
		Dir:      filepath.Join(base, "device"),
		StateDir: filepath.Join(base, "state"),
	}
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a.process = newProcess(t, "edgeflow-agent "+opts.ID)
	a.Start()
	return a
}

// Args returns the command line the agent runs with.
func (a *Agent) Args() []string {
	args := []string{"run", "--device-id", a.ID, "--broker", a.opts.Broker, "--state-dir", a.StateDir, "--log-level", "debug"}
	if a.opts.TrustedKey != "" {
		args = append(args, "--trusted-key", a.opts.TrustedKey)
	} else {
		args = append(args, "--allow-unsigned")
	}
	keys := make([]string, 0, len(a.opts.Labels))
	for k := range a.opts.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "--label", k+"="+a.opts.Labels[k])
	}
	return append(args, a.opts.Args...)
}

// Start starts the agent (again, after Stop or Kill) with the same flags,
// state dir and device directory. A restarted agent resumes what it was
// running.
func (a *Agent) Start() {
	a.t.Helper()
	cmd := exec.Command(a.bins.Agent, a.Args()...)
	cmd.Dir = a.Dir
	cmd.Stdout, cmd.Stderr = a.log, a.log
	if err := a.start(cmd); err != nil {
		a.t.Fatal(err)
	}
}

// Stop stops the agent with SIGTERM (a running step is stopped, to resume
// on the next start) and fails t unless it exits 0.
func (a *Agent) Stop() {
	a.t.Helper()
	if code := a.signal(syscall.SIGTERM); code != 0 {
		a.t.Errorf("agent %s exited %d after SIGTERM, want 0", a.ID, code)
	}
}

// Kill ends the agent with SIGKILL, as a crash or a power cut would. The
// command of a running step dies with it (its parent-death signal).
func (a *Agent) Kill() {
	a.t.Helper()
	a.signal(syscall.SIGKILL)
}

// Restart stops the agent (SIGTERM) and starts it again.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	a.Start()
}

// Running reports whether the agent process runs now.
func (a *Agent) Running() bool { return a.running() }

// Pid returns the agent's process id (0 when it does not run).
func (a *Agent) Pid() int { return a.pid() }

// Log returns what the agent logged in all its runs so far.
func (a *Agent) Log() string { return a.log.String() }

// CLI runs `edgeflow-agent ARGS --state-dir STATEDIR` in the device's
// directory, as an operator on the device would (`status`, `guide`): while
// the agent runs, such commands talk to it through its control socket. It
// waits at most Deadline and returns how the command ended.
func (a *Agent) CLI(args ...string) Result {
	a.t.Helper()
	args = append(slices.Clone(args), "--state-dir", a.StateDir)
	cmd := exec.Command(a.bins.Agent, args...)
	cmd.Dir = a.Dir
	cmd.Env = cliEnv()
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		a.t.Fatalf("run edgeflow-agent %s: %v", strings.Join(args, " "), err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(Deadline):
		_ = cmd.Process.Kill()
		<-done
		a.t.Errorf("edgeflow-agent %s did not exit within %v; killed", strings.Join(args, " "), Deadline)
	}
	return Result{Program: "edgeflow-agent", Args: args, Code: cmd.ProcessState.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String()}
}
