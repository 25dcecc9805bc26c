package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/internal/fleettest"
)

// undoFlow installs version 2 of a config (its file step can put the old
// one back: revertFiles, anyStep) and checks it: the check fails on a
// device labelled health=bad.
const undoFlow = `version: 1
name: undo
steps:
  - name: config
    file:
      - { content: "version=2\nhealth=${{ device.labels.health }}\n", dest: /proc/self/cwd/undo.conf }
    onFailure: [ { action: revertFiles, trigger: anyStep } ]
  - name: check
    verify:
      command: 'grep -qx "health=good" /proc/$PPID/cwd/undo.conf || { echo "the device is unhealthy"; exit 1; }'
      interval: 200ms
      timeout: 1s
`

// TestRollbackOnAbort rolls a flow out to four devices in two waves with
// an abort threshold and --rollback-on-abort: in the first wave web-1
// succeeds and web-2 fails (1 of 2 failed: 50% > 40%), so the rollout
// aborts, web-3 and web-4 are Skipped and get nothing, and the controller
// sends web-1 (whose agent lists the rollback command) a rollback: its
// config is the old one again, its run RolledBack, and the deployment
// ends RolledBack; `deploy --wait` exits 1.
func TestRollbackOnAbort(t *testing.T) {
	t.Parallel()
	f := healthFleet(t, map[string]string{"web-2": "bad"}, "web-1", "web-2", "web-3", "web-4")
	for _, a := range f.Agents {
		if err := os.WriteFile(filepath.Join(a.Dir, "undo.conf"), []byte("version=1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := f.CLI("deploy", writeFlow(t, undoFlow, ""), "--selector", "role=web", "--key", f.Key.Private,
		"--waves", "2,100%", "--pause", "1s", "--abort-threshold", "40", "--min-sample", "2", "--rollback-on-abort", "--wait")
	expectCode(t, r, 1)
	id := deploymentID(t, r)
	for _, want := range []string{
		"deployment " + id + " aborting: 1 of 2 finished devices failed",
		"deployment " + id + " rolling back: 1 succeeded device(s) sent a rollback",
		"web-1: RollingBack",
		"web-1: RolledBack",
		"deployment " + id + " RolledBack: 0/4 succeeded, 1 failed, 1 rolled back, 2 skipped",
	} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("deploy --wait does not say %q:\n%s", want, r)
		}
	}

	d := f.Controller.ShowDeployment(id)
	if d.Status != api.DeploymentRolledBack || statuses(&d) != "web-1=RolledBack web-2=Failed web-3=Skipped web-4=Skipped" {
		t.Fatalf("deployment %s with %s; want RolledBack, web-1 RolledBack, web-2 Failed, web-3 and web-4 Skipped", d.Status, statuses(&d))
	}
	if d.Rollback == nil || d.Rollback.Devices != 1 || d.Rollback.RolledBack != 1 || d.Rollback.Failed != 0 || d.Rollback.Unsupported != 0 {
		t.Errorf("rollback %+v, want 1 device rolled back", d.Rollback)
	}
	run := fleettest.DeviceRun(&d, "web-1")
	if run.Rollback == nil || run.Rollback.Command == "" || run.Rollback.Finished == nil || run.Error != nil {
		t.Errorf("web-1's run: %+v, rollback %+v", run, run.Rollback)
	}
	if len(run.RollbackActions) != 1 || run.RollbackActions[0] != (api.RollbackActionRun{Step: "config", Action: "revertFiles", Trigger: "anyStep", Status: "Succeeded"}) {
		t.Errorf("web-1's rollback actions: %+v, want revertFiles of config, Succeeded", run.RollbackActions)
	}
	last := d.Audit[len(d.Audit)-1]
	if last.Action != api.AuditRollback || last.By != "controller" || !strings.Contains(last.Note, "over the threshold of 40%") {
		t.Errorf("audit %+v, want the controller's rollback with the threshold", d.Audit)
	}
	if got := readFile(t, filepath.Join(f.Agent("web-1").Dir, "undo.conf")); got != "version=1\n" {
		t.Errorf("web-1: undo.conf is %q after the rollback, want the old version=1", got)
	}
	for _, dev := range []string{"web-3", "web-4"} {
		if got := readFile(t, filepath.Join(f.Agent(dev).Dir, "undo.conf")); got != "version=1\n" {
			t.Errorf("%s got the flow (undo.conf is %q): it must not have run it", dev, got)
		}
	}

	show := f.CLI("deployment", "show", id)
	expectCode(t, show, 0)
	if !strings.Contains(show.Stdout, "rollback on abort: rolled back 1 of 1 succeeded device(s):\n  web-1: RolledBack\n") {
		t.Errorf("deployment show does not list the rollback:\n%s", show)
	}
	w := f.CLI("watch", id)
	expectCode(t, w, 1)
}
