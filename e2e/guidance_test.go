package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/internal/fleettest"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// step2Error is the error guidedFlow's step2 fails with.
const step2Error = "exit status 75: database unreachable"

// pausedAt is a WaitDeployment condition: every device is Paused at step.
func pausedAt(step string, devices ...string) func(*api.Deployment) error {
	return func(d *api.Deployment) error {
		for _, dev := range devices {
			r := fleettest.DeviceRun(d, dev)
			if r == nil || r.Status != string(transport.StatusPaused) || r.Pause == nil || r.Pause.Step != step {
				return fmt.Errorf("deployment %s with %s: %s is not paused at %s", d.Status, statuses(d), dev, step)
			}
		}
		return nil
	}
}

// interventions returns `edgeflow interventions -o json`.
func interventions(t *testing.T, f *fleettest.Fleet) []api.Intervention {
	t.Helper()
	r := f.CLI("interventions", "-o", "json")
	expectCode(t, r, 0)
	var l api.InterventionList
	if err := json.Unmarshal([]byte(r.Stdout), &l); err != nil {
		t.Fatalf("interventions -o json: %v\n%s", err, r)
	}
	return l.Interventions
}

// agentStatus returns what `edgeflow-agent status -o json` says on the
// device: the flow it runs, or the last one it ran.
func agentStatus(t *testing.T, a *fleettest.Agent) (*engine.Result, error) {
	t.Helper()
	r := a.CLI("status", "-o", "json")
	if r.Code != 0 {
		return nil, fmt.Errorf("%s", r)
	}
	var res engine.Result
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, r)
	}
	return &res, nil
}

// stepStatus returns "STATUS/ATTEMPT" of each of the run's steps, by
// name.
func stepStatus(r *api.DeviceRun) map[string]string {
	m := map[string]string{}
	for _, s := range r.Steps {
		if s.Rollback == "" {
			m[s.Name] = fmt.Sprintf("%s/%d", s.Status, s.Attempt)
		}
	}
	return m
}

