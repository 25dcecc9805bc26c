package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/rollback"
	"github.com/edgeflow/edgeflow/steps"
)

// stop is how a scope ended; the zero value means it ran to its end.
type stop struct {
	// action is Abort, Exclude, RollbackFlow, RollbackGroup, RetryGroup,
	// groupFailed, or interrupted.
	action onfailure.Action
	// failed is the failed step, nil when a group failed.
	failed *flow.Step
	err    error
	// wait is the interval before a RetryGroup.
	wait time.Duration
}

// Internal outcomes that are not spec actions.
const (
	// groupFailed: a RetryGroup ran out with no onExhausted; the group's
	// failure goes to the flow's strategies.
	groupFailed onfailure.Action = "groupFailed"
	// interrupted: the agent is shutting down.
	interrupted onfailure.Action = "interrupted"
	// aborted: this step was cancelled because a sibling stopped the scope.
	aborted onfailure.Action = "aborted"
	// journalStop: the journal cannot be written; nothing more may act.
	journalStop onfailure.Action = "journalStop"
)

// JournalError says the journal could not be written, so the engine
// stopped before acting: the execution stays unfinished in the journal (as
// of its last write) and can be resumed once the cause (a full disk, say)
// is fixed.
type JournalError struct{ Err error }

func (e *JournalError) Error() string {
	return "journal: " + e.Err.Error() + " (nothing more was done; fix the cause and run resume)"
}

func (e *JournalError) Unwrap() error { return e.Err }

// errScopeStopped is the cancel cause for parallel siblings of a failure
// that stops their scope.
var errScopeStopped = errors.New("cancelled: a parallel step failed and stopped the scope")

type run struct {
	e    *Engine
	f    *flow.Flow
	log  *slog.Logger
	root context.Context
	// flowCtx carries the flow timeout.
	flowCtx context.Context

	mu          sync.Mutex
	rec         *Record
	steps       map[string]*StepRecord
	groups      map[string]*GroupRecord
	flowSteps   map[string]placedStep
	failedSoFar bool
	running     map[string]context.CancelCauseFunc
	paused      map[string]chan Guidance
	saveErr     error
}

func newRun(e *Engine, f *flow.Flow) *run {
	now := e.opts.Now()
	vars := map[string]string{}
	maps.Copy(vars, f.Vars)
	maps.Copy(vars, e.opts.Vars)
	rec := &Record{
		ID: newID(now), Flow: f.Name, File: f.File, Dir: f.Dir, Source: f.Source,
		DeviceID: e.opts.DeviceID, Labels: e.opts.Labels, Vars: vars, Agent: e.opts.AgentData,
		Status: Running, StartedAt: now,
		Actions: []ActionRecord{}, Guidance: []GuidanceResult{},
	}
	for _, ps := range allSteps(f) {
		sr := &StepRecord{Name: ps.step.Name, Rollback: ps.rollback, Status: Pending}
		if ps.group != nil {
			sr.Group = ps.group.Name
		}
		rec.Steps = append(rec.Steps, sr)
	}
	for _, g := range allGroups(f) {
		rec.Groups = append(rec.Groups, &GroupRecord{Name: g.Name, Status: Pending})
	}
	r, _ := resumeRun(e, f, rec)
	return r
}

// resumeRun builds a run around an execution record (new, or journaled).
func resumeRun(e *Engine, f *flow.Flow, rec *Record) (*run, error) {
	r := &run{
		e: e, f: f, rec: rec,
		steps:     map[string]*StepRecord{},
		groups:    map[string]*GroupRecord{},
		flowSteps: map[string]placedStep{},
		running:   map[string]context.CancelCauseFunc{},
		paused:    map[string]chan Guidance{},
	}
	for _, sr := range rec.Steps {
		r.steps[sr.Name] = sr
	}
	for _, gr := range rec.Groups {
		r.groups[gr.Name] = gr
	}
	for _, ps := range allSteps(f) {
		if r.steps[ps.step.Name] == nil {
			return nil, fmt.Errorf("execution %s: the journal has no record of step %q", rec.ID, ps.step.Name)
		}
		r.flowSteps[ps.step.Name] = ps
	}
	for _, g := range allGroups(f) {
		if r.groups[g.Name] == nil {
			return nil, fmt.Errorf("execution %s: the journal has no record of group %q", rec.ID, g.Name)
		}
	}
	if rec.Actions == nil {
		rec.Actions = []ActionRecord{}
	}
	if rec.Guidance == nil {
		rec.Guidance = []GuidanceResult{}
	}
	r.log = e.log.With("execution", rec.ID, "flow", f.Name)
	return r, nil
}

// saveLocked journals the record. Callers hold r.mu.
func (r *run) saveLocked() error {
	if r.e.opts.Store == nil {
		return nil
	}
	data, err := json.Marshal(r.rec)
	if err != nil {
		return fmt.Errorf("encode execution: %w", err)
	}
	err = r.e.opts.Store.SaveExecution(r.rec.ID, data, !r.rec.Status.Done())
	if err != nil && r.saveErr == nil {
		r.saveErr = err
	}
	return err
}

func (r *run) save() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.saveLocked()
}

func (r *run) observe(ev Event) {
	if r.e.opts.Observe != nil {
		ev.Execution = r.rec.ID
		r.e.opts.Observe(ev)
	}
}

func (r *run) now() time.Time { return r.e.opts.Now() }

