// Package engine runs a flow on one device: the main sequence, groups
// (serial or parallel), parallel blocks, conditions, timeouts, variables and
// outputs, the failure strategies of spec 5 (asking onfailure for each
// decision), the rollback actions and rollback steps of spec 6 (in the order
// the rollback package plans), and pauses for guidance (spec 7). It journals
// the execution through Store before each step acts and after it ends.
//
// A step's life (spec 8):
//
//	Pending ──when says no / flow stopped──▶ Skipped
//	   │
//	   ▼
//	Running ──ok──▶ Succeeded
//	   │  ▲
//	   │  └──────── Retry (after the interval) / guidance Retry
//	   ├──sibling stopped the scope──▶ Aborted
//	   └──failed──▶ decide(kind, attempts, step > group > flow strategies)
//	                 ├─ Ignore ─────────────▶ Ignored
//	                 ├─ MarkAsSuccess ──────▶ Succeeded (marked)
//	                 ├─ ManualIntervention ─▶ Paused ──guidance / timeout──▶ decide again with that action
//	                 └─ MarkAsFailure, Abort, RollbackGroup, RetryGroup, RollbackFlow ─▶ Failed
//
// With guided failure (Options.GuidedFailure), a decision that would end
// the flow (Abort: a strategy's, the default, or a Retry's onExhausted)
// goes to Paused instead, as a ManualIntervention would; the guidance (or
// the timeout's action) that ends such a pause applies as it is.
//
// The flow ends Succeeded, Failed (Abort, MarkAsFailure, a flow timeout),
// RolledBack or RollbackFailed (RollbackFlow).
//
// A Succeeded execution can be undone afterwards (Undo):
//
//	Succeeded ──Undo──▶ Running (undo journaled) ──anyStep actions, flow rollback steps──▶ RolledBack | RollbackFailed
//	                        └──agent restart──▶ Resume carries on; no action runs twice
//
// Two lifetimes are kept apart: the context given to Run is the agent's;
// when it ends the execution is interrupted (the journal still says
// Running) and is resumed on restart. Step timeouts, the flow timeout and
// mark-as-failed end only a step, with a cause that carries the failure's
// kind.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// Store journals executions. SaveExecution must be durable (fsynced) when
// it returns; unfinished marks the execution as the one to resume.
type Store interface {
	SaveExecution(id string, rec []byte, unfinished bool) error
	SaveLog(id, step string, attempt int, log []byte) error
}

// Commands runs the command and script rollback actions (spec 6).
type Commands interface {
	RunScript(ctx context.Context, sc *flow.Script, env *steps.Env) error
	RunCommand(ctx context.Context, text string, env *steps.Env) error
}

// Preflighter is implemented by step types that can check a step before
// the flow starts (paths, permissions), so that a step that cannot work is
// refused before anything on the device changes.
type Preflighter interface {
	Preflight(s *flow.Step, root string) error
}

// Event is a progress report: the execution started, a step, rollback
// action or pause changed, a pause was answered, or the flow ended.
type Event struct {
	Type EventType
	// Execution is the execution's id; every event carries it.
	Execution string
	Step      string
	Group     string
	// Rollback is "flow" or the group's name for a rollback step.
	Rollback string
	Status   Status
	Attempt  int
	// Action is a rollback action's name (EventAction) or the guidance
	// applied (EventResume).
	Action string
	// Trigger is a rollback action's trigger.
	Trigger string
	Error   *ErrorInfo
	Elapsed time.Duration
	// Marked is set on a step whose failure MarkAsSuccess resolved.
	Marked bool
	// Until is when a pause times out (EventPause).
	Until time.Time
	// By is who gave the guidance (EventResume).
	By string
	// Resumed is set on the EventStart of an execution resumed after an
	// agent restart.
	Resumed bool
	// Guided is set on the EventPause and EventResume of a pause that
	// guided failure made (not a ManualIntervention strategy).
	Guided bool
	// Undo is set on the EventStart of the undoing of a Succeeded
	// execution (Engine.Undo, or its Resume after a restart).
	Undo bool
}

