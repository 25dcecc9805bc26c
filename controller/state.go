package controller

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// runFinished reports whether a device run status is final: anything but
// Waiting, Pending, Queued, Running and Paused.
func runFinished(status string) bool {
	switch status {
	case api.DeviceWaiting, api.DevicePending, api.DeviceQueued, string(transport.StatusRunning), string(transport.StatusPaused):
		return false
	}
	return true
}

// inFlight reports whether a run was dispatched and has not finished.
func inFlight(status string) bool {
	return status != api.DeviceWaiting && !runFinished(status)
}

// runFailed reports whether a final run status is a failure: anything
// final but Succeeded, Excluded, Cancelled and Skipped.
func runFailed(status string) bool {
	switch status {
	case string(transport.StatusSucceeded), api.DeviceExcluded, api.DeviceCancelled, api.DeviceSkipped:
		return false
	}
	return runFinished(status)
}

// failureKind is the error kind a failed run counts with.
func failureKind(status string, e *transport.ErrorInfo) onfailure.Kind {
	switch {
	case status == api.DeviceTimedOut:
		return onfailure.Timeout
	case e != nil && e.Type != "":
		return e.Type
	}
	return onfailure.Unknown
}

// deploymentFinal reports whether a deployment status is final.
func deploymentFinal(status string) bool {
	switch status {
	case api.DeploymentSucceeded, api.DeploymentFailed, api.DeploymentCancelled, api.DeploymentAborted, api.DeploymentRolledBack:
		return true
	}
	return false
}

// notStarted reports whether a run has no device report that it started:
// Pending, Queued, or Cancelled by the controller.
func notStarted(status string) bool {
	return status == api.DevicePending || status == api.DeviceQueued || status == api.DeviceCancelled
}

// applyEvent applies an agent event to the run and reports whether it
// changed. It is pure: the caller stores the result. See the package doc
// for the state machine.
func applyEvent(run *api.DeviceRun, m *transport.Message, now time.Time) bool {
	if run.Status == api.DeviceRollingBack {
		return applyRollbackEvent(run, m, now)
	}
	if (runFinished(run.Status) && run.Status != api.DeviceCancelled) || run.Status == api.DeviceWaiting {
		return false
	}
	before := snapshot(run)
	start := func(execution string) {
		if notStarted(run.Status) {
			run.Status = string(transport.StatusRunning)
			run.Error = nil
		}
		if run.Execution == "" {
			run.Execution = execution
		}
	}
	switch b := m.Body.(type) {
	case *transport.Accepted:
		start(b.Execution)
	case *transport.Queued:
		if run.Status == api.DevicePending || run.Status == api.DeviceCancelled {
			run.Status = api.DeviceQueued
		}
	case *transport.Rejected:
		switch {
		case run.Status == api.DeviceCancelled && b.Error != nil && b.Error.Type == onfailure.UserMarkedFailure:
			// The agent confirms the cancel: it dropped the dispatch
			// before running it ("cancelled before it started").
			run.Error = b.Error
		case notStarted(run.Status):
			run.Status = api.DeviceRejected
			run.Error = b.Error
		}
	case *transport.StepStarted:
		start(b.Execution)
		s := step(run, b.Step, b.Rollback)
		s.Group, s.Status, s.Attempt = b.Group, string(transport.StatusRunning), b.Attempt
	case *transport.StepFinished:
		start(b.Execution)
		s := step(run, b.Step, b.Rollback)
		s.Group, s.Status, s.Attempt, s.Error, s.DurationMS = b.Group, string(b.Status), b.Attempt, b.Error, b.DurationMS
	case *transport.RollbackAction:
		start(b.Execution)
		run.RollbackActions = append(run.RollbackActions, api.RollbackActionRun{
			Step: b.Step, Action: b.Action, Trigger: b.Trigger, Status: string(b.Status), Error: b.Error,
		})
	case *transport.Paused:
		start(b.Execution)
		run.Status = string(transport.StatusPaused)
		if b.Step != "" {
			s := step(run, b.Step, "")
			s.Status, s.Error = string(transport.StatusPaused), b.Error
			if b.Group != "" {
				s.Group = b.Group
			}
		}
		p := &api.RunPause{Step: b.Step, Group: b.Group, Error: b.Error, Since: now, Until: b.Until}
		if old := run.Pause; old != nil && samePause(old, p) {
			p.Since = old.Since
		}
		run.Pause = p
	case *transport.Resumed:
		start(b.Execution)
		run.Status = string(transport.StatusRunning)
		if b.Step != "" {
			if s := findStep(run, b.Step, ""); s != nil && s.Status == string(transport.StatusPaused) {
				s.Status = string(transport.StatusRunning)
			}
		}
	case *transport.FlowFinished:
		start(b.Execution)
		run.Status, run.Error = string(b.Status), b.Error
	default:
		return false
	}
	if run.Status != string(transport.StatusPaused) {
		run.Pause = nil
	}
	if equalRuns(before, run) {
		return false
	}
	run.Updated = now
	return true
}

