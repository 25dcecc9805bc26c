package controller_test

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller"
	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// The rollout tests drive the controller with fake devices made of plain
// protocol messages. Dispatch decisions are committed before anything is
// published, so "this device was not started" is checked on the stored
// run (Waiting, no pending command), never by waiting for a message that
// should not come.

// fleet makes n devices dev-1 ... dev-n, online with labels.
func (e *env) fleet(n int, labels map[string]string) []*device {
	e.t.Helper()
	var ds []*device
	for i := 1; i <= n; i++ {
		d := e.device(fmt.Sprintf("dev-%d", i))
		d.presence(transport.Online, labels)
		ds = append(ds, d)
	}
	eventually(e.t, "devices known", func() bool {
		all, _ := e.ctrl.Devices(bg)
		return len(all) == n
	})
	return ds
}

func ids(ds []*device) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.id)
	}
	return out
}

// create makes a deployment of the test bundle to devs with rollout and
// guided failure.
func (e *env) create(devs []*device, r *api.Rollout, gf *api.GuidedFailure) api.Deployment {
	e.t.Helper()
	b := e.addBundle(testBundle(e.t))
	return e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: ids(devs), Rollout: r, GuidedFailure: gf})
}

// statuses returns every run's status, by device.
func (e *env) statuses(dep string) map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, r := range e.deployment(dep).Devices {
		out[r.Device] = r.Status
	}
	return out
}

// wantStatuses checks the runs' statuses now.
func (e *env) wantStatuses(dep string, want map[string]string) {
	e.t.Helper()
	if got := e.statuses(dep); !maps.Equal(got, want) {
		e.t.Fatalf("runs of %s: %v, want %v", dep, got, want)
	}
}

// waitStatuses waits for the runs' statuses.
func (e *env) waitStatuses(dep string, want map[string]string) {
	e.t.Helper()
	var got map[string]string
	eventually(e.t, fmt.Sprintf("runs of %s to be %v", dep, want), func() bool {
		got = e.statuses(dep)
		return maps.Equal(got, want)
	})
}

// notDispatched checks that the controller holds no dispatch for device
// in dep: it was never started.
func (e *env) notDispatched(dep, device string) {
	e.t.Helper()
	cmds, err := e.st.Commands(bg, device)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, c := range cmds {
		if c.Deployment == dep && c.Type == transport.TypeDispatch {
			e.t.Fatalf("device %s has a dispatch of %s: %+v", device, dep, c)
		}
	}
	if r := e.run(dep, device); r.Dispatch != "" || r.Dispatched != nil {
		e.t.Fatalf("device %s was dispatched: %+v", device, r)
	}
}

func waveStatuses(d api.Deployment) []string {
	var out []string
	for _, w := range d.Waves {
		out = append(out, w.Status)
	}
	return out
}

const (
	running   = "Running"
	succeeded = "Succeeded"
	failedS   = "Failed"
	waiting   = api.DeviceWaiting
	pending   = api.DevicePending
)

// TestRolloutWaves starts each wave once the one before has finished,
// with no pause: waves 1,3,100% of five devices are 1, 2 and 2 devices.
func TestRolloutWaves(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(5, nil)
	dep := e.create(devs, &api.Rollout{Waves: []string{"1", "3", "100%"}}, nil)
	if dep.Status != api.DeploymentRunning || dep.Wave != 1 || len(dep.Waves) != 3 {
		t.Fatalf("created: %+v", dep)
	}
	for i, want := range [][2]int{{1, 1}, {2, 3}, {2, 5}} {
		if w := dep.Waves[i]; w.Number != i+1 || w.Devices != want[0] || w.Target != want[1] {
			t.Fatalf("wave %d: %+v, want %d devices, target %d", i+1, w, want[0], want[1])
		}
	}
	if !slices.Equal(waveStatuses(dep), []string{api.WaveRunning, api.WaveWaiting, api.WaveWaiting}) {
		t.Fatalf("waves: %v", waveStatuses(dep))
	}
	wantCounts(t, dep, map[string]int{pending: 1, waiting: 4})
	e.wantStatuses(dep.ID, map[string]string{"dev-1": pending, "dev-2": waiting, "dev-3": waiting, "dev-4": waiting, "dev-5": waiting})
	for _, d := range devs[1:] {
		e.notDispatched(dep.ID, d.id)
	}
	// The first feed event is the deployment as created, with its first
	// dispatch.
	feed, _ := e.st.Feed(bg, dep.ID, 0, 0)
	if len(feed) != 1 || feed[0].Kind != api.EventDeployment || !maps.Equal(feed[0].Deployment.Counts, map[string]int{pending: 1, waiting: 4}) {
		t.Fatalf("first feed: %+v", feed)
	}

	devs[0].finish(dep.ID, transport.StatusSucceeded)
	e.waitStatuses(dep.ID, map[string]string{"dev-1": succeeded, "dev-2": pending, "dev-3": pending, "dev-4": waiting, "dev-5": waiting})
	d := e.deployment(dep.ID)
	if d.Wave != 2 || !slices.Equal(waveStatuses(d), []string{api.WaveFinished, api.WaveRunning, api.WaveWaiting}) || d.Waves[0].Finished == nil {
		t.Fatalf("after wave 1: wave %d %v", d.Wave, waveStatuses(d))
	}
	devs[1].finish(dep.ID, transport.StatusSucceeded)
	e.waitRun(dep.ID, "dev-2", succeeded)
	// Wave 2 has not finished (dev-3 runs): wave 3 waits.
	e.notDispatched(dep.ID, "dev-4")
	devs[2].finish(dep.ID, transport.StatusSucceeded)
	e.waitStatuses(dep.ID, map[string]string{"dev-1": succeeded, "dev-2": succeeded, "dev-3": succeeded, "dev-4": pending, "dev-5": pending})
	devs[3].finish(dep.ID, transport.StatusSucceeded)
	devs[4].finish(dep.ID, transport.StatusSucceeded)
	final := e.waitDeployment(dep.ID, api.DeploymentSucceeded)
	if !slices.Equal(waveStatuses(final), []string{api.WaveFinished, api.WaveFinished, api.WaveFinished}) || final.Wave != 3 {
		t.Fatalf("final waves: %d %v", final.Wave, waveStatuses(final))
	}
	if !maps.Equal(final.Waves[2].Counts, map[string]int{succeeded: 2}) {
		t.Fatalf("wave 3 counts: %v", final.Waves[2].Counts)
	}
	// The feed told every wave and ended with the final status.
	feed, _ = e.st.Feed(bg, dep.ID, 0, 0)
	last := feed[len(feed)-1]
	if last.Kind != api.EventDeployment || last.Deployment.Status != api.DeploymentSucceeded || len(last.Deployment.Waves) != 3 {
		t.Fatalf("last feed event: %+v", last)
	}
}