// EventType says what an Event is about.
type EventType string

// Event types.
const (
	EventStart  EventType = "start"
	EventStep   EventType = "step"
	EventAction EventType = "action"
	EventPause  EventType = "pause"
	EventResume EventType = "resume"
	EventFlow   EventType = "flow"
)

// Options configure an Engine.
type Options struct {
	DeviceID string
	Labels   map[string]string
	// Vars override the flow's declared vars.
	Vars map[string]string
	// StateDir holds each step's work directory (backups, output files).
	StateDir string
	// Runners run each step type, by type name (flow.TypeFile, ...).
	// A runner that implements steps.Undoer provides the built-in undo.
	Runners  map[string]steps.Runner
	Commands Commands
	Store    Store
	Logger   *slog.Logger
	// LogCap caps each step's captured log; zero means steps.DefaultLogCap.
	LogCap int
	// Observe, if set, receives progress events. It must not block.
	Observe func(Event)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AgentData is journaled with each new execution as Record.Agent.
	AgentData []byte
	// MaxRestarts is the loop guard: a step interrupted by more agent
	// restarts than this is not retried again. Zero means DefaultMaxRestarts.
	MaxRestarts int
	// GuidedFailure, if set, turns a failure that would end the flow
	// (Abort) into a pause for guidance (docs/failure-handling.md, "Guided
	// failure"). The agent journals it with the execution's settings
	// (AgentData) and sets it again when it resumes the execution.
	GuidedFailure *GuidedFailure
	// FlowStrategies are the flow-level failure strategies given at deploy
	// time, for a flow that says `failureStrategies: input`
	// (docs/flows.md, "Failure strategies as runtime input"). Preflight
	// refuses a flow that asks for them and gets none, strategies for a
	// flow that did not ask, and strategies that break the rules of a
	// written flow-level list (flow.CheckGiven). The agent journals them
	// with the execution's settings and sets them again when it resumes.
	FlowStrategies []onfailure.Strategy
}

// GuidedFailure is guided failure: a step (or group) whose failure would
// end the flow pauses for guidance instead, as a ManualIntervention with
// manual {timeout: Timeout, onTimeout: OnTimeout} would; an empty
// OnTimeout means Abort. onfailure.GuidedFailure.Apply says which
// decisions pause.
type GuidedFailure = onfailure.GuidedFailure

// DefaultMaxRestarts is the default loop guard.
const DefaultMaxRestarts = 3

func (e *Engine) maxRestarts() int {
	if e.opts.MaxRestarts > 0 {
		return e.opts.MaxRestarts
	}
	return DefaultMaxRestarts
}

// ErrInterrupted is returned by Run when the agent's context ended: the
// execution is journaled as running and can be resumed.
var ErrInterrupted = errors.New("execution interrupted; it resumes when the agent starts again")

// PreflightError says why a flow cannot start on this device. Nothing has
// changed on the device.
type PreflightError struct {
	Problems []string
}

func (e *PreflightError) Error() string {
	return "flow cannot run here:\n  " + strings.Join(e.Problems, "\n  ")
}

// Engine runs one flow execution at a time.
type Engine struct {
	opts Options
	log  *slog.Logger

	mu  sync.Mutex
	cur *run
}

// New returns an engine.
func New(opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Engine{opts: opts, log: opts.Logger}
}

