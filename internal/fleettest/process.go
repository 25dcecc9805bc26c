package fleettest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// process is one long-running program of a test (the controller or an
// agent), which the test may start again after it stopped. Its output
// from every run goes to one log.
type process struct {
	t    testing.TB
	name string
	log  *syncBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has been waited for
	runs int
}

func newProcess(t testing.TB, name string) *process {
	p := &process{t: t, name: name, log: &syncBuffer{}}
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		if strings.Contains(p.log.String(), "WARNING: DATA RACE") {
			t.Errorf("%s: the race detector found a data race (see its log)", p.name)
		}
		if t.Failed() || os.Getenv(LogsEnv) == "1" {
			t.Logf("---- %s log ----\n%s", p.name, p.log.tail(64<<10))
		}
	})
	return p
}

// start starts cmd, whose output the caller has set up, and records it as
// the process's current run.
func (p *process) start(cmd *exec.Cmd) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !closed(p.done) {
		return fmt.Errorf("%s is running already (pid %d)", p.name, p.cmd.Process.Pid)
	}
	// The process dies with the test binary, even when that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.runs++
	fmt.Fprintf(p.log, "---- fleettest: run %d: %s\n", p.runs, cmd.Args)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// current returns the current run and its done channel (nil before the
// first start).
func (p *process) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// running reports whether the process runs now.
func (p *process) running() bool {
	cmd, done := p.current()
	return cmd != nil && !closed(done)
}

// pid returns the process id of the current run (0 when it does not run).
func (p *process) pid() int {
	cmd, done := p.current()
	if cmd == nil || closed(done) {
		return 0
	}
	return cmd.Process.Pid
}

// signal sends sig to the running process and waits until it exited
// (killing it after Deadline). It returns the exit code, -1 when it was
// ended by a signal, or -2 when it was not running.
func (p *process) signal(sig syscall.Signal) int {
	cmd, done := p.current()
	if cmd == nil || closed(done) {
		return -2
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Errorf("signal %s: %v", p.name, err)
	}
	select {
	case <-done:
	case <-time.After(Deadline):
		_ = cmd.Process.Kill()
		<-done
		p.t.Errorf("%s did not exit within %v of %v; killed", p.name, Deadline, sig)
	}
	return cmd.ProcessState.ExitCode()
}

// exited returns the done channel of the current run.
func (p *process) exited() <-chan struct{} {
	_, done := p.current()
	return done
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns at most the last n bytes written.
func (b *syncBuffer) tail(n int) string {
	s := b.String()
	if len(s) > n {
		return "[… earlier lines cut]\n" + s[len(s)-n:]
	}
	return s
}