// TestRolloutManualPause keeps the next wave waiting for a promotion,
// also after a wave with a failure; promote starts it and is audited.
func TestRolloutManualPause(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(3, nil)
	dep := e.create(devs, &api.Rollout{Waves: []string{"1", "100%"}, Pause: "Manual"}, nil)
	if dep.Rollout.Pause != api.PauseManual {
		t.Fatalf("pause normalized to %q", dep.Rollout.Pause)
	}
	// Promoting while wave 1 runs is refused.
	_, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/promote", api.Promote{By: "alice"})
	if code != http.StatusConflict || !strings.Contains(string(body), "wave 1 of deployment "+dep.ID+" is still running") {
		t.Fatalf("early promote: %d %s", code, body)
	}

	devs[0].finish(dep.ID, transport.StatusFailed)
	d := e.waitDeployment(dep.ID, api.DeploymentPaused)
	if !d.AwaitingPromotion || d.Wave != 1 || d.Waves[0].Status != api.WaveFinished {
		t.Fatalf("paused: %+v", d)
	}
	wantCounts(t, d, map[string]int{failedS: 1, waiting: 2})
	e.notDispatched(dep.ID, "dev-2")
	e.notDispatched(dep.ID, "dev-3")

	got, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/promote", api.Promote{By: "alice", Note: "the failure is a known flake"})
	if code != http.StatusOK || got.Wave != 2 || got.AwaitingPromotion || got.Status != api.DeploymentRunning {
		t.Fatalf("promote: %d %s", code, body)
	}
	if a := got.Audit; len(a) != 1 || a[0].Action != api.AuditPromote || a[0].By != "alice" || a[0].Wave != 2 || a[0].Note != "the failure is a known flake" || a[0].Time.IsZero() {
		t.Fatalf("audit: %+v", got.Audit)
	}
	devs[1].dispatch(dep.ID)
	devs[2].dispatch(dep.ID)
	// The last wave runs: nothing left to promote.
	_, code, body = postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/promote", nil)
	if code != http.StatusConflict || !strings.Contains(string(body), "last wave") {
		t.Fatalf("promote the last wave: %d %s", code, body)
	}
	devs[1].finish(dep.ID, transport.StatusSucceeded)
	devs[2].finish(dep.ID, transport.StatusSucceeded)
	e.waitDeployment(dep.ID, api.DeploymentFailed)

	// A deployment without a rollout has nothing to promote.
	plain := e.create(devs[:1], nil, nil)
	_, code, body = postJSON[api.Deployment](e, "/v1/deployments/"+plain.ID+"/promote", nil)
	if code != http.StatusConflict || !strings.Contains(string(body), "has no rollout") {
		t.Fatalf("promote without rollout: %d %s", code, body)
	}
}

// TestRolloutTimedPause starts the next wave once the pause has passed,
// failure or not, on an injected clock.
func TestRolloutTimedPause(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	devs := e.fleet(2, nil)
	dep := e.create(devs, &api.Rollout{Waves: []string{"50%", "100%"}, Pause: "1h"}, nil)
	devs[0].finish(dep.ID, transport.StatusRolledBack)
	d := e.waitDeployment(dep.ID, api.DeploymentPaused)
	want := clk.Now().Add(time.Hour)
	if d.PausedUntil == nil || !d.PausedUntil.Equal(want) || d.AwaitingPromotion {
		t.Fatalf("paused until %v, want %v", d.PausedUntil, want)
	}
	eventually(t, "the pause's timer", func() bool { return clk.armed() == 1 })
	clk.Advance(59 * time.Minute)
	// Nothing came due: no timer fired.
	e.notDispatched(dep.ID, "dev-2")
	clk.Advance(time.Minute)
	e.waitRun(dep.ID, "dev-2", pending)
	devs[1].dispatch(dep.ID)
	d = e.deployment(dep.ID)
	if d.Status != api.DeploymentRunning || d.PausedUntil != nil || d.Wave != 2 {
		t.Fatalf("after the pause: %+v", d)
	}
	if len(d.Audit) != 0 {
		t.Fatalf("a timed pause is not an operator's: audit %+v", d.Audit)
	}
}