// applyRollbackEvent applies an agent event to a run that is rolling back
// on abort (RollingBack): the rollback's actions and rollback steps fill
// the run, and rolled-back ends it RolledBack or RollbackFailed (also when
// the agent refused it: status Failed, Refused). Any other event changes
// nothing. It reports whether the run changed.
func applyRollbackEvent(run *api.DeviceRun, m *transport.Message, now time.Time) bool {
	before := snapshot(run)
	switch b := m.Body.(type) {
	case *transport.RollbackAction:
		run.RollbackActions = append(run.RollbackActions, api.RollbackActionRun{
			Step: b.Step, Action: b.Action, Trigger: b.Trigger, Status: string(b.Status), Error: b.Error,
		})
	case *transport.StepStarted:
		if b.Rollback == "" {
			return false
		}
		s := step(run, b.Step, b.Rollback)
		s.Group, s.Status, s.Attempt = b.Group, string(transport.StatusRunning), b.Attempt
	case *transport.StepFinished:
		if b.Rollback == "" {
			return false
		}
		s := step(run, b.Step, b.Rollback)
		s.Group, s.Status, s.Attempt, s.Error, s.DurationMS = b.Group, string(b.Status), b.Attempt, b.Error, b.DurationMS
	case *transport.RolledBack:
		status := b.Status
		rb := api.RunRollback{}
		if run.Rollback != nil {
			rb = *run.Rollback
		}
		if status == transport.StatusFailed {
			// The agent refused it and ran nothing.
			status, rb.Refused = transport.StatusRollbackFailed, true
		}
		t := now
		rb.Finished = &t
		run.Status, run.Error, run.Rollback = string(status), b.Error, &rb
	default:
		return false
	}
	if equalRuns(before, run) {
		return false
	}
	run.Updated = now
	return true
}

// step returns the run's step named name (of rollback, "" for a forward
// step), appending it when it is new.
func step(run *api.DeviceRun, name, rollback string) *api.StepRun {
	if s := findStep(run, name, rollback); s != nil {
		return s
	}
	run.Steps = append(run.Steps, api.StepRun{Name: name, Rollback: rollback})
	return &run.Steps[len(run.Steps)-1]
}

func findStep(run *api.DeviceRun, name, rollback string) *api.StepRun {
	for i := range run.Steps {
		if run.Steps[i].Name == name && run.Steps[i].Rollback == rollback {
			return &run.Steps[i]
		}
	}
	return nil
}

// snapshot copies what applyEvent may change, deeply enough to compare.
func snapshot(run *api.DeviceRun) api.DeviceRun {
	c := *run
	c.Steps = append([]api.StepRun(nil), run.Steps...)
	c.RollbackActions = append([]api.RollbackActionRun(nil), run.RollbackActions...)
	return c
}

func equalRuns(a api.DeviceRun, b *api.DeviceRun) bool {
	if a.Status != b.Status || a.Execution != b.Execution || !equalError(a.Error, b.Error) ||
		len(a.Steps) != len(b.Steps) || len(a.RollbackActions) != len(b.RollbackActions) {
		return false
	}
	if (a.Pause == nil) != (b.Pause == nil) || (a.Pause != nil && (!samePause(a.Pause, b.Pause) || !a.Pause.Since.Equal(b.Pause.Since))) {
		return false
	}
	for i := range a.Steps {
		x, y := a.Steps[i], b.Steps[i]
		if x.Name != y.Name || x.Group != y.Group || x.Rollback != y.Rollback || x.Status != y.Status ||
			x.Attempt != y.Attempt || x.DurationMS != y.DurationMS || !equalError(x.Error, y.Error) {
			return false
		}
	}
	return true
}

// samePause reports whether two pauses are the same wait (Since aside).
func samePause(a, b *api.RunPause) bool {
	return a.Step == b.Step && a.Group == b.Group && equalError(a.Error, b.Error) &&
		(a.Until == nil) == (b.Until == nil) && (a.Until == nil || a.Until.Equal(*b.Until))
}

