package e2e

import (
	"cmp"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/internal/fleettest"
)

// canaryFlow waits at its gate until @MARKS@/go exists (so that a test
// can look at a wave while its device still runs), then installs a config
// naming the device's health label and checks it: the check fails on a
// device labelled health=bad.
const canaryFlow = `version: 1
name: canary
steps:
  - name: gate
    script: { run: 'while [ ! -f "@MARKS@/go" ]; do sleep 0.1; done; echo through' }
  - name: config
    file:
      - { content: "health=${{ device.labels.health }}\n", dest: /proc/self/cwd/canary.conf }
  - name: check
    verify:
      command: 'grep -qx "health=good" /proc/$PPID/cwd/canary.conf || { echo "the device is unhealthy"; exit 1; }'
      interval: 200ms
      timeout: 1s
`

// healthFleet starts a fleet of devices labelled role=web, each with the
// health label health gives it ("good" when not given).
func healthFleet(t *testing.T, health map[string]string, ids ...string) *fleettest.Fleet {
	t.Helper()
	var devices []fleettest.Device
	for _, id := range ids {
		devices = append(devices, fleettest.Device{ID: id, Labels: map[string]string{"role": "web", "health": cmp.Or(health[id], "good")}})
	}
	return fleettest.New(t, fleettest.Options{Devices: devices})
}

// touch creates an empty file.
func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// missing fails t unless every device's directory lacks name: the device
// got nothing of the flow that installs it.
func missing(t *testing.T, f *fleettest.Fleet, name string, devices ...string) {
	t.Helper()
	for _, dev := range devices {
		if got := readFile(t, filepath.Join(f.Agent(dev).Dir, name)); got != "(missing)" {
			t.Errorf("%s got %s (%q): it must not have run the flow", dev, name, got)
		}
	}
}