// TestRolloutMaxInFlight never has more devices in flight than allowed:
// each one that finishes lets the next start.
func TestRolloutMaxInFlight(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(5, nil)
	dep := e.create(devs, &api.Rollout{MaxInFlight: 2}, nil)
	wantCounts(t, dep, map[string]int{pending: 2, waiting: 3})
	inFlight := func() int {
		n := 0
		for _, s := range e.statuses(dep.ID) {
			if s == pending || s == running || s == api.DeviceQueued || s == "Paused" {
				n++
			}
		}
		return n
	}
	for i, d := range devs {
		d.finish(dep.ID, transport.StatusSucceeded)
		e.waitRun(dep.ID, d.id, succeeded)
		if n := inFlight(); n > 2 {
			t.Fatalf("after %d finished: %d in flight (%v)", i+1, n, e.statuses(dep.ID))
		}
		if i+2 < len(devs) {
			e.waitRun(dep.ID, devs[i+2].id, pending)
		}
		if i+3 < len(devs) {
			e.notDispatched(dep.ID, devs[i+3].id)
		}
	}
	e.waitDeployment(dep.ID, api.DeploymentSucceeded)
}

// TestRolloutAbortThreshold trips once enough devices finished and too
// many failed: no device starts any more, those in flight finish, and the
// deployment ends Aborted.
func TestRolloutAbortThreshold(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(6, nil)
	dep := e.create(devs, &api.Rollout{MaxInFlight: 2, Abort: &api.AbortPolicy{Threshold: 40, MinSample: 2}}, nil)
	if a := dep.Rollout.Abort; len(a.Errors) != 1 || a.Errors[0] != onfailure.AllErrors {
		t.Fatalf("abort errors default: %+v", a)
	}
	// One failure of one finished: under the minimum sample, so dev-3
	// starts in dev-1's place.
	devs[0].finish(dep.ID, transport.StatusFailed)
	e.waitRun(dep.ID, "dev-3", pending)
	if d := e.deployment(dep.ID); d.Abort != nil {
		t.Fatalf("tripped under the minimum sample: %+v", d.Abort)
	}
	devs[2].dispatch(dep.ID)
	devs[2].send(accepted(dep.ID, e.run(dep.ID, "dev-3").Dispatch))
	e.waitRun(dep.ID, "dev-3", running)
	// Two of two failed: 100% > 40%.
	devs[1].finish(dep.ID, transport.StatusRolledBack)
	e.waitStatuses(dep.ID, map[string]string{"dev-1": failedS, "dev-2": "RolledBack", "dev-3": running,
		"dev-4": api.DeviceSkipped, "dev-5": api.DeviceSkipped, "dev-6": api.DeviceSkipped})
	d := e.deployment(dep.ID)
	if d.Abort == nil || d.Abort.Failed != 2 || d.Abort.Finished != 2 || !strings.Contains(d.Abort.Reason, "2 of 2 finished devices failed") || d.Status != api.DeploymentRunning {
		t.Fatalf("tripped: %s %+v", d.Status, d.Abort)
	}
	for _, id := range []string{"dev-4", "dev-5", "dev-6"} {
		e.notDispatched(dep.ID, id)
	}
	// The device in flight finishes; then the deployment is Aborted.
	devs[2].send(flowFinished(dep.ID, transport.StatusSucceeded))
	final := e.waitDeployment(dep.ID, api.DeploymentAborted)
	wantCounts(t, final, map[string]int{failedS: 1, "RolledBack": 1, succeeded: 1, api.DeviceSkipped: 3})
	if final.Finished == nil {
		t.Fatal("aborted without a finished time")
	}
	// Promote cannot restart it.
	_, code, _ := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/promote", nil)
	if code != http.StatusConflict {
		t.Fatalf("promote an aborted deployment: %d", code)
	}
}

// TestRolloutAbortKinds counts only the failures of the kinds given.
func TestRolloutAbortKinds(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(3, nil)
	dep := e.create(devs, &api.Rollout{MaxInFlight: 1, Abort: &api.AbortPolicy{Threshold: 0, Errors: []onfailure.Kind{onfailure.Connectivity}}}, nil)
	// A Verification failure (flowFinished's kind) does not count.
	devs[0].finish(dep.ID, transport.StatusFailed)
	e.waitRun(dep.ID, "dev-2", pending)
	m := devs[1].dispatch(dep.ID)
	devs[1].send(accepted(dep.ID, m.ID))
	devs[1].send(&transport.FlowFinished{Deployment: dep.ID, Execution: "ex-1", Flow: "app", Status: transport.StatusFailed,
		Error: &transport.ErrorInfo{Type: onfailure.Connectivity, Message: "registry unreachable"}})
	e.waitRun(dep.ID, "dev-3", api.DeviceSkipped)
	d := e.waitDeployment(dep.ID, api.DeploymentAborted)
	if d.Abort.Failed != 1 || d.Abort.Finished != 2 {
		t.Fatalf("abort: %+v", d.Abort)
	}
}