func (r *run) execute(ctx context.Context, resuming bool) (*Result, error) {
	if r.rec.Undo != nil {
		// An undo a restart cut off: it carries on.
		return r.undo(ctx, resuming)
	}
	r.root = ctx
	flowCtx := ctx
	if r.f.Timeout > 0 {
		// The flow's time counts from its start, across agent restarts.
		var cancel context.CancelFunc
		flowCtx, cancel = context.WithDeadlineCause(ctx, r.rec.StartedAt.Add(r.f.Timeout),
			onfailure.Errorf(onfailure.Timeout, "flow timed out after %s", r.f.Timeout))
		defer cancel()
	}
	r.flowCtx = flowCtx
	if resuming {
		r.prepareResume()
		r.log.Info("flow resumed", "resumes", r.rec.Resumes)
	} else {
		r.log.Info("flow started", "device", r.rec.DeviceID)
	}
	if err := r.save(); err != nil {
		return nil, &JournalError{Err: err}
	}
	r.observe(Event{Type: EventStart, Status: Running, Resumed: resuming})
	if resuming {
		r.finishPending()
		if r.root.Err() != nil {
			return r.interrupted()
		}
	}

	var st stop
	if r.rec.Stop != nil {
		// The main sequence had stopped before the restart.
		st = stop{action: r.rec.Stop.Action, failed: r.stepDef(r.rec.Stop.Step), err: infoError(r.rec.Stop.Error)}
	} else {
		st = r.entries(flowCtx, r.f.Steps, nil, false)
		switch st.action {
		case interrupted:
			return r.interrupted()
		case journalStop:
			return r.journalFailed(st.err)
		}
		if st.action != "" {
			r.mu.Lock()
			if r.rec.Stop == nil {
				r.rec.Stop = &StopRecord{Action: st.action, Error: errorInfo(st.err)}
				if st.failed != nil {
					r.rec.Stop.Step = st.failed.Name
				}
			}
			err := r.saveLocked()
			r.mu.Unlock()
			if err != nil {
				return r.journalFailed(&JournalError{Err: err})
			}
		}
	}
	status := Succeeded
	switch st.action {
	case "":
		if r.failed() {
			status = Failed
		}
	case onfailure.RollbackFlow:
		status = RolledBack
		if !r.rollback(st.failed, nil, true, st.err, nil) {
			status = RollbackFailed
		}
	default:
		// Abort, Exclude, groupFailed, or the flow ran out of time.
		r.rollback(st.failed, nil, false, st.err, nil)
		status = Failed
	}
	if r.root.Err() != nil {
		return r.interrupted()
	}
	return r.finish(status)
}

// undo runs the undoing of a Succeeded execution (Engine.Undo), or carries
// on with one a restart cut off: the rollback actions rollback.Undo plans,
// not those done already, then the flow's rollback steps. It has no flow
// timeout: like all rollback work it runs in the agent's lifetime.
func (r *run) undo(ctx context.Context, resuming bool) (*Result, error) {
	r.root, r.flowCtx = ctx, ctx
	if resuming {
		r.prepareResume()
		r.log.Info("undo resumed", "resumes", r.rec.Resumes)
	} else {
		r.log.Info("undo started", "by", r.rec.Undo.By)
	}
	// Journaled (as unfinished) before any action acts.
	if err := r.save(); err != nil {
		return nil, &JournalError{Err: err}
	}
	r.observe(Event{Type: EventStart, Status: Running, Resumed: resuming, Undo: true})
	started, done := r.planInputs(nil)
	for _, it := range rollback.Undo(started, done) {
		if r.root.Err() != nil {
			break // interrupted: the rest is done after the restart
		}
		r.runAction(it)
	}
	r.rollbackSteps(r.f.Rollback)
	if r.root.Err() != nil {
		return r.interrupted()
	}
	// Whether the undo succeeded is what its journaled actions say, so an
	// action a restart cut off (Failed, not run again) counts too.
	status := RolledBack
	r.mu.Lock()
	for _, a := range r.rec.Actions[min(r.rec.Undo.FirstAction, len(r.rec.Actions)):] {
		if a.Status == Failed {
			status = RollbackFailed
		}
	}
	r.mu.Unlock()
	return r.finish(status)
}

// stepDef returns the flow's step named name, or nil.
func (r *run) stepDef(name string) *flow.Step {
	if ps, ok := r.flowSteps[name]; ok {
		return ps.step
	}
	return nil
}

// groupDef returns the flow's group named name, or nil.
func (r *run) groupDef(name string) *flow.Group {
	for _, g := range allGroups(r.f) {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// infoError turns a journaled error back into an error of the same kind.
func infoError(info *ErrorInfo) error {
	if info == nil {
		return onfailure.Errorf(onfailure.Unknown, "unknown failure")
	}
	return &onfailure.Error{Kind: info.Type, Err: errors.New(info.Message)}
}

// prepareResume reads the journaled state after a restart: what had
// failed, and which command and script actions were cut off (they are not
// run again: an action runs at most once).
func (r *run) prepareResume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rec.Resumes++
	r.rec.Status = Running
	for i := range r.rec.Actions {
		a := &r.rec.Actions[i]
		if a.Status == Running && (a.Action == flow.ActionCommand || a.Action == flow.ActionScript) {
			a.Status = Failed
			a.Error = &ErrorInfo{Type: onfailure.AgentRestart,
				Message: "the agent stopped while this action ran; it is not run again (an action runs at most once)"}
		}
	}
	for _, s := range r.rec.Steps {
		if s.Rollback == "" && s.Status == Failed && !s.Retrying {
			r.failedSoFar = true
		}
		if r.rec.Stop != nil && s.Rollback == "" && (s.Status == Running || s.Status == Paused) {
			// The flow had stopped; its scope was being cancelled.
			s.Status = Aborted
			s.Error = &ErrorInfo{Type: onfailure.AgentRestart, Message: "cancelled: the flow had stopped when the agent stopped"}
		}
	}
	for _, g := range r.rec.Groups {
		if g.Status == Failed {
			r.failedSoFar = true
		}
	}
}

// finishPending completes the rollback work a restart cut off.
func (r *run) finishPending() {
	r.mu.Lock()
	pending := append([]PlanRecord(nil), r.rec.Pending...)
	r.mu.Unlock()
	for _, p := range pending {
		failed, g := r.stepDef(p.Step), r.groupDef(p.Group)
		var then func()
		if g != nil && p.RollbackSteps {
			gr := r.groups[g.Name]
			then = func() { gr.Status, gr.Failure = RolledBack, p.Error }
		}
		if g == nil && p.RollbackSteps {
			continue // the flow's rollback: its Stop record redoes it
		}
		r.rollback(failed, g, p.RollbackSteps, infoError(p.Error), then)
	}
}

func (r *run) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failedSoFar
}

// journalFailed ends a run whose journal cannot be written.
func (r *run) journalFailed(err error) (*Result, error) {
	r.mu.Lock()
	res := r.rec.Result()
	r.mu.Unlock()
	r.log.Error("journal write failed; stopping", "error", err, "kind", onfailure.KindOf(err))
	return res, err
}

