package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
)

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
	vars        map[string]string
	failedSoFar bool
	running     map[string]context.CancelCauseFunc
	paused      map[string]chan Guidance
	saveErr     error
}

func newRun(e *Engine, f *flow.Flow) *run {
	now := e.opts.Now()
	r := &run{
		e: e, f: f,
		steps:     map[string]*StepRecord{},
		groups:    map[string]*GroupRecord{},
		flowSteps: map[string]placedStep{},
		running:   map[string]context.CancelCauseFunc{},
		paused:    map[string]chan Guidance{},
		vars:      map[string]string{},
	}
	maps.Copy(r.vars, f.Vars)
	maps.Copy(r.vars, e.opts.Vars)
	r.rec = &Record{
		ID: newID(now), Flow: f.Name, File: f.File, Dir: f.Dir, Source: f.Source,
		DeviceID: e.opts.DeviceID, Labels: e.opts.Labels, Vars: r.vars,
		Status: Running, StartedAt: now,
		Actions: []ActionRecord{}, Guidance: []GuidanceResult{},
	}
	for _, ps := range allSteps(f) {
		sr := &StepRecord{Name: ps.step.Name, Rollback: ps.rollback, Status: Pending}
		if ps.group != nil {
			sr.Group = ps.group.Name
		}
		r.rec.Steps = append(r.rec.Steps, sr)
		r.steps[sr.Name] = sr
		r.flowSteps[sr.Name] = ps
	}
	for _, g := range allGroups(f) {
		gr := &GroupRecord{Name: g.Name, Status: Pending}
		r.rec.Groups = append(r.rec.Groups, gr)
		r.groups[g.Name] = gr
	}
	r.log = e.log.With("execution", r.rec.ID, "flow", f.Name)
	return r
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
		r.e.opts.Observe(ev)
	}
}

func (r *run) now() time.Time { return r.e.opts.Now() }

func (r *run) execute(ctx context.Context) (*Result, error) {
	r.root = ctx
	flowCtx := ctx
	if r.f.Timeout > 0 {
		var cancel context.CancelFunc
		flowCtx, cancel = context.WithTimeoutCause(ctx, r.f.Timeout,
			onfailure.Errorf(onfailure.Timeout, "flow timed out after %s", r.f.Timeout))
		defer cancel()
	}
	r.flowCtx = flowCtx
	r.log.Info("flow started", "device", r.e.opts.DeviceID)
	if err := r.save(); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}

	st := r.entries(flowCtx, r.f.Steps, nil, false)
	if st.action == interrupted {
		return r.interrupted()
	}
	status := Succeeded
	switch st.action {
	case "":
		if r.failed() {
			status = Failed
		}
	case onfailure.Abort, onfailure.Exclude, groupFailed:
		r.runPlan(st.failed, nil)
		status = Failed
	case onfailure.RollbackFlow:
		ok := r.runPlan(st.failed, nil)
		ok = r.rollbackSteps(r.f.Rollback) && ok
		status = RolledBack
		if !ok {
			status = RollbackFailed
		}
	}
	if r.root.Err() != nil {
		return r.interrupted()
	}
	return r.finish(status)
}

func (r *run) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failedSoFar
}

func (r *run) interrupted() (*Result, error) {
	r.mu.Lock()
	res := r.rec.Result()
	r.mu.Unlock()
	r.log.Warn("flow interrupted")
	return res, ErrInterrupted
}