// statuses returns each device's run status: "dev-1=Succeeded dev-2=Waiting".
func statuses(d *api.Deployment) string {
	var parts []string
	for _, r := range d.Devices {
		parts = append(parts, r.Device+"="+r.Status)
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// login is the name the CLI records as who made a request: the login
// name of whoever runs it.
func login(t *testing.T) string {
	t.Helper()
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}

// startedID waits until a `deploy` running in the background printed its
// deployment id and returns it.
func startedID(t *testing.T, c *fleettest.Command) string {
	t.Helper()
	fleettest.WaitFor(t, "deploy to print the deployment id", func() error {
		if !strings.Contains(c.Stdout(), "\n") {
			return fmt.Errorf("stdout %q", c.Stdout())
		}
		return nil
	})
	return deploymentID(t, fleettest.Result{Stdout: c.Stdout()})
}

// TestWavesCanarySucceeds rolls a flow out in two waves with a manual
// pause (--waves 1,100% --pause manual) over three devices: while the
// canary runs, the other two are Waiting with nothing installed and
// promote is refused (the wave still runs); once the canary succeeded the
// deployment is Paused and waits for a promotion, still without touching
// the others; promote starts the second wave, every device succeeds, and
// the audit records the promotion with who and why.
func TestWavesCanarySucceeds(t *testing.T) {
	t.Parallel()
	f := healthFleet(t, nil, "web-1", "web-2", "web-3")
	marks := t.TempDir()
	r := f.CLI("deploy", writeFlow(t, canaryFlow, marks), "--selector", "role=web", "--key", f.Key.Private,
		"--waves", "1,100%", "--pause", "manual")
	expectCode(t, r, 0)
	id := deploymentID(t, r)

	d := f.Controller.WaitDeployment(id, "the canary running its gate", stepRunning("gate", "web-1"))
	if d.Status != api.DeploymentRunning || statuses(d) != "web-1=Running web-2=Waiting web-3=Waiting" ||
		len(d.Waves) != 2 || d.Waves[0].Status != api.WaveRunning || d.Waves[1].Status != api.WaveWaiting {
		t.Fatalf("while the canary runs: deployment %s with %s, waves %+v; want Running, web-1 Running, the others Waiting, wave 2 Waiting",
			d.Status, statuses(d), d.Waves)
	}
	p := f.CLI("promote", id)
	expectCode(t, p, 1)
	if !strings.Contains(p.Stderr, "wave 1 of deployment "+id+" is still running") {
		t.Errorf("promote while the canary runs does not say that wave 1 still runs:\n%s", p)
	}

	touch(t, filepath.Join(marks, "go"))
	d = f.Controller.WaitDeployment(id, "wave 1 finished, waiting for a promotion", func(d *api.Deployment) error {
		if !d.AwaitingPromotion {
			return fmt.Errorf("deployment %s with %s, not awaiting a promotion", d.Status, statuses(d))
		}
		return nil
	})
	if d.Status != api.DeploymentPaused || statuses(d) != "web-1=Succeeded web-2=Waiting web-3=Waiting" || d.Waves[0].Status != api.WaveFinished {
		t.Errorf("after the canary: deployment %s with %s, waves %+v; want Paused, web-1 Succeeded, the others Waiting, wave 1 Finished",
			d.Status, statuses(d), d.Waves)
	}
	show := f.CLI("deployment", "show", id)
	expectCode(t, show, 0)
	if !strings.Contains(show.Stdout, "wave 1 of 2 finished: the next waits for a promotion (edgeflow promote "+id+")") {
		t.Errorf("deployment show does not say that wave 2 waits for a promotion:\n%s", show)
	}
	missing(t, f, "canary.conf", "web-2", "web-3")

	p = f.CLI("promote", id, "--note", "canary looks fine")
	expectCode(t, p, 0)
	if !strings.Contains(p.Stdout, "deployment "+id+": wave 2 of 2 started (2 devices, 3 in all)") {
		t.Errorf("promote does not say that wave 2 started:\n%s", p)
	}
	w := f.CLI("watch", id)
	expectCode(t, w, 0)
	if !strings.Contains(w.Stdout, "deployment "+id+" Succeeded: 3/3 succeeded") {
		t.Errorf("watch does not say that all three succeeded:\n%s", w)
	}
	d2 := f.Controller.ShowDeployment(id)
	if d2.Status != api.DeploymentSucceeded || d2.Wave != 2 || d2.Waves[1].Status != api.WaveFinished {
		t.Errorf("deployment %s in wave %d, waves %+v; want Succeeded with wave 2 Finished", d2.Status, d2.Wave, d2.Waves)
	}
	for _, dev := range []string{"web-1", "web-2", "web-3"} {
		if got := readFile(t, filepath.Join(f.Agent(dev).Dir, "canary.conf")); got != "health=good\n" {
			t.Errorf("%s: canary.conf is %q, want health=good", dev, got)
		}
	}
	if len(d2.Audit) != 1 || d2.Audit[0].Action != api.AuditPromote || d2.Audit[0].Wave != 2 ||
		d2.Audit[0].By != login(t) || d2.Audit[0].Note != "canary looks fine" {
		t.Errorf("audit %+v, want the promotion to wave 2 by %s with its note", d2.Audit, login(t))
	}
}

// TestWavesCanaryFails deploys a flow whose check fails on the canary
// only (its health label), in two waves with a manual pause. Without an
// abort threshold, the deployment waits for a person after the failed
// canary (docs/rollouts.md: a manual pause waits, failures or not): the
// other devices stay Waiting and get nothing, and a cancel then ends the
// deployment Cancelled with them Cancelled. With --abort-threshold 0 the
// canary's failure trips the threshold: the others are Skipped at once,
// the deployment ends Aborted (`deploy --wait` exits 1) with the wave of
// the canary Finished, promote is refused, and again the others got
// nothing. A canary that never answers is cancelled at once, and its wave
// is Finished with it.
func TestWavesCanaryFails(t *testing.T) {
	t.Parallel()
	f := healthFleet(t, map[string]string{"web-1": "bad"}, "web-1", "web-2", "web-3")
	marks := t.TempDir()
	touch(t, filepath.Join(marks, "go"))
	flow := writeFlow(t, canaryFlow, marks)

	// Without a threshold: the manual pause holds the next wave back.
	r := f.CLI("deploy", flow, "--selector", "role=web", "--key", f.Key.Private, "--waves", "1,100%", "--pause", "manual")
	expectCode(t, r, 0)
	id := deploymentID(t, r)
	d := f.Controller.WaitDeployment(id, "the failed canary's wave finished", func(d *api.Deployment) error {
		if !d.AwaitingPromotion {
			return fmt.Errorf("deployment %s with %s, not awaiting a promotion", d.Status, statuses(d))
		}
		return nil
	})
	if d.Status != api.DeploymentPaused || statuses(d) != "web-1=Failed web-2=Waiting web-3=Waiting" {
		t.Errorf("after the canary failed: deployment %s with %s; want Paused, web-1 Failed, the others Waiting", d.Status, statuses(d))
	}
	if run := fleettest.DeviceRun(d, "web-1"); run == nil || run.Error == nil || run.Error.Type != "Verification" {
		t.Errorf("web-1's run: %+v, want a Verification error", run)
	}
	missing(t, f, "canary.conf", "web-2", "web-3")
	c := f.CLI("cancel", id, "--note", "the canary failed")
	expectCode(t, c, 0)
	if !strings.Contains(c.Stdout, "deployment "+id+" Cancelled") {
		t.Errorf("cancel does not say the deployment ended Cancelled:\n%s", c)
	}
	w := f.CLI("watch", id)
	expectCode(t, w, 1)
	d2 := f.Controller.ShowDeployment(id)
	if d2.Status != api.DeploymentCancelled || statuses(&d2) != "web-1=Failed web-2=Cancelled web-3=Cancelled" {
		t.Errorf("after the cancel: deployment %s with %s; want Cancelled, web-1 Failed, the others Cancelled", d2.Status, statuses(&d2))
	}

	// With --abort-threshold 0: the canary's failure trips it.
	r = f.CLI("deploy", flow, "--selector", "role=web", "--key", f.Key.Private, "--waves", "1,100%", "--pause", "manual",
		"--abort-threshold", "0", "--wait")
	expectCode(t, r, 1)
	id = deploymentID(t, r)
	for _, want := range []string{
		"web-1: step check failed (Verification): ",
		"deployment " + id + " aborting: 1 of 1 finished devices failed with AllErrors: 100%, over the threshold of 0% (minimum sample 0); no device starts any more",
		"deployment " + id + " Aborted: 0/3 succeeded, 1 failed, 2 skipped",
	} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("deploy --wait does not say %q:\n%s", want, r)
		}
	}
	d3 := f.Controller.ShowDeployment(id)
	if d3.Status != api.DeploymentAborted || statuses(&d3) != "web-1=Failed web-2=Skipped web-3=Skipped" ||
		d3.Abort == nil || d3.Abort.Failed != 1 || d3.Abort.Finished != 1 || d3.AwaitingPromotion {
		t.Errorf("deployment %s with %s, abort %+v, awaiting promotion %v; want Aborted, web-1 Failed, the others Skipped, 1 of 1 failed",
			d3.Status, statuses(&d3), d3.Abort, d3.AwaitingPromotion)
	}
	if len(d3.Waves) != 2 || d3.Waves[0].Status != api.WaveFinished || d3.Waves[1].Status != api.WaveWaiting {
		t.Errorf("waves %+v; want wave 1 Finished (its device did), wave 2 Waiting (never started)", d3.Waves)
	}
	p := f.CLI("promote", id)
	expectCode(t, p, 1)
	if !strings.Contains(p.Stderr, "deployment "+id+" has already ended: Aborted") {
		t.Errorf("promote of the aborted deployment does not say it ended Aborted:\n%s", p)
	}
	missing(t, f, "canary.conf", "web-2", "web-3")

	// A canary that never answers (its agent is stopped): a cancel ends
	// its dispatch, and so the deployment and its first wave, at once.
	f.Agent("web-1").Stop()
	r = f.CLI("deploy", flow, "--selector", "role=web", "--key", f.Key.Private, "--waves", "1,100%", "--pause", "manual")
	expectCode(t, r, 0)
	id = deploymentID(t, r)
	c = f.CLI("cancel", id)
	expectCode(t, c, 0)
	d4 := f.Controller.ShowDeployment(id)
	if d4.Status != api.DeploymentCancelled || statuses(&d4) != "web-1=Cancelled web-2=Cancelled web-3=Cancelled" ||
		len(d4.Waves) != 2 || d4.Waves[0].Status != api.WaveFinished || d4.Waves[1].Status != api.WaveWaiting {
		t.Errorf("cancelled with the canary pending: deployment %s with %s, waves %+v; want Cancelled, every device Cancelled, wave 1 Finished, wave 2 Waiting",
			d4.Status, statuses(&d4), d4.Waves)
	}
}

