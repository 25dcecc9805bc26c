package controller

import (
	"maps"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// runFinished reports whether a device run status is final: anything but
// Pending, Queued, Running and Paused.
func runFinished(status string) bool {
	switch status {
	case api.DevicePending, api.DeviceQueued, string(transport.StatusRunning), string(transport.StatusPaused):
		return false
	}
	return true
}

// deploymentFinal reports whether a deployment status is final.
func deploymentFinal(status string) bool {
	switch status {
	case api.DeploymentSucceeded, api.DeploymentFailed, api.DeploymentCancelled:
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
	if runFinished(run.Status) && run.Status != api.DeviceCancelled {
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
	for i := range a.Steps {
		x, y := a.Steps[i], b.Steps[i]
		if x.Name != y.Name || x.Group != y.Group || x.Rollback != y.Rollback || x.Status != y.Status ||
			x.Attempt != y.Attempt || x.DurationMS != y.DurationMS || !equalError(x.Error, y.Error) {
			return false
		}
	}
	return true
}

func equalError(a, b *transport.ErrorInfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// setRunStatus moves a run to status and keeps the deployment's counts.
func setRunStatus(d *store.Deployment, run *api.DeviceRun, status string) {
	if run.Status == status {
		return
	}
	count(d, run.Status, -1)
	count(d, status, +1)
	run.Status = status
}

func count(d *store.Deployment, status string, n int) {
	if d.Counts == nil {
		d.Counts = map[string]int{}
	}
	d.Counts[status] += n
	if d.Counts[status] <= 0 {
		delete(d.Counts, status)
	}
}

// settle sets the deployment's status from its counts: Running while a run
// has not finished; then Cancelled if an operator cancelled it, Succeeded
// if every run Succeeded, Failed otherwise. A final status stays.
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
		return
	case d.Cancel != nil:
		d.Status = api.DeploymentCancelled
	case d.Counts[string(transport.StatusSucceeded)] == d.Devices:
		d.Status = api.DeploymentSucceeded
	default:
		d.Status = api.DeploymentFailed
	}
	t := now
	d.Finished = &t
}

// sameSummary reports whether two deployment records show the same status
// and counts (what a "deployment" feed event reports).
func sameSummary(a, b *store.Deployment) bool {
	return a.Status == b.Status && maps.Equal(a.Counts, b.Counts) && (a.Cancel == nil) == (b.Cancel == nil)
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
