package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/internal/fleettest"
)

// slowFlow has a step that takes a few seconds: it leaves
// @MARKS@/DEVICE.started when it starts; the step after it leaves
// @MARKS@/DEVICE.finished.
const slowFlow = `version: 1
name: slow
steps:
  - name: prepare
    script: { run: 'echo preparing' }
  - name: wait
    script: { run: 'touch "@MARKS@/$EDGEFLOW_DEVICE_ID.started"; sleep 2; echo waited' }
  - name: finish
    script: { run: 'touch "@MARKS@/$EDGEFLOW_DEVICE_ID.finished"; echo finished' }
`

// slowEvents is what every device reports for slowFlow after its
// accepted, once each.
var slowEvents = []string{
	"step-started prepare 1", "step-finished prepare 1 Succeeded",
	"step-started wait 1", "step-finished wait 1 Succeeded",
	"step-started finish 1", "step-finished finish 1 Succeeded",
	"flow-finished Succeeded",
}

// checkEvents checks a device's stored events: an accepted first, then
// the flow's events exactly as want says. The controller sends a Pending
// run's dispatch again when the device's presence comes in before its
// accepted, and the agent then reports its accepted again (docs/api.md,
// re-dispatch; docs/protocol.md): such repeats may come anywhere, but
// must name the same dispatch and execution.
func checkEvents(t *testing.T, device string, got, want []string) {
	t.Helper()
	var rest []string
	accepted := map[string]bool{}
	for _, e := range got {
		if strings.HasPrefix(e, "accepted ") {
			accepted[e] = true
			continue
		}
		rest = append(rest, e)
	}
	if len(got) == 0 || !strings.HasPrefix(got[0], "accepted ") || len(accepted) != 1 {
		t.Errorf("%s: the controller stored %q: want one accepted (of one dispatch and execution) first", device, got)
	}
	if strings.Join(rest, "|") != strings.Join(want, "|") {
		t.Errorf("%s: the controller stored\n%q\nwant (besides accepted)\n%q", device, got, want)
	}
}

// kiosks are the devices of kioskFleet.
var kiosks = []string{"kiosk-1", "kiosk-2", "kiosk-3"}

// kioskFleet starts a controller (with the embedded broker, or connected
// to broker) and the kiosks, labelled role=kiosk.
func kioskFleet(t *testing.T, broker string) *fleettest.Fleet {
	t.Helper()
	var devices []fleettest.Device
	for _, id := range kiosks {
		devices = append(devices, fleettest.Device{ID: id, Labels: map[string]string{"role": "kiosk"}})
	}
	return fleettest.New(t, fleettest.Options{Broker: broker, Devices: devices})
}

// TestBrokerRestart stops Mosquitto while every device runs a step that
// takes a few seconds, and starts it again once the devices ran the flow's
// last step: their reports of that time wait in their outboxes, the
// deployment completes, and the controller stored every device's step
// events exactly once each, in the flow's order.
func TestBrokerRestart(t *testing.T) {
	t.Parallel()
	m := brokertest.Mosquitto(t)
	f := kioskFleet(t, m.URL())
	marks := t.TempDir()
	deploy := f.Controller.StartCLI("deploy", writeFlow(t, slowFlow, marks), "--selector", "role=kiosk", "--key", f.Key.Private, "--wait")

	waitMarks(t, marks, ".started", kiosks...)
	id := deploymentID(t, fleettest.Result{Stdout: deploy.Stdout()})
	f.Controller.WaitDeployment(id, "every device running step wait", stepRunning("wait", kiosks...))
	m.Stop()
	waitMarks(t, marks, ".finished", kiosks...)
	m.Restart()

	r := deploy.Wait()
	expectCode(t, r, 0)
	if !strings.Contains(r.Stdout, "deployment "+id+" Succeeded: 3/3 succeeded") {
		t.Errorf("deploy --wait does not say that all three succeeded:\n%s", r)
	}
	for _, dev := range kiosks {
		logs := f.CLI("logs", id, "--device", dev)
		expectCode(t, logs, 0)
		if n := strings.Count(logs.Stdout, "==> step "); n != 3 || !strings.Contains(logs.Stdout, "==> step wait, attempt 1: Succeeded <==\nwaited\n") {
			t.Errorf("%s: logs show %d step logs, want prepare, wait and finish once each:\n%s", dev, n, logs)
		}
	}
	f.Controller.Stop()
	for _, dev := range kiosks {
		checkEvents(t, dev, storedEvents(t, f.Controller.Data, id, dev), slowEvents)
	}
}