func (r *run) interrupted() (*Result, error) {
	r.mu.Lock()
	res := r.rec.Result()
	r.mu.Unlock()
	r.log.Warn("flow interrupted")
	return res, ErrInterrupted
}

func (r *run) finish(status Status) (*Result, error) {
	r.finishSteps()
	r.mu.Lock()
	now := r.now()
	for _, s := range r.rec.Steps {
		if s.Status == Pending && s.Rollback == "" {
			s.Status = Skipped
		}
	}
	for _, g := range r.rec.Groups {
		switch g.Status {
		case Pending:
			g.Status = Skipped
		case Running, Paused:
			g.Status = Failed // the flow stopped inside it
		}
	}
	if r.rec.Error == nil && r.flowCtx.Err() != nil && status != Succeeded {
		r.rec.Error = errorInfo(context.Cause(r.flowCtx))
	}
	r.rec.Status = status
	r.rec.EndedAt = &now
	err := r.saveLocked()
	if err == nil {
		err = r.saveErr
	}
	res := r.rec.Result()
	r.mu.Unlock()
	r.log.Info("flow finished", "status", status)
	r.observe(Event{Type: EventFlow, Status: status, Error: res.Error})
	if err != nil {
		return res, fmt.Errorf("journal: %w", err)
	}
	return res, nil
}

// finishSteps lets step types release what they kept for a rollback (see
// steps.Finisher). It runs before the execution's last journal write, so a
// restart runs it again rather than never.
func (r *run) finishSteps() {
	for _, ps := range allSteps(r.f) {
		fin, ok := r.e.opts.Runners[ps.step.Type()].(steps.Finisher)
		if !ok {
			continue
		}
		r.mu.Lock()
		sr := r.steps[ps.step.Name]
		undo, attempt := sr.Undo, sr.Attempts
		r.mu.Unlock()
		if undo == nil {
			continue
		}
		env, err := r.env(ps.step, ps, attempt, undo, sr)
		if err == nil {
			err = fin.Finish(r.rollbackCtx(), ps.step, env, undo)
		}
		if err != nil {
			r.log.Warn("finish step", "step", ps.step.Name, "error", err)
		}
	}
}

// when decides whether a step or group with condition w runs now.
func (r *run) when(w flow.When) bool {
	failed := r.failed()
	switch w {
	case flow.Always:
		return true
	case flow.OnFailure:
		return failed
	}
	return !failed
}

// entries runs a steps list, serially or all at once.
func (r *run) entries(ctx context.Context, list []flow.Entry, g *flow.Group, parallel bool) stop {
	if !parallel {
		for i := range list {
			if st := r.entry(ctx, &list[i], g); st.action != "" {
				return st
			}
		}
		return stop{}
	}
	blockCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	results := make(chan stop, len(list))
	for i := range list {
		go func(e *flow.Entry) { results <- r.entry(blockCtx, e, g) }(&list[i])
	}
	var first stop
	for range list {
		st := <-results
		if st.action == "" || st.action == aborted {
			continue
		}
		if first.action == "" {
			first = st
			cancel(errScopeStopped)
		}
	}
	return first
}

func (r *run) entry(ctx context.Context, e *flow.Entry, g *flow.Group) stop {
	if st, ok := r.cannotStart(ctx); ok {
		return st
	}
	switch {
	case e.Step != nil:
		return r.step(ctx, e.Step, g)
	case e.Group != nil:
		return r.group(ctx, e.Group)
	default:
		return r.entries(ctx, e.Parallel, g, true)
	}
}

// cannotStart reports why nothing new may start: the agent is stopping,
// the flow ran out of time, or a sibling stopped the scope.
func (r *run) cannotStart(ctx context.Context) (stop, bool) {
	switch {
	case r.root.Err() != nil:
		return stop{action: interrupted}, true
	case r.flowCtx.Err() != nil:
		return stop{action: onfailure.Abort, err: context.Cause(r.flowCtx)}, true
	case ctx.Err() != nil:
		return stop{action: aborted}, true
	}
	return stop{}, false
}

func effectiveWhen(s *flow.Step, g *flow.Group) flow.When {
	if s.When != "" {
		return s.When
	}
	if g != nil && g.When != "" {
		return g.When
	}
	return flow.OnSuccess
}

// levels returns the strategy lists that apply to a step in g.
func (r *run) levels(s *flow.Step, g *flow.Group) []onfailure.Level {
	lv := []onfailure.Level{{Scope: onfailure.ScopeStep, Strategies: strategies(s.FailureStrategies)}}
	if g != nil {
		lv = append(lv, onfailure.Level{Scope: onfailure.ScopeGroup, Strategies: strategies(g.FailureStrategies)})
	}
	return append(lv, onfailure.Level{Scope: onfailure.ScopeFlow, Strategies: strategies(r.f.FailureStrategies)})
}

func strategies(list []flow.Strategy) []onfailure.Strategy {
	out := make([]onfailure.Strategy, len(list))
	for i, s := range list {
		out[i] = s.Strategy
	}
	return out
}

func (r *run) setStep(sr *StepRecord, status Status, err error) {
	r.mu.Lock()
	sr.Status = status
	if err != nil {
		sr.Error = errorInfo(err)
	}
	now := r.now()
	if status.Done() {
		sr.EndedAt = &now
	}
	_ = r.saveLocked()
	ev := Event{Type: EventStep, Step: sr.Name, Group: sr.Group, Rollback: sr.Rollback, Status: status,
		Attempt: sr.Attempts, Error: sr.Error, Elapsed: sr.Elapsed, Marked: sr.Marked}
	r.mu.Unlock()
	if status.Done() {
		r.log.Info("step finished", "step", sr.Name, "status", status, "attempt", sr.Attempts)
	}
	r.observe(ev)
}

