package controller_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/agent"
	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/transport"
)

// flowBundle builds an unsigned bundle of the flow document doc.
func flowBundle(t *testing.T, doc string, version uint64) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := packaging.Build(filepath.Join(dir, "flow.yaml"), &buf, packaging.Options{Version: version}); err != nil {
		t.Fatalf("build bundle: %v", err)
	}
	return buf.Bytes()
}

// TestAgentEndToEnd runs the real agent daemon (edgeflow-agent run)
// against the controller: it downloads a dispatched bundle from the
// controller's URL, runs it and reports; then a running deployment is
// cancelled.
func TestAgentEndToEnd(t *testing.T) {
	e := newEnv(t, nil)
	work := t.TempDir()
	d, err := agent.NewDaemon(agent.DaemonOptions{
		Config: agent.Config{
			StateDir: t.TempDir(), DeviceID: "edge-lab-1", Labels: map[string]string{"site": "lab"},
			Logger: brokertest.TestLogger(t).With("component", "agent"),
		},
		Broker: e.broker, AllowUnsigned: true, Version: "e2e", Retransmit: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := d.Run(ctx); err != nil {
			t.Errorf("agent daemon: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	eventually(t, "the agent online", func() bool {
		dev, err := e.ctrl.Device(bg, "edge-lab-1")
		return err == nil && dev.Status == transport.Online && dev.Agent == "e2e"
	})

	ok := e.addBundle(flowBundle(t, `version: 1
name: hello
steps:
  - name: greet
    script: { run: "echo hello from the flow" }
`, 1))
	dep, err := e.ctrl.Create(bg, api.CreateDeployment{Bundle: ok.SHA256, Selector: map[string]string{"site": "lab"}})
	if err != nil {
		t.Fatal(err)
	}
	final := e.waitDeployment(dep.ID, api.DeploymentSucceeded)
	r := final.Devices[0]
	if r.Execution == "" || len(r.Steps) != 1 || r.Steps[0].Name != "greet" || r.Steps[0].Status != "Succeeded" {
		t.Fatalf("run: %+v", r)
	}
	logs, err := e.ctrl.Logs(bg, dep.ID, "edge-lab-1", "greet")
	if err != nil || len(logs) != 1 || !strings.Contains(logs[0].Log, "hello from the flow") {
		t.Fatalf("logs: %+v %v", logs, err)
	}

	// A long step, cancelled while it runs.
	started := filepath.Join(work, "started")
	slow := e.addBundle(flowBundle(t, `version: 1
name: slow
steps:
  - name: wait
    script: { run: "touch `+started+`; sleep 60" }
`, 2))
	dep, err = e.ctrl.Create(bg, api.CreateDeployment{Bundle: slow.SHA256, Devices: []string{"edge-lab-1"}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the slow step started", func() bool { _, err := os.Stat(started); return err == nil })
	e.waitRun(dep.ID, "edge-lab-1", "Running")
	if _, err := e.ctrl.Cancel(bg, dep.ID, api.Cancel{By: "e2e", Note: "too slow"}); err != nil {
		t.Fatal(err)
	}
	final = e.waitDeployment(dep.ID, api.DeploymentCancelled)
	r = final.Devices[0]
	if r.Status == "Succeeded" || r.Status == api.DeviceCancelled || r.Error == nil {
		t.Fatalf("cancelled run: %+v, want the flow's end with its error", r)
	}
	if cmds, _ := e.st.Commands(bg, ""); len(cmds) != 0 {
		t.Fatalf("pending commands left: %+v", cmds)
	}
}