// TestRolloutDeviceTimeout times out the devices that have not finished
// within deviceTimeout of their dispatch (running or never answering),
// sends them a cancel, and counts them as failed with kind Timeout.
func TestRolloutDeviceTimeout(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	devs := e.fleet(3, nil)
	dep := e.create(devs, &api.Rollout{MaxInFlight: 2, DeviceTimeout: "10m", Abort: &api.AbortPolicy{Threshold: 99, Errors: []onfailure.Kind{onfailure.Timeout}}}, nil)
	if r := e.run(dep.ID, "dev-1"); r.Deadline == nil || !r.Deadline.Equal(clk.Now().Add(10*time.Minute)) {
		t.Fatalf("deadline: %+v", r)
	}
	m := devs[0].dispatch(dep.ID)
	devs[0].send(accepted(dep.ID, m.ID)) // dev-1 runs, and hangs
	e.waitRun(dep.ID, "dev-1", running)  // dev-2 never answers (offline)
	clk.Advance(10 * time.Minute)
	e.waitStatuses(dep.ID, map[string]string{"dev-1": api.DeviceTimedOut, "dev-2": api.DeviceTimedOut, "dev-3": api.DeviceSkipped})
	r := e.run(dep.ID, "dev-1")
	if r.Error == nil || r.Error.Type != onfailure.Timeout || !strings.Contains(r.Error.Message, "deviceTimeout of 10m") {
		t.Fatalf("timed out run: %+v", r)
	}
	// Both get a cancel; the running one's is kept until it reports its
	// end, the one that never started has its dispatch dropped.
	c1 := devs[0].waitCommands(transport.TypeCancel, dep.ID, 1)[0].Body.(*transport.Cancel)
	devs[1].waitCommands(transport.TypeCancel, dep.ID, 1)
	if c1.By != "controller" || !strings.Contains(c1.Note, "device timeout") {
		t.Fatalf("cancel: %+v", c1)
	}
	cmds, _ := e.st.Commands(bg, "")
	if len(cmds) != 1 || cmds[0].Device != "dev-1" || cmds[0].Type != transport.TypeCancel {
		t.Fatalf("pending commands: %+v", cmds)
	}
	// Two Timeout failures of two: the threshold (99%) tripped.
	d := e.waitDeployment(dep.ID, api.DeploymentAborted)
	if d.Abort == nil || d.Abort.Failed != 2 {
		t.Fatalf("abort: %+v", d.Abort)
	}
	// dev-1 stops and reports: the run stays TimedOut, the cancel is done.
	devs[0].send(flowFinished(dep.ID, transport.StatusAborted))
	eventually(t, "the cancel answered", func() bool {
		cmds, _ := e.st.Commands(bg, "")
		return len(cmds) == 0
	})
	if r := e.run(dep.ID, "dev-1"); r.Status != api.DeviceTimedOut {
		t.Fatalf("a late report moved a timed-out run: %+v", r)
	}
}

// TestRolloutRestart stops the controller mid-rollout and starts another
// on the same store: the pause and the device deadlines are armed again
// from the store, and events go on dispatching.
func TestRolloutRestart(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	devs := e.fleet(4, nil)
	dep := e.create(devs, &api.Rollout{Waves: []string{"1", "100%"}, MaxInFlight: 2, Pause: "30m", DeviceTimeout: "1h"}, nil)
	devs[0].finish(dep.ID, transport.StatusSucceeded)
	e.waitDeployment(dep.ID, api.DeploymentPaused)

	e.restart()
	eventually(t, "the pause's timer armed again", func() bool { return clk.armed() >= 1 })
	clk.Advance(30 * time.Minute)
	e.waitStatuses(dep.ID, map[string]string{"dev-1": succeeded, "dev-2": pending, "dev-3": pending, "dev-4": waiting})

	e.restart()
	// An event after the restart lets the next device start.
	devs[1].finish(dep.ID, transport.StatusSucceeded)
	e.waitRun(dep.ID, "dev-4", pending)

	e.restart()
	// The deadlines (dispatch + 1h) are armed again.
	clk.Advance(time.Hour)
	e.waitStatuses(dep.ID, map[string]string{"dev-1": succeeded, "dev-2": succeeded, "dev-3": api.DeviceTimedOut, "dev-4": api.DeviceTimedOut})
	e.waitDeployment(dep.ID, api.DeploymentFailed)
}

// TestRolloutRestartCatchesUp: a pause that ended while the controller
// was away starts the next wave when it comes back.
func TestRolloutRestartCatchesUp(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	devs := e.fleet(2, nil)
	dep := e.create(devs, &api.Rollout{Waves: []string{"1", "100%"}, Pause: "5m"}, nil)
	devs[0].finish(dep.ID, transport.StatusSucceeded)
	e.waitDeployment(dep.ID, api.DeploymentPaused)
	e.stop()
	clk.Advance(time.Hour)
	e.start()
	e.waitRun(dep.ID, "dev-2", pending)
	devs[1].dispatch(dep.ID)
}

