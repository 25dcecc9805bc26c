package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// script builds a deployment's event stream, numbering the events.
type script struct {
	id     string
	events []api.Event
}

func (s *script) dep(status string, counts map[string]int) *script {
	s.events = append(s.events, api.Event{Seq: uint64(len(s.events) + 1), Kind: api.EventDeployment, Time: now,
		Deployment: &api.Deployment{ID: s.id, Status: status, Created: now, Counts: counts}})
	return s
}

func (s *script) run(device, status string, steps ...api.StepRun) *script {
	s.events = append(s.events, api.Event{Seq: uint64(len(s.events) + 1), Kind: api.EventDevice, Time: now,
		Run:     &api.DeviceRun{Device: device, Status: status, Dispatch: "m-" + device, Steps: steps, Updated: now},
		Message: json.RawMessage(`{"type":"step-finished"}`)})
	return s
}

func step(name, status string, attempt int) api.StepRun {
	return api.StepRun{Name: name, Status: status, Attempt: attempt}
}

func failed(name, status string, attempt int, kind, msg string) api.StepRun {
	return api.StepRun{Name: name, Status: status, Attempt: attempt, Error: &transport.ErrorInfo{Type: onfailure.Kind(kind), Message: msg}}
}

var healthErr = "GET http://127.0.0.1:8080/health: 503"

// scenarios sets up the fake with a deployment per outcome: d-ok (every
// device succeeds), d-fail (one fails after a retry), d-cancel, d-slow
// (never ends) and d-done (had already failed; it has no stream).
func scenarios(f *fake) {
	pending := map[string]int{api.DevicePending: 2}
	add := func(s *script) {
		f.deployments[s.id] = &api.Deployment{ID: s.id, Bundle: api.Bundle{Flow: "web", Version: 9}, Status: api.DeploymentRunning, Created: now, Counts: pending}
		f.events[s.id] = s.events
	}
	add((&script{id: "d-ok"}).
		dep(api.DeploymentRunning, pending).
		run("edge-1", "Running", step("config", "Running", 1)).
		run("edge-1", "Running", step("config", "Succeeded", 1), step("health", "Running", 1)).
		run("edge-2", "Running", step("config", "Running", 1)).
		dep(api.DeploymentRunning, map[string]int{"Running": 2}).
		run("edge-1", "Succeeded", step("config", "Succeeded", 1), step("health", "Succeeded", 1)).
		run("edge-2", "Succeeded", step("config", "Succeeded", 1)).
		dep(api.DeploymentSucceeded, map[string]int{"Succeeded": 2}))
	add((&script{id: "d-fail"}).
		run("edge-1", "Succeeded", step("health", "Succeeded", 1)).
		run("edge-3", "Running", failed("health", "Running", 1, "Verification", healthErr)).
		run("edge-3", "Running", failed("health", "Running", 1, "Verification", healthErr)). // no news: no line
		run("edge-3", "RolledBack", failed("health", "Failed", 2, "Verification", healthErr)).
		dep(api.DeploymentFailed, map[string]int{"Succeeded": 1, "RolledBack": 1}))
	cancelled := (&script{id: "d-cancel"}).dep(api.DeploymentRunning, pending)
	cancelled.events[0].Deployment.Cancel = &api.Cancellation{By: "ops", Note: "wrong flow", Time: now}
	add(cancelled.
		run("edge-1", api.DeviceCancelled).
		run("edge-2", "Aborted").
		dep(api.DeploymentCancelled, map[string]int{api.DeviceCancelled: 1, "Aborted": 1}))
	add((&script{id: "d-slow"}).run("edge-1", "Running", step("pull", "Running", 1)))
	f.hold["d-slow"] = true
	f.deployments["d-done"] = &api.Deployment{ID: "d-done", Status: api.DeploymentFailed, Created: now,
		Counts: map[string]int{"Failed": 1},
		Devices: []api.DeviceRun{{Device: "edge-5", Status: "Failed", Updated: now,
			Steps: []api.StepRun{failed("health", "Failed", 1, "Verification", healthErr)}}}}
}