// step runs one main-sequence step to its end, applying its strategies.
func (r *run) step(ctx context.Context, s *flow.Step, g *flow.Group) stop {
	sr := r.steps[s.Name]
	pending, done := r.resumeState(sr)
	if done {
		return stop{}
	}
	if pending == nil && !r.when(effectiveWhen(s, g)) {
		r.setStep(sr, Skipped, nil)
		return stop{}
	}
	for {
		err := r.next(ctx, s, sr, &pending)
		if err == nil {
			r.mu.Lock()
			sr.Error = nil
			r.mu.Unlock()
			r.setStep(sr, Succeeded, nil)
			return stop{}
		}
		if r.root.Err() != nil {
			return stop{action: interrupted}
		}
		var je *JournalError
		if errors.As(err, &je) {
			return stop{action: journalStop, failed: s, err: je}
		}
		if errors.Is(context.Cause(ctx), errScopeStopped) && r.flowCtx.Err() == nil {
			r.setStep(sr, Aborted, errScopeStopped)
			return stop{action: aborted}
		}
		kind := onfailure.KindOf(err)
		d := onfailure.Decide(kind, onfailure.Attempts{Step: sr.Attempts, Group: r.groupRuns(g)}, r.levels(s, g)...)
		if d.Action == onfailure.Retry && kind == onfailure.AgentRestart && sr.Restarts > r.e.maxRestarts() {
			// Loop guard: a step that keeps taking the agent down is not
			// run again; its Retry counts as exhausted.
			d.Action, d.Exhausted, d.Wait = onfailure.Abort, true, 0
			if d.Strategy.Retry.OnExhausted != "" {
				d.Action = d.Strategy.Retry.OnExhausted
			}
		}
		d = r.guided(d, kind, g != nil)
		act := d.Action
		r.log.Info("step failed", "step", s.Name, "attempt", sr.Attempts, "kind", kind, "error", err, "action", act, "scope", d.Scope, "guided", d.Guided)
		if d.Exhausted && d.Strategy.Action == onfailure.RetryGroup && d.Strategy.Retry.OnExhausted == "" {
			// The group ran out of runs: its failure is the flow's to handle.
			act = groupFailed
		}
		if act == onfailure.ManualIntervention {
			act = r.pause(ctx, s.Name, d.Manual, sr, err, d.Guided)
			if act == interrupted {
				return stop{action: interrupted}
			}
		}
		if r.flowCtx.Err() != nil && act != onfailure.RollbackFlow {
			// Out of time: nothing more may run but a rollback.
			act = onfailure.Abort
		}
		// The step's end and what it implies are journaled in one write,
		// so a restart never finds a failure without its consequence.
		switch act {
		case onfailure.Retry:
			r.conclude(sr, Failed, err, func() { sr.Retrying = true })
			if d.Action == onfailure.Retry && d.Wait > 0 && !r.sleep(ctx, d.Wait) {
				return r.stopNow(ctx)
			}
			continue
		case onfailure.Ignore:
			r.conclude(sr, Ignored, err, nil)
			return stop{}
		case onfailure.MarkAsSuccess:
			r.conclude(sr, Succeeded, err, func() { sr.Marked = true })
			return stop{}
		case onfailure.MarkAsFailure:
			r.conclude(sr, Failed, err, func() {
				r.failedSoFar = true
				r.addPending(r.plan(s, nil, false, err))
			})
			r.rollback(s, nil, false, err, nil)
			return stop{}
		case onfailure.RollbackGroup:
			r.conclude(sr, Failed, err, func() { r.addPending(r.plan(s, g, true, err)) })
		case onfailure.RetryGroup:
			r.conclude(sr, Failed, err, func() { r.groups[g.Name].Retry = true })
		case groupFailed:
			r.conclude(sr, Failed, err, func() {
				gr := r.groups[g.Name]
				gr.Status, gr.Failure = Failed, errorInfo(err)
			})
		default:
			// Abort, Exclude, RollbackFlow: the flow stops.
			r.conclude(sr, Failed, err, func() {
				r.rec.Stop = &StopRecord{Action: act, Step: s.Name, Error: errorInfo(err)}
			})
		}
		return stop{action: act, failed: s, err: err, wait: d.Wait}
	}
}

// conclude ends a step's run with status and, in the same journal write,
// whatever then must hold (then runs under r.mu).
func (r *run) conclude(sr *StepRecord, status Status, err error, then func()) {
	r.mu.Lock()
	if then != nil {
		then()
	}
	r.mu.Unlock()
	r.setStep(sr, status, err)
}

// resumeState says how a step stands after a restart: done (it ended
// before), or the failure to handle first: AgentRestart for a step that was
// running, its recorded failure for one that was paused.
func (r *run) resumeState(sr *StepRecord) (error, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch sr.Status {
	case Running:
		sr.Restarts++
		msg := "the agent stopped while the step was running"
		guard := sr.Restarts > r.e.maxRestarts()
		if guard {
			msg = fmt.Sprintf("the step was interrupted by %d agent restarts; it is not run again (loop guard: at most %d)", sr.Restarts, r.e.maxRestarts())
		}
		if re, ok := r.e.opts.Runners[r.stepDef(sr.Name).Type()].(steps.Reentrant); ok && re.Reentrant() && !guard {
			// It continues where the restart interrupted it.
			sr.Reentry = true
			_ = r.saveLocked()
			return nil, false
		}
		err := onfailure.Errorf(onfailure.AgentRestart, "%s", msg)
		sr.Error = errorInfo(err)
		_ = r.saveLocked()
		return err, false
	case Paused:
		return infoError(sr.Error), false
	case Failed:
		if sr.Retrying {
			// It failed and was waiting to be retried.
			return infoError(sr.Error), false
		}
	}
	return nil, sr.Status.Done()
}

// next returns the failure a restart left to handle first (and forgets
// it), or else runs a new attempt of the step.
func (r *run) next(ctx context.Context, s *flow.Step, sr *StepRecord, pending *error) error {
	if err := *pending; err != nil {
		*pending = nil
		return err
	}
	return r.attempt(ctx, s, sr)
}

func (r *run) stopNow(ctx context.Context) stop {
	st, _ := r.cannotStart(ctx)
	if st.action == "" {
		st.action = onfailure.Abort
	}
	return st
}

func (r *run) markFailedSoFar() {
	r.mu.Lock()
	r.failedSoFar = true
	r.mu.Unlock()
}

func (r *run) groupRuns(g *flow.Group) int {
	if g == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.groups[g.Name].Runs
}

