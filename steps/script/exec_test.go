package script

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Argv runs the program directly: arguments are passed as they are, with
// no shell splitting them or expanding anything, and the program is found
// in PATH.
func TestExecArgv(t *testing.T) {
	var out bytes.Buffer
	code, err := Exec(context.Background(), Command{
		Argv:   []string{"printf", "%s|", "two words", "$HOME", "*"},
		Shell:  "/nonexistent/ignored",
		Text:   "exit 9",
		Output: &out,
	})
	if err != nil || code != 0 {
		t.Fatalf("Exec: code %d, err %v", code, err)
	}
	if got, want := out.String(), "two words|$HOME|*|"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}

	code, err = Exec(context.Background(), Command{Argv: []string{"sh", "-c", "exit 7"}})
	if err != nil || code != 7 {
		t.Errorf("exit code %d, err %v; want 7, nil", code, err)
	}
}

// A program that does not exist fails to start with an error naming it.
func TestExecArgvMissingProgram(t *testing.T) {
	_, err := Exec(context.Background(), Command{Argv: []string{"/nonexistent/tool", "version"}})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/tool") {
		t.Fatalf("error %v does not name the program", err)
	}
	if k := onfailure.KindOf(err); k != onfailure.Unknown {
		t.Errorf("kind %s, want Unknown", k)
	}
}

// Stderr, when set, gets stderr apart from stdout.
func TestExecStderrApart(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code, err := Exec(context.Background(), Command{
		Argv:   []string{"sh", "-c", "echo out; echo err >&2"},
		Output: &stdout,
		Stderr: &stderr,
	})
	if err != nil || code != 0 {
		t.Fatalf("Exec: code %d, err %v", code, err)
	}
	if stdout.String() != "out\n" || stderr.String() != "err\n" {
		t.Errorf("stdout %q, stderr %q; want \"out\\n\", \"err\\n\"", stdout.String(), stderr.String())
	}
}

// A command run with Argv is stopped as a script is: the whole process
// group, children that ignore SIGTERM included, and the error carries the
// context's cause.
func TestExecArgvStoppedWithGroup(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() {
		_, err := Exec(ctx, Command{Argv: []string{"/bin/sh", "-c", stubbornScript}, Dir: dir, Grace: grace})
		done <- err
	}()
	var procs map[string]int
	for procs == nil {
		select {
		case err := <-done:
			t.Fatalf("Exec returned before it was stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		procs, _ = pids(t, dir)
	}
	cancel(onfailure.Errorf(onfailure.UserMarkedFailure, "marked as failed"))
	err := <-done
	if k := onfailure.KindOf(err); k != onfailure.UserMarkedFailure {
		t.Errorf("kind %s, want UserMarkedFailure (%v)", k, err)
	}
	assertGone(t, procs)
	if _, err := os.Stat(filepath.Join(dir, "shell.pid")); err != nil {
		t.Errorf("the command did not run in Dir: %v", err)
	}
}

// TestExecDiesWithItsAgent: when the process running Exec is killed with
// SIGKILL, the command it ran is killed too (the kernel's parent-death
// signal), so no orphan outlives the agent. The test binary plays the
// agent.
func TestExecDiesWithItsAgent(t *testing.T) {
	if os.Getenv("EDGEFLOW_EXEC_AGENT") == "1" {
		_, _ = Exec(context.Background(), Command{Argv: []string{"sleep", "60"}})
		return
	}
	agent := exec.Command(os.Args[0], "-test.run", "^TestExecDiesWithItsAgent$")
	agent.Env = append(os.Environ(), "EDGEFLOW_EXEC_AGENT=1")
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	// Find the sleep: the agent's child.
	var child int
	for end := time.Now().Add(10 * time.Second); child == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			_ = agent.Process.Kill()
			t.Fatal("the agent never started its command")
		}
		child = findChild(agent.Process.Pid)
	}
	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = agent.Wait()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := syscall.Kill(child, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		if state, ok := procState(child); ok && state == 'Z' {
			return // killed, waiting to be reaped by init
		}
		if time.Now().After(end) {
			_ = syscall.Kill(child, syscall.SIGKILL)
			t.Fatalf("the command (pid %d) outlived its agent", child)
		}
	}
}

// findChild returns a child of pid, found through /proc, or 0.
func findChild(pid int) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
		f := strings.Fields(rest)
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			return p
		}
	}
	return 0
}

func procState(pid int) (byte, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	rest := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(rest) == 0 {
		return 0, false
	}
	return rest[0][0], true
}