func (r *run) finish(status Status) (*Result, error) {
	r.mu.Lock()
	now := r.now()
	for _, s := range r.rec.Steps {
		if s.Status == Pending && s.Rollback == "" {
			s.Status = Skipped
		}
	}
	for _, g := range r.rec.Groups {
		if g.Status == Pending {
			g.Status = Skipped
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
	ev := Event{Type: EventStep, Step: sr.Name, Group: sr.Group, Status: status, Attempt: sr.Attempts, Error: sr.Error, Elapsed: sr.Elapsed}
	r.mu.Unlock()
	if status.Done() {
		r.log.Info("step finished", "step", sr.Name, "status", status, "attempt", sr.Attempts)
	}
	r.observe(ev)
}

// step runs one main-sequence step to its end, applying its strategies.
func (r *run) step(ctx context.Context, s *flow.Step, g *flow.Group) stop {
	sr := r.steps[s.Name]
	if !r.when(effectiveWhen(s, g)) {
		r.setStep(sr, Skipped, nil)
		return stop{}
	}
	for {
		err := r.attempt(ctx, s, sr)
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
		if errors.Is(context.Cause(ctx), errScopeStopped) && r.flowCtx.Err() == nil {
			r.setStep(sr, Aborted, errScopeStopped)
			return stop{action: aborted}
		}
		kind := onfailure.KindOf(err)
		d := onfailure.Decide(kind, onfailure.Attempts{Step: sr.Attempts, Group: r.groupRuns(g)}, r.levels(s, g)...)
		act := d.Action
		r.log.Info("step failed", "step", s.Name, "attempt", sr.Attempts, "kind", kind, "error", err, "action", act, "scope", d.Scope)
		if d.Exhausted && d.Strategy.Action == onfailure.RetryGroup && d.Strategy.Retry.OnExhausted == "" {
			// The group ran out of runs: its failure is the flow's to handle.
			act = groupFailed
		}
		if act == onfailure.ManualIntervention {
			r.setStep(sr, Failed, err)
			act = r.pause(ctx, s.Name, d.Strategy.Manual, sr)
			if act == interrupted {
				return stop{action: interrupted}
			}
		}
		if r.flowCtx.Err() != nil && act != onfailure.RollbackFlow {
			// Out of time: nothing more may run but a rollback.
			act = onfailure.Abort
		}
		switch act {
		case onfailure.Retry:
			r.setStep(sr, Failed, err)
			if d.Action == onfailure.Retry && d.Wait > 0 && !r.sleep(ctx, d.Wait) {
				return r.stopNow(ctx)
			}
			continue
		case onfailure.Ignore:
			r.setStep(sr, Ignored, err)
			return stop{}
		case onfailure.MarkAsSuccess:
			r.mu.Lock()
			sr.Marked = true
			r.mu.Unlock()
			r.setStep(sr, Succeeded, err)
			return stop{}
		case onfailure.MarkAsFailure:
			r.setStep(sr, Failed, err)
			r.markFailedSoFar()
			r.runPlan(s, nil)
			return stop{}
		}
		// Abort, Exclude, RollbackFlow, RollbackGroup, RetryGroup and
		// groupFailed end the step and go to the enclosing scope.
		r.setStep(sr, Failed, err)
		return stop{action: act, failed: s, err: err, wait: d.Wait}
	}
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
	sr.Attempts++
	r.rec.Seq++
	sr.Seq = r.rec.Seq
	now := r.now()
	if sr.StartedAt == nil {
		sr.StartedAt = &now
	}
	sr.Status = Running
	sr.Error = nil
	r.running[s.Name] = cancel
	attemptNo := sr.Attempts
	undo := sr.Undo
	err := r.saveLocked()
	r.mu.Unlock()
	if err != nil {
		return onfailure.Wrap("journal", err)
	}
	r.log.Info("step started", "step", s.Name, "attempt", attemptNo)
	r.observe(Event{Type: EventStep, Step: s.Name, Group: sr.Group, Status: Running, Attempt: attemptNo})

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
		DeviceID: r.e.opts.DeviceID, Root: r.f.Dir, WorkDir: dir,
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
		return r.saveLocked()
	}
	return env, nil
}

// expand resolves ${{ }} expressions (spec 9).
func (r *run) expand(s string) (string, error) {
	return flow.Expand(s, func(ref flow.Ref) (string, error) {
		switch ref.Kind {
		case flow.RefVar:
			v, ok := r.vars[ref.Name]
			if !ok {
				return "", onfailure.Errorf(onfailure.Unknown, "variable %q is not set", ref.Name)
			}
			return v, nil
		case flow.RefDevice:
			return r.e.opts.DeviceID, nil
		case flow.RefLabel:
			v, ok := r.e.opts.Labels[ref.Name]
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
	if !r.when(g.When) {
		r.setGroup(gr, Skipped)
		return stop{}
	}
	for {
		r.mu.Lock()
		gr.Runs++
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
			ok := r.runPlan(st.failed, g)
			ok = r.rollbackSteps(g.Rollback) && ok
			r.setGroup(gr, RolledBack)
			if !ok {
				r.log.Warn("group rollback failed", "group", g.Name)
			}
		case groupFailed:
			r.setGroup(gr, Failed)
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
	act := d.Action
	if act == onfailure.ManualIntervention {
		act = r.pause(ctx, g.Name, d.Strategy.Manual, nil)
	}
	if r.flowCtx.Err() != nil && act != onfailure.RollbackFlow && act != interrupted {
		act = onfailure.Abort
	}
	switch act {
	case onfailure.Retry:
		if d.Wait > 0 && !r.sleep(ctx, d.Wait) {
			return r.stopNow(ctx), false
		}
		return stop{}, true
	case onfailure.Ignore, onfailure.MarkAsSuccess:
		return stop{}, false
	case onfailure.MarkAsFailure:
		r.markFailedSoFar()
		r.runPlan(nil, nil)
		if gr.Status != RolledBack {
			r.setGroup(gr, Failed)
		}
		return stop{}, false
	}
	return stop{action: act, err: st.err}, false
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
}

// pause waits for guidance on a paused step or group (nil sr), up to the
// manual timeout, and returns the action to apply.
func (r *run) pause(ctx context.Context, name string, m *onfailure.ManualPolicy, sr *StepRecord) onfailure.Action {
	ch := make(chan Guidance, 1)
	deadline := r.now().Add(m.Timeout)
	r.mu.Lock()
	if sr != nil {
		sr.Status = Paused
	}
	r.paused[name] = ch
	r.rec.Status = Paused
	_ = r.saveLocked()
	r.mu.Unlock()
	r.log.Warn("paused for guidance", "step", name, "timeout", m.Timeout, "onTimeout", m.OnTimeout)
	r.observe(Event{Type: EventPause, Step: name, Status: Paused})

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
	case <-ctx.Done():
		act = interrupted
		if r.root.Err() == nil {
			act = onfailure.Abort
		}
	}
	r.mu.Lock()
	delete(r.paused, name)
	if len(r.paused) == 0 {
		r.rec.Status = Running
	}
	if gd.Action != "" {
		r.rec.Guidance = append(r.rec.Guidance, GuidanceResult{Step: name, Action: gd.Action, By: gd.By, At: r.now(), Note: gd.Note})
	}
	_ = r.saveLocked()
	r.mu.Unlock()
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
	switch g.Action {
	case onfailure.Retry, onfailure.Ignore, onfailure.MarkAsSuccess, onfailure.MarkAsFailure, onfailure.Abort, onfailure.Exclude:
	case onfailure.RollbackGroup:
		if !isStep || ps.group == nil {
			return fmt.Errorf("RollbackGroup: %q is not in a group", name)
		}
	case onfailure.RollbackFlow:
		if !r.f.RollbackOnFailure {
			return errors.New("RollbackFlow: the flow does not set rollbackOnFailure: true")
		}
	default:
		return fmt.Errorf("%q is not a guidance action (Retry, Ignore, MarkAsSuccess, MarkAsFailure, Abort, RollbackGroup, RollbackFlow, Exclude)", g.Action)
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

// runPlan runs the rollback actions planned for a failure of failed (nil:
// a group failed) within g (nil: the whole flow). It reports whether every
// action succeeded.
func (r *run) runPlan(failed *flow.Step, g *flow.Group) bool {
	r.mu.Lock()
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
		if a.Key != "" {
			done[a.Key] = true
		}
	}
	r.mu.Unlock()
	ok := true
	for _, it := range rollback.Plan(failed, started, func(k string) bool { return done[k] }) {
		if !r.runAction(it) {
			ok = false
		}
	}
	return ok
}

// rollbackCtx is the context rollback work runs in: the agent's lifetime,
// not the flow's timeout or a cancelled scope.
func (r *run) rollbackCtx() context.Context { return r.root }

func (r *run) beginAction(a ActionRecord) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	a.Status = Running
	r.rec.Actions = append(r.rec.Actions, a)
	_ = r.saveLocked()
	return len(r.rec.Actions) - 1
}

func (r *run) endAction(i int, status Status, err error) {
	r.mu.Lock()
	a := &r.rec.Actions[i]
	a.Status = status
	a.Error = errorInfo(err)
	ev := Event{Type: EventAction, Step: a.Step, Action: a.Action, Status: status, Error: a.Error}
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
		w := s.When
		run := w == flow.Always || (w == flow.OnFailure && failed) || ((w == "" || w == flow.OnSuccess) && !failed)
		sr := r.steps[s.Name]
		i := r.beginAction(ActionRecord{ActionResult: ActionResult{Step: s.Name, Action: "rollbackStep"}})
		if !run || ctx.Err() != nil {
			r.setStep(sr, Skipped, nil)
			r.endAction(i, Skipped, nil)
			continue
		}
		status, err := r.rollbackStep(ctx, s, sr)
		if status == Failed {
			failed = true
		}
		r.setStep(sr, status, err)
		r.endAction(i, status, err)
	}
	return !failed
}

// rollbackStep runs a rollback step with its own Retry, Ignore and
// MarkAsSuccess strategies; any other outcome is a failure.
func (r *run) rollbackStep(ctx context.Context, s *flow.Step, sr *StepRecord) (Status, error) {
	for {
		err := r.attempt(ctx, s, sr)
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
