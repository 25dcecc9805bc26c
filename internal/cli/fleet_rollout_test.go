package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// rolloutRoutes adds the rollout requests to the fake controller.
func (f *fake) rolloutRoutes(mux *http.ServeMux) {
	// refused answers the canned error, if any.
	refused := func(w http.ResponseWriter) bool {
		if f.answerErr != nil {
			reply(w, f.answerStatus, f.answerErr)
			return true
		}
		return false
	}
	dep := func(w http.ResponseWriter, r *http.Request) (api.Deployment, bool) {
		d, ok := f.deployments[r.PathValue("id")]
		if !ok {
			replyErr(w, 404, api.CodeNotFound, "no deployment "+r.PathValue("id"))
			return api.Deployment{}, false
		}
		return *d, true
	}
	mux.HandleFunc("POST "+api.PathPromote, func(w http.ResponseWriter, r *http.Request) {
		var b api.Promote
		json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.promotes = append(f.promotes, b)
		if refused(w) {
			return
		}
		if d, ok := dep(w, r); ok {
			d.Wave++
			reply(w, 200, d)
		}
	})
	mux.HandleFunc("POST "+api.PathRetry, func(w http.ResponseWriter, r *http.Request) {
		var b api.Retry
		json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.retries = append(f.retries, b)
		if refused(w) {
			return
		}
		if d, ok := dep(w, r); ok {
			reply(w, 201, api.Deployment{ID: "d-retry", Bundle: d.Bundle, Status: api.DeploymentRunning, RetryOf: d.ID,
				Counts: map[string]int{api.DevicePending: 2}})
		}
	})
	mux.HandleFunc("POST "+api.PathMarkFailed, func(w http.ResponseWriter, r *http.Request) {
		var b api.MarkFailed
		json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.marks = append(f.marks, b)
		if refused(w) {
			return
		}
		if d, ok := dep(w, r); ok {
			d.Audit = append(d.Audit, api.AuditEntry{Action: api.AuditMarkFailed, Devices: 3})
			reply(w, 200, d)
		}
	})
	mux.HandleFunc("POST "+api.PathGuide, func(w http.ResponseWriter, r *http.Request) {
		var b api.Guide
		json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.guides = append(f.guides, b)
		f.guided = append(f.guided, r.PathValue("id")+"/"+r.PathValue("device"))
		if refused(w) {
			return
		}
		if d, ok := dep(w, r); ok {
			reply(w, 200, d)
		}
	})
	mux.HandleFunc("POST "+api.PathGuideGroup, func(w http.ResponseWriter, r *http.Request) {
		var b api.Guide
		json.NewDecoder(r.Body).Decode(&b)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.groupGuides = append(f.groupGuides, b)
		if refused(w) {
			return
		}
		reply(w, 200, api.GuideResult{Group: r.PathValue("group"), Action: b.Action,
			Guided: []api.PausedRun{{Deployment: "d-2", Device: "edge-9"}, {Deployment: "d-3", Device: "edge-10"}}})
	})
	mux.HandleFunc("GET "+api.PathInterventions, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		reply(w, 200, api.InterventionList{Interventions: f.interventions})
	})
}