// TestRolloutValidation answers a bad rollout or guided failure 400 with
// what is wrong, and stores nothing.
func TestRolloutValidation(t *testing.T) {
	e := newEnv(t, nil)
	b := e.addBundle(testBundle(t))
	devices := []string{"a", "b", "c", "d", "e"}
	for _, c := range []struct {
		r   *api.Rollout
		gf  *api.GuidedFailure
		msg string
	}{
		{&api.Rollout{Waves: []string{"x"}}, nil, `rollout.waves[0] "x": want a number of devices`},
		{&api.Rollout{Waves: []string{"0"}}, nil, `rollout.waves[0] "0": want a number of devices`},
		{&api.Rollout{Waves: []string{"150%"}}, nil, `want a percent above 0 and at most 100`},
		{&api.Rollout{Waves: []string{"1", "50%"}}, nil, `the last wave is "50%": it must be 100% or "all"`},
		{&api.Rollout{Waves: []string{"3", "2", "100%"}}, nil, `rollout.waves[1] "2": not above "3"`},
		{&api.Rollout{Waves: []string{"50%", "10%", "100%"}}, nil, `rollout.waves[1] "10%": not above the percent before it`},
		{&api.Rollout{Waves: []string{"4", "20%", "100%"}}, nil, `rollout.waves[1] "20%" is 1 of the 5 devices, fewer than the 4 of "4"`},
		{&api.Rollout{MaxInFlight: -1}, nil, "rollout.maxInFlight -1"},
		{&api.Rollout{Pause: "soon"}, nil, `rollout.pause "soon": want a duration such as 5m, or "manual"`},
		{&api.Rollout{DeviceTimeout: "0s"}, nil, `rollout.deviceTimeout "0s"`},
		{&api.Rollout{Abort: &api.AbortPolicy{Threshold: 101}}, nil, "rollout.abort.threshold 101: want a percent from 0 to 100"},
		{&api.Rollout{Abort: &api.AbortPolicy{Threshold: 5, MinSample: -2}}, nil, "rollout.abort.minSample -2"},
		{&api.Rollout{Abort: &api.AbortPolicy{Threshold: 5, Errors: []onfailure.Kind{"Oops"}}}, nil, `rollout.abort.errors[0] "Oops": unknown error kind`},
		{&api.Rollout{RollbackOnAbort: true}, nil, "rollout.rollbackOnAbort: needs an abort threshold (rollout.abort)"},
		{nil, &api.GuidedFailure{Timeout: "later"}, `guidedFailure.timeout "later"`},
		{nil, &api.GuidedFailure{Timeout: "100ms"}, "guidedFailure: timeout 100ms: want 1s to"},
		{nil, &api.GuidedFailure{Timeout: "1h", OnTimeout: "Retry"}, `guidedFailure: onTimeout "Retry": want one of Ignore, MarkAsSuccess`},
	} {
		_, code, body := postJSON[api.Deployment](e, "/v1/deployments", api.CreateDeployment{Bundle: b.SHA256, Devices: devices, Rollout: c.r, GuidedFailure: c.gf})
		resp := &http.Response{StatusCode: code, Header: http.Header{"Content-Type": {"application/json"}}}
		wantError(t, c.msg, resp, body, http.StatusBadRequest, api.CodeInvalid, c.msg)
	}
	if ds, _ := e.ctrl.Deployments(bg); len(ds) != 0 {
		t.Fatalf("a refused deployment was stored: %+v", ds)
	}
	// A wave that adds no device is dropped: 10% of 5 is 1, as is "1".
	d, code, body := postJSON[api.Deployment](e, "/v1/deployments", api.CreateDeployment{Bundle: b.SHA256, Devices: devices,
		Rollout: &api.Rollout{Waves: []string{"1", "10%", "all"}}})
	if code != http.StatusCreated || len(d.Waves) != 2 || d.Waves[0].Target != 1 || d.Waves[1].Target != 5 {
		t.Fatalf("collapsed waves: %d %s", code, body)
	}
}

// TestGuidance sends an operator's guidance to a device paused for it:
// stored, published, sent again with the same id when the device comes
// online, done when the device reports it resumed; and audited.
func TestGuidance(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(2, nil)
	dep := e.create(devs, nil, &api.GuidedFailure{Timeout: "30m", OnTimeout: "rollbackflow"})
	if dep.GuidedFailure.OnTimeout != onfailure.RollbackFlow {
		t.Fatalf("guided failure normalized: %+v", dep.GuidedFailure)
	}
	// The dispatch asks for guided failure (and passed the schemas).
	m := devs[0].dispatch(dep.ID)
	if g := m.Body.(*transport.Dispatch).GuidedFailure; g == nil || g.TimeoutSeconds != 1800 || g.OnTimeout != onfailure.RollbackFlow {
		t.Fatalf("dispatch guided failure: %+v", g)
	}
	devs[0].send(accepted(dep.ID, m.ID))
	until := time.Now().Add(30 * time.Minute).UTC().Truncate(time.Second)
	connErr := &transport.ErrorInfo{Type: onfailure.Connectivity, Message: "dial tcp 10.0.0.5:5432: connection refused"}
	devs[0].send(&transport.Paused{Deployment: dep.ID, Execution: "ex-1", Step: "migrate", Group: "db", Error: connErr, Until: &until})
	d := e.waitDeployment(dep.ID, api.DeploymentPaused)
	r := e.run(dep.ID, "dev-1")
	if p := r.Pause; p == nil || p.Step != "migrate" || p.Group != "db" || p.Until == nil || !p.Until.Equal(until) || *p.Error != *connErr {
		t.Fatalf("pause: %+v", r.Pause)
	}
	wantCounts(t, d, map[string]int{"Paused": 1, pending: 1})

	// dev-2 is not paused: guidance is refused.
	_, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/devices/dev-2/guide", api.Guide{Action: onfailure.Retry})
	if code != http.StatusConflict || !strings.Contains(string(body), "device dev-2 is Pending in deployment "+dep.ID+", not Paused") {
		t.Fatalf("guide a pending device: %d %s", code, body)
	}
	for _, c := range []struct {
		g    api.Guide
		code int
		msg  string
	}{
		{api.Guide{Action: "Pray"}, 400, `Pray\": want one of Retry, Ignore`},
		{api.Guide{}, 400, "action: missing"},
		{api.Guide{Action: "retry", Step: "other"}, 409, "is paused at step migrate, not at other"},
	} {
		_, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/devices/dev-1/guide", c.g)
		if code != c.code || !strings.Contains(string(body), c.msg) {
			t.Fatalf("guide %+v: %d %s, want %d %q", c.g, code, body, c.code, c.msg)
		}
	}
	if _, code, _ := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/devices/nope/guide", api.Guide{Action: "retry"}); code != 404 {
		t.Fatalf("unknown device: %d", code)
	}

	got, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/devices/dev-1/guide", api.Guide{Action: "retry", By: "alice", Note: "database is back"})
	if code != http.StatusOK {
		t.Fatalf("guide: %d %s", code, body)
	}
	if a := got.Audit; len(a) != 1 || a[0].Action != api.AuditGuide || a[0].Guidance != onfailure.Retry || a[0].Device != "dev-1" || a[0].Step != "migrate" || a[0].By != "alice" || a[0].Note != "database is back" {
		t.Fatalf("audit: %+v", got.Audit)
	}
	g := devs[0].waitCommands(transport.TypeGuide, dep.ID, 1)[0]
	if b := g.Body.(*transport.Guide); b.Action != onfailure.Retry || b.Step != "migrate" || b.By != "alice" || b.Note != "database is back" {
		t.Fatalf("guide sent: %+v", b)
	}
	// Not answered yet: sent again, same id, when the device comes online.
	devs[0].presence(transport.Online, nil)
	again := devs[0].waitCommands(transport.TypeGuide, dep.ID, 2)
	if again[1].ID != g.ID {
		t.Fatalf("guide sent again as %s, want %s", again[1].ID, g.ID)
	}
	devs[0].send(&transport.Resumed{Deployment: dep.ID, Execution: "ex-1", Step: "migrate", Group: "db", Action: onfailure.Retry, By: "alice"})
	e.waitRun(dep.ID, "dev-1", running)
	eventually(t, "the guide answered", func() bool {
		cmds, _ := e.st.Commands(bg, "dev-1")
		return len(cmds) == 0
	})
	if r := e.run(dep.ID, "dev-1"); r.Pause != nil {
		t.Fatalf("resumed run keeps its pause: %+v", r.Pause)
	}
	if d := e.deployment(dep.ID); d.Status != api.DeploymentRunning {
		t.Fatalf("deployment after the resume: %s", d.Status)
	}
}

