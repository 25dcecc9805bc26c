package controller_test

import (
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// canRollBack makes the devices announce the rollback command in their
// presence (capabilities.commands) and waits until the controller knows.
func (e *env) canRollBack(ds ...*device) {
	e.t.Helper()
	for _, d := range ds {
		d.gated = []string{transport.CommandRollback}
		d.presence(transport.Online, nil)
	}
	eventually(e.t, "the rollback capability known", func() bool {
		for _, d := range ds {
			dev, err := e.ctrl.Device(bg, d.id)
			if err != nil || !dev.Capabilities.HasCommand(transport.CommandRollback) {
				return false
			}
		}
		return true
	})
}

// pendingOf returns the controller's pending commands of type ty.
func (e *env) pendingOf(ty transport.Type) map[string]string {
	e.t.Helper()
	cmds, err := e.st.Commands(bg, "")
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range cmds {
		if c.Type == ty {
			out[c.Device] = c.ID
		}
	}
	return out
}

func rolledBack(dep string, status transport.Status, err *transport.ErrorInfo) *transport.RolledBack {
	return &transport.RolledBack{Deployment: dep, Execution: "ex-1", Status: status, Error: err}
}

// TestRollbackOnAbort trips the threshold with rollbackOnAbort: once the
// device in flight has finished, every Succeeded device that can undo is
// sent a rollback (stored first, sent again with the same id after a
// restart), the failed ones are not, the answers move the runs to
// RolledBack (a duplicate answer counts once), and the deployment ends
// RolledBack.
func TestRollbackOnAbort(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(5, nil)
	e.canRollBack(devs...)
	dep := e.create(devs, &api.Rollout{MaxInFlight: 2, Abort: &api.AbortPolicy{Threshold: 40, MinSample: 2}, RollbackOnAbort: true}, nil)
	if !dep.Rollout.RollbackOnAbort {
		t.Fatalf("rollout: %+v", dep.Rollout)
	}
	devs[0].finish(dep.ID, transport.StatusSucceeded) // dev-3 starts in its place
	e.waitRun(dep.ID, "dev-3", pending)
	m := devs[2].dispatch(dep.ID)
	devs[2].send(accepted(dep.ID, m.ID))
	e.waitRun(dep.ID, "dev-3", running)
	devs[1].finish(dep.ID, transport.StatusFailed) // 1 of 2 failed: 50% > 40%
	e.waitStatuses(dep.ID, map[string]string{"dev-1": succeeded, "dev-2": failedS, "dev-3": running,
		"dev-4": api.DeviceSkipped, "dev-5": api.DeviceSkipped})
	// dev-3 is still in flight: nothing is rolled back yet.
	d := e.deployment(dep.ID)
	if d.Abort == nil || d.Rollback != nil || d.Status != api.DeploymentRunning || len(e.pendingOf(transport.TypeRollback)) != 0 {
		t.Fatalf("before the last device finished: %s abort %+v rollback %+v, pending %v", d.Status, d.Abort, d.Rollback, e.pendingOf(transport.TypeRollback))
	}

	devs[2].send(flowFinished(dep.ID, transport.StatusSucceeded))
	d = e.waitDeployment(dep.ID, api.DeploymentRollingBack)
	if d.Finished != nil || d.Rollback == nil || d.Rollback.Devices != 2 || d.Rollback.Unsupported != 0 || d.Rollback.Pending() != 2 {
		t.Fatalf("rolling back: %+v %+v", d, d.Rollback)
	}
	wantCounts(t, d, map[string]int{api.DeviceRollingBack: 2, failedS: 1, api.DeviceSkipped: 2})
	pend := e.pendingOf(transport.TypeRollback)
	if len(pend) != 2 || pend["dev-1"] == "" || pend["dev-3"] == "" {
		t.Fatalf("pending rollbacks: %v", pend)
	}
	// The rollbacks (schema-checked by the devices) name the threshold.
	for _, dv := range []*device{devs[0], devs[2]} {
		msg := dv.waitCommands(transport.TypeRollback, dep.ID, 1)[0]
		b := msg.Body.(*transport.Rollback)
		if msg.ID != pend[dv.id] || b.By != "controller" || !strings.Contains(b.Note, "abort threshold tripped") || !strings.Contains(b.Note, "over the threshold of 40%") {
			t.Fatalf("rollback to %s: %s %+v", dv.id, msg.ID, b)
		}
		r := e.run(dep.ID, dv.id)
		if r.Rollback == nil || r.Rollback.Command != msg.ID || r.Rollback.Sent == nil {
			t.Fatalf("run of %s: %+v", dv.id, r.Rollback)
		}
	}
	if got := devs[1].commandsOf(transport.TypeRollback, dep.ID); len(got) != 0 {
		t.Fatalf("the failed device got a rollback: %v", got)
	}
	for _, dv := range devs[3:] {
		e.notDispatched(dep.ID, dv.id)
		if got := dv.commandsOf(transport.TypeRollback, dep.ID); len(got) != 0 {
			t.Fatalf("skipped %s got a rollback", dv.id)
		}
	}
	// The audit says the controller did it, and why.
	full := e.deployment(dep.ID)
	last := full.Audit[len(full.Audit)-1]
	if last.Action != api.AuditRollback || last.By != "controller" || last.Devices != 2 || !strings.Contains(last.Note, "threshold of 40%") {
		t.Fatalf("audit: %+v", full.Audit)
	}
	// A cancel cannot cut it short.
	_, code, body := postJSON[api.Deployment](e, "/v1/deployments/"+dep.ID+"/cancel", api.Cancel{By: "alice"})
	if code != http.StatusConflict || !strings.Contains(string(body), "is rolling back") {
		t.Fatalf("cancel while rolling back: %d %s", code, body)
	}

	// dev-1 undoes its execution; its answer ends its rollback (and a
	// second rolled-back counts once).
	devs[0].send(&transport.RollbackAction{Deployment: dep.ID, Execution: "ex-1", Step: "s", Action: "command", Trigger: "anyStep", Status: transport.StatusSucceeded})
	devs[0].send(rolledBack(dep.ID, transport.StatusRolledBack, nil))
	seq := devs[0].send(rolledBack(dep.ID, transport.StatusRolledBack, nil))
	devs[0].waitAck(seq)
	r := e.waitRun(dep.ID, "dev-1", string(transport.StatusRolledBack))
	if len(r.RollbackActions) != 1 || r.Rollback.Finished == nil || r.Error != nil {
		t.Fatalf("dev-1 rolled back: %+v %+v", r, r.Rollback)
	}
	d = e.deployment(dep.ID)
	if d.Status != api.DeploymentRollingBack || d.Rollback.RolledBack != 1 || d.Rollback.Pending() != 1 {
		t.Fatalf("after dev-1: %s %+v", d.Status, d.Rollback)
	}
	if p := e.pendingOf(transport.TypeRollback); !maps.Equal(p, map[string]string{"dev-3": pend["dev-3"]}) {
		t.Fatalf("pending after dev-1 answered: %v", p)
	}

	// A restart sends dev-3's rollback again, with the same id.
	e.restart()
	again := devs[2].waitCommands(transport.TypeRollback, dep.ID, 2)
	if again[1].ID != again[0].ID {
		t.Fatalf("rollback sent again with a new id: %s, then %s", again[0].ID, again[1].ID)
	}
	if got := devs[0].commandsOf(transport.TypeRollback, dep.ID); len(got) != 1 {
		t.Fatalf("dev-1's answered rollback was sent again: %d", len(got))
	}
	devs[2].send(rolledBack(dep.ID, transport.StatusRolledBack, nil))
	final := e.waitDeployment(dep.ID, api.DeploymentRolledBack)
	if final.Finished == nil || final.Rollback.RolledBack != 2 || final.Rollback.Failed != 0 || final.Rollback.Pending() != 0 {
		t.Fatalf("rolled back: %+v", final.Rollback)
	}
	wantCounts(t, final, map[string]int{string(transport.StatusRolledBack): 2, failedS: 1, api.DeviceSkipped: 2})
	if p := e.pendingOf(transport.TypeRollback); len(p) != 0 {
		t.Fatalf("pending rollbacks at the end: %v", p)
	}
	// The feed ended with the final status, and a late answer changes
	// nothing.
	seq = devs[2].send(rolledBack(dep.ID, transport.StatusRollbackFailed, nil))
	devs[2].waitAck(seq)
	if d := e.deployment(dep.ID); d.Status != api.DeploymentRolledBack || d.Rollback.Failed != 0 || e.run(dep.ID, "dev-3").Status != string(transport.StatusRolledBack) {
		t.Fatalf("a late answer moved it: %s %+v", d.Status, d.Rollback)
	}
}

// TestRollbackOnAbortMixed: a Succeeded device whose agent cannot undo
// keeps Succeeded with a note, one that refuses the rollback is
// RollbackFailed with the agent's error, and the deployment ends Aborted.
func TestRollbackOnAbortMixed(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(5, nil)
	e.canRollBack(devs[0], devs[2], devs[4])
	dep := e.create(devs, &api.Rollout{Abort: &api.AbortPolicy{Threshold: 30, MinSample: 5}, RollbackOnAbort: true}, nil)
	devs[0].finish(dep.ID, transport.StatusSucceeded)
	devs[1].finish(dep.ID, transport.StatusSucceeded) // cannot undo
	devs[4].finish(dep.ID, transport.StatusSucceeded)
	devs[2].finish(dep.ID, transport.StatusFailed) // can undo, but failed
	e.waitRun(dep.ID, "dev-3", failedS)
	devs[3].finish(dep.ID, transport.StatusFailed) // 2 of 5: 40% > 30%
	d := e.waitDeployment(dep.ID, api.DeploymentRollingBack)
	if d.Rollback.Devices != 2 || d.Rollback.Unsupported != 1 {
		t.Fatalf("rollback: %+v", d.Rollback)
	}
	wantCounts(t, d, map[string]int{api.DeviceRollingBack: 2, succeeded: 1, failedS: 2})
	r2 := e.run(dep.ID, "dev-2")
	if r2.Status != succeeded || r2.Rollback == nil || r2.Rollback.Command != "" || !strings.Contains(r2.Rollback.Note, "cannot undo") || !strings.Contains(r2.Rollback.Note, "0.7.0") {
		t.Fatalf("dev-2: %+v %+v", r2, r2.Rollback)
	}
	if p := e.pendingOf(transport.TypeRollback); len(p) != 2 || p["dev-1"] == "" || p["dev-5"] == "" {
		t.Fatalf("pending rollbacks: %v", p)
	}
	for _, dv := range []*device{devs[1], devs[2], devs[3]} {
		if got := dv.commandsOf(transport.TypeRollback, dep.ID); len(got) != 0 {
			t.Fatalf("%s got a rollback", dv.id)
		}
	}
	devs[0].waitCommands(transport.TypeRollback, dep.ID, 1)
	devs[4].waitCommands(transport.TypeRollback, dep.ID, 1)
	devs[0].send(rolledBack(dep.ID, transport.StatusRolledBack, nil))
	refusal := &transport.ErrorInfo{Type: onfailure.Unknown, Message: "execution ex-1 of deployment " + dep.ID + " is not the device's last execution (ex-2 ran since)"}
	devs[4].send(rolledBack(dep.ID, transport.StatusFailed, refusal))
	final := e.waitDeployment(dep.ID, api.DeploymentAborted)
	if final.Rollback.RolledBack != 1 || final.Rollback.Failed != 1 || final.Rollback.Unsupported != 1 || final.Finished == nil {
		t.Fatalf("final rollback: %+v", final.Rollback)
	}
	wantCounts(t, final, map[string]int{string(transport.StatusRolledBack): 1, string(transport.StatusRollbackFailed): 1, succeeded: 1, failedS: 2})
	r5 := e.run(dep.ID, "dev-5")
	if r5.Status != string(transport.StatusRollbackFailed) || !r5.Rollback.Refused || r5.Error == nil || *r5.Error != *refusal {
		t.Fatalf("dev-5: %+v %+v", r5, r5.Rollback)
	}
}

// TestRollbackOnAbortNothingSucceeded: with no Succeeded device there is
// nothing to roll back, and the deployment ends Aborted.
func TestRollbackOnAbortNothingSucceeded(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(3, nil)
	e.canRollBack(devs...)
	dep := e.create(devs, &api.Rollout{MaxInFlight: 1, Abort: &api.AbortPolicy{Threshold: 0}, RollbackOnAbort: true}, nil)
	devs[0].finish(dep.ID, transport.StatusFailed)
	d := e.waitDeployment(dep.ID, api.DeploymentAborted)
	if d.Rollback != nil || len(e.pendingOf(transport.TypeRollback)) != 0 {
		t.Fatalf("aborted: %+v", d.Rollback)
	}
}

// TestRollbackOnAbortTimeout: a rollback not answered within the
// rollout's deviceTimeout fails (kind Timeout), is no longer sent, and
// the deployment ends Aborted; a late answer changes nothing.
func TestRollbackOnAbortTimeout(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	devs := e.fleet(2, nil)
	e.canRollBack(devs...)
	dep := e.create(devs, &api.Rollout{DeviceTimeout: "10m", Abort: &api.AbortPolicy{Threshold: 40, MinSample: 2}, RollbackOnAbort: true}, nil)
	devs[0].finish(dep.ID, transport.StatusSucceeded)
	devs[1].finish(dep.ID, transport.StatusFailed)
	e.waitDeployment(dep.ID, api.DeploymentRollingBack)
	r := e.run(dep.ID, "dev-1")
	if r.Deadline == nil || !r.Deadline.Equal(clk.Now().Add(10*time.Minute)) {
		t.Fatalf("rollback deadline: %+v", r.Deadline)
	}
	devs[0].waitCommands(transport.TypeRollback, dep.ID, 1)
	clk.Advance(10 * time.Minute)
	d := e.waitDeployment(dep.ID, api.DeploymentAborted)
	if d.Rollback.Failed != 1 || d.Rollback.Pending() != 0 {
		t.Fatalf("rollback: %+v", d.Rollback)
	}
	r = e.run(dep.ID, "dev-1")
	if r.Status != string(transport.StatusRollbackFailed) || r.Error == nil || r.Error.Type != onfailure.Timeout || !strings.Contains(r.Error.Message, "did not answer its rollback") {
		t.Fatalf("timed out rollback: %+v", r)
	}
	if p := e.pendingOf(transport.TypeRollback); len(p) != 0 {
		t.Fatalf("pending: %v", p)
	}
	seq := devs[0].send(rolledBack(dep.ID, transport.StatusRolledBack, nil))
	devs[0].waitAck(seq)
	if r := e.run(dep.ID, "dev-1"); r.Status != string(transport.StatusRollbackFailed) {
		t.Fatalf("a late answer moved it: %+v", r)
	}
}