// TestControllerRestart kills the controller (and so its embedded broker)
// while every device runs a step that takes a few seconds, and starts it
// again on the same data dir once the devices ran the flow's last step:
// `edgeflow watch`, following the deployment all along, reconnects and
// exits 0, every device counts as Succeeded, and the controller stored
// every device's step events exactly once each.
func TestControllerRestart(t *testing.T) {
	t.Parallel()
	f := kioskFleet(t, "")
	marks := t.TempDir()
	r := f.CLI("deploy", writeFlow(t, slowFlow, marks), "--selector", "role=kiosk", "--key", f.Key.Private)
	expectCode(t, r, 0)
	id := deploymentID(t, r)
	watch := f.Controller.StartCLI("watch", id)
	// watch gives up on a controller it cannot reach at its start: let it
	// follow the stream first.
	waitMarks(t, marks, ".started", kiosks...)
	fleettest.WaitFor(t, "watch to show every device running step wait", func() error {
		for _, dev := range kiosks {
			if !strings.Contains(watch.Stdout(), dev+": Running (step wait)\n") {
				return fmt.Errorf("watch printed %q", watch.Stdout())
			}
		}
		return nil
	})
	f.Controller.Kill()
	waitMarks(t, marks, ".finished", kiosks...)
	f.Controller.Start()

	w := watch.Wait()
	expectCode(t, w, 0)
	if !strings.Contains(w.Stdout, "deployment "+id+" Succeeded: 3/3 succeeded") {
		t.Errorf("watch does not say that all three succeeded:\n%s", w)
	}
	d := f.Controller.ShowDeployment(id)
	if d.Status != api.DeploymentSucceeded || len(d.Counts) != 1 || d.Counts["Succeeded"] != 3 {
		t.Errorf("deployment show: %s with counts %v, want Succeeded with 3 Succeeded", d.Status, d.Counts)
	}
	for _, run := range d.Devices {
		if len(run.Steps) != 3 || run.Steps[1].Name != "wait" || run.Steps[1].Attempt != 1 || run.Steps[1].Status != "Succeeded" {
			t.Errorf("%s: steps %+v, want prepare, wait and finish, each once", run.Device, run.Steps)
		}
	}
	f.Controller.Stop()
	for _, dev := range kiosks {
		checkEvents(t, dev, storedEvents(t, f.Controller.Data, id, dev), slowEvents)
	}
}

// resumeFlow's step work is cut by the test (SIGKILL of the agent) on its
// first attempt, and retried when the agent comes back; step after must
// run once.
const resumeFlow = `version: 1
name: resume
steps:
  - name: work
    script:
      run: |
        echo "attempt $EDGEFLOW_ATTEMPT" >> "@MARKS@/work.log"
        if [ "$EDGEFLOW_ATTEMPT" -gt 1 ]; then echo "resumed after the restart"; exit 0; fi
        touch "@MARKS@/$EDGEFLOW_DEVICE_ID.started"
        exec sleep 30
    failureStrategies:
      - { errors: [AgentRestart], action: Retry, retry: { count: 1, intervals: [1s] } }
  - name: after
    script: { run: 'echo after >> "@MARKS@/after.log"' }
`

// TestAgentKilledMidStep kills an agent with SIGKILL while a step runs
// and starts it again: it resumes the flow, the step fails with
// AgentRestart and its Retry runs it again, the deployment ends
// Succeeded, the step after it ran once, and the controller stored each
// attempt's events once.
func TestAgentKilledMidStep(t *testing.T) {
	t.Parallel()
	f := fleettest.New(t, fleettest.Options{Devices: []fleettest.Device{{ID: "kiosk-1", Labels: map[string]string{"role": "kiosk"}}}})
	marks := t.TempDir()
	r := f.CLI("deploy", writeFlow(t, resumeFlow, marks), "--device", "kiosk-1", "--key", f.Key.Private)
	expectCode(t, r, 0)
	id := deploymentID(t, r)

	waitMarks(t, marks, ".started", "kiosk-1")
	f.Controller.WaitDeployment(id, "kiosk-1 running step work", stepRunning("work", "kiosk-1"))
	a := f.Agent("kiosk-1")
	a.Kill()
	a.Start()

	w := f.CLI("watch", id)
	expectCode(t, w, 0)
	d := f.Controller.ShowDeployment(id)
	run := fleettest.DeviceRun(&d, "kiosk-1")
	if run == nil || run.Status != "Succeeded" || len(run.Steps) != 2 ||
		run.Steps[0].Name != "work" || run.Steps[0].Attempt != 2 || run.Steps[0].Status != "Succeeded" ||
		run.Steps[1].Name != "after" || run.Steps[1].Attempt != 1 || run.Steps[1].Status != "Succeeded" {
		t.Fatalf("kiosk-1's run: %+v, want Succeeded after work (attempt 2) and after (attempt 1)", run)
	}
	logs := f.CLI("logs", id, "--device", "kiosk-1", "-o", "json")
	expectCode(t, logs, 0)
	var ls api.LogList
	if err := json.Unmarshal([]byte(logs.Stdout), &ls); err != nil {
		t.Fatalf("logs -o json: %v\n%s", err, logs)
	}
	var got []string
	for _, l := range ls.Logs {
		got = append(got, fmt.Sprintf("%s %d %s %q", l.Step, l.Attempt, l.Status, l.Log))
	}
	if want := []string{`work 1 Failed ""`, `work 2 Succeeded "resumed after the restart\n"`, `after 1 Succeeded ""`}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("logs of kiosk-1:\n%q\nwant\n%q", got, want)
	}
	f.Controller.Stop()
	checkEvents(t, "kiosk-1", storedEvents(t, f.Controller.Data, id, "kiosk-1"), []string{
		"step-started work 1", "step-finished work 1 Failed AgentRestart",
		"step-started work 2", "step-finished work 2 Succeeded",
		"step-started after 1", "step-finished after 1 Succeeded",
		"flow-finished Succeeded",
	})
	if got := readFile(t, filepath.Join(marks, "work.log")); got != "attempt 1\nattempt 2\n" {
		t.Errorf("step work ran %q, want attempts 1 and 2", got)
	}
	if got := readFile(t, filepath.Join(marks, "after.log")); got != "after\n" {
		t.Errorf("step after ran %q, want once", got)
	}
}