// Preflight checks that f can run here: every step type has a runner, every
// rollback action can be carried out, vars given exist, labels used are set,
// and each step type's own checks pass.
func (e *Engine) Preflight(f *flow.Flow) error {
	var probs []string
	add := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	for name := range e.opts.Vars {
		if _, ok := f.Vars[name]; !ok {
			add("variable %q is not declared under vars in %s", name, f.File)
		}
	}
	if e.opts.DeviceID == "" {
		add("no device id")
	}
	if g := e.opts.GuidedFailure; g != nil {
		if err := g.Check(); err != nil {
			add("%v", err)
		}
	}
	probs = append(probs, flow.CheckGiven(f, e.opts.FlowStrategies)...)
	for _, s := range allSteps(f) {
		t := s.step.Type()
		r, ok := e.opts.Runners[t]
		if !ok {
			add("step %q: %s steps are not supported by this agent", s.step.Name, t)
			continue
		}
		if p, ok := r.(Preflighter); ok {
			if err := p.Preflight(s.step, f.Dir); err != nil {
				add("step %q: %v", s.step.Name, err)
			}
		}
		for _, a := range s.step.OnFailure {
			switch a.Action {
			case flow.ActionCommand, flow.ActionScript:
				if e.opts.Commands == nil {
					add("step %q: %s actions are not supported by this agent", s.step.Name, a.Action)
				}
			default:
				if _, ok := r.(steps.Undoer); !ok {
					add("step %q: %s is not supported by this agent", s.step.Name, a.Action)
				}
			}
		}
		for _, ref := range s.step.Refs() {
			if _, ok := e.opts.Labels[ref.Name]; ref.Kind == flow.RefLabel && !ok {
				add("step %q uses ${{ device.labels.%s }}, but this device has no label %q", s.step.Name, ref.Name, ref.Name)
			}
		}
	}
	if len(probs) > 0 {
		sort.Strings(probs)
		return &PreflightError{Problems: probs}
	}
	return nil
}

// Run checks f with Preflight, then executes it and returns its result. An
// error other than a *PreflightError means the execution could not be
// carried on (ErrInterrupted, or the journal failed); the result is then
// what is known so far.
func (e *Engine) Run(ctx context.Context, f *flow.Flow) (*Result, error) {
	if err := e.Preflight(f); err != nil {
		return nil, err
	}
	f = f.WithStrategies(e.opts.FlowStrategies)
	r := newRun(e, f)
	if err := e.begin(r); err != nil {
		return nil, err
	}
	defer e.end()
	return r.execute(ctx, false)
}

// ErrFinished says an execution given to Resume has already ended.
var ErrFinished = errors.New("the execution has already finished")

// Resume continues an execution the journal holds as unfinished, after an
// agent restart: f is its flow as run (decoded from rec.Source). Steps that
// ended stay as they are; a step that was running has failed with
// AgentRestart and its strategies decide; a paused step waits again for
// the rest of its time; rollback work that was cut off is finished, with no
// action run twice.
func (e *Engine) Resume(ctx context.Context, f *flow.Flow, rec *Record) (*Result, error) {
	if rec.Status.Done() {
		return rec.Result(), ErrFinished
	}
	if rec.Flow != f.Name {
		return nil, fmt.Errorf("resume %s: the record is for flow %q, not %q", rec.ID, rec.Flow, f.Name)
	}
	for _, s := range allSteps(f) {
		if _, ok := e.opts.Runners[s.step.Type()]; !ok {
			return nil, &PreflightError{Problems: []string{fmt.Sprintf("step %q: %s steps are not supported by this agent", s.step.Name, s.step.Type())}}
		}
	}
	if g := e.opts.GuidedFailure; g != nil {
		if err := g.Check(); err != nil {
			return nil, &PreflightError{Problems: []string{err.Error()}}
		}
	}
	if probs := flow.CheckGiven(f, e.opts.FlowStrategies); len(probs) > 0 {
		return nil, &PreflightError{Problems: probs}
	}
	f = f.WithStrategies(e.opts.FlowStrategies)
	r, err := resumeRun(e, f, rec)
	if err != nil {
		return nil, err
	}
	if err := e.begin(r); err != nil {
		return nil, err
	}
	defer e.end()
	return r.execute(ctx, true)
}

// ErrNotUndoable is wrapped by the error of Undo for an execution that
// cannot be undone: it did not end Succeeded, or its undo data is gone.
var ErrNotUndoable = errors.New("the execution cannot be undone")

