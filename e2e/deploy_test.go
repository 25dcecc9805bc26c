package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/internal/fleettest"
)

// appFlow installs a config on each device (in its own directory: see
// internal/fleettest) and checks it.
const appFlow = `version: 1
name: app
vars: { VERSION: "1" }
steps:
  - name: config
    file:
      - { content: "device=${{ device.id }}\nversion=${{ vars.VERSION }}\n", dest: /proc/self/cwd/app.conf, mode: "0644" }
    onFailure: [ { action: revertFiles, trigger: anyStep } ]
  - name: check
    verify: { command: 'grep -qx "version=2" /proc/$PPID/cwd/app.conf', interval: 200ms, timeout: 10s }
`

// TestDeploySucceeds deploys a flow to the devices a selector picks, with
// the embedded broker and with Mosquitto: `deploy --wait` exits 0, the
// deployment shows every selected device Succeeded, each of them has the
// file installed, and the device the selector left out has nothing.
func TestDeploySucceeds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		broker func(*testing.T) string
	}{
		{"embedded", func(*testing.T) string { return "" }},
		{"mosquitto", func(t *testing.T) string { return brokertest.Mosquitto(t).URL() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kiosk := map[string]string{"role": "kiosk"}
			f := fleettest.New(t, fleettest.Options{Broker: tc.broker(t), Devices: []fleettest.Device{
				{ID: "kiosk-1", Labels: kiosk}, {ID: "kiosk-2", Labels: kiosk}, {ID: "kiosk-3", Labels: kiosk},
				{ID: "sign-1", Labels: map[string]string{"role": "sign"}},
			}})
			flow := writeFlow(t, appFlow, "")

			r := f.CLI("deploy", flow, "--selector", "role=kiosk", "--key", f.Key.Private, "--var", "VERSION=2", "--wait")
			expectCode(t, r, 0)
			id := deploymentID(t, r)
			if !strings.Contains(r.Stdout, "deployment "+id+" Succeeded: 3/3 succeeded") {
				t.Errorf("deploy --wait does not say that all three succeeded:\n%s", r)
			}
			if !strings.Contains(r.Stderr, "signed by key "+f.Key.ID) {
				t.Errorf("deploy does not say it signed the bundle with key %s:\n%s", f.Key.ID, r)
			}

			d := f.Controller.ShowDeployment(id)
			if d.Status != api.DeploymentSucceeded || len(d.Devices) != 3 || d.Counts["Succeeded"] != 3 || d.Bundle.KeyID != f.Key.ID {
				t.Errorf("deployment show: status %s, counts %v, %d devices, key %q; want Succeeded on the 3 kiosks, signed by %s",
					d.Status, d.Counts, len(d.Devices), d.Bundle.KeyID, f.Key.ID)
			}
			for _, run := range d.Devices {
				if run.Status != "Succeeded" || len(run.Steps) != 2 || run.Steps[0].Name != "config" || run.Steps[1].Name != "check" {
					t.Errorf("%s: %s with steps %+v, want Succeeded after config and check", run.Device, run.Status, run.Steps)
				}
			}
			for _, id := range []string{"kiosk-1", "kiosk-2", "kiosk-3"} {
				want := fmt.Sprintf("device=%s\nversion=2\n", id)
				if got := readFile(t, filepath.Join(f.Agent(id).Dir, "app.conf")); got != want {
					t.Errorf("%s: app.conf is %q, want %q", id, got, want)
				}
			}
			if fleettest.DeviceRun(&d, "sign-1") != nil {
				t.Error("sign-1 (role=sign) is in a deployment to role=kiosk")
			}
			if _, err := os.Stat(filepath.Join(f.Agent("sign-1").Dir, "app.conf")); !os.IsNotExist(err) {
				t.Errorf("sign-1 (role=sign) got app.conf: %v", err)
			}
		})
	}
}