// TestGuidedFailureSetting asks for guided failure in the dispatches to
// the devices whose labels match the controller's selector only.
func TestGuidedFailureSetting(t *testing.T) {
	e := newEnv(t, func(o *controller.Options) {
		o.GuidedFailure = &controller.GuidedFailureSetting{Selector: map[string]string{"env": "prod"}, Timeout: 90 * time.Second}
	})
	prod, dev := e.device("dev-1"), e.device("dev-2")
	prod.presence(transport.Online, map[string]string{"env": "prod", "site": "a"})
	dev.presence(transport.Online, map[string]string{"env": "dev"})
	eventually(t, "devices known", func() bool { ds, _ := e.ctrl.Devices(bg); return len(ds) == 2 })
	dep := e.create([]*device{prod, dev}, &api.Rollout{Waves: []string{"1", "100%"}}, nil)
	if g := prod.dispatch(dep.ID).Body.(*transport.Dispatch).GuidedFailure; g == nil || g.TimeoutSeconds != 90 || g.OnTimeout != onfailure.Abort {
		t.Fatalf("prod dispatch: %+v", g)
	}
	if r := e.run(dep.ID, "dev-1"); r.GuidedFailure == nil || r.GuidedFailure.Timeout != "1m30s" {
		t.Fatalf("run: %+v", r.GuidedFailure)
	}
	prod.finish(dep.ID, transport.StatusSucceeded)
	if g := dev.dispatch(dep.ID).Body.(*transport.Dispatch).GuidedFailure; g != nil {
		t.Fatalf("dev dispatch asks for guided failure: %+v", g)
	}
	// The same dispatch sent again is the same message.
	prod.presence(transport.Online, map[string]string{"env": "prod"})
}

// pause reports a device paused at step with err in dep.
func (d *device) pause(dep, step string, err *transport.ErrorInfo) {
	d.e.t.Helper()
	m := d.dispatch(dep)
	d.send(accepted(dep, m.ID))
	d.send(&transport.Paused{Deployment: dep, Execution: "ex-1", Step: step, Error: err})
}

// TestInterventionGroups groups paused devices by flow, step, error kind
// and message, across deployments, and answers a whole group at once.
func TestInterventionGroups(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(4, nil)
	first := e.create(devs[:2], nil, nil)
	second := e.create(devs[2:], nil, nil)
	refused := &transport.ErrorInfo{Type: onfailure.Connectivity, Message: "connection refused"}
	devs[0].pause(first.ID, "migrate", refused)
	devs[1].pause(first.ID, "migrate", refused)
	devs[2].pause(second.ID, "migrate", refused)
	devs[3].pause(second.ID, "migrate", &transport.ErrorInfo{Type: onfailure.Timeout, Message: "no answer"})
	var l api.InterventionList
	eventually(t, "four paused devices", func() bool {
		resp, body := e.do("GET", "/v1/interventions", nil)
		l = decodeJSON[api.InterventionList](t, body)
		n := 0
		for _, g := range l.Interventions {
			n += len(g.Devices)
		}
		return resp.StatusCode == 200 && n == 4
	})
	if len(l.Interventions) != 2 {
		t.Fatalf("groups: %+v", l)
	}
	g := l.Interventions[0]
	if g.Flow != "app" || g.Step != "migrate" || g.Kind != onfailure.Connectivity || g.Message != "connection refused" || len(g.Devices) != 3 || !strings.HasPrefix(g.Group, "g-") {
		t.Fatalf("group 1: %+v", g)
	}
	if other := l.Interventions[1]; other.Kind != onfailure.Timeout || len(other.Devices) != 1 || other.Group == g.Group {
		t.Fatalf("group 2: %+v", other)
	}
	// The id is stable.
	list, _ := e.ctrl.Interventions(bg)
	if list[0].Group != g.Group {
		t.Fatalf("group id changed: %s, then %s", g.Group, list[0].Group)
	}

	res, code, body := postJSON[api.GuideResult](e, "/v1/interventions/"+g.Group+"/guide", api.Guide{Action: "Ignore", By: "bob", Note: "known"})
	if code != http.StatusOK || len(res.Guided) != 3 || res.Action != onfailure.Ignore {
		t.Fatalf("guide the group: %d %s", code, body)
	}
	for _, d := range devs[:3] {
		dep := first.ID
		if d == devs[2] {
			dep = second.ID
		}
		m := d.waitCommands(transport.TypeGuide, dep, 1)[0].Body.(*transport.Guide)
		if m.Action != onfailure.Ignore || m.Step != "migrate" || m.By != "bob" {
			t.Fatalf("guide to %s: %+v", d.id, m)
		}
	}
	if got := devs[3].commandsOf(transport.TypeGuide, second.ID); len(got) != 0 {
		t.Fatalf("the other group got guidance: %+v", got)
	}
	a := e.deployment(first.ID).Audit
	if len(a) != 1 || a[0].Group != g.Group || a[0].Devices != 2 || a[0].Guidance != onfailure.Ignore || a[0].Step != "migrate" {
		t.Fatalf("audit of the first: %+v", a)
	}
	if a := e.deployment(second.ID).Audit; len(a) != 1 || a[0].Device != "dev-3" {
		t.Fatalf("audit of the second: %+v", a)
	}
	// A step is not taken with a group; an unknown group is not found.
	if _, code, body := postJSON[api.GuideResult](e, "/v1/interventions/"+g.Group+"/guide", api.Guide{Action: "Ignore", Step: "x"}); code != 400 {
		t.Fatalf("group with a step: %d %s", code, body)
	}
	if _, code, body := postJSON[api.GuideResult](e, "/v1/interventions/g-000000000000/guide", api.Guide{Action: "Ignore"}); code != 404 || !strings.Contains(string(body), "no device waits for guidance") {
		t.Fatalf("unknown group: %d %s", code, body)
	}
}