func TestDeployRolloutFlags(t *testing.T) {
	t.Setenv(EnvSigningKey, "")
	f := newFake(t)
	flow, _ := flowDir(t)
	code, out, errs := f.run(t, "deploy", flow, "--device", "edge-1", "--waves", "1, 10%,100%", "--max-in-flight", "5", "--pause", "manual",
		"--abort-threshold", "20%", "--min-sample", "5", "--abort-on", "Timeout,Verification", "--device-timeout", "30m",
		"--guided-failure", "30m:RollbackFlow")
	if code != 0 || strings.TrimSpace(out) != "d-new" {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	want := &api.Rollout{Waves: []string{"1", "10%", "100%"}, MaxInFlight: 5, Pause: "manual", DeviceTimeout: "30m",
		Abort: &api.AbortPolicy{Threshold: 20, MinSample: 5, Errors: []onfailure.Kind{"Timeout", "Verification"}}}
	c := f.creates[0]
	if !reflect.DeepEqual(c.Rollout, want) || !reflect.DeepEqual(c.GuidedFailure, &api.GuidedFailure{Timeout: "30m", OnTimeout: "RollbackFlow"}) {
		t.Fatalf("create: %+v %+v", c.Rollout, c.GuidedFailure)
	}
	// --rollback-on-abort goes with the threshold.
	f.run(t, "deploy", flow, "--device", "edge-1", "--abort-threshold", "40", "--rollback-on-abort")
	if r := f.creates[len(f.creates)-1].Rollout; r == nil || !r.RollbackOnAbort || r.Abort == nil || r.Abort.Threshold != 40 {
		t.Fatalf("rollback on abort: %+v", r)
	}
	f.creates = f.creates[:1]
	// Without rollout flags: no rollout (everything at once, as before).
	f.run(t, "deploy", flow, "--device", "edge-1", "--guided-failure", "1h")
	if c := f.creates[1]; c.Rollout != nil || c.GuidedFailure.Timeout != "1h" || c.GuidedFailure.OnTimeout != "" {
		t.Fatalf("plain: %+v %+v", c.Rollout, c.GuidedFailure)
	}
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"--min-sample", "3"}, "--min-sample and --abort-on go with --abort-threshold"},
		{[]string{"--abort-threshold", "120"}, `--abort-threshold "120": want a percent from 0 to 100`},
		{[]string{"--pause", "soon"}, `--pause "soon": want a duration such as 5m, or manual`},
		{[]string{"--device-timeout", "-1m"}, `--device-timeout "-1m"`},
		{[]string{"--guided-failure", "abc"}, `--guided-failure "abc": want TIMEOUT[:ONTIMEOUT]`},
		{[]string{"--max-in-flight", "-2"}, "--max-in-flight -2"},
		{[]string{"--rollback-on-abort"}, "--rollback-on-abort goes with --abort-threshold"},
	} {
		n := len(f.uploads)
		code, _, errs := f.run(t, append([]string{"deploy", flow, "--device", "edge-1"}, c.args...)...)
		if code != ExitInvalid || !strings.Contains(errs, c.err) || len(f.uploads) != n {
			t.Errorf("%v: %d %q, want exit 2 with %q and nothing uploaded", c.args, code, errs, c.err)
		}
	}
}

func TestPromote(t *testing.T) {
	f := newFake(t)
	f.deployments = deploymentsFixture()
	d2 := f.deployments["d-2"]
	d2.Wave = 1
	d2.Waves = []api.Wave{{Number: 1, Devices: 1, Target: 1}, {Number: 2, Devices: 4, Target: 5}}
	code, out, errs := f.run(t, "promote", "d-2", "--note", "canary fine")
	if code != 0 || !strings.Contains(out, "deployment d-2: wave 2 of 2 started (4 devices, 5 in all)") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if p := f.promotes[0]; p.Note != "canary fine" || p.By != operator() {
		t.Fatalf("request: %+v", p)
	}
	f.answerErr, f.answerStatus = &api.Error{Error: api.ErrorBody{Code: api.CodeConflict, Message: "wave 1 of deployment d-2 is still running"}}, 409
	if code, _, errs := f.run(t, "promote", "d-2"); code != ExitFailed || !strings.Contains(errs, "409") || !strings.Contains(errs, "still running") {
		t.Fatalf("conflict: %d %q", code, errs)
	}
}

