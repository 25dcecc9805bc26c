package script

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
)

// DefaultGrace is how long a process group has between SIGTERM and SIGKILL.
const DefaultGrace = 10 * time.Second

// Command is a command run in its own process group: a shell command
// (Shell and Text), or a program and its arguments (Argv).
type Command struct {
	// Argv, when set, is the program and its arguments, run directly
	// (the program is looked up in PATH if it has no slash); Shell and
	// Text are then ignored. Other step types use it to run a tool of
	// their own, such as the Compose CLI, with the same process-group
	// handling as a script.
	Argv []string
	// Shell is the interpreter and its flags, split on spaces; empty means
	// flow.DefaultShell. The text is its last argument.
	Shell string
	Text  string
	// Env is added to the agent's environment.
	Env []string
	// Dir is the working directory; empty means the agent's.
	Dir string
	// Output receives stdout and stderr; nil discards them.
	Output io.Writer
	// Stderr, when set, receives stderr instead of Output, so that a
	// caller can parse stdout on its own.
	Stderr io.Writer
	// Grace is the time between SIGTERM and SIGKILL of the group when the
	// context ends; zero means DefaultGrace.
	Grace time.Duration
}

// Exec runs c and waits for it: Argv when set, else Text with Shell. It
// returns the exit code of a process that ran to its end (a
// signal-terminated process reports 128+signal), and a nil error. When ctx
// ends first, the whole process group gets SIGTERM, then SIGKILL after the
// grace period to the members still running, and Exec returns
// context.Cause(ctx) wrapped. A command that cannot start (the program,
// the shell or the directory missing or not usable) returns an error
// classified by its errno that names the path.
func Exec(ctx context.Context, c Command) (int, error) {
	var argv []string
	if len(c.Argv) > 0 {
		argv = slices.Clone(c.Argv)
	} else {
		argv = strings.Fields(c.Shell)
		if len(argv) == 0 {
			argv = strings.Fields(flow.DefaultShell)
		}
		argv = append(argv, c.Text)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Dir = c.Dir
	out := c.Output
	if out == nil {
		out = io.Discard
	}
	cmd.Stdout, cmd.Stderr = out, out
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	// Pdeathsig: when the agent dies (SIGKILL, OOM), the kernel kills the
	// command too, as a power cut would, so that a step resumed after the
	// restart never runs beside an orphan of its earlier run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	grace := c.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	// A child that keeps the output pipe open must not keep us waiting
	// after the shell exits.
	cmd.WaitDelay = grace

	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("start %s: %w", argv[0], context.Cause(ctx))
	}
	if c.Dir != "" {
		// A missing directory fails in the child, and would be reported
		// as the shell missing.
		if err := checkDir(c.Dir); err != nil {
			return -1, onfailure.Wrap("start "+argv[0], err)
		}
	}
	if err := cmd.Start(); err != nil {
		return -1, onfailure.Wrap("start "+argv[0], err)
	}
	pgid := cmd.Process.Pid

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	select {
	case err := <-waited:
		return exitCode(cmd, err)
	case <-ctx.Done():
	}
	stopGroup(pgid, grace)
	<-waited
	return -1, fmt.Errorf("%s stopped: %w", argv[0], context.Cause(ctx))
}

// checkDir returns an error naming dir if a process cannot run in it.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return &os.PathError{Op: "workdir", Path: dir, Err: err}
	}
	if !fi.IsDir() {
		return &os.PathError{Op: "workdir", Path: dir, Err: syscall.ENOTDIR}
	}
	const xOK = 1
	if err := syscall.Access(dir, xOK); err != nil {
		return &os.PathError{Op: "workdir", Path: dir, Err: err}
	}
	return nil
}

// stopGroup sends SIGTERM to the process group, waits up to grace for every
// member to exit, then sends SIGKILL to whatever is left.
func stopGroup(pgid int, grace time.Duration) {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if !groupAlive(pgid) {
			return
		}
		<-tick.C
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// groupAlive reports whether a process of the group still runs. Members
// that exited but were not reaped (zombies: orphans whose new parent, such
// as a PID 1 that does not reap, has not waited for them yet) do not count:
// they can neither run nor be signalled.
func groupAlive(pgid int) bool {
	if syscall.Kill(-pgid, 0) == syscall.ESRCH {
		return false
	}
	live, ok := liveMember(pgid)
	return live || !ok
}

// liveMember reports whether /proc lists a process of group pgid that is
// not a zombie; ok is false when /proc cannot be read.
func liveMember(pgid int) (live, ok bool) {
	d, err := os.Open("/proc")
	if err != nil {
		return false, false
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return false, false
	}
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		state, pgrp, ok := parseStat(stat)
		if ok && pgrp == pgid && state != 'Z' && state != 'X' {
			return true, true
		}
	}
	return false, true
}

// parseStat reads the state and the process group of /proc/PID/stat:
// "pid (comm) state ppid pgrp ...", where comm may hold spaces and ")".
func parseStat(stat []byte) (state byte, pgrp int, ok bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 3 || len(f[0]) != 1 {
		return 0, 0, false
	}
	pgrp, err := strconv.Atoi(f[2])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], pgrp, true
}

func exitCode(cmd *exec.Cmd, err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		// The shell exited; a child held its output open past the grace.
		return cmd.ProcessState.ExitCode(), nil
	}
	return -1, onfailure.Wrap("wait", err)
}
