package controller

import (
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

func ev(b transport.Body) *transport.Message {
	return &transport.Message{V: 1, ID: "x", Type: b.Type(), Device: "d", Time: time.Now(), Seq: 1, Body: b}
}

// TestRunTransitions lists, per run status, what each event makes of it
// ("-" means unchanged: applyEvent reports no change).
func TestRunTransitions(t *testing.T) {
	errInfo := &transport.ErrorInfo{Type: onfailure.Verification, Message: "bad"}
	events := map[string]*transport.Message{
		"accepted":      ev(&transport.Accepted{Deployment: "dep", Dispatch: "d", Execution: "ex", Flow: "f"}),
		"queued":        ev(&transport.Queued{Deployment: "dep", Dispatch: "d", Position: 1}),
		"rejected":      ev(&transport.Rejected{Deployment: "dep", Dispatch: "d", Error: errInfo}),
		"step-started":  ev(&transport.StepStarted{Deployment: "dep", Execution: "ex", Step: "s", Attempt: 1}),
		"paused":        ev(&transport.Paused{Deployment: "dep", Execution: "ex", Step: "s"}),
		"resumed":       ev(&transport.Resumed{Deployment: "dep", Execution: "ex", Step: "s", Action: onfailure.Action("Retry")}),
		"flow-finished": ev(&transport.FlowFinished{Deployment: "dep", Execution: "ex", Flow: "f", Status: transport.StatusRolledBack, Error: errInfo}),
	}
	table := []struct {
		from string
		want map[string]string
	}{
		{api.DevicePending, map[string]string{"accepted": "Running", "queued": "Queued", "rejected": "Rejected", "step-started": "Running", "paused": "Paused", "resumed": "Running", "flow-finished": "RolledBack"}},
		{api.DeviceQueued, map[string]string{"accepted": "Running", "queued": "-", "rejected": "Rejected", "step-started": "Running", "paused": "Paused", "resumed": "Running", "flow-finished": "RolledBack"}},
		{"Running", map[string]string{"accepted": "-", "queued": "-", "rejected": "-", "step-started": "Running", "paused": "Paused", "resumed": "-", "flow-finished": "RolledBack"}},
		{"Paused", map[string]string{"accepted": "-", "queued": "-", "rejected": "-", "step-started": "Paused", "paused": "Paused", "resumed": "Running", "flow-finished": "RolledBack"}},
		{api.DeviceCancelled, map[string]string{"accepted": "Running", "queued": "Queued", "rejected": "Rejected", "step-started": "Running", "paused": "Paused", "resumed": "Running", "flow-finished": "RolledBack"}},
		{api.DeviceRejected, map[string]string{"accepted": "-", "queued": "-", "rejected": "-", "step-started": "-", "paused": "-", "resumed": "-", "flow-finished": "-"}},
		{"Succeeded", map[string]string{"accepted": "-", "queued": "-", "rejected": "-", "step-started": "-", "paused": "-", "resumed": "-", "flow-finished": "-"}},
	}
	for _, row := range table {
		for name, m := range events {
			run := api.DeviceRun{Device: "d", Status: row.from}
			if row.from == "Running" || row.from == "Paused" {
				run.Execution = "ex"
				run.Steps = []api.StepRun{{Name: "s", Status: "Running", Attempt: 1}}
			}
			changed := applyEvent(&run, m, time.Now())
			want := row.want[name]
			switch {
			case want == "-" && (changed || run.Status != row.from):
				t.Errorf("%s + %s: changed to %s, want no change", row.from, name, run.Status)
			case want != "-" && run.Status != want:
				t.Errorf("%s + %s: %s (changed %v), want %s", row.from, name, run.Status, changed, want)
			}
		}
	}
}

func TestRunSteps(t *testing.T) {
	run := api.DeviceRun{Device: "d", Status: api.DevicePending}
	now := time.Now()
	apply := func(b transport.Body) bool { return applyEvent(&run, ev(b), now) }
	apply(&transport.Accepted{Deployment: "dep", Dispatch: "d", Execution: "ex", Flow: "f"})
	apply(&transport.StepStarted{Deployment: "dep", Execution: "ex", Step: "a", Group: "g", Attempt: 1})
	apply(&transport.StepStarted{Deployment: "dep", Execution: "ex", Step: "a", Group: "g", Attempt: 2})
	apply(&transport.StepFinished{Deployment: "dep", Execution: "ex", Step: "a", Group: "g", Attempt: 2, Status: transport.StatusSucceeded, DurationMS: 5})
	apply(&transport.StepFinished{Deployment: "dep", Execution: "ex", Step: "b", Status: transport.StatusSkipped})
	apply(&transport.StepStarted{Deployment: "dep", Execution: "ex", Step: "a", Rollback: "flow", Attempt: 1})
	apply(&transport.RollbackAction{Deployment: "dep", Execution: "ex", Step: "a", Action: "revertFiles", Trigger: "thisStep", Status: transport.StatusSucceeded})
	if run.Execution != "ex" || len(run.Steps) != 3 || len(run.RollbackActions) != 1 {
		t.Fatalf("run: %+v", run)
	}
	a := run.Steps[0]
	if a.Name != "a" || a.Group != "g" || a.Attempt != 2 || a.Status != "Succeeded" || a.DurationMS != 5 {
		t.Fatalf("step a: %+v", a)
	}
	if run.Steps[1].Name != "b" || run.Steps[1].Status != "Skipped" || run.Steps[2].Rollback != "flow" || run.Steps[2].Status != "Running" {
		t.Fatalf("steps: %+v", run.Steps)
	}
	// The same report again changes nothing.
	if apply(&transport.StepFinished{Deployment: "dep", Execution: "ex", Step: "b", Status: transport.StatusSkipped}) {
		t.Fatal("a repeated step-finished reported a change")
	}
}

func TestSettle(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		counts map[string]int
		cancel bool
		want   string
	}{
		{map[string]int{"Pending": 1, "Succeeded": 1}, false, api.DeploymentRunning},
		{map[string]int{"Succeeded": 2}, false, api.DeploymentSucceeded},
		{map[string]int{"Succeeded": 1, "RolledBack": 1}, false, api.DeploymentFailed},
		{map[string]int{"Succeeded": 1, "Rejected": 1}, false, api.DeploymentFailed},
		{map[string]int{"Running": 1, "Cancelled": 1}, true, api.DeploymentRunning},
		{map[string]int{"Failed": 1, "Cancelled": 1}, true, api.DeploymentCancelled},
		{map[string]int{"Succeeded": 2}, true, api.DeploymentCancelled},
	} {
		d := store.Deployment{Devices: 2, Status: api.DeploymentRunning, Counts: c.counts}
		if c.cancel {
			d.Cancel = &api.Cancellation{}
		}
		settle(&d, now)
		if d.Status != c.want || (d.Finished != nil) != deploymentFinal(c.want) {
			t.Errorf("%v cancel %v: %s finished %v, want %s", c.counts, c.cancel, d.Status, d.Finished, c.want)
		}
	}
	// A final status stays.
	d := store.Deployment{Devices: 1, Status: api.DeploymentCancelled, Counts: map[string]int{"Running": 1}}
	if settle(&d, now); d.Status != api.DeploymentCancelled {
		t.Fatalf("final status moved to %s", d.Status)
	}
}

// TestCancelConfirmed keeps a Cancelled run Cancelled when the agent
// reports that it dropped the dispatch (rejected, UserMarkedFailure), and
// makes it Rejected for any other refusal.
func TestCancelConfirmed(t *testing.T) {
	for _, c := range []struct {
		kind onfailure.Kind
		want string
	}{
		{onfailure.UserMarkedFailure, api.DeviceCancelled},
		{onfailure.Integrity, api.DeviceRejected},
	} {
		run := api.DeviceRun{Device: "d", Status: api.DeviceCancelled}
		e := &transport.ErrorInfo{Type: c.kind, Message: "cancelled before it started by alice"}
		if !applyEvent(&run, ev(&transport.Rejected{Deployment: "dep", Dispatch: "d", Error: e}), time.Now()) {
			t.Fatalf("%s: no change", c.kind)
		}
		if run.Status != c.want || run.Error == nil || run.Error.Type != c.kind {
			t.Fatalf("%s: %+v, want %s with the error", c.kind, run, c.want)
		}
	}
}