func TestWatchExitCodes(t *testing.T) {
	f := newFake(t)
	scenarios(f)
	cases := []struct {
		args []string
		code int
		out  []string // lines stdout must hold
		err  string   // stderr must hold
	}{
		{[]string{"watch", "d-ok"}, ExitOK, []string{
			"watching deployment d-ok: flow web version 9, 0/2 succeeded, 2 pending",
			"edge-1: Running (step config)", "edge-1: Running (step health)", "edge-2: Running (step config)",
			"edge-1: Succeeded", "edge-2: Succeeded",
			"deployment d-ok Succeeded: 2/2 succeeded"}, ""},
		{[]string{"watch", "d-fail"}, ExitFailed, []string{
			"edge-1: Succeeded",
			"edge-3: step health failed (Verification): " + healthErr,
			"edge-3: Running (step health)",
			"edge-3: step health failed on attempt 2 (Verification): " + healthErr,
			"edge-3: RolledBack",
			"deployment d-fail Failed: 1/2 succeeded, 1 rolled back"}, ""},
		{[]string{"watch", "d-cancel"}, ExitFailed, []string{
			"deployment d-cancel: cancel requested by ops: wrong flow",
			"edge-1: Cancelled", "edge-2: Aborted",
			"deployment d-cancel Cancelled: 0/2 succeeded, 1 aborted, 1 cancelled"}, ""},
		{[]string{"watch", "d-done"}, ExitFailed, []string{
			"edge-5: step health failed (Verification): " + healthErr,
			"deployment d-done Failed: 0/1 succeeded, 1 failed"}, ""},
		{[]string{"watch", "d-slow", "--timeout", "300ms"}, ExitTimeout, []string{"edge-1: Running (step pull)"},
			"timed out after 300ms: deployment d-slow is still Running: 0/2 succeeded, 1 running, 1 pending (edgeflow watch d-slow follows it)"},
		{[]string{"watch", "d-nope"}, ExitFailed, nil, "no deployment d-nope"},
		{[]string{"watch", "d-ok", "--timeout", "-1s"}, ExitInvalid, nil, "--timeout"},
		{[]string{"watch", "d-ok", "-o", "csv"}, ExitInvalid, nil, "want table, json or yaml"},
	}
	for _, c := range cases {
		code, out, errs := f.run(t, c.args...)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d\n%s%s", c.args, code, c.code, out, errs)
			continue
		}
		lines := strings.Split(out, "\n")
		i := 0
		for _, want := range c.out { // in this order
			for i < len(lines) && lines[i] != want {
				i++
			}
			if i == len(lines) {
				t.Errorf("%v: no line %q (in order) in\n%s", c.args, want, out)
				break
			}
		}
		if !strings.Contains(errs, c.err) {
			t.Errorf("%v: stderr %q lacks %q", c.args, errs, c.err)
		}
		if strings.Contains(out, "\x1b") || strings.Contains(out, "\r") {
			t.Errorf("%v: control codes in output that is not a terminal:\n%q", c.args, out)
		}
	}
	// d-fail's repeated event made no second line.
	_, out, _ := f.run(t, "watch", "d-fail")
	if n := strings.Count(out, "step health failed (Verification)"); n != 1 {
		t.Errorf("attempt 1's failure said %d times:\n%s", n, out)
	}
}

func TestWatchJSON(t *testing.T) {
	f := newFake(t)
	scenarios(f)
	code, out, errs := f.run(t, "watch", "d-fail", "-o", "json")
	if code != ExitFailed || !strings.Contains(errs, "deployment d-fail Failed") {
		t.Fatalf("%d %q", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(f.events["d-fail"]) {
		t.Fatalf("%d lines for %d events:\n%s", len(lines), len(f.events["d-fail"]), out)
	}
	for i, l := range lines {
		var e api.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.Seq != uint64(i+1) || e.Kind != f.events["d-fail"][i].Kind {
			t.Fatalf("line %d: %v %+v", i, err, e)
		}
		if e.Kind == api.EventDevice && string(e.Message) != `{"type":"step-finished"}` {
			t.Fatalf("line %d: message %s", i, e.Message)
		}
	}
	// Already final: its devices and itself, as events with seq 0.
	code, out, _ = f.run(t, "watch", "d-done", "-o", "json")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	var dev, dep api.Event
	if code != ExitFailed || len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &dev) != nil || json.Unmarshal([]byte(lines[1]), &dep) != nil ||
		dev.Run.Device != "edge-5" || dep.Deployment.Status != api.DeploymentFailed || dep.Deployment.Devices != nil {
		t.Fatalf("final: %d\n%s", code, out)
	}
	code, out, _ = f.run(t, "watch", "d-ok", "-o", "yaml")
	if code != ExitOK || strings.Count(out, "---\n") != len(f.events["d-ok"]) || !strings.Contains(out, "kind: deployment") {
		t.Fatalf("yaml: %d\n%s", code, out)
	}
}

func TestProgressOnATerminal(t *testing.T) {
	f := newFake(t)
	scenarios(f)
	var out bytes.Buffer
	p := newProgress(&out, true, f.deployments["d-fail"])
	p.draw()
	for _, e := range f.events["d-fail"] {
		p.event(e)
	}
	p.close()
	s := out.String()
	// The bar is redrawn in place, failures go above it, and it ends with
	// the final counts on its own line. Between the deployment's events,
	// it counts the devices' states from their events.
	for _, want := range []string{
		"\r\x1b[K[........................] 0/2 finished: 2 pending",
		"\r\x1b[K[############............] 1/2 finished: 1 succeeded, 1 pending",
		"\r\x1b[K[############............] 1/2 finished: 1 succeeded, 1 running",
		"\r\x1b[Kedge-3: step health failed (Verification): " + healthErr + "\n",
		"\r\x1b[Kedge-3: step health failed on attempt 2 (Verification): " + healthErr + "\n",
		"\r\x1b[K[########################] 2/2 finished: 1 succeeded, 1 rolled back\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("lacks %q in\n%q", want, s)
		}
	}
	if strings.Contains(s, "edge-1: Succeeded") {
		t.Errorf("a terminal gets the bar, not a line per change:\n%q", s)
	}
	if !strings.HasSuffix(s, "rolled back\n") {
		t.Errorf("does not end with the final bar: %q", s)
	}
}