// Undo undoes rec, an execution of f that ended Succeeded, as RollbackFlow
// would have had the flow failed right after its last step (spec 6, and
// docs/failure-handling.md "Undoing a succeeded execution"): the anyStep
// rollback actions of the steps that ran, latest start first
// (rollback.Undo), then the flow's rollback steps in order. Every action
// is journaled before it acts and runs at most once: the record is marked
// as being undone (Record.Undo) and unfinished before anything acts, so
// an agent restart resumes the undo through Resume. The steps keep their
// statuses; the execution ends RolledBack, or RollbackFailed when an
// action or rollback step failed, with the actions in its record.
//
// An execution that did not end Succeeded, or whose undo data is gone
// (its work directory was pruned), is refused with an error wrapping
// ErrNotUndoable, and nothing is changed.
func (e *Engine) Undo(ctx context.Context, f *flow.Flow, rec *Record, by, note string) (*Result, error) {
	if err := e.CheckUndo(f, rec); err != nil {
		return nil, err
	}
	f = f.WithStrategies(e.opts.FlowStrategies)
	r, err := resumeRun(e, f, rec)
	if err != nil {
		return nil, err
	}
	if err := e.begin(r); err != nil {
		return nil, err
	}
	defer e.end()
	now := e.opts.Now()
	r.mu.Lock()
	r.rec.Undo = &UndoRecord{By: by, Note: note, At: now, SucceededAt: r.rec.EndedAt, FirstAction: len(r.rec.Actions)}
	r.rec.Status, r.rec.EndedAt = Running, nil
	r.mu.Unlock()
	return r.undo(ctx, false)
}

// CheckUndo says whether Undo would undo rec, an execution of f: nil, or
// an error wrapping ErrNotUndoable (or a *PreflightError for an action
// this engine cannot carry out).
func (e *Engine) CheckUndo(f *flow.Flow, rec *Record) error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("undo %s: %w: %s", rec.ID, ErrNotUndoable, fmt.Sprintf(format, args...))
	}
	switch {
	case rec.Undo != nil && rec.Status.Done():
		return refuse("it was undone already (%s)", rec.Status)
	case rec.Undo != nil:
		return refuse("its undo is in progress")
	case rec.Status != Succeeded:
		return refuse("it ended %s; only a Succeeded execution can be undone", rec.Status)
	case rec.Flow != f.Name:
		return fmt.Errorf("undo %s: the record is for flow %q, not %q", rec.ID, rec.Flow, f.Name)
	}
	ran := false
	for _, s := range rec.Steps {
		ran = ran || s.Seq > 0
	}
	if _, err := os.Stat(WorkRoot(e.opts.StateDir, rec.ID)); ran && errors.Is(err, os.ErrNotExist) {
		return refuse("its undo data is gone (the work directory %s was pruned)", WorkRoot(e.opts.StateDir, rec.ID))
	}
	var probs []string
	for _, s := range allSteps(f) {
		r, ok := e.opts.Runners[s.step.Type()]
		if !ok {
			probs = append(probs, fmt.Sprintf("step %q: %s steps are not supported by this agent", s.step.Name, s.step.Type()))
			continue
		}
		for _, a := range s.step.OnFailure {
			switch a.Action {
			case flow.ActionCommand, flow.ActionScript:
				if e.opts.Commands == nil {
					probs = append(probs, fmt.Sprintf("step %q: %s actions are not supported by this agent", s.step.Name, a.Action))
				}
			default:
				if _, ok := r.(steps.Undoer); !ok {
					probs = append(probs, fmt.Sprintf("step %q: %s is not supported by this agent", s.step.Name, a.Action))
				}
			}
		}
	}
	if len(probs) > 0 {
		sort.Strings(probs)
		return &PreflightError{Problems: probs}
	}
	return nil
}

func (e *Engine) begin(r *run) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur != nil {
		return errors.New("another flow is running")
	}
	e.cur = r
	return nil
}

func (e *Engine) end() {
	e.mu.Lock()
	e.cur = nil
	e.mu.Unlock()
}

// Current returns the result so far of the running execution, or nil.
func (e *Engine) Current() *Result {
	e.mu.Lock()
	r := e.cur
	e.mu.Unlock()
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec.Result()
}

