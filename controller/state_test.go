package controller

import (
	"slices"
	"strings"
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

// TestSettleRollout: Paused while the deployment waits (a promotion, a
// pause's end, a paused device), Aborted once a tripped rollout's devices
// have finished, Excluded devices do not make it fail.
func TestSettleRollout(t *testing.T) {
	now := time.Now()
	until := now.Add(time.Hour)
	for _, c := range []struct {
		name string
		d    store.Deployment
		want string
	}{
		{"awaiting promotion", store.Deployment{Devices: 2, Counts: map[string]int{"Succeeded": 1, "Waiting": 1}, AwaitingPromotion: true}, api.DeploymentPaused},
		{"timed pause", store.Deployment{Devices: 2, Counts: map[string]int{"Succeeded": 1, "Waiting": 1}, PausedUntil: &until}, api.DeploymentPaused},
		{"a device paused", store.Deployment{Devices: 2, Counts: map[string]int{"Paused": 1, "Running": 1}}, api.DeploymentPaused},
		{"waiting", store.Deployment{Devices: 2, Counts: map[string]int{"Running": 1, "Waiting": 1}}, api.DeploymentRunning},
		{"aborting", store.Deployment{Devices: 2, Counts: map[string]int{"Running": 1, "Skipped": 1}, Abort: &api.AbortState{}}, api.DeploymentRunning},
		{"aborted", store.Deployment{Devices: 2, Counts: map[string]int{"Failed": 1, "Skipped": 1}, Abort: &api.AbortState{}}, api.DeploymentAborted},
		{"excluded", store.Deployment{Devices: 2, Counts: map[string]int{"Succeeded": 1, "Excluded": 1}}, api.DeploymentSucceeded},
		{"timed out", store.Deployment{Devices: 2, Counts: map[string]int{"Succeeded": 1, "TimedOut": 1}}, api.DeploymentFailed},
		{"cancelled while aborting", store.Deployment{Devices: 1, Counts: map[string]int{"Failed": 1}, Abort: &api.AbortState{}, Cancel: &api.Cancellation{}}, api.DeploymentCancelled},
	} {
		d := c.d
		d.Status = api.DeploymentRunning
		settle(&d, now)
		if d.Status != c.want || (d.Finished != nil) != deploymentFinal(c.want) {
			t.Errorf("%s: %s, want %s", c.name, d.Status, c.want)
		}
		if deploymentFinal(d.Status) && (d.AwaitingPromotion || d.PausedUntil != nil) {
			t.Errorf("%s: final and still waiting", c.name)
		}
	}
}

func TestWaveTargets(t *testing.T) {
	for _, c := range []struct {
		waves []string
		n     int
		want  []int
		err   string
	}{
		{nil, 7, []int{7}, ""},
		{[]string{"1", "10%", "100%"}, 100, []int{1, 10, 100}, ""},
		{[]string{"1", "10%", "100%"}, 5, []int{1, 5}, ""},           // 10% of 5 is 1: dropped
		{[]string{"1", "10%", "all"}, 1000, []int{1, 100, 1000}, ""}, // "all" is 100%
		{[]string{" 2 ", "50 %", "100%"}, 9, []int{2, 5, 9}, ""},     // spaces, rounded up
		{[]string{"25", "100%"}, 10, []int{10}, ""},                  // a count over n is n
		{[]string{"0.5%", "100%"}, 10, []int{1, 10}, ""},             // at least one device
		{[]string{"5"}, 5, nil, "the last wave is \"5\""},
		{[]string{"10%", "5%", "100%"}, 100, nil, "not above the percent before it"},
		{[]string{"100%", "all"}, 4, nil, "comes after 100%"},
		{[]string{"-1", "100%"}, 4, nil, "want a number of devices"},
		{[]string{"1%x", "100%"}, 4, nil, "want a number of devices"},
	} {
		got, err := waveTargets(c.waves, c.n, false)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%v of %d: %v, want an error with %q", c.waves, c.n, err, c.err)
		case c.err == "" && (err != nil || !slices.Equal(got, c.want)):
			t.Errorf("%v of %d: %v %v, want %v", c.waves, c.n, got, err, c.want)
		}
	}
	// A retry on fewer devices drops a wave that would go back.
	if got, err := waveTargets([]string{"10", "20%", "100%"}, 5, true); err != nil || !slices.Equal(got, []int{5}) {
		t.Errorf("lenient: %v %v", got, err)
	}
	targets := []int{1, 3, 5}
	for i, want := range []int{1, 2, 2, 3, 3} {
		if got := waveOf(targets, i); got != want {
			t.Errorf("waveOf(%d) = %d, want %d", i, got, want)
		}
	}
}

