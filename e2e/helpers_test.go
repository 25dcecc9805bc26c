package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/internal/fleettest"
	"github.com/edgeflow/edgeflow/transport"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// writeFlow writes a flow document into a new directory and returns its
// path. Each @MARKS@ in doc becomes marks, a directory the flow's scripts
// leave marks in.
func writeFlow(t *testing.T, doc, marks string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flow.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(doc, "@MARKS@", marks)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// expectCode fails t unless the command exited with code.
func expectCode(t *testing.T, r fleettest.Result, code int) {
	t.Helper()
	if r.Code != code {
		t.Fatalf("want exit %d, got:\n%s", code, r)
	}
}

// deploymentID is the deployment id `edgeflow deploy` printed: the first
// line of its stdout.
func deploymentID(t *testing.T, r fleettest.Result) string {
	t.Helper()
	id, _, _ := strings.Cut(r.Stdout, "\n")
	if !strings.HasPrefix(id, "dep-") {
		t.Fatalf("deploy printed no deployment id:\n%s", r)
	}
	return id
}

// readFile returns the content of a file, or "(missing)".
func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return "(missing)"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// waitMarks waits until dir holds NAME.suffix for every device.
func waitMarks(t *testing.T, dir, suffix string, devices ...string) {
	t.Helper()
	fleettest.WaitFor(t, "*"+suffix+" marks of "+strings.Join(devices, ", "), func() error {
		for _, d := range devices {
			if _, err := os.Stat(filepath.Join(dir, d+suffix)); err != nil {
				return err
			}
		}
		return nil
	})
}

// stepRunning is a WaitDeployment condition: every device runs step.
func stepRunning(step string, devices ...string) func(*api.Deployment) error {
	return func(d *api.Deployment) error {
		for _, dev := range devices {
			r := fleettest.DeviceRun(d, dev)
			if r == nil {
				return fmt.Errorf("no run on %s", dev)
			}
			ok := false
			for _, s := range r.Steps {
				ok = ok || s.Name == step && s.Status == string(transport.StatusRunning)
			}
			if !ok {
				return fmt.Errorf("%s is %s with steps %+v, not running %s", dev, r.Status, r.Steps, step)
			}
		}
		return nil
	}
}

// storedEvents opens the data dir of a stopped controller and returns the
// events it stored for a deployment and device, by seq, each written as
// "TYPE [STEP ATTEMPT] [STATUS [ERROR KIND]]" ("step-finished wait 1
// Succeeded", "step-finished work 1 Failed AgentRestart"; "accepted
// DISPATCH EXECUTION"). It fails t unless the seqs follow each
// other without a gap.
func storedEvents(t *testing.T, data, deployment, device string) []string {
	t.Helper()
	st, err := store.Open(data, store.Options{OpenTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("open the controller's store (the controller must be stopped): %v", err)
	}
	defer st.Close()
	evs, err := st.Events(context.Background(), deployment, device)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, e := range evs {
		if i > 0 && e.Seq != evs[i-1].Seq+1 {
			t.Errorf("%s: stored event seqs jump from %d to %d", device, evs[i-1].Seq, e.Seq)
		}
		m, err := transport.DecodeMessage(e.Message)
		if err != nil {
			t.Fatalf("%s: stored event %d: %v", device, e.Seq, err)
		}
		s := string(m.Type)
		switch b := m.Body.(type) {
		case *transport.Accepted:
			s += fmt.Sprintf(" %s %s", b.Dispatch, b.Execution)
		case *transport.StepStarted:
			s += fmt.Sprintf(" %s %d", b.Step, b.Attempt)
		case *transport.StepFinished:
			s += fmt.Sprintf(" %s %d %s", b.Step, b.Attempt, b.Status)
			if b.Error != nil {
				s += " " + string(b.Error.Type)
			}
		case *transport.RollbackAction:
			s += fmt.Sprintf(" %s %s %s", b.Step, b.Action, b.Status)
		case *transport.FlowFinished:
			s += " " + string(b.Status)
		}
		out = append(out, s)
	}
	return out
}