func TestGuideCommand(t *testing.T) {
	f := newFake(t)
	f.deployments = deploymentsFixture()
	code, out, errs := f.run(t, "guide", "d-2", "--device", "edge-9", "mark-as-success", "--note", "verified by hand")
	if code != 0 || !strings.Contains(out, "guidance MarkAsSuccess sent to edge-9 of deployment d-2") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if g := f.guides[0]; g.Action != onfailure.MarkAsSuccess || g.Note != "verified by hand" || g.By != operator() || f.guided[0] != "d-2/edge-9" {
		t.Fatalf("request: %+v %v", g, f.guided)
	}
	code, out, _ = f.run(t, "guide", "d-2", "--device", "edge-9", "EXCLUDE", "--step", "migrate")
	if code != 0 || !strings.Contains(out, "device edge-9 excluded from deployment d-2") || f.guides[1].Action != onfailure.Exclude || f.guides[1].Step != "migrate" {
		t.Fatalf("exclude: %d %q %+v", code, out, f.guides[1])
	}
	code, out, errs = f.run(t, "guide", "--group", "g-1", "RollbackFlow", "--note", "all of them")
	if code != 0 || !strings.Contains(out, "guidance RollbackFlow sent to 2 device(s) of group g-1") || !hasRow(out, "d-3", "edge-10") {
		t.Fatalf("group: %d %q %q", code, out, errs)
	}
	if g := f.groupGuides[0]; g.Action != onfailure.RollbackFlow || g.Note != "all of them" {
		t.Fatalf("group request: %+v", g)
	}
	n := len(f.guides) + len(f.groupGuides)
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"guide", "d-2", "--device", "edge-9", "pray"}, `action "pray": want one of retry, ignore, mark-as-success, mark-as-failure, abort, rollback-group, rollback-flow, exclude`},
		{[]string{"guide", "d-2", "retry"}, "--device D is required"},
		{[]string{"guide", "d-2"}, "want ID and ACTION"},
		{[]string{"guide", "--group", "g-1", "d-2", "retry"}, "want only ACTION"},
		{[]string{"guide", "--group", "g-1", "--device", "x", "retry"}, "--device and --step do not apply"},
	} {
		code, _, errs := f.run(t, c.args...)
		if code != ExitInvalid || !strings.Contains(errs, c.err) {
			t.Errorf("%v: %d %q, want exit 2 with %q", c.args, code, errs, c.err)
		}
	}
	if len(f.guides)+len(f.groupGuides) != n {
		t.Fatal("a refused guide was sent")
	}
	f.answerErr, f.answerStatus = &api.Error{Error: api.ErrorBody{Code: api.CodeConflict, Message: "device edge-9 is Running in deployment d-2, not Paused"}}, 409
	if code, _, errs := f.run(t, "guide", "d-2", "--device", "edge-9", "retry"); code != ExitFailed || !strings.Contains(errs, "not Paused") {
		t.Fatalf("conflict: %d %q", code, errs)
	}
}