// guidedFlow counts its runs (step1 appends to @MARKS@/DEVICE.count),
// fails at step2 (exit 75, which errorTypes makes Connectivity) until
// @MARKS@/DEVICE.fixed exists, and leaves @MARKS@/DEVICE.done at step3.
// step2's error message is the same on every device.
const guidedFlow = `version: 1
name: guided
steps:
  - name: step1
    script: { run: 'echo ran >> "@MARKS@/$EDGEFLOW_DEVICE_ID.count"' }
  - name: step2
    script:
      run: 'test -f "@MARKS@/$EDGEFLOW_DEVICE_ID.fixed" || { echo "database unreachable"; exit 75; }'
      errorTypes: { "75": Connectivity }
  - name: step3
    script: { run: 'touch "@MARKS@/$EDGEFLOW_DEVICE_ID.done"' }
`

// marked reports whether the flow left @MARKS@/DEVICE.suffix.
func marked(marks, device, suffix string) bool {
	_, err := os.Stat(filepath.Join(marks, device+suffix))
	return err == nil
}

// TestAbortThresholdThenRetryFailedOnly rolls out to four devices in
// three waves (--waves 1,2,100% --pause 1s --abort-threshold 40
// --min-sample 2); the flow fails on the first two. The first failure
// does not trip the threshold (below the minimum sample) nor hold back
// the second wave; the second failure trips it (2 of 2): the last two
// devices are Skipped and get nothing, the deployment ends Aborted, and
// `deploy --wait` and `watch` exit 1. Then, with the cause fixed, `retry
// --failed-only` makes a new deployment, linked to the first, of the two
// failed devices only (not the Skipped ones), and it succeeds; the
// first's audit records the retry.
func TestAbortThresholdThenRetryFailedOnly(t *testing.T) {
	t.Parallel()
	devices := []string{"web-1", "web-2", "web-3", "web-4"}
	f := healthFleet(t, nil, devices...)
	marks := t.TempDir()
	for _, dev := range []string{"web-3", "web-4"} {
		touch(t, filepath.Join(marks, dev+".fixed"))
	}
	r := f.CLI("deploy", writeFlow(t, guidedFlow, marks), "--selector", "role=web", "--key", f.Key.Private,
		"--waves", "1,2,100%", "--pause", "1s", "--abort-threshold", "40", "--min-sample", "2", "--wait")
	expectCode(t, r, 1)
	id := deploymentID(t, r)
	for _, want := range []string{
		"web-1: step step2 failed (Connectivity): exit status 75: database unreachable",
		"wave 2 of 3 started",
		"deployment " + id + " aborting: 2 of 2 finished devices failed with AllErrors: 100%, over the threshold of 40% (minimum sample 2); no device starts any more",
		"deployment " + id + " Aborted: 0/4 succeeded, 2 failed, 2 skipped",
	} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("deploy --wait does not say %q:\n%s", want, r)
		}
	}
	if strings.Contains(r.Stdout, "wave 3 of 3 started") {
		t.Errorf("deploy --wait says wave 3 started:\n%s", r)
	}
	d := f.Controller.ShowDeployment(id)
	if d.Status != api.DeploymentAborted || statuses(&d) != "web-1=Failed web-2=Failed web-3=Skipped web-4=Skipped" ||
		d.Abort == nil || d.Abort.Failed != 2 || d.Abort.Finished != 2 || d.Wave != 2 {
		t.Errorf("deployment %s with %s, abort %+v, wave %d; want Aborted in wave 2, web-1 and web-2 Failed, the others Skipped, 2 of 2 failed",
			d.Status, statuses(&d), d.Abort, d.Wave)
	}
	// Wave 2's device finished: the wave did, though the rollout stopped
	// with it; wave 3 never started.
	if len(d.Waves) != 3 || d.Waves[0].Status != api.WaveFinished || d.Waves[1].Status != api.WaveFinished || d.Waves[1].Finished == nil ||
		d.Waves[2].Status != api.WaveWaiting || d.Waves[2].Started != nil || d.Waves[2].Counts[api.DeviceSkipped] != 2 {
		t.Errorf("waves %+v; want waves 1 and 2 Finished, wave 3 Waiting (never started) with its 2 devices Skipped", d.Waves)
	}
	for _, dev := range []string{"web-3", "web-4"} {
		if run := fleettest.DeviceRun(&d, dev); run == nil || run.Dispatch != "" || run.Dispatched != nil {
			t.Errorf("%s's run: %+v, want no dispatch", dev, run)
		}
		if marked(marks, dev, ".count") {
			t.Errorf("%s ran the flow: it was Skipped", dev)
		}
	}
	w := f.CLI("watch", id)
	expectCode(t, w, 1)
	if !strings.Contains(w.Stdout, "deployment "+id+" Aborted: 0/4 succeeded, 2 failed, 2 skipped") {
		t.Errorf("watch of the aborted deployment does not say Aborted:\n%s", w)
	}

	// The cause fixed, the failed devices are retried.
	for _, dev := range []string{"web-1", "web-2"} {
		touch(t, filepath.Join(marks, dev+".fixed"))
	}
	rr := f.CLI("retry", id, "--failed-only", "--note", "database is back")
	expectCode(t, rr, 0)
	retry := deploymentID(t, rr)
	if !strings.Contains(rr.Stderr, "deployment "+retry+" retries "+id+" on 2 device(s)") {
		t.Errorf("retry does not say it retries 2 devices:\n%s", rr)
	}
	w = f.CLI("watch", retry)
	expectCode(t, w, 0)
	nd := f.Controller.ShowDeployment(retry)
	if nd.Status != api.DeploymentSucceeded || statuses(&nd) != "web-1=Succeeded web-2=Succeeded" || nd.RetryOf != id {
		t.Errorf("the retry: deployment %s with %s, retryOf %q; want Succeeded on web-1 and web-2 only, retryOf %s",
			nd.Status, statuses(&nd), nd.RetryOf, id)
	}
	if nd.Rollout == nil || strings.Join(nd.Rollout.Waves, ",") != "1,2,100%" {
		t.Errorf("the retry's rollout: %+v, want the first's", nd.Rollout)
	}
	d = f.Controller.ShowDeployment(id)
	if len(d.Retries) != 1 || d.Retries[0] != retry {
		t.Errorf("the first deployment's retries: %v, want [%s]", d.Retries, retry)
	}
	if n := len(d.Audit); n != 1 || d.Audit[0].Action != api.AuditRetry || d.Audit[0].Deployment != retry || d.Audit[0].Devices != 2 ||
		d.Audit[0].By != login(t) || d.Audit[0].Note != "database is back" {
		t.Errorf("the first deployment's audit: %+v, want the retry as %s of 2 devices by %s with its note", d.Audit, retry, login(t))
	}
	for _, dev := range []string{"web-1", "web-2"} {
		if got := readFile(t, filepath.Join(marks, dev+".count")); got != "ran\nran\n" || !marked(marks, dev, ".done") {
			t.Errorf("%s: ran step1 %q and step3 %v; want step1 in both deployments, step3 in the retry", dev, got, marked(marks, dev, ".done"))
		}
	}
	for _, dev := range []string{"web-3", "web-4"} {
		if marked(marks, dev, ".count") {
			t.Errorf("%s ran the flow: it was Skipped, and not retried with --failed-only", dev)
		}
	}
}