// TestGuidedFailureRetry deploys guidedFlow with --guided-failure 10m to
// one device: step2 fails and the device pauses instead of ending its
// flow; `deploy --wait` keeps waiting, the deployment is Paused, and
// `interventions` lists the device with step2 and its error kind. With
// the cause fixed, `guide ID --device D retry` runs step2 again: it
// succeeds, step3 runs, step1 ran once, the deployment Succeeds, and its
// audit records the guidance with who and the note.
func TestGuidedFailureRetry(t *testing.T) {
	t.Parallel()
	f := healthFleet(t, nil, "web-1")
	marks := t.TempDir()
	deploy := f.Controller.StartCLI("deploy", writeFlow(t, guidedFlow, marks), "--device", "web-1", "--key", f.Key.Private,
		"--guided-failure", "10m", "--wait")
	id := startedID(t, deploy)
	d := f.Controller.WaitDeployment(id, "web-1 paused at step2", pausedAt("step2", "web-1"))
	run := fleettest.DeviceRun(d, "web-1")
	if d.Status != api.DeploymentPaused || run.Pause.Error == nil || run.Pause.Error.Type != onfailure.Connectivity || run.Pause.Until == nil ||
		run.GuidedFailure == nil || run.GuidedFailure.Timeout != "10m" || run.GuidedFailure.OnTimeout != onfailure.Abort {
		t.Errorf("deployment %s; web-1's pause %+v, guided failure %+v; want Paused, a Connectivity error, a deadline, 10m then Abort",
			d.Status, run.Pause, run.GuidedFailure)
	}
	if marked(marks, "web-1", ".done") {
		t.Fatal("step3 ran while step2 was paused")
	}
	select {
	case <-deploy.Done():
		t.Fatalf("deploy --wait ended while the device waits for guidance:\n%s", deploy.Wait())
	default:
	}

	iv := f.CLI("interventions")
	expectCode(t, iv, 0)
	for _, want := range []string{
		"flow guided, step step2: 1 device(s) paused\n",
		"  Connectivity: " + step2Error + "\n",
		id + "  web-1 ",
	} {
		if !strings.Contains(iv.Stdout, want) {
			t.Errorf("interventions does not say %q:\n%s", want, iv)
		}
	}
	gs := interventions(t, f)
	if len(gs) != 1 || gs[0].Step != "step2" || gs[0].Kind != onfailure.Connectivity || gs[0].Message != step2Error ||
		len(gs[0].Devices) != 1 || gs[0].Devices[0].Deployment != id || gs[0].Devices[0].Device != "web-1" ||
		gs[0].Devices[0].Until == nil || !gs[0].Devices[0].Until.Equal(*run.Pause.Until) {
		t.Errorf("interventions: %+v, want one group of web-1 paused at step2 with Connectivity", gs)
	}

	touch(t, filepath.Join(marks, "web-1.fixed"))
	g := f.CLI("guide", id, "--device", "web-1", "retry", "--note", "database is back")
	expectCode(t, g, 0)
	if !strings.Contains(g.Stdout, "guidance Retry sent to web-1 of deployment "+id) {
		t.Errorf("guide does not say it sent Retry:\n%s", g)
	}
	r := deploy.Wait()
	expectCode(t, r, 0)
	if !strings.Contains(r.Stdout, "deployment "+id+" Succeeded: 1/1 succeeded") {
		t.Errorf("deploy --wait does not say the deployment succeeded:\n%s", r)
	}
	d2 := f.Controller.ShowDeployment(id)
	run = fleettest.DeviceRun(&d2, "web-1")
	if s := stepStatus(run); d2.Status != api.DeploymentSucceeded || run.Status != "Succeeded" ||
		s["step1"] != "Succeeded/1" || s["step2"] != "Succeeded/2" || s["step3"] != "Succeeded/1" {
		t.Errorf("deployment %s, web-1 %s with steps %v; want Succeeded, step2 on its second attempt", d2.Status, run.Status, s)
	}
	if got := readFile(t, filepath.Join(marks, "web-1.count")); got != "ran\n" || !marked(marks, "web-1", ".done") {
		t.Errorf("step1 ran %q, step3 ran: %v; want step1 once and step3", got, marked(marks, "web-1", ".done"))
	}
	want := api.AuditEntry{Time: d2.Audit[0].Time, By: login(t), Action: api.AuditGuide, Device: "web-1", Step: "step2",
		Guidance: onfailure.Retry, Note: "database is back"}
	if len(d2.Audit) != 1 || d2.Audit[0] != want {
		t.Errorf("audit %+v, want %+v", d2.Audit, want)
	}
	if gs := interventions(t, f); len(gs) != 0 {
		t.Errorf("interventions after the guidance: %+v, want none", gs)
	}
	res, err := agentStatus(t, f.Agent("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Guidance) != 1 || res.Guidance[0].Action != onfailure.Retry || res.Guidance[0].By != login(t) ||
		res.Guidance[0].Note != "database is back" || !res.Guidance[0].Guided {
		t.Errorf("the device's record of the guidance: %+v, want Retry by %s with the note, guided", res.Guidance, login(t))
	}
}

// TestGuidedFailureExclude rolls guidedFlow out in two waves (--waves
// 1,100%, no pause) with --abort-threshold 0 and --guided-failure 10m;
// step2 fails on the canary only, which pauses, holding the second wave
// back. `guide ... exclude` takes it out at once: the run is Excluded,
// its wave finishes without it, the second wave runs, and the deployment
// Succeeds: the excluded device counts neither against its result nor
// against the threshold (which would trip on any failure). The device's
// agent ends its flow as for Abort, and its later reports do not move the
// run.
func TestGuidedFailureExclude(t *testing.T) {
	t.Parallel()
	f := healthFleet(t, nil, "web-1", "web-2", "web-3")
	s := newSpy(t, f.Controller.BrokerURL(), "web-1")
	marks := t.TempDir()
	for _, dev := range []string{"web-2", "web-3"} {
		touch(t, filepath.Join(marks, dev+".fixed"))
	}
	deploy := f.Controller.StartCLI("deploy", writeFlow(t, guidedFlow, marks), "--selector", "role=web", "--key", f.Key.Private,
		"--waves", "1,100%", "--abort-threshold", "0", "--guided-failure", "10m", "--wait")
	id := startedID(t, deploy)
	d := f.Controller.WaitDeployment(id, "the canary paused at step2", pausedAt("step2", "web-1"))
	if d.Status != api.DeploymentPaused || statuses(d) != "web-1=Paused web-2=Waiting web-3=Waiting" {
		t.Errorf("deployment %s with %s; want Paused with web-1 Paused and the others Waiting", d.Status, statuses(d))
	}

	g := f.CLI("guide", id, "--device", "web-1", "exclude", "--note", "broken disk, replace it")
	expectCode(t, g, 0)
	if !strings.Contains(g.Stdout, "device web-1 excluded from deployment "+id) {
		t.Errorf("guide exclude does not say the device was excluded:\n%s", g)
	}
	r := deploy.Wait()
	expectCode(t, r, 0)
	if !strings.Contains(r.Stdout, "deployment "+id+" Succeeded: 2/3 succeeded, 1 excluded") {
		t.Errorf("deploy --wait does not say the deployment succeeded with one excluded:\n%s", r)
	}
	d2 := f.Controller.ShowDeployment(id)
	if d2.Status != api.DeploymentSucceeded || statuses(&d2) != "web-1=Excluded web-2=Succeeded web-3=Succeeded" || d2.Abort != nil {
		t.Errorf("deployment %s with %s, abort %+v; want Succeeded, web-1 Excluded, no abort", d2.Status, statuses(&d2), d2.Abort)
	}
	if len(d2.Audit) != 1 || d2.Audit[0].Guidance != onfailure.Exclude || d2.Audit[0].Device != "web-1" || d2.Audit[0].Note != "broken disk, replace it" {
		t.Errorf("audit %+v, want the Exclude of web-1 with its note", d2.Audit)
	}

	// The agent ends the excluded device's flow as it would for Abort.
	var res *engine.Result
	fleettest.WaitFor(t, "web-1's agent to end its flow", func() (err error) {
		if res, err = agentStatus(t, f.Agent("web-1")); err == nil && res.Status != engine.Failed {
			err = fmt.Errorf("the flow is %s", res.Status)
		}
		return err
	})
	if len(res.Guidance) != 1 || res.Guidance[0].Action != onfailure.Exclude || res.Guidance[0].By != login(t) {
		t.Errorf("web-1's record of the guidance: %+v, want Exclude by %s", res.Guidance, login(t))
	}
	if marked(marks, "web-1", ".done") {
		t.Error("web-1 ran step3 after it was excluded")
	}
	// Its reports reach the controller, which stores them (its logs are
	// readable) and acknowledges them, but the run stays Excluded.
	fleettest.WaitFor(t, "the controller to acknowledge web-1's flow-finished", func() error {
		if seq, acked, typ := s.lastEvent(); typ != transport.TypeFlowFinished || acked < seq {
			return fmt.Errorf("last event %d (%s), acked %d", seq, typ, acked)
		}
		return nil
	})
	logs := f.CLI("logs", id, "--device", "web-1")
	expectCode(t, logs, 0)
	if !strings.Contains(logs.Stdout, "==> step step2, attempt 1: Failed <==") {
		t.Errorf("logs of the excluded device lack step2's failure:\n%s", logs)
	}
	d3 := f.Controller.ShowDeployment(id)
	if d3.Status != api.DeploymentSucceeded || statuses(&d3) != "web-1=Excluded web-2=Succeeded web-3=Succeeded" {
		t.Errorf("after web-1's reports: deployment %s with %s; want it unchanged", d3.Status, statuses(&d3))
	}
}

// TestGuidedFailureGroup pauses two devices at the same step with the same
// error: `interventions` shows them as one group, and one `guide --group
// G ignore` reaches both; each ignores step2's failure (Ignored), runs
// step3 and succeeds, and the audit has one entry for the group.
func TestGuidedFailureGroup(t *testing.T) {
	t.Parallel()
	f := healthFleet(t, nil, "web-1", "web-2")
	marks := t.TempDir()
	r := f.CLI("deploy", writeFlow(t, guidedFlow, marks), "--selector", "role=web", "--key", f.Key.Private, "--guided-failure", "10m")
	expectCode(t, r, 0)
	id := deploymentID(t, r)
	f.Controller.WaitDeployment(id, "both devices paused at step2", pausedAt("step2", "web-1", "web-2"))

	gs := interventions(t, f)
	if len(gs) != 1 || len(gs[0].Devices) != 2 || gs[0].Step != "step2" || gs[0].Kind != onfailure.Connectivity || gs[0].Message != step2Error {
		t.Fatalf("interventions: %+v, want one group of both devices at step2 with Connectivity", gs)
	}
	group := gs[0].Group
	iv := f.CLI("interventions")
	expectCode(t, iv, 0)
	if strings.Count(iv.Stdout, "group g-") != 1 || !strings.Contains(iv.Stdout, "group "+group+": flow guided, step step2: 2 device(s) paused\n") {
		t.Errorf("interventions does not show one group of two devices:\n%s", iv)
	}

	g := f.CLI("guide", "--group", group, "ignore", "--note", "known issue")
	expectCode(t, g, 0)
	if !strings.Contains(g.Stdout, "guidance Ignore sent to 2 device(s) of group "+group) ||
		!strings.Contains(g.Stdout, id+"  web-1") || !strings.Contains(g.Stdout, id+"  web-2") {
		t.Errorf("guide --group does not list both devices:\n%s", g)
	}
	w := f.CLI("watch", id)
	expectCode(t, w, 0)
	d := f.Controller.ShowDeployment(id)
	if d.Status != api.DeploymentSucceeded {
		t.Errorf("deployment %s with %s, want Succeeded", d.Status, statuses(&d))
	}
	for _, dev := range []string{"web-1", "web-2"} {
		run := fleettest.DeviceRun(&d, dev)
		if s := stepStatus(run); run.Status != "Succeeded" || s["step2"] != "Ignored/1" || s["step3"] != "Succeeded/1" {
			t.Errorf("%s: %s with steps %v; want Succeeded, step2 Ignored, step3 Succeeded", dev, run.Status, s)
		}
		if !marked(marks, dev, ".done") {
			t.Errorf("%s did not run step3", dev)
		}
	}
	want := api.AuditEntry{Time: d.Audit[0].Time, By: login(t), Action: api.AuditGuide, Devices: 2, Step: "step2",
		Guidance: onfailure.Ignore, Group: group, Note: "known issue"}
	if len(d.Audit) != 1 || d.Audit[0] != want {
		t.Errorf("audit %+v, want %+v", d.Audit, want)
	}
}

// sleepFlow runs a step far longer than any wait of the test: it ends
// only when something stops it. after must not run when it fails.
const sleepFlow = `version: 1
name: sleepy
steps:
  - name: work
    script: { run: 'touch "@MARKS@/$EDGEFLOW_DEVICE_ID.started"; exec sleep 600' }
  - name: after
    script: { run: 'touch "@MARKS@/$EDGEFLOW_DEVICE_ID.after"' }
`

// TestMarkFailed: on a controller that does not allow it, `mark-failed`
// exits 1 with the controller's clear refusal and the device runs on; on
// one started with --allow-mark-failed, `mark-failed ID --all` stops the
// long step of every running device with UserMarkedFailure (guided
// failure does not pause it: someone already answered), the flow's
// strategies (none: Abort) end it Failed, and so does the deployment.
func TestMarkFailed(t *testing.T) {
	t.Parallel()
	t.Run("refused", func(t *testing.T) {
		t.Parallel()
		f := healthFleet(t, nil, "web-1")
		marks := t.TempDir()
		r := f.CLI("deploy", writeFlow(t, sleepFlow, marks), "--device", "web-1", "--key", f.Key.Private)
		expectCode(t, r, 0)
		id := deploymentID(t, r)
		f.Controller.WaitDeployment(id, "web-1 running step work", stepRunning("work", "web-1"))
		for _, args := range [][]string{{"--all"}, {"--device", "web-1"}} {
			m := f.CLI(append([]string{"mark-failed", id}, args...)...)
			expectCode(t, m, 1)
			if !strings.Contains(m.Stderr, "mark-failed is turned off on this controller: it stops running steps on devices, so the controller must allow it (edgeflow serve --allow-mark-failed)") {
				t.Errorf("mark-failed does not say it is turned off and how to allow it:\n%s", m)
			}
		}
		d := f.Controller.ShowDeployment(id)
		if s := stepStatus(fleettest.DeviceRun(&d, "web-1")); d.Status != api.DeploymentRunning || s["work"] != "Running/1" || len(d.Audit) != 0 {
			t.Errorf("after the refusal: deployment %s, steps %v, audit %+v; want still running work, nothing audited", d.Status, s, d.Audit)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		t.Parallel()
		f := fleettest.New(t, fleettest.Options{ControllerArgs: []string{"--allow-mark-failed"}, Devices: []fleettest.Device{
			{ID: "web-1", Labels: map[string]string{"role": "web"}}, {ID: "web-2", Labels: map[string]string{"role": "web"}},
		}})
		marks := t.TempDir()
		r := f.CLI("deploy", writeFlow(t, sleepFlow, marks), "--selector", "role=web", "--key", f.Key.Private, "--guided-failure", "10m")
		expectCode(t, r, 0)
		id := deploymentID(t, r)
		f.Controller.WaitDeployment(id, "both devices running step work", stepRunning("work", "web-1", "web-2"))
		waitMarks(t, marks, ".started", "web-1", "web-2")

		m := f.CLI("mark-failed", id, "--all", "--note", "hung on the old kernel")
		expectCode(t, m, 0)
		if !strings.Contains(m.Stdout, "mark-failed sent to every Running device (2) of deployment "+id) {
			t.Errorf("mark-failed does not say it reached both devices:\n%s", m)
		}
		// sleep 600 outlasts the watch's Deadline: watch ends only if
		// the steps were stopped.
		w := f.CLI("watch", id)
		expectCode(t, w, 1)
		if !strings.Contains(w.Stdout, "deployment "+id+" Failed: 0/2 succeeded, 2 failed") {
			t.Errorf("watch does not say both failed:\n%s", w)
		}
		d := f.Controller.ShowDeployment(id)
		if d.Status != api.DeploymentFailed {
			t.Errorf("deployment %s, want Failed", d.Status)
		}
		for _, dev := range []string{"web-1", "web-2"} {
			run := fleettest.DeviceRun(&d, dev)
			if run.Status != "Failed" || len(run.Steps) != 1 || run.Steps[0].Status != "Failed" ||
				run.Steps[0].Error == nil || run.Steps[0].Error.Type != onfailure.UserMarkedFailure {
				t.Errorf("%s: %s with steps %+v; want Failed, work Failed with UserMarkedFailure, after not run", dev, run.Status, run.Steps)
			}
			if marked(marks, dev, ".after") {
				t.Errorf("%s ran step after", dev)
			}
		}
		if len(d.Audit) != 1 || d.Audit[0].Action != api.AuditMarkFailed || d.Audit[0].Devices != 2 ||
			d.Audit[0].By != login(t) || d.Audit[0].Note != "hung on the old kernel" {
			t.Errorf("audit %+v, want one mark-failed of 2 devices by %s with the note", d.Audit, login(t))
		}
	})
}

// TestGuidedTimeoutWhileOffline: with the controller on Mosquitto and
// --guided-failure 10s:Abort (long enough to stop the broker first on a loaded machine), the device pauses at step2 and the broker is
// stopped. The agent keeps the time itself: cut off, it applies Abort
// when the pause times out (its own status shows it, by "agent"), while
// the controller still shows the device Paused. Once the broker is back,
// the controller receives resumed (Abort by agent) and flow-finished, and
// the deployment ends Failed.
func TestGuidedTimeoutWhileOffline(t *testing.T) {
	t.Parallel()
	m := brokertest.Mosquitto(t)
	f := fleettest.New(t, fleettest.Options{Broker: m.URL(), Devices: []fleettest.Device{{ID: "web-1", Labels: map[string]string{"role": "web"}}}})
	marks := t.TempDir()
	r := f.CLI("deploy", writeFlow(t, guidedFlow, marks), "--device", "web-1", "--key", f.Key.Private, "--guided-failure", "10s:Abort")
	expectCode(t, r, 0)
	id := deploymentID(t, r)
	d := f.Controller.WaitDeployment(id, "web-1 paused at step2", pausedAt("step2", "web-1"))
	m.Stop()
	until := fleettest.DeviceRun(d, "web-1").Pause.Until
	if until == nil {
		t.Fatal("the pause has no deadline")
	}
	if time.Now().After(*until) {
		t.Fatalf("the broker stopped after the pause's deadline (%s): the test could not cut the device off in time", until.Format(time.RFC3339Nano))
	}

	a := f.Agent("web-1")
	var res *engine.Result
	fleettest.WaitFor(t, "web-1's agent to apply the timeout while cut off", func() (err error) {
		if res, err = agentStatus(t, a); err == nil && res.Status != engine.Failed {
			err = fmt.Errorf("the flow is %s", res.Status)
		}
		return err
	})
	if len(res.Guidance) != 1 || res.Guidance[0].Action != onfailure.Abort || res.Guidance[0].By != "agent" || !res.Guidance[0].Guided ||
		res.Guidance[0].At.Before(*until) {
		t.Errorf("the device's record of the timeout: %+v, want Abort by agent at or after %s", res.Guidance, until)
	}
	d2 := f.Controller.ShowDeployment(id)
	if run := fleettest.DeviceRun(&d2, "web-1"); d2.Status != api.DeploymentPaused || run.Status != "Paused" {
		t.Errorf("while the broker is down: deployment %s, web-1 %s; want both still Paused (the controller cannot know)", d2.Status, run.Status)
	}

	m.Restart()
	w := f.CLI("watch", id)
	expectCode(t, w, 1)
	if !strings.Contains(w.Stdout, "deployment "+id+" Failed: 0/1 succeeded, 1 failed") {
		t.Errorf("watch does not say web-1 failed:\n%s", w)
	}
	d3 := f.Controller.ShowDeployment(id)
	run := fleettest.DeviceRun(&d3, "web-1")
	if s := stepStatus(run); d3.Status != api.DeploymentFailed || run.Status != "Failed" || run.Pause != nil ||
		s["step2"] != "Failed/1" || run.Error == nil || run.Error.Type != onfailure.Connectivity {
		t.Errorf("deployment %s, web-1 %s (error %+v, pause %+v) with steps %v; want Failed at step2 with Connectivity",
			d3.Status, run.Status, run.Error, run.Pause, s)
	}
	if marked(marks, "web-1", ".done") {
		t.Error("step3 ran after the Abort")
	}
	f.Controller.Stop()
	checkEvents(t, "web-1", guidedEvents(t, f.Controller.Data, id, "web-1"), []string{
		"step-started step1 1", "step-finished step1 1 Succeeded",
		"step-started step2 1", "paused step2 Connectivity",
		"resumed step2 Abort agent", "step-finished step2 1 Failed Connectivity",
		"flow-finished Failed",
	})
}

// guidedEvents is storedEvents with the pauses told apart: "paused STEP
// KIND" and "resumed STEP ACTION BY".
func guidedEvents(t *testing.T, data, deployment, device string) []string {
	t.Helper()
	evs := storedEvents(t, data, deployment, device)
	st, err := store.Open(data, store.Options{OpenTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	raw, err := st.Events(t.Context(), deployment, device)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range raw {
		m, err := transport.DecodeMessage(e.Message)
		if err != nil {
			t.Fatal(err)
		}
		switch b := m.Body.(type) {
		case *transport.Paused:
			evs[i] += " " + b.Step
			if b.Error != nil {
				evs[i] += " " + string(b.Error.Type)
			}
		case *transport.Resumed:
			evs[i] += fmt.Sprintf(" %s %s %s", b.Step, b.Action, b.By)
		}
	}
	return evs
}