func TestInterventionsCommand(t *testing.T) {
	f := newFake(t)
	until := now.Add(55 * time.Minute)
	f.interventions = []api.Intervention{
		{Group: "g-aaaaaaaaaaaa", Flow: "web", Step: "migrate", StepGroup: "db", Kind: onfailure.Connectivity, Message: "dial tcp 10.0.0.5:5432: connection refused",
			Devices: []api.PausedRun{{Deployment: "d-7", Device: "edge-1", Since: now.Add(-5 * time.Minute), Until: &until}, {Deployment: "d-8", Device: "edge-2", Since: now.Add(-time.Minute)}}},
		{Group: "g-bbbbbbbbbbbb", Flow: "web", StepGroup: "app", Kind: onfailure.Timeout, Message: "no answer",
			Devices: []api.PausedRun{{Deployment: "d-7", Device: "edge-3", Since: now.Add(-2 * time.Hour)}}},
	}
	var out, errb strings.Builder
	fl := f.fleet(t, FormatTable, nil, nil)
	fl.Out, fl.Err = &out, &errb
	if err := fl.Interventions(t.Context()); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"group g-aaaaaaaaaaaa: flow web, step migrate (group db): 2 device(s) paused\n",
		"  Connectivity: dial tcp 10.0.0.5:5432: connection refused\n",
		"group g-bbbbbbbbbbbb: flow web, group app: 1 device(s) paused\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("lacks %q:\n%s", want, s)
		}
	}
	for _, want := range [][]string{
		{"DEPLOYMENT", "DEVICE", "PAUSED", "TIMEOUT"},
		{"d-7", "edge-1", "5m", "ago", "in", "55m"},
		{"d-8", "edge-2", "1m", "ago", "-"},
		{"d-7", "edge-3", "2h", "ago", "-"},
	} {
		if !hasRow(s, want...) {
			t.Errorf("no row %q in\n%s", want, s)
		}
	}
	if !strings.Contains(errb.String(), "edgeflow guide --group G ACTION") {
		t.Errorf("no hint: %q", errb.String())
	}
	code, js, _ := f.run(t, "interventions", "-o", "json")
	var l api.InterventionList
	if err := json.Unmarshal([]byte(js), &l); code != 0 || err != nil || !reflect.DeepEqual(l.Interventions[0].Devices[0].Until.UTC(), until) || len(l.Interventions) != 2 {
		t.Fatalf("json: %d %v %s", code, err, js)
	}
	f.interventions = nil
	if code, out, errs := f.run(t, "interventions"); code != 0 || out != "" || !strings.Contains(errs, "no device waits for guidance") {
		t.Fatalf("none: %d %q %q", code, out, errs)
	}
}

func TestMarkFailedCommand(t *testing.T) {
	f := newFake(t)
	f.deployments = deploymentsFixture()
	code, out, errs := f.run(t, "mark-failed", "d-2", "--device", "edge-9,edge-8", "--note", "hangs")
	if code != 0 || !strings.Contains(out, "mark-failed sent to edge-9, edge-8 of deployment d-2") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if m := f.marks[0]; !reflect.DeepEqual(m.Devices, []string{"edge-9", "edge-8"}) || m.All || m.Note != "hangs" || m.By != operator() {
		t.Fatalf("request: %+v", m)
	}
	code, out, _ = f.run(t, "mark-failed", "d-2", "--all", "--step", "pull")
	if code != 0 || !strings.Contains(out, "every Running device (3)") || !f.marks[1].All || f.marks[1].Step != "pull" {
		t.Fatalf("all: %d %q %+v", code, out, f.marks[1])
	}
	for _, args := range [][]string{{"mark-failed", "d-2"}, {"mark-failed", "d-2", "--all", "--device", "x"}} {
		if code, _, errs := f.run(t, args...); code != ExitInvalid || !strings.Contains(errs, "--device D... or --all") {
			t.Errorf("%v: %d %q", args, code, errs)
		}
	}
	// A controller that does not allow it: 403, exit 1, its message.
	f.answerErr = &api.Error{Error: api.ErrorBody{Code: api.CodeForbidden, Message: "mark-failed is turned off on this controller: ... (edgeflow serve --allow-mark-failed)"}}
	f.answerStatus = 403
	code, _, errs = f.run(t, "mark-failed", "d-2", "--all")
	if code != ExitFailed || !strings.Contains(errs, "403") || !strings.Contains(errs, "--allow-mark-failed") {
		t.Fatalf("forbidden: %d %q", code, errs)
	}
}

func TestRetryCommand(t *testing.T) {
	f := newFake(t)
	f.deployments = deploymentsFixture()
	code, out, errs := f.run(t, "retry", "d-1", "--failed-only", "--note", "new key")
	if code != 0 || out != "d-retry\n" || !strings.Contains(errs, "deployment d-retry retries d-1 on 2 device(s)") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if r := f.retries[0]; !r.FailedOnly || r.Note != "new key" || r.By != operator() {
		t.Fatalf("request: %+v", r)
	}
	code, out, _ = f.run(t, "retry", "d-1", "-o", "json")
	var d api.Deployment
	if json.Unmarshal([]byte(out), &d) != nil || code != 0 || d.RetryOf != "d-1" || f.retries[1].FailedOnly {
		t.Fatalf("json: %d %s", code, out)
	}
}