// sleep waits d unless ctx ends first.
func (r *run) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// attempt runs a step once: journals it as running, runs its runner with
// its timeout, keeps its log and outputs.
func (r *run) attempt(ctx context.Context, s *flow.Step, sr *StepRecord) error {
	ps := r.flowSteps[s.Name]
	stepCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if s.Timeout > 0 {
		var c context.CancelFunc
		stepCtx, c = context.WithTimeoutCause(stepCtx, s.Timeout,
			onfailure.Errorf(onfailure.Timeout, "step %q timed out after %s", s.Name, s.Timeout))
		defer c()
	}
	r.mu.Lock()
	if !sr.Reentry {
		sr.Attempts++
	}
	sr.Reentry = false
	r.rec.Seq++
	sr.Seq = r.rec.Seq
	now := r.now()
	if sr.StartedAt == nil {
		sr.StartedAt = &now
	}
	sr.Status, sr.Error, sr.Retrying = Running, nil, false
	r.running[s.Name] = cancel
	attemptNo := sr.Attempts
	undo := sr.Undo
	err := r.saveLocked()
	r.mu.Unlock()
	if err != nil {
		return &JournalError{Err: err}
	}
	r.log.Info("step started", "step", s.Name, "attempt", attemptNo)
	r.observe(Event{Type: EventStep, Step: s.Name, Group: sr.Group, Rollback: sr.Rollback, Status: Running, Attempt: attemptNo})

	env, err := r.env(s, ps, attemptNo, undo, sr)
	if err == nil {
		start := time.Now()
		err = r.e.opts.Runners[s.Type()].Run(stepCtx, s, env)
		elapsed := time.Since(start)
		if err != nil && stepCtx.Err() != nil {
			// The step stopped because its context ended: the cause, not
			// the runner's reading of it, says what kind of failure it is.
			cause := context.Cause(stepCtx)
			if k := onfailure.KindOf(cause); k != onfailure.KindOf(err) {
				err = &onfailure.Error{Kind: k, Err: err}
			}
		}
		if r.e.opts.Store != nil {
			_ = r.e.opts.Store.SaveLog(r.rec.ID, s.Name, attemptNo, env.Log.Bytes())
		}
		r.mu.Lock()
		sr.Elapsed += elapsed
		if len(env.Outputs) > 0 {
			if sr.Outputs == nil {
				sr.Outputs = map[string]string{}
			}
			maps.Copy(sr.Outputs, env.Outputs)
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	delete(r.running, s.Name)
	r.mu.Unlock()
	return err
}

// env builds the environment of a step attempt.
func (r *run) env(s *flow.Step, ps placedStep, attempt int, undo []byte, sr *StepRecord) (*steps.Env, error) {
	dir, err := workDir(r.e.opts.StateDir, r.rec.ID, s.Name)
	if err != nil {
		return nil, err
	}
	env := &steps.Env{
		Execution: r.rec.ID, Flow: r.f.Name, Step: s.Name, Attempt: attempt,
		DeviceID: r.rec.DeviceID, Root: r.f.Dir, WorkDir: dir,
		Log:     steps.NewLogBuffer(r.e.opts.LogCap),
		Logger:  r.log.With("step", s.Name, "attempt", attempt),
		Expand:  r.expand,
		Undo:    undo,
		Outputs: map[string]string{},
	}
	if ps.group != nil {
		env.Group = ps.group.Name
	}
	env.SaveUndo = func(data []byte) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		sr.Undo = append([]byte(nil), data...)
		if err := r.saveLocked(); err != nil {
			return &JournalError{Err: err}
		}
		return nil
	}
	return env, nil
}

// expand resolves ${{ }} expressions (spec 9).
func (r *run) expand(s string) (string, error) {
	return flow.Expand(s, func(ref flow.Ref) (string, error) {
		switch ref.Kind {
		case flow.RefVar:
			v, ok := r.rec.Vars[ref.Name]
			if !ok {
				return "", onfailure.Errorf(onfailure.Unknown, "variable %q is not set", ref.Name)
			}
			return v, nil
		case flow.RefDevice:
			return r.rec.DeviceID, nil
		case flow.RefLabel:
			v, ok := r.rec.Labels[ref.Name]
			if !ok {
				return "", onfailure.Errorf(onfailure.Unknown, "device has no label %q", ref.Name)
			}
			return v, nil
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		sr := r.steps[ref.Step]
		if sr == nil {
			return "", onfailure.Errorf(onfailure.Unknown, "no step %q", ref.Step)
		}
		v, ok := sr.Outputs[ref.Name]
		if !ok {
			return "", onfailure.Errorf(onfailure.Unknown, "step %q (%s) did not set output %q", ref.Step, sr.Status, ref.Name)
		}
		return v, nil
	})
}

// group runs a group, with RetryGroup and RollbackGroup handled here and
// the group's own failure passed to the flow's strategies.
func (r *run) group(ctx context.Context, g *flow.Group) stop {
	gr := r.groups[g.Name]
	r.mu.Lock()
	status, failure := gr.Status, gr.Failure
	r.mu.Unlock()
	resumed := status == Running
	if gr.Retry {
		// Resumed while waiting to run the group again.
		r.resetGroup(g)
		resumed = false
	}
	switch {
	case failure != nil:
		// Resumed with the group's failure still to be decided.
		next, retry := r.groupFailure(ctx, g, gr, stop{err: infoError(failure)})
		if !retry {
			return next
		}
		r.resetGroup(g)
	case status.Done():
		return stop{}
	case !resumed && !r.when(g.When):
		r.setGroup(gr, Skipped)
		return stop{}
	}
	for {
		r.mu.Lock()
		if !resumed {
			gr.Runs++
		}
		resumed = false
		gr.Status = Running
		_ = r.saveLocked()
		r.mu.Unlock()
		st := r.entries(ctx, g.Steps, g, g.Parallel)
		switch st.action {
		case "":
			status := Succeeded
			if r.groupHasFailed(g) {
				status = Failed
				r.markFailedSoFar()
			}
			r.setGroup(gr, status)
			return stop{}
		case onfailure.RetryGroup:
			r.resetGroup(g)
			if st.wait > 0 && !r.sleep(ctx, st.wait) {
				return r.stopNow(ctx)
			}
			continue
		case onfailure.RollbackGroup:
			ok := r.rollback(st.failed, g, true, st.err, func() { gr.Status, gr.Failure = RolledBack, errorInfo(st.err) })
			if r.root.Err() != nil {
				return stop{action: interrupted}
			}
			r.log.Info("group rolled back", "group", g.Name, "ok", ok)
		case groupFailed:
			// The failing step journaled the group's failure with its own.
		case aborted:
			r.setGroup(gr, Aborted)
			return st
		default:
			// Abort, RollbackFlow, Exclude, interrupted: the flow stops.
			if st.action != interrupted {
				r.setGroup(gr, Failed)
			}
			return st
		}
		// The group failed as a whole: the flow's strategies decide.
		next, retry := r.groupFailure(ctx, g, gr, st)
		if !retry {
			return next
		}
		r.resetGroup(g)
	}
}

// groupFailure applies the flow's strategies to a group's own failure. It
// returns how the flow goes on, or retry to run the group again.
func (r *run) groupFailure(ctx context.Context, g *flow.Group, gr *GroupRecord, st stop) (stop, bool) {
	kind := onfailure.KindOf(st.err)
	d := onfailure.Decide(kind, onfailure.Attempts{Step: r.groupRuns(g), Group: r.groupRuns(g)},
		onfailure.Level{Scope: onfailure.ScopeFlow, Strategies: strategies(r.f.FailureStrategies)})
	d = r.guided(d, kind, false)
	act := d.Action
	if act == onfailure.ManualIntervention {
		act = r.pause(ctx, g.Name, d.Manual, nil, st.err, d.Guided)
	}
	if r.flowCtx.Err() != nil && act != onfailure.RollbackFlow && act != interrupted {
		act = onfailure.Abort
	}
	switch act {
	case onfailure.Retry:
		r.decided(gr, Running)
		if d.Wait > 0 && !r.sleep(ctx, d.Wait) {
			return r.stopNow(ctx), false
		}
		return stop{}, true
	case onfailure.Ignore:
		r.decided(gr, Ignored)
		return stop{}, false
	case onfailure.MarkAsSuccess:
		r.decided(gr, Succeeded)
		return stop{}, false
	case onfailure.MarkAsFailure:
		r.markFailedSoFar()
		r.rollback(nil, nil, false, st.err, nil)
		r.decided(gr, Failed)
		return stop{}, false
	}
	if act != interrupted {
		r.decided(gr, Failed)
	}
	return stop{action: act, err: st.err}, false
}

// decided clears a group's pending failure once the flow's strategies
// have decided it, and gives the group the status the decision means
// (spec 5's table: Ignore → Ignored, MarkAsSuccess → Succeeded); a rolled
// back group keeps RolledBack whatever they decide.
func (r *run) decided(gr *GroupRecord, status Status) {
	r.mu.Lock()
	gr.Failure = nil
	if gr.Status != RolledBack {
		gr.Status = status
	}
	_ = r.saveLocked()
	r.mu.Unlock()
}

func (r *run) setGroup(gr *GroupRecord, status Status) {
	r.mu.Lock()
	gr.Status = status
	_ = r.saveLocked()
	r.mu.Unlock()
	r.log.Info("group finished", "group", gr.Name, "status", status)
}

func (r *run) groupHasFailed(g *flow.Group) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.rec.Steps {
		if s.Group == g.Name && s.Rollback == "" && s.Status == Failed {
			return true
		}
	}
	return false
}

// resetGroup makes a group's steps pending again before it runs again.
func (r *run) resetGroup(g *flow.Group) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.rec.Steps {
		if s.Group == g.Name && s.Rollback == "" {
			s.Status = Pending
		}
	}
	r.groups[g.Name].Retry = false
	_ = r.saveLocked()
}