// TestExclude takes a paused device out of the deployment: it is
// Excluded at once, leaves the abort threshold's count, the agent is told
// (and ends its flow), and its later reports do not move it.
func TestExclude(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(3, nil)
	// Any counted failure would trip the threshold.
	dep := e.create(devs, &api.Rollout{MaxInFlight: 1, Abort: &api.AbortPolicy{Threshold: 0}}, nil)
	devs[0].pause(dep.ID, "health", &transport.ErrorInfo{Type: onfailure.Verification, Message: "503"})
	e.waitRun(dep.ID, "dev-1", "Paused")
	e.notDispatched(dep.ID, "dev-2") // still in flight: max 1
	got, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/devices/dev-1/guide", api.Guide{Action: "exclude", By: "carol", Note: "broken sensor"})
	if code != 200 {
		t.Fatalf("exclude: %d %s", code, body)
	}
	if got.Counts[api.DeviceExcluded] != 1 || got.Abort != nil {
		t.Fatalf("after exclude: %+v %+v", got.Counts, got.Abort)
	}
	if g := devs[0].waitCommands(transport.TypeGuide, dep.ID, 1)[0].Body.(*transport.Guide); g.Action != onfailure.Exclude {
		t.Fatalf("guide: %+v", g)
	}
	// The next device starts in its place.
	e.waitRun(dep.ID, "dev-2", pending)
	devs[0].send(flowFinished(dep.ID, transport.StatusAborted))
	devs[1].finish(dep.ID, transport.StatusSucceeded)
	e.waitRun(dep.ID, "dev-3", pending)
	devs[2].finish(dep.ID, transport.StatusSucceeded)
	final := e.waitDeployment(dep.ID, api.DeploymentSucceeded)
	wantCounts(t, final, map[string]int{succeeded: 2, api.DeviceExcluded: 1})
	if final.Abort != nil {
		t.Fatalf("aborted: %+v", final.Abort)
	}
	if cmds, _ := e.st.Commands(bg, ""); len(cmds) != 0 {
		t.Fatalf("pending commands: %+v", cmds)
	}
}

// TestMarkFailed is refused (403) unless the controller allows it; then it
// sends mark-failed to the named (or every) running device, audited.
func TestMarkFailed(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(1, nil)
	dep := e.create(devs, nil, nil)
	_, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/mark-failed", map[string]any{"all": true})
	resp := &http.Response{StatusCode: code, Header: http.Header{"Content-Type": {"application/json"}}}
	wantError(t, "mark-failed by default", resp, body, http.StatusForbidden, api.CodeForbidden, "mark-failed is turned off on this controller")
	if !strings.Contains(string(body), "edgeflow serve --allow-mark-failed") {
		t.Fatalf("the refusal does not say how to allow it: %s", body)
	}

	e = newEnv(t, func(o *controller.Options) { o.AllowMarkFailed = true })
	devs = e.fleet(3, nil)
	dep = e.create(devs, nil, nil)
	for _, d := range devs[:2] {
		m := d.dispatch(dep.ID)
		d.send(accepted(dep.ID, m.ID))
		e.waitRun(dep.ID, d.id, running)
	}
	for _, c := range []struct {
		body any
		code int
		msg  string
	}{
		{map[string]any{}, 400, "give exactly one of devices"},
		{map[string]any{"devices": []string{"dev-1"}, "all": true}, 400, "give exactly one of devices"},
		{map[string]any{"devices": []string{"dev-3"}}, 409, "device dev-3 is Pending in deployment " + dep.ID + ": only a Running device"},
		{map[string]any{"devices": []string{"dev-9"}}, 404, "device dev-9 is not in deployment"},
	} {
		_, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/mark-failed", c.body)
		if code != c.code || !strings.Contains(string(body), c.msg) {
			t.Fatalf("%v: %d %s, want %d %q", c.body, code, body, c.code, c.msg)
		}
	}
	got, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/mark-failed", api.MarkFailed{Devices: []string{"dev-1"}, Step: "s", By: "dave", Note: "hangs"})
	if code != 200 || len(got.Audit) != 1 || got.Audit[0].Action != api.AuditMarkFailed || got.Audit[0].Device != "dev-1" || got.Audit[0].By != "dave" {
		t.Fatalf("mark dev-1: %d %s", code, body)
	}
	mf := devs[0].waitCommands(transport.TypeMarkFailed, dep.ID, 1)[0].Body.(*transport.MarkFailed)
	if mf.Step != "s" || mf.By != "dave" || mf.Note != "hangs" {
		t.Fatalf("mark-failed sent: %+v", mf)
	}
	got, code, body = postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/mark-failed", api.MarkFailed{All: true, By: "dave"})
	if code != 200 || got.Audit[1].Devices != 2 {
		t.Fatalf("mark all: %d %s", code, body)
	}
	devs[1].waitCommands(transport.TypeMarkFailed, dep.ID, 1)
	if n := len(devs[2].commandsOf(transport.TypeMarkFailed, dep.ID)); n != 0 {
		t.Fatalf("a pending device got mark-failed")
	}
	// The step failing as marked answers it.
	devs[0].send(&transport.StepFinished{Deployment: dep.ID, Execution: "ex-1", Step: "s", Attempt: 1, Status: transport.StatusFailed,
		Error: &transport.ErrorInfo{Type: onfailure.UserMarkedFailure, Message: "marked as failed by dave"}})
	eventually(t, "dev-1's mark-failed answered", func() bool {
		cmds, _ := e.st.Commands(bg, "dev-1")
		return len(cmds) == 0
	})
}