// kioskFlow installs version 2 of a config whose health check fails on
// devices with a display the new version does not support; the flow then
// rolls back, and revertFiles puts the old config back.
const kioskFlow = `version: 1
name: kiosk
rollbackOnFailure: true
failureStrategies:
  - { errors: [AllErrors], action: RollbackFlow }
steps:
  - name: config
    file:
      - { content: "version=2\ndisplay=${{ device.labels.display }}\n", dest: /proc/self/cwd/kiosk.conf }
    onFailure: [ { action: revertFiles, trigger: anyStep } ]
  - name: health
    verify:
      command: 'grep -Eqx "display=(hd|4k)" /proc/$PPID/cwd/kiosk.conf || { echo "display $(sed -n "s/^display=//p" /proc/$PPID/cwd/kiosk.conf) is not supported"; exit 1; }'
      interval: 200ms
      timeout: 1s
`

// TestRollbackOnOneDevice deploys a flow whose health check fails on one
// device only (its display label): `deploy --wait` exits 1, `deployment
// show` names that device RolledBack with the failing step and its error
// kind, `logs` shows the failing step's output, and the device has its
// old config back while the others have the new one.
func TestRollbackOnOneDevice(t *testing.T) {
	t.Parallel()
	f := fleettest.New(t, fleettest.Options{Devices: []fleettest.Device{
		{ID: "kiosk-1", Labels: map[string]string{"role": "kiosk", "display": "hd"}},
		{ID: "kiosk-2", Labels: map[string]string{"role": "kiosk", "display": "4k"}},
		{ID: "kiosk-3", Labels: map[string]string{"role": "kiosk", "display": "8k"}},
	}})
	for _, a := range f.Agents {
		if err := os.WriteFile(filepath.Join(a.Dir, "kiosk.conf"), []byte("version=1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	r := f.CLI("deploy", writeFlow(t, kioskFlow, ""), "--selector", "role=kiosk", "--key", f.Key.Private, "--wait")
	expectCode(t, r, 1)
	id := deploymentID(t, r)
	for _, want := range []string{
		"kiosk-3: step health failed (Verification): ",
		"kiosk-3: RolledBack",
		"deployment " + id + " Failed: 2/3 succeeded, 1 rolled back",
	} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("deploy --wait does not say %q:\n%s", want, r)
		}
	}

	show := f.CLI("deployment", "show", id)
	expectCode(t, show, 0)
	var row string
	for _, l := range strings.Split(show.Stdout, "\n") {
		if strings.HasPrefix(l, "kiosk-3 ") {
			row = strings.Join(strings.Fields(l), " ")
		}
	}
	if !strings.HasPrefix(row, "kiosk-3 RolledBack health Verification: ") {
		t.Errorf("deployment show's row of kiosk-3 is %q, want RolledBack, step health, Verification:\n%s", row, show)
	}
	if !strings.Contains(show.Stdout, "kiosk-3: step health failed (Verification): verify failed") ||
		!strings.Contains(show.Stdout, "display 8k is not supported") {
		t.Errorf("deployment show does not list kiosk-3's failing step in full:\n%s", show)
	}
	d := f.Controller.ShowDeployment(id)
	run := fleettest.DeviceRun(&d, "kiosk-3")
	if run == nil || run.Status != "RolledBack" || run.Error == nil || run.Error.Type != "Verification" {
		t.Fatalf("kiosk-3's run: %+v, want RolledBack with a Verification error", run)
	}
	if len(run.RollbackActions) != 1 || run.RollbackActions[0] != (api.RollbackActionRun{Step: "config", Action: "revertFiles", Trigger: "anyStep", Status: "Succeeded"}) {
		t.Errorf("kiosk-3's rollback actions: %+v, want revertFiles of config, Succeeded", run.RollbackActions)
	}

	logs := f.CLI("logs", id, "--device", "kiosk-3")
	expectCode(t, logs, 0)
	if !strings.Contains(logs.Stdout, "==> step health, attempt 1: Failed <==") || !strings.Contains(logs.Stdout, "display 8k is not supported") {
		t.Errorf("logs of kiosk-3 lack the health check's output:\n%s", logs)
	}

	for id, want := range map[string]string{
		"kiosk-1": "version=2\ndisplay=hd\n",
		"kiosk-2": "version=2\ndisplay=4k\n",
		"kiosk-3": "version=1\n",
	} {
		if got := readFile(t, filepath.Join(f.Agent(id).Dir, "kiosk.conf")); got != want {
			t.Errorf("%s: kiosk.conf is %q, want %q", id, got, want)
		}
	}
}