// rolloutFixture is a deployment in its second wave, with a device paused
// for guidance and an audit.
func rolloutFixture() *api.Deployment {
	until := now.Add(50 * time.Minute)
	started := now.Add(-8 * time.Minute)
	return &api.Deployment{ID: "d-r", Bundle: api.Bundle{SHA256: strings.Repeat("cd", 32), Flow: "web", Version: 3}, Status: api.DeploymentPaused,
		Created: now.Add(-10 * time.Minute), Counts: map[string]int{"Succeeded": 1, "Paused": 1, "Running": 1, api.DeviceWaiting: 2},
		Rollout: &api.Rollout{Waves: []string{"1", "60%", "100%"}, MaxInFlight: 2, Pause: "manual", DeviceTimeout: "30m",
			Abort: &api.AbortPolicy{Threshold: 20, MinSample: 5, Errors: []onfailure.Kind{onfailure.AllErrors}}},
		GuidedFailure: &api.GuidedFailure{Timeout: "1h", OnTimeout: onfailure.Abort},
		Wave:          2, RetryOf: "d-0",
		Waves: []api.Wave{
			{Number: 1, Devices: 1, Target: 1, Status: api.WaveFinished, Counts: map[string]int{"Succeeded": 1}},
			{Number: 2, Devices: 2, Target: 3, Status: api.WaveRunning, Started: &started, Counts: map[string]int{"Paused": 1, "Running": 1}},
			{Number: 3, Devices: 2, Target: 5, Status: api.WaveWaiting, Counts: map[string]int{api.DeviceWaiting: 2}},
		},
		Audit: []api.AuditEntry{
			{Time: started, By: "alice", Action: api.AuditPromote, Wave: 2, Note: "canary fine"},
			{Time: now.Add(-time.Minute), By: "bob", Action: api.AuditGuide, Guidance: onfailure.Retry, Device: "edge-2", Step: "migrate", Note: "db back"},
		},
		Devices: []api.DeviceRun{
			{Device: "edge-1", Status: "Succeeded", Wave: 1, Updated: started},
			{Device: "edge-2", Status: "Paused", Wave: 2, Updated: now.Add(-2 * time.Minute),
				Steps: []api.StepRun{{Name: "migrate", Status: "Paused", Attempt: 1, Error: &transport.ErrorInfo{Type: onfailure.Connectivity, Message: "refused"}}},
				Pause: &api.RunPause{Step: "migrate", Error: &transport.ErrorInfo{Type: onfailure.Connectivity, Message: "refused"}, Since: now.Add(-2 * time.Minute), Until: &until}},
			{Device: "edge-3", Status: "Running", Wave: 2, Updated: now},
			{Device: "edge-4", Status: api.DeviceWaiting, Wave: 3, Updated: now.Add(-10 * time.Minute)},
			{Device: "edge-5", Status: api.DeviceWaiting, Wave: 3, Updated: now.Add(-10 * time.Minute)},
		}}
}

