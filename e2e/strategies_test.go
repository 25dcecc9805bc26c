package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/internal/fleettest"
	"github.com/edgeflow/edgeflow/onfailure"
)

// flakyFlow takes its flow-level failure strategies at deploy time; its
// one step fails on its first attempt on each device (it leaves a mark
// then) and succeeds on the next.
const flakyFlow = `version: 1
name: flaky
failureStrategies: input
steps:
  - name: flaky
    script: { run: 'm="@MARKS@/$EDGEFLOW_DEVICE_ID.tried"; if [ -e "$m" ]; then echo second try; exit 0; fi; touch "$m"; echo first try fails; exit 1' }
`

// TestStrategiesFromSet stores a strategy set "retry-once" (Retry, count 1,
// on AllErrors) and deploys a flow that says `failureStrategies: input`
// with --strategies retry-once: the step fails once, is retried, and
// `deploy --wait` exits 0. The same flow deployed without --strategies is
// rejected by the agent (nothing runs), and `deployment show` says that
// none were given.
func TestStrategiesFromSet(t *testing.T) {
	t.Parallel()
	f := fleettest.New(t, fleettest.Options{Devices: []fleettest.Device{{ID: "flaky-1"}}})
	marks := t.TempDir()
	flow := writeFlow(t, flakyFlow, marks)
	set := filepath.Join(t.TempDir(), "retry-once.yaml")
	if err := os.WriteFile(set, []byte("- errors: [AllErrors]\n  action: Retry\n  retry: { count: 1 }\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	expectCode(t, f.CLI("strategy-set", "put", "retry-once", set), 0)
	r := f.CLI("strategy-sets")
	expectCode(t, r, 0)
	if !strings.Contains(r.Stdout, "retry-once") {
		t.Errorf("strategy-sets does not list retry-once:\n%s", r)
	}

	r = f.CLI("deploy", flow, "--device", "flaky-1", "--strategies", "retry-once", "--key", f.Key.Private, "--wait")
	expectCode(t, r, 0)
	id := deploymentID(t, r)
	d := f.Controller.ShowDeployment(id)
	run := fleettest.DeviceRun(&d, "flaky-1")
	if d.Status != api.DeploymentSucceeded || d.StrategySet != "retry-once" || len(d.FailureStrategies) != 1 ||
		d.FailureStrategies[0].Action != onfailure.Retry || run == nil || len(run.Steps) == 0 || run.Steps[len(run.Steps)-1].Attempt != 2 {
		t.Errorf("deployment with retry-once: %s, set %q, strategies %+v, run %+v; want Succeeded on the second attempt", d.Status, d.StrategySet, d.FailureStrategies, run)
	}

	// Without strategies: refused by the agent before anything runs.
	if err := os.Remove(filepath.Join(marks, "flaky-1.tried")); err != nil {
		t.Fatal(err)
	}
	r = f.CLI("deploy", flow, "--device", "flaky-1", "--key", f.Key.Private, "--wait")
	expectCode(t, r, 1)
	id = deploymentID(t, r)
	show := f.CLI("deployment", "show", id)
	expectCode(t, show, 0)
	if !strings.Contains(show.Stdout, "Rejected") || !strings.Contains(show.Stdout, "but none were given") {
		t.Errorf("deployment show does not say the device rejected a flow given no strategies:\n%s", show)
	}
	if d := f.Controller.ShowDeployment(id); d.Status != api.DeploymentFailed {
		t.Errorf("deployment without strategies is %s, want Failed", d.Status)
	}
	if _, err := os.Stat(filepath.Join(marks, "flaky-1.tried")); !os.IsNotExist(err) {
		t.Errorf("the step ran on a flow given no strategies (%v)", err)
	}
}