// TestJudge lists what the abort threshold counts: finished devices are
// Succeeded or failed; Excluded, Cancelled and Skipped ones do not count;
// a failure counts as failed when its kind is one of the threshold's
// (TimedOut is Timeout, a failure without an error Unknown).
func TestJudge(t *testing.T) {
	d := &store.Deployment{Rollout: &api.Rollout{Abort: &api.AbortPolicy{Errors: []onfailure.Kind{onfailure.Timeout, onfailure.Unknown}}}}
	verif := &transport.ErrorInfo{Type: onfailure.Verification, Message: "x"}
	for _, c := range []struct {
		status           string
		err              *transport.ErrorInfo
		finished, failed int
	}{
		{"Running", nil, 0, 0},
		{"Waiting", nil, 0, 0},
		{"Succeeded", nil, 1, 0},
		{"Failed", verif, 1, 0},
		{"RolledBack", nil, 1, 1},
		{api.DeviceTimedOut, verif, 1, 1},
		{api.DeviceRejected, &transport.ErrorInfo{Type: onfailure.Timeout}, 1, 1},
		{api.DeviceExcluded, nil, 0, 0},
		{api.DeviceCancelled, nil, 0, 0},
		{api.DeviceSkipped, nil, 0, 0},
	} {
		f, x := judge(d, c.status, c.err)
		if f != c.finished || x != c.failed {
			t.Errorf("%s %v: finished %d failed %d, want %d %d", c.status, c.err, f, x, c.finished, c.failed)
		}
	}
	if f, x := judge(&store.Deployment{}, "Failed", nil); f != 0 || x != 0 {
		t.Errorf("without a threshold: %d %d", f, x)
	}
	// moved keeps the tally as runs change.
	run := api.DeviceRun{Status: "Running"}
	d.Counts = map[string]int{"Running": 1}
	setRun(d, &run, "Failed", nil)
	if d.Tally != (store.Tally{Finished: 1, Failed: 1}) || d.Counts["Failed"] != 1 || d.Counts["Running"] != 0 {
		t.Fatalf("after a failure: %+v %v", d.Tally, d.Counts)
	}
}

// TestPauseDetails keeps what a paused run waits with, and drops it when
// the run goes on.
func TestPauseDetails(t *testing.T) {
	now := time.Now()
	until := now.Add(time.Hour)
	run := api.DeviceRun{Device: "d", Status: "Running"}
	e := &transport.ErrorInfo{Type: onfailure.Connectivity, Message: "refused"}
	if !applyEvent(&run, ev(&transport.Paused{Deployment: "dep", Execution: "ex", Step: "s", Group: "g", Error: e, Until: &until}), now) {
		t.Fatal("paused: no change")
	}
	if p := run.Pause; p == nil || p.Step != "s" || p.Group != "g" || !p.Since.Equal(now) || !p.Until.Equal(until) {
		t.Fatalf("pause: %+v", run.Pause)
	}
	// The same pause reported again changes nothing, not even Since.
	if applyEvent(&run, ev(&transport.Paused{Deployment: "dep", Execution: "ex", Step: "s", Group: "g", Error: e, Until: &until}), now.Add(time.Minute)) {
		t.Fatal("a repeated paused reported a change")
	}
	applyEvent(&run, ev(&transport.Resumed{Deployment: "dep", Execution: "ex", Step: "s", Action: onfailure.Retry}), now)
	if run.Pause != nil || run.Status != "Running" {
		t.Fatalf("resumed: %+v", run)
	}
	// A Waiting run (never dispatched) takes no report.
	w := api.DeviceRun{Device: "d", Status: api.DeviceWaiting}
	if applyEvent(&w, ev(&transport.Accepted{Deployment: "dep", Dispatch: "x", Execution: "ex", Flow: "f"}), now) {
		t.Fatal("a Waiting run moved")
	}
}