// Guidance is an operator's answer to a paused step or group (spec 7).
type Guidance struct {
	// Step names the paused step or group; empty means the only one paused.
	Step   string
	Action onfailure.Action
	By     string
	Note   string
}

// Guide delivers guidance to a paused step or group.
func (e *Engine) Guide(g Guidance) error {
	e.mu.Lock()
	r := e.cur
	e.mu.Unlock()
	if r == nil {
		return errors.New("no flow is running")
	}
	return r.guide(g)
}

// MarkFailed stops the running steps (or only step, if set) with a
// UserMarkedFailure; the strategies then decide as for any failure.
func (e *Engine) MarkFailed(step, by, note string) error {
	e.mu.Lock()
	r := e.cur
	e.mu.Unlock()
	if r == nil {
		return errors.New("no flow is running")
	}
	return r.markFailed(step, by, note)
}

// placedStep is a step with its group and, for rollback steps, its owner.
type placedStep struct {
	step     *flow.Step
	group    *flow.Group
	rollback string
}

// allSteps lists every step of f: the main sequence in document order,
// then each group's rollback steps, then the flow's.
func allSteps(f *flow.Flow) []placedStep {
	var out, rb []placedStep
	var walk func(list []flow.Entry, g *flow.Group)
	walk = func(list []flow.Entry, g *flow.Group) {
		for _, e := range list {
			switch {
			case e.Step != nil:
				out = append(out, placedStep{step: e.Step, group: g})
			case e.Group != nil:
				walk(e.Group.Steps, e.Group)
				for _, s := range e.Group.Rollback {
					rb = append(rb, placedStep{step: s, group: e.Group, rollback: e.Group.Name})
				}
			default:
				walk(e.Parallel, g)
			}
		}
	}
	walk(f.Steps, nil)
	out = append(out, rb...)
	for _, s := range f.Rollback {
		out = append(out, placedStep{step: s, rollback: "flow"})
	}
	return out
}

// allGroups lists the groups of f in document order.
func allGroups(f *flow.Flow) []*flow.Group {
	var out []*flow.Group
	var walk func(list []flow.Entry)
	walk = func(list []flow.Entry) {
		for _, e := range list {
			switch {
			case e.Group != nil:
				out = append(out, e.Group)
			case e.Parallel != nil:
				walk(e.Parallel)
			}
		}
	}
	walk(f.Steps)
	return out
}

// newID returns an execution id that sorts by start time.
func newID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405.000000Z") + "-" + hex.EncodeToString(b[:])
}

// WorkRoot is the directory under stateDir holding the work directories
// (backups, output files) of execution exec's steps.
func WorkRoot(stateDir, exec string) string {
	return filepath.Join(stateDir, "work", exec)
}

// workDir returns (and creates) the private directory of a step.
func workDir(stateDir, exec, step string) (string, error) {
	dir := filepath.Join(WorkRoot(stateDir, exec), step)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", onfailure.Wrap("create work dir", err)
	}
	return dir, nil
}

// Reject journals an execution of flow that was refused before it could
// start (a bundle whose signature, expiry, target or version is refused)
// and returns its result: status Failed, cause's kind and message as the
// error, no step run. The record is finished, so nothing resumes it; it is
// listed with the others, so the refusal stays on the device's record.
func (e *Engine) Reject(flow string, cause error) (*Result, error) {
	now := e.opts.Now()
	rec := &Record{
		ID: newID(now), Flow: flow, DeviceID: e.opts.DeviceID, Labels: e.opts.Labels,
		Status: Failed, StartedAt: now, EndedAt: &now, Error: errorInfo(cause),
		Steps: []*StepRecord{}, Groups: []*GroupRecord{}, Actions: []ActionRecord{}, Guidance: []GuidanceResult{},
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode execution: %w", err)
	}
	if e.opts.Store != nil {
		if err := e.opts.Store.SaveExecution(rec.ID, data, false); err != nil {
			return rec.Result(), fmt.Errorf("journal the refusal of %s: %w", flow, err)
		}
	}
	return rec.Result(), nil
}