func equalError(a, b *transport.ErrorInfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// setRunStatus moves a run to status and keeps the deployment's counts.
func setRunStatus(d *store.Deployment, run *api.DeviceRun, status string) {
	setRun(d, run, status, run.Error)
}

// setRun moves a run to status with the error e, and keeps the
// deployment's counts.
func setRun(d *store.Deployment, run *api.DeviceRun, status string, e *transport.ErrorInfo) {
	old, oldErr := run.Status, run.Error
	run.Status, run.Error = status, e
	moved(d, run, old, oldErr)
}

// moved records that run went from the status old (with the error
// oldErr) to its status now: the deployment's counts, its wave's counts
// and the abort threshold's tally follow.
func moved(d *store.Deployment, run *api.DeviceRun, old string, oldErr *transport.ErrorInfo) {
	if old != run.Status {
		count(d, old, -1)
		count(d, run.Status, +1)
		if run.Wave >= 1 && run.Wave <= len(d.Waves) {
			w := &d.Waves[run.Wave-1]
			w.Counts = countIn(w.Counts, old, -1)
			w.Counts = countIn(w.Counts, run.Status, +1)
		}
	}
	if run.Rollback != nil {
		// A Succeeded run rolled back on abort: it was judged as
		// Succeeded, and rolling it back does not change that.
		return
	}
	f0, x0 := judge(d, old, oldErr)
	f1, x1 := judge(d, run.Status, run.Error)
	d.Tally.Finished += f1 - f0
	d.Tally.Failed += x1 - x0
}

// judge says whether a run in status (with error e) counts as finished
// for the deployment's abort threshold, and as failed with a kind it
// counts. Without a threshold nothing counts.
func judge(d *store.Deployment, status string, e *transport.ErrorInfo) (finished, failed int) {
	if d.Rollout == nil || d.Rollout.Abort == nil || !runFinished(status) {
		return 0, 0
	}
	switch {
	case status == string(transport.StatusSucceeded):
		return 1, 0
	case !runFailed(status):
		return 0, 0
	}
	k := failureKind(status, e)
	errs := d.Rollout.Abort.Errors
	if len(errs) == 0 || slices.Contains(errs, onfailure.AllErrors) || slices.Contains(errs, k) {
		return 1, 1
	}
	return 1, 0
}

func count(d *store.Deployment, status string, n int) {
	d.Counts = countIn(d.Counts, status, n)
}

func countIn(counts map[string]int, status string, n int) map[string]int {
	if counts == nil {
		counts = map[string]int{}
	}
	counts[status] += n
	if counts[status] <= 0 {
		delete(counts, status)
	}
	return counts
}

// settle sets the deployment's status from its counts: Running while a
// run has not finished (Paused while it waits for a promotion, the end of
// a pause between waves, or guidance of a paused device); then Cancelled
// if an operator cancelled it; RollingBack while rollbacks on abort have
// not been answered, then RolledBack if every Succeeded device rolled
// back cleanly; Aborted if its threshold tripped (and not RolledBack);
// Succeeded if every run Succeeded (or was Excluded), Failed otherwise. A
// final status stays.
func settle(d *store.Deployment, now time.Time) {
	if deploymentFinal(d.Status) {
		return
	}
	unfinished := 0
	for s, n := range d.Counts {
		if !runFinished(s) {
			unfinished += n
		}
	}
	switch {
	case unfinished > 0:
		d.Status = api.DeploymentRunning
		if d.AwaitingPromotion || d.PausedUntil != nil || d.Counts[string(transport.StatusPaused)] > 0 {
			d.Status = api.DeploymentPaused
		}
		return
	case d.Cancel != nil:
		d.Status = api.DeploymentCancelled
	case d.Abort != nil && d.Rollback.Pending() > 0:
		d.Status = api.DeploymentRollingBack
		d.AwaitingPromotion, d.PausedUntil = false, nil
		return
	case d.Abort != nil && d.Rollback != nil && d.Rollback.Failed == 0 && d.Rollback.Unsupported == 0:
		d.Status = api.DeploymentRolledBack
	case d.Abort != nil:
		d.Status = api.DeploymentAborted
	case d.Counts[string(transport.StatusSucceeded)]+d.Counts[api.DeviceExcluded] == d.Devices:
		d.Status = api.DeploymentSucceeded
	default:
		d.Status = api.DeploymentFailed
	}
	t := now
	d.Finished = &t
	d.AwaitingPromotion, d.PausedUntil = false, nil
}

// summary is what a "deployment" feed event reports of a deployment, to
// tell whether one is due.
func summary(d *store.Deployment) string {
	s := struct {
		Status   string
		Counts   map[string]int
		Cancel   bool
		Wave     int
		Waves    []store.Wave
		Awaiting bool
		Until    *time.Time
		Abort    bool
		Rollback *api.RollbackState
		Retries  int
	}{d.Status, d.Counts, d.Cancel != nil, d.Wave, d.Waves, d.AwaitingPromotion, d.PausedUntil, d.Abort != nil, d.Rollback, len(d.Retries)}
	data, _ := json.Marshal(s)
	return string(data)
}

// applyPresence updates a device record from its presence. An offline
// presence changes only the status (and the agent version, when given):
// the device keeps its last known inventory.
func applyPresence(d *api.Device, p *transport.Presence) {
	d.Status = p.Status
	if p.Agent != "" {
		d.Agent = p.Agent
	}
	if p.Status != transport.Online {
		return
	}
	d.Protocol = p.Protocol
	d.Labels = p.Labels
	d.Capabilities = p.Capabilities
	d.Execution = p.Execution
}

// seen moves a device's LastSeen to t (a message's time, capped at now so
// that a device clock ahead of the controller's cannot push it into the
// future); it never moves back.
func seen(d *api.Device, t, now time.Time) {
	if t.After(now) {
		t = now
	}
	if t.After(d.LastSeen) {
		d.LastSeen = t
	}
}