func TestDeploymentShowRollout(t *testing.T) {
	f := newFake(t)
	f.deployments["d-r"] = rolloutFixture()
	show := func() string {
		t.Helper()
		var out, errb bytes.Buffer
		if err := f.fleet(t, FormatTable, &out, &errb).ShowDeployment(t.Context(), "d-r"); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	s := show()
	for _, want := range []string{
		"rollout:         waves 1,60%,100%, at most 2 in flight, pause manual, abort over 20% of at least 5 finished (AllErrors), device timeout 30m\n",
		"wave:            wave 2 of 3\n",
		"guided failure:  pause up to 1h for guidance, then Abort\n",
		"retry of:        d-0\n",
		"\npaused for guidance (edgeflow guide d-r --device D ACTION):\n  edge-2: step migrate (Connectivity: refused), paused 2m ago, times out in 50m\n",
		"\naudit:\n",
		"  " + now.Add(-8*time.Minute).Format(time.RFC3339) + "  alice  promote to wave 2: canary fine\n",
		"  " + now.Add(-time.Minute).Format(time.RFC3339) + "  bob  guide Retry edge-2 (step migrate): db back\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("lacks %q:\n%s", want, s)
		}
	}
	for _, want := range [][]string{
		{"devices:", "1/5", "succeeded,", "1", "running,", "1", "paused,", "2", "waiting"},
		{"WAVE", "DEVICES", "TARGET", "STATUS", "PROGRESS"},
		{"1", "1", "1", "Finished", "1/1", "succeeded"},
		{"2", "2", "3", "Running", "0/2", "succeeded,", "1", "running,", "1", "paused"},
		{"3", "2", "5", "Waiting", "0/2", "succeeded,", "2", "waiting"},
		{"edge-2", "Paused", "migrate", "Connectivity:", "refused"},
	} {
		if !hasRow(s, want...) {
			t.Errorf("no row %q in\n%s", want, s)
		}
	}
	d := rolloutFixture()
	d.Wave, d.AwaitingPromotion = 1, true
	f.deployments["d-r"] = d
	if s := show(); !strings.Contains(s, "wave 1 of 3 finished: the next waits for a promotion (edgeflow promote d-r)") {
		t.Errorf("awaiting promotion:\n%s", s)
	}
	d.AwaitingPromotion, d.Abort = false, &api.AbortState{Reason: "3 of 5 finished devices failed"}
	if s := show(); !strings.Contains(s, "wave 1 of 3: aborted: 3 of 5 finished devices failed") {
		t.Errorf("aborted:\n%s", s)
	}
	// Rolled back on abort: one device rolled back, one could not.
	d.Rollout.RollbackOnAbort = true
	d.Status, d.Rollback = api.DeploymentRollingBack, &api.RollbackState{Devices: 2, RolledBack: 1, Unsupported: 1}
	d.Devices[0].Status, d.Devices[0].Rollback = "RolledBack", &api.RunRollback{Command: "c-1"}
	d.Devices[2].Status, d.Devices[2].Rollback = "Succeeded", &api.RunRollback{Note: "not rolled back: its agent 0.6.0 cannot undo"}
	s = show()
	for _, want := range []string{
		"roll back on abort",
		"aborted: 3 of 5 finished devices failed; rolled back 1 of 3 succeeded device(s), 1 rolling back, 1 cannot (their agent lacks the rollback command)",
		"\nrollback on abort: rolled back 1 of 3 succeeded device(s), 1 rolling back, 1 cannot (their agent lacks the rollback command):\n  edge-1: RolledBack\n  edge-3: Succeeded: not rolled back: its agent 0.6.0 cannot undo\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("rollback: lacks %q:\n%s", want, s)
		}
	}
}