// guided applies the execution's guided failure (if any) to d, the
// decision for a failure of kind k of a step (inGroup: inside a group) or
// of a group: a decision that would end the flow becomes a pause. Rollback
// steps never come here: rollback work does not pause.
func (r *run) guided(d onfailure.Decision, k onfailure.Kind, inGroup bool) onfailure.Decision {
	return r.e.opts.GuidedFailure.Apply(d, onfailure.Failure{
		Kind: k, InGroup: inGroup, RollbackOnFailure: r.f.RollbackOnFailure, OutOfTime: r.flowCtx.Err() != nil,
	})
}

// pause waits for guidance on a paused step or group (nil sr), up to the
// manual timeout, and returns the action to apply. guided says guided
// failure made the pause: it is journaled and reported as such, and the
// action returned is applied as it is (an Abort aborts; it does not pause
// again).
func (r *run) pause(ctx context.Context, name string, m *onfailure.ManualPolicy, sr *StepRecord, cause error, guided bool) onfailure.Action {
	ch := make(chan Guidance, 1)
	r.mu.Lock()
	deadline, ok := r.rec.Pauses[name]
	if !ok {
		deadline = r.now().Add(m.Timeout)
		if r.rec.Pauses == nil {
			r.rec.Pauses = map[string]time.Time{}
		}
		r.rec.Pauses[name] = deadline
	}
	if guided {
		if r.rec.GuidedPauses == nil {
			r.rec.GuidedPauses = map[string]bool{}
		}
		r.rec.GuidedPauses[name] = true
	}
	if sr != nil {
		sr.Status, sr.Error, sr.Retrying = Paused, errorInfo(cause), false
	}
	r.paused[name] = ch
	r.rec.Status = Paused
	_ = r.saveLocked()
	r.mu.Unlock()
	r.log.Warn("paused for guidance", "step", name, "timeout", m.Timeout, "onTimeout", m.OnTimeout, "guided", guided)
	pev := Event{Type: EventPause, Status: Paused, Error: errorInfo(cause), Until: deadline, Guided: guided}
	if sr != nil {
		pev.Step, pev.Group = name, sr.Group
	} else {
		pev.Group = name
	}
	r.observe(pev)

	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	var act onfailure.Action
	var gd Guidance
	select {
	case gd = <-ch:
		act = gd.Action
	case <-t.C:
		act = m.OnTimeout
		gd = Guidance{Step: name, Action: act, By: "agent", Note: fmt.Sprintf("no guidance within %s", m.Timeout)}
		if g := r.e.opts.GuidedFailure; guided && g != nil && g.OnTimeout != "" && g.OnTimeout != act {
			gd.Note += fmt.Sprintf(" (guided failure's onTimeout %s cannot apply here, so %s)", g.OnTimeout, act)
		}
	case <-ctx.Done():
		act = interrupted
		if r.root.Err() == nil {
			act = onfailure.Abort
		}
	}
	r.mu.Lock()
	delete(r.paused, name)
	if act != interrupted {
		delete(r.rec.Pauses, name)
		delete(r.rec.GuidedPauses, name)
	}
	if len(r.paused) == 0 {
		r.rec.Status = Running
	}
	if gd.Action != "" {
		r.rec.Guidance = append(r.rec.Guidance, GuidanceResult{Step: name, Action: gd.Action, By: gd.By, At: r.now(), Note: gd.Note, Guided: guided})
	}
	_ = r.saveLocked()
	r.mu.Unlock()
	if act != interrupted {
		rev := Event{Type: EventResume, Step: pev.Step, Group: pev.Group, Status: Running, Action: string(act), By: gd.By, Guided: guided}
		r.observe(rev)
	}
	if act == onfailure.Exclude {
		return onfailure.Abort
	}
	return act
}