// TestRetry makes a new deployment of the failed devices of a finished
// one, linked both ways, with the same bundle, vars and rollout.
func TestRetry(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(4, nil)
	b := e.addBundle(testBundle(t))
	first, err := e.ctrl.Create(bg, api.CreateDeployment{Bundle: b.SHA256, Devices: ids(devs), Vars: map[string]string{"v": "2"},
		Rollout: &api.Rollout{MaxInFlight: 4}})
	if err != nil {
		t.Fatal(err)
	}
	if _, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+first.ID+"/retry", api.Retry{FailedOnly: true}); code != 409 || !strings.Contains(string(body), "retry it once it has ended") {
		t.Fatalf("retry a running deployment: %d %s", code, body)
	}
	devs[0].finish(first.ID, transport.StatusSucceeded)
	devs[1].finish(first.ID, transport.StatusRolledBack)
	m := devs[2].dispatch(first.ID)
	devs[2].send(&transport.Rejected{Deployment: first.ID, Dispatch: m.ID, Error: &transport.ErrorInfo{Type: onfailure.Integrity, Message: "bad signature"}})
	devs[3].dispatch(first.ID)
	e.waitRun(first.ID, "dev-3", api.DeviceRejected)
	if _, err := e.ctrl.Cancel(bg, first.ID, api.Cancel{By: "erin"}); err != nil { // dev-4: Pending -> Cancelled
		t.Fatal(err)
	}
	e.waitDeployment(first.ID, api.DeploymentCancelled)

	retry, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+first.ID+"/retry", api.Retry{FailedOnly: true, By: "erin", Note: "fixed the key"})
	if code != http.StatusCreated {
		t.Fatalf("retry: %d %s", code, body)
	}
	var got []string
	for _, r := range retry.Devices {
		got = append(got, r.Device)
	}
	if !slices.Equal(got, []string{"dev-2", "dev-3"}) || retry.RetryOf != first.ID || retry.Bundle.SHA256 != b.SHA256 ||
		retry.Vars["v"] != "2" || retry.Rollout == nil || retry.Rollout.MaxInFlight != 4 {
		t.Fatalf("retry: %+v", retry)
	}
	d := e.deployment(first.ID)
	if !slices.Equal(d.Retries, []string{retry.ID}) {
		t.Fatalf("retries of the first: %v", d.Retries)
	}
	last := d.Audit[len(d.Audit)-1]
	if last.Action != api.AuditRetry || last.Deployment != retry.ID || last.By != "erin" || last.Devices != 2 || d.Audit[0].Action != api.AuditCancel {
		t.Fatalf("audit: %+v", d.Audit)
	}
	devs[1].dispatch(retry.ID)
	devs[2].dispatch(retry.ID)

	// Without failedOnly: every device but the succeeded ones.
	all, err := e.ctrl.Retry(bg, first.ID, api.Retry{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Devices) != 3 || all.Devices[2].Device != "dev-4" {
		t.Fatalf("retry all: %+v", all.Devices)
	}
}

// TestCancelWaiting cancels a rollout: the devices that were never
// dispatched are Cancelled without a message; the audit has the cancel.
func TestCancelWaiting(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(3, nil)
	dep := e.create(devs, &api.Rollout{Waves: []string{"1", "100%"}, Pause: api.PauseManual}, nil)
	devs[0].finish(dep.ID, transport.StatusSucceeded)
	e.waitDeployment(dep.ID, api.DeploymentPaused)
	d, err := e.ctrl.Cancel(bg, dep.ID, api.Cancel{By: "frank", Note: "enough"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != api.DeploymentCancelled || d.AwaitingPromotion || len(d.Audit) != 1 || d.Audit[0].Action != api.AuditCancel || d.Audit[0].By != "frank" {
		t.Fatalf("cancelled: %+v", d)
	}
	wantCounts(t, d, map[string]int{succeeded: 1, api.DeviceCancelled: 2})
	if n := len(devs[1].commandsOf(transport.TypeCancel, dep.ID)); n != 0 {
		t.Fatalf("a device never dispatched got a cancel")
	}
}
