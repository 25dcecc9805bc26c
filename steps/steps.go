// Package steps is the contract between the engine and the step types: the
// environment a step runs in, the Runner every step type implements, and the
// Undoer a step type with a built-in undo implements. One package per step
// type lives below it (file, script, verify, reboot, compose, container),
// beside what the Docker steps share (containers: the engine interface and
// the health wait; docker: the one package on the Docker SDK).
//
// A Runner must:
//   - journal its undo data with Env.SaveUndo before it changes the device;
//   - start from Env.Undo when it is set (an earlier attempt, or a run before
//     an agent restart, already recorded the state before the step), so the
//     undo data always describes the device before the step's first attempt;
//   - return an error carrying an onfailure kind, classified where the foreign
//     error is understood;
//   - stop promptly when its context is done and return context.Cause(ctx)
//     (wrapped), so the engine can tell a timeout from a mark-as-failed.
package steps

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/edgeflow/edgeflow/flow"
)

// Env is what a step sees of its execution.
type Env struct {
	Execution string
	Flow      string
	Step      string
	Group     string
	Attempt   int
	DeviceID  string

	// Root is the flow's directory or bundle root; relative paths in the
	// step resolve inside it and never outside.
	Root string
	// WorkDir is a private directory for this step under the agent's state
	// dir (backups, the output file). It exists.
	WorkDir string

	// Log receives the step's output; the engine keeps it for the report.
	Log *LogBuffer
	// Logger is the agent's logger, with execution and step keys.
	Logger *slog.Logger

	// Expand expands ${{ }} expressions (spec 9) in a string.
	Expand func(string) (string, error)

	// Undo is the undo data already journaled for this step, or nil.
	Undo []byte
	// SaveUndo journals undo data durably (fsynced) before it returns.
	SaveUndo func([]byte) error

	// Outputs receives the step's outputs (spec 9).
	Outputs map[string]string
}

// Runner runs one type of step.
type Runner interface {
	Run(ctx context.Context, s *flow.Step, env *Env) error
}

// Undoer is implemented by step types with a built-in undo (revertFiles,
// revertComposeFile, restartPreviousContainer): it restores the device to
// what undo, as journaled by Run, describes.
type Undoer interface {
	Undo(ctx context.Context, s *flow.Step, env *Env, undo []byte) error
}

// Finisher is implemented by step types that keep something until the flow
// ends (the previous container, kept stopped so that
// restartPreviousContainer can bring it back). Once the flow has ended,
// whatever its status, the engine calls Finish for every step of the type
// that journaled undo data. Finish must be idempotent: after a restart it
// may run again.
type Finisher interface {
	Finish(ctx context.Context, s *flow.Step, env *Env, undo []byte) error
}

// Reentrant is implemented by step types whose Run, called again after an
// agent restart with Env.Undo as journaled before, continues the run the
// restart interrupted (a reboot step confirming the new boot) instead of
// failing with AgentRestart.
type Reentrant interface {
	Reentrant() bool
}

// DefaultLogCap is the default size cap of a step's captured log.
const DefaultLogCap = 64 << 10

// LogBuffer keeps a step's output up to a size cap: the first half of the
// cap and the most recent half, with a marker saying how much was dropped
// between them. It is safe for concurrent writes (stdout and stderr).
type LogBuffer struct {
	mu      sync.Mutex
	cap     int
	head    []byte
	tail    []byte // ring of the latest bytes once head is full
	start   int    // ring start in tail
	dropped int64
}

// NewLogBuffer returns a buffer that keeps at most capBytes bytes (plus a
// one-line marker). A capBytes below 2 means DefaultLogCap.
func NewLogBuffer(capBytes int) *LogBuffer {
	if capBytes < 2 {
		capBytes = DefaultLogCap
	}
	return &LogBuffer{cap: capBytes}
}

// Write never fails; bytes over the cap are dropped from the middle.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	half := b.cap / 2
	if room := half - len(b.head); room > 0 {
		k := min(room, len(p))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	tailCap := b.cap - half
	for len(p) > 0 {
		if len(b.tail) < tailCap {
			k := min(tailCap-len(b.tail), len(p))
			b.tail = append(b.tail, p[:k]...)
			p = p[k:]
			continue
		}
		// Ring full: overwrite the oldest byte range.
		k := min(tailCap-b.start, len(p))
		copy(b.tail[b.start:], p[:k])
		b.start = (b.start + k) % tailCap
		b.dropped += int64(k)
		p = p[k:]
	}
	return n, nil
}

// Bytes returns the kept output, with a marker where bytes were dropped.
func (b *LogBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := append([]byte(nil), b.head...)
	if b.dropped > 0 {
		out = append(out, fmt.Sprintf("\n[... %d bytes dropped ...]\n", b.dropped)...)
	}
	out = append(out, b.tail[b.start:]...)
	out = append(out, b.tail[:b.start]...)
	return out
}

// String returns Bytes as a string.
func (b *LogBuffer) String() string { return string(b.Bytes()) }

// Tail returns at most n bytes of the end of the kept output.
func (b *LogBuffer) Tail(n int) string {
	all := b.Bytes()
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return string(all)
}