func (r *run) guide(g Guidance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.paused) == 0 {
		return errors.New("nothing is paused")
	}
	name := g.Step
	if name == "" {
		if len(r.paused) > 1 {
			return errors.New("several steps are paused; name one")
		}
		for n := range r.paused {
			name = n
		}
	}
	ch, ok := r.paused[name]
	if !ok {
		return fmt.Errorf("%q is not paused", name)
	}
	ps, isStep := r.flowSteps[name]
	switch {
	case !g.Action.Guidance():
		return fmt.Errorf("%q is not a guidance action (Retry, Ignore, MarkAsSuccess, MarkAsFailure, Abort, RollbackGroup, RollbackFlow, Exclude)", g.Action)
	case g.Action == onfailure.RollbackGroup && (!isStep || ps.group == nil):
		return fmt.Errorf("RollbackGroup: %q is not in a group", name)
	case g.Action == onfailure.RollbackFlow && !r.f.RollbackOnFailure:
		return errors.New("RollbackFlow: the flow does not set rollbackOnFailure: true")
	}
	g.Step = name
	select {
	case ch <- g:
		delete(r.paused, name)
		return nil
	default:
		return fmt.Errorf("%q already has guidance", name)
	}
}

func (r *run) markFailed(step, by, note string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.running) == 0 {
		return errors.New("no step is running")
	}
	var names []string
	for n := range r.running {
		if step == "" || n == step {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return fmt.Errorf("step %q is not running", step)
	}
	for _, n := range names {
		r.running[n](onfailure.Errorf(onfailure.UserMarkedFailure, "marked as failed by %s", by))
		r.rec.Guidance = append(r.rec.Guidance, GuidanceResult{Step: n, Action: "MarkFailed", By: by, At: r.now(), Note: note})
	}
	return r.saveLocked()
}

// rollback runs the rollback work for a failure of failed (nil: a group
// failed) within g (nil: the whole flow): the planned rollback actions,
// then, with withSteps, the group's or flow's rollback steps. It is
// journaled as pending while it runs, and idempotent, so a restart can
// finish it. then, if set, updates the record in the same write that ends
// the work. It reports whether everything succeeded.
func (r *run) rollback(failed *flow.Step, g *flow.Group, withSteps bool, cause error, then func()) bool {
	p := r.plan(failed, g, withSteps, cause)
	same := func(q PlanRecord) bool { return q.same(p) }
	r.mu.Lock()
	if r.addPending(p) {
		_ = r.saveLocked()
	}
	r.mu.Unlock()
	ok := r.runPlan(failed, g)
	if withSteps {
		list := r.f.Rollback
		if g != nil {
			list = g.Rollback
		}
		ok = r.rollbackSteps(list) && ok
	}
	if r.root.Err() != nil {
		return ok // interrupted: stays pending
	}
	r.mu.Lock()
	r.rec.Pending = slices.DeleteFunc(r.rec.Pending, same)
	if then != nil {
		then()
	}
	_ = r.saveLocked()
	r.mu.Unlock()
	return ok
}

// plan describes rollback work for the journal.
func (r *run) plan(failed *flow.Step, g *flow.Group, withSteps bool, cause error) PlanRecord {
	p := PlanRecord{RollbackSteps: withSteps, Error: errorInfo(cause)}
	if failed != nil {
		p.Step = failed.Name
	}
	if g != nil {
		p.Group = g.Name
	}
	return p
}

// addPending adds p to the pending rollback work unless it is there
// already, and says whether it added it. Callers hold r.mu.
func (r *run) addPending(p PlanRecord) bool {
	if slices.ContainsFunc(r.rec.Pending, p.same) {
		return false
	}
	r.rec.Pending = append(r.rec.Pending, p)
	return true
}

// runPlan runs the rollback actions planned for a failure of failed (nil:
// a group failed) within g (nil: the whole flow). It reports whether every
// action succeeded.
func (r *run) runPlan(failed *flow.Step, g *flow.Group) bool {
	started, done := r.planInputs(g)
	ok := true
	for _, it := range rollback.Plan(failed, started, done) {
		if r.root.Err() != nil {
			// Interrupted: what is left runs after the restart; journaling
			// it as begun now would have the restart count it as cut off.
			return false
		}
		if !r.runAction(it) {
			ok = false
		}
	}
	return ok
}