// TestWatchRollout shows the waves, the pause for a promotion (and goes
// on waiting through it), and exits 1 when the rollout aborts.
func TestWatchRollout(t *testing.T) {
	f := newFake(t)
	// Wave 1 is edge-1, which succeeds; wave 2 edge-2, which fails.
	waves := func(statuses ...string) []api.Wave {
		var out []api.Wave
		for i, s := range statuses {
			c := map[string]int{api.DeviceWaiting: 1}
			switch {
			case s == api.WaveFinished && i == 0:
				c = map[string]int{"Succeeded": 1}
			case s == api.WaveFinished:
				c = map[string]int{"Failed": 1}
			case s == api.WaveRunning:
				c = map[string]int{api.DevicePending: 1}
			}
			out = append(out, api.Wave{Number: i + 1, Devices: 1, Target: i + 1, Status: s, Counts: c})
		}
		return out
	}
	dep := func(seq uint64, status string, wave int, ws []api.Wave, mod func(*api.Deployment)) api.Event {
		d := &api.Deployment{ID: "d-w", Status: status, Wave: wave, Waves: ws, Counts: map[string]int{}}
		if mod != nil {
			mod(d)
		}
		return api.Event{Seq: seq, Kind: api.EventDeployment, Time: now, Deployment: d}
	}
	f.deployments["d-w"] = &api.Deployment{ID: "d-w", Bundle: api.Bundle{Flow: "web", Version: 1}, Status: api.DeploymentRunning, Created: now,
		Counts: map[string]int{api.DevicePending: 1, api.DeviceWaiting: 1}, Wave: 1, Waves: waves(api.WaveRunning, api.WaveWaiting)}
	f.events["d-w"] = []api.Event{
		dep(1, api.DeploymentRunning, 1, waves(api.WaveRunning, api.WaveWaiting), nil),
		{Seq: 2, Kind: api.EventDevice, Time: now, Run: &api.DeviceRun{Device: "edge-1", Status: "Succeeded"}},
		dep(3, api.DeploymentPaused, 1, waves(api.WaveFinished, api.WaveWaiting), func(d *api.Deployment) { d.AwaitingPromotion = true }),
		dep(4, api.DeploymentRunning, 2, waves(api.WaveFinished, api.WaveRunning), nil),
		{Seq: 5, Kind: api.EventDevice, Time: now, Run: &api.DeviceRun{Device: "edge-2", Status: "Failed"}},
		dep(6, api.DeploymentAborted, 2, waves(api.WaveFinished, api.WaveFinished), func(d *api.Deployment) {
			d.Abort = &api.AbortState{Reason: "1 of 2 finished devices failed"}
			d.Counts = map[string]int{"Succeeded": 1, "Failed": 1}
		}),
	}
	code, out, errs := f.run(t, "watch", "d-w")
	if code != ExitFailed {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	lines := strings.Split(out, "\n")
	i := 0
	for _, want := range []string{
		"edge-1: Succeeded",
		"wave 1 of 2 finished: 1/1 succeeded",
		"deployment d-w paused: wave 2 waits for a promotion (edgeflow promote d-w); still watching",
		"wave 2 of 2 started: 1 device(s), 2 in all",
		"edge-2: Failed",
		"wave 2 of 2 finished: 0/1 succeeded, 1 failed",
		"deployment d-w aborting: 1 of 2 finished devices failed; no device starts any more",
		"deployment d-w Aborted: 1/2 succeeded, 1 failed",
	} {
		for i < len(lines) && lines[i] != want {
			i++
		}
		if i == len(lines) {
			t.Fatalf("no line %q (in order) in\n%s", want, out)
		}
	}
}

func TestProgressBarWave(t *testing.T) {
	t.Setenv("COLUMNS", "200")
	var out bytes.Buffer
	d := &api.Deployment{ID: "d-b", Status: api.DeploymentRunning, Counts: map[string]int{"Succeeded": 1, api.DeviceWaiting: 1}, Wave: 1,
		Waves: []api.Wave{{Number: 1, Devices: 1, Target: 1, Status: api.WaveFinished}, {Number: 2, Devices: 1, Target: 2, Status: api.WaveWaiting}}}
	p := newProgress(&out, true, d)
	paused := *d
	paused.Status, paused.AwaitingPromotion = api.DeploymentPaused, true
	p.event(api.Event{Seq: 1, Kind: api.EventDeployment, Deployment: &paused})
	p.close()
	if s := out.String(); !strings.Contains(s, "[############............] 1/2 finished (wave 1/2, waits for promotion): 1 succeeded, 1 waiting") {
		t.Fatalf("%q", s)
	}
}