// planInputs returns what a rollback plan within g (nil: the whole flow)
// starts from: the steps that started and ended, and which actions are
// done already.
func (r *run) planInputs(g *flow.Group) ([]rollback.Started, func(string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var started []rollback.Started
	for _, sr := range r.rec.Steps {
		if sr.Rollback != "" || sr.Seq == 0 || sr.Status == Running || sr.Status == Paused {
			continue
		}
		if g != nil && sr.Group != g.Name {
			continue
		}
		started = append(started, rollback.Started{Step: r.flowSteps[sr.Name].step, Seq: sr.Seq})
	}
	done := map[string]bool{}
	for _, a := range r.rec.Actions {
		// A built-in undo a restart cut off is run again: it is
		// idempotent, and restores what the journal recorded.
		if a.Status.Done() {
			done[a.Key] = true
		}
	}
	return started, func(k string) bool { return done[k] }
}

// rollbackCtx is the context rollback work runs in: the agent's lifetime,
// not the flow's timeout or a cancelled scope.
func (r *run) rollbackCtx() context.Context { return r.root }

// beginAction journals an action as Running before it acts and returns its
// index. An action already journaled under the same key (one a restart cut
// off) keeps its place.
func (r *run) beginAction(a ActionRecord) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	a.Status = Running
	i := slices.IndexFunc(r.rec.Actions, func(b ActionRecord) bool { return b.Key == a.Key })
	if i < 0 {
		r.rec.Actions = append(r.rec.Actions, a)
		i = len(r.rec.Actions) - 1
	} else {
		r.rec.Actions[i] = a
	}
	_ = r.saveLocked()
	return i
}

func (r *run) endAction(i int, status Status, err error) {
	r.mu.Lock()
	a := &r.rec.Actions[i]
	a.Status = status
	a.Error = errorInfo(err)
	ev := Event{Type: EventAction, Step: a.Step, Action: a.Action, Trigger: a.Trigger, Status: status, Error: a.Error}
	_ = r.saveLocked()
	r.mu.Unlock()
	if err != nil {
		r.log.Warn("rollback action failed", "step", ev.Step, "action", ev.Action, "error", err)
	}
	r.observe(ev)
}

// runAction runs one onFailure action, journaled before it acts.
func (r *run) runAction(it rollback.Item) bool {
	i := r.beginAction(ActionRecord{
		ActionResult: ActionResult{Step: it.Step.Name, Action: it.Action.Action, Trigger: string(it.Trigger)},
		Key:          it.Key(),
	})
	ctx := r.rollbackCtx()
	r.mu.Lock()
	sr := r.steps[it.Step.Name]
	undo := sr.Undo
	attempt := sr.Attempts
	r.mu.Unlock()
	env, err := r.env(it.Step, r.flowSteps[it.Step.Name], attempt, undo, sr)
	if err == nil {
		switch it.Action.Action {
		case flow.ActionCommand:
			err = r.e.opts.Commands.RunCommand(ctx, it.Action.Command, env)
		case flow.ActionScript:
			err = r.e.opts.Commands.RunScript(ctx, it.Action.Script, env)
		default:
			if undo != nil {
				err = r.e.opts.Runners[it.Step.Type()].(steps.Undoer).Undo(ctx, it.Step, env, undo)
			}
		}
		if r.e.opts.Store != nil {
			_ = r.e.opts.Store.SaveLog(r.rec.ID, it.Key(), 1, env.Log.Bytes())
		}
	}
	if ctx.Err() != nil {
		// Interrupted by a shutdown: the journal keeps it Running, as a
		// crash would, and a restart decides what to do with it.
		return false
	}
	status := Succeeded
	if err != nil {
		status = Failed
	}
	r.endAction(i, status, err)
	return err == nil
}

// rollbackSteps runs a flow's or group's rollback steps as a sequence: a
// failure skips the rest unless they say when: always (or onFailure). It
// reports whether none failed.
func (r *run) rollbackSteps(list []*flow.Step) bool {
	failed := false
	ctx := r.rollbackCtx()
	for _, s := range list {
		if ctx.Err() != nil {
			return false // interrupted: the rest stays to do after a restart
		}
		sr := r.steps[s.Name]
		key := "rollbackStep:" + s.Name
		pending, done := r.resumeState(sr)
		if done {
			// It ended before a restart: its action ends with it.
			r.mu.Lock()
			status, info := sr.Status, sr.Error
			r.mu.Unlock()
			if i := r.actionIndex(key); i >= 0 {
				r.endAction(i, status, infoErrorOrNil(info))
			}
			failed = failed || status == Failed
			continue
		}
		w := s.When
		run := pending != nil || w == flow.Always || (w == flow.OnFailure && failed) || ((w == "" || w == flow.OnSuccess) && !failed)
		i := r.beginAction(ActionRecord{ActionResult: ActionResult{Step: s.Name, Action: "rollbackStep"}, Key: key})
		status, err := Skipped, error(nil)
		if run {
			status, err = r.rollbackStep(ctx, s, sr, pending)
			if ctx.Err() != nil {
				return false
			}
		}
		failed = failed || status == Failed
		// The step and its action end in one journal write.
		r.conclude(sr, status, err, func() {
			a := &r.rec.Actions[i]
			a.Status, a.Error = status, errorInfo(err)
		})
		r.observe(Event{Type: EventAction, Step: s.Name, Action: "rollbackStep", Status: status, Error: errorInfo(err)})
	}
	return !failed
}

// actionIndex returns the index of the journaled action with key, or -1.
func (r *run) actionIndex(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.IndexFunc(r.rec.Actions, func(a ActionRecord) bool { return a.Key == key })
}

func infoErrorOrNil(info *ErrorInfo) error {
	if info == nil {
		return nil
	}
	return infoError(info)
}

// rollbackStep runs a rollback step with its own Retry, Ignore and
// MarkAsSuccess strategies; any other outcome is a failure.
func (r *run) rollbackStep(ctx context.Context, s *flow.Step, sr *StepRecord, pending error) (Status, error) {
	for {
		err := r.next(ctx, s, sr, &pending)
		if err == nil {
			return Succeeded, nil
		}
		if ctx.Err() != nil {
			return Failed, err
		}
		d := onfailure.Decide(onfailure.KindOf(err), onfailure.Attempts{Step: sr.Attempts},
			onfailure.Level{Scope: onfailure.ScopeStep, Strategies: strategies(s.FailureStrategies)})
		switch d.Action {
		case onfailure.Retry:
			if !r.sleep(ctx, d.Wait) {
				return Failed, err
			}
			continue
		case onfailure.Ignore:
			return Ignored, err
		case onfailure.MarkAsSuccess:
			return Succeeded, err
		}
		return Failed, err
	}
}
