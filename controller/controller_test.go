package controller_test

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/edgeflow/edgeflow/controller"
	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

func accepted(dep, dispatch string) *transport.Accepted {
	return &transport.Accepted{Deployment: dep, Dispatch: dispatch, Execution: "ex-1", Flow: "app"}
}

func stepStarted(dep, step string) *transport.StepStarted {
	return &transport.StepStarted{Deployment: dep, Execution: "ex-1", Step: step, Attempt: 1}
}

func stepFinished(dep, step string, status transport.Status, log string) *transport.StepFinished {
	return &transport.StepFinished{Deployment: dep, Execution: "ex-1", Step: step, Attempt: 1, Status: status, Log: log, DurationMS: 12}
}

func flowFinished(dep string, status transport.Status) *transport.FlowFinished {
	f := &transport.FlowFinished{Deployment: dep, Execution: "ex-1", Flow: "app", Status: status}
	if status != transport.StatusSucceeded {
		f.Error = &transport.ErrorInfo{Type: onfailure.Verification, Message: "step s failed"}
	}
	return f
}

func wantCounts(t *testing.T, d api.Deployment, want map[string]int) {
	t.Helper()
	if !maps.Equal(d.Counts, want) {
		t.Fatalf("deployment %s counts %v, want %v", d.ID, d.Counts, want)
	}
}

// TestDeployToTwoDevices deploys to two devices; one reports a clean run,
// the other a duplicate, a gap and a failure.
func TestDeployToTwoDevices(t *testing.T) {
	e := newEnv(t, nil)
	d1, d2 := e.device("dev-1"), e.device("dev-2")
	d1.presence(transport.Online, map[string]string{"site": "a"})
	d2.presence(transport.Online, map[string]string{"site": "b"})
	eventually(t, "both devices known", func() bool {
		ds, _ := e.ctrl.Devices(bg)
		return len(ds) == 2 && ds[0].Status == transport.Online && ds[1].Status == transport.Online
	})
	dev, err := e.ctrl.Device(bg, "dev-1")
	if err != nil || dev.Agent != "0.7.0" || dev.Labels["site"] != "a" || dev.Capabilities == nil || !dev.Capabilities.Docker || dev.LastSeen.IsZero() {
		t.Fatalf("device: %+v %v", dev, err)
	}

	data := testBundle(t)
	b := e.addBundle(data)
	dep := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-2", "dev-1"}, Vars: map[string]string{"color": "blue"}})
	if dep.Status != api.DeploymentRunning || len(dep.Devices) != 2 || dep.Devices[0].Device != "dev-1" || dep.Bundle.Flow != "app" || dep.Bundle.Version != 3 {
		t.Fatalf("created: %+v", dep)
	}
	wantCounts(t, dep, map[string]int{api.DevicePending: 2})
	for i, d := range []*device{d1, d2} {
		m := d.waitCommands(transport.TypeDispatch, dep.ID, 1)[0]
		body := m.Body.(*transport.Dispatch)
		if m.ID != dep.Devices[i].Dispatch || m.ID == dep.Devices[1-i].Dispatch {
			t.Fatalf("dispatch id %s, want the run's %s (one id per device)", m.ID, dep.Devices[i].Dispatch)
		}
		if body.URL != e.srv.URL+"/v1/bundles/"+b.SHA256 || body.SHA256 != b.SHA256 || body.Size != int64(len(data)) || body.Vars["color"] != "blue" {
			t.Fatalf("dispatch to %s: %+v", d.id, body)
		}
	}

	// dev-1: a clean run, acknowledged up to its last event.
	id1 := dep.Devices[0].Dispatch
	d1.event(1, accepted(dep.ID, id1))
	d1.event(2, stepStarted(dep.ID, "s"))
	d1.event(3, stepFinished(dep.ID, "s", transport.StatusSucceeded, "hello\n"))
	d1.event(4, flowFinished(dep.ID, transport.StatusSucceeded))
	acks := d1.waitAck(4)
	if !slices.IsSorted(acks) || acks[len(acks)-1] != 4 {
		t.Fatalf("acks of dev-1: %v, want cumulative acks rising to 4", acks)
	}
	r1 := e.waitRun(dep.ID, "dev-1", "Succeeded")
	if r1.Execution != "ex-1" || len(r1.Steps) != 1 || r1.Steps[0].Status != "Succeeded" || r1.Steps[0].DurationMS != 12 {
		t.Fatalf("run of dev-1: %+v", r1)
	}

	// dev-2: a duplicate, then a gap (3 before 2).
	id2 := dep.Devices[1].Dispatch
	d2.event(1, accepted(dep.ID, id2))
	d2.event(1, accepted(dep.ID, id2))
	d2.event(3, flowFinished(dep.ID, transport.StatusFailed))
	d2.event(2, stepFinished(dep.ID, "s", transport.StatusFailed, "boom\n"))
	d2.waitAck(2)
	// Acks of one device arrive in order: once 2 is here, 3 was dropped
	// without one.
	if acks := d2.ackList(); slices.Max(acks) != 2 || slices.Contains(acks, 3) {
		t.Fatalf("acks of dev-2: %v, want none above 2 (seq 3 came before 2)", acks)
	}
	r2 := e.run(dep.ID, "dev-2")
	if r2.Status != "Running" || len(r2.Steps) != 1 || r2.Steps[0].Status != "Failed" {
		t.Fatalf("run of dev-2 after the gap: %+v", r2)
	}
	wantCounts(t, e.deployment(dep.ID), map[string]int{"Succeeded": 1, "Running": 1})

	// The agent sends 3 again: now it is next.
	d2.event(3, flowFinished(dep.ID, transport.StatusFailed))
	d2.waitAck(3)
	final := e.waitDeployment(dep.ID, api.DeploymentFailed)
	wantCounts(t, final, map[string]int{"Succeeded": 1, "Failed": 1})
	if final.Finished == nil || final.Devices[1].Error == nil || final.Devices[1].Error.Type != onfailure.Verification {
		t.Fatalf("final deployment: %+v", final)
	}

	// Stored: every event once; the feed numbered without gaps, one
	// device event per change and the final deployment event last.
	events, err := e.st.Events(bg, dep.ID, "dev-2")
	if err != nil || len(events) != 3 || events[0].Seq != 1 || events[2].Seq != 3 {
		t.Fatalf("stored events of dev-2: %+v %v", events, err)
	}
	feed, err := e.st.Feed(bg, dep.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	perDevice := map[string]int{}
	for i, f := range feed {
		if f.Seq != uint64(i+1) {
			t.Fatalf("feed event %d has seq %d", i, f.Seq)
		}
		if f.Kind == api.EventDevice {
			perDevice[f.Run.Device]++
			if len(f.Message) == 0 {
				t.Fatalf("device feed event without the agent's message: %+v", f)
			}
		}
	}
	if perDevice["dev-1"] != 4 || perDevice["dev-2"] != 3 {
		t.Fatalf("device feed events: %v, want 4 for dev-1 and 3 for dev-2 (the duplicate adds none)", perDevice)
	}
	last := feed[len(feed)-1]
	if last.Kind != api.EventDeployment || last.Deployment.Status != api.DeploymentFailed {
		t.Fatalf("last feed event: %+v", last)
	}

	logs, err := e.ctrl.Logs(bg, dep.ID, "dev-1", "")
	if err != nil || len(logs) != 1 || logs[0].Log != "hello\n" || logs[0].Status != "Succeeded" {
		t.Fatalf("logs: %+v %v", logs, err)
	}
	if cmds, _ := e.st.Commands(bg, ""); len(cmds) != 0 {
		t.Fatalf("pending commands left: %+v", cmds)
	}
}

// TestPresenceRedispatches sends a Pending run's dispatch again, with the
// same id, when its device comes online.
func TestPresenceRedispatches(t *testing.T) {
	e := newEnv(t, nil)
	b := e.addBundle(testBundle(t))
	dep := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-3"}})
	// dev-3 had no session when the dispatch went out: it never got it.
	d := e.device("dev-3")
	d.presence(transport.Online, nil)
	first := d.waitCommands(transport.TypeDispatch, dep.ID, 1)[0]
	if first.ID != dep.Devices[0].Dispatch {
		t.Fatalf("re-dispatch id %s, want %s", first.ID, dep.Devices[0].Dispatch)
	}
	d.presence(transport.Online, map[string]string{"site": "c"})
	for _, m := range d.waitCommands(transport.TypeDispatch, dep.ID, 2) {
		if m.ID != first.ID || !m.Time.Equal(first.Time) {
			t.Fatalf("dispatch sent again as %s at %v, want %s at %v", m.ID, m.Time, first.ID, first.Time)
		}
	}
	d.event(1, &transport.Queued{Deployment: dep.ID, Dispatch: first.ID, Position: 1})
	e.waitRun(dep.ID, "dev-3", api.DeviceQueued)
	if cmds, _ := e.st.Commands(bg, "dev-3"); len(cmds) != 0 {
		t.Fatalf("a Queued run's dispatch is still pending: %+v", cmds)
	}
}

// TestRestart stops the controller and starts another on the same data
// dir: it sends Pending dispatches again and goes on with each device's
// seq, so that events sent again are not counted twice.
func TestRestart(t *testing.T) {
	e := newEnv(t, nil)
	d1, d2 := e.device("dev-1"), e.device("dev-2")
	b := e.addBundle(testBundle(t))
	dep := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-1", "dev-2"}})
	m1 := d1.waitCommands(transport.TypeDispatch, dep.ID, 1)[0]
	m2 := d2.waitCommands(transport.TypeDispatch, dep.ID, 1)[0]
	d1.event(1, accepted(dep.ID, m1.ID))
	d1.waitAck(1)

	e.stop()
	// While the controller is away its session collects dev-1's events:
	// one it has already stored, and a new one.
	d1.event(1, accepted(dep.ID, m1.ID))
	d1.event(2, stepStarted(dep.ID, "s"))
	e.restart()

	d1.waitAck(2)
	if again := d2.waitCommands(transport.TypeDispatch, dep.ID, 2); again[1].ID != m2.ID {
		t.Fatalf("dispatch after restart has id %s, want %s", again[1].ID, m2.ID)
	}
	r := e.waitRun(dep.ID, "dev-1", "Running")
	if len(r.Steps) != 1 || r.Steps[0].Status != "Running" {
		t.Fatalf("run of dev-1: %+v", r)
	}
	wantCounts(t, e.deployment(dep.ID), map[string]int{"Running": 1, "Pending": 1})

	d1.event(3, flowFinished(dep.ID, transport.StatusSucceeded))
	d2.event(1, &transport.Rejected{Deployment: dep.ID, Dispatch: m2.ID, Error: &transport.ErrorInfo{Type: onfailure.Integrity, Message: "bad signature"}})
	final := e.waitDeployment(dep.ID, api.DeploymentFailed)
	wantCounts(t, final, map[string]int{"Succeeded": 1, "Rejected": 1})
	if r := final.Devices[1]; r.Error == nil || r.Error.Message != "bad signature" {
		t.Fatalf("rejected run: %+v", r)
	}
}

// TestCancel cancels a deployment with one device running it and one
// that has not answered.
func TestCancel(t *testing.T) {
	e := newEnv(t, nil)
	d1, d2 := e.device("dev-1"), e.device("dev-2")
	b := e.addBundle(testBundle(t))
	dep := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-1", "dev-2"}})
	m1 := d1.waitCommands(transport.TypeDispatch, dep.ID, 1)[0]
	d1.event(1, accepted(dep.ID, m1.ID))
	e.waitRun(dep.ID, "dev-1", "Running")

	got, err := e.ctrl.Cancel(bg, dep.ID, api.Cancel{By: "alice", Note: "wrong bundle"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != api.DeploymentRunning || got.Cancel == nil || got.Cancel.By != "alice" || got.Devices[1].Status != api.DeviceCancelled {
		t.Fatalf("after cancel: %+v", got)
	}
	wantCounts(t, got, map[string]int{"Running": 1, "Cancelled": 1})
	for _, d := range []*device{d1, d2} {
		c := d.waitCommands(transport.TypeCancel, dep.ID, 1)[0].Body.(*transport.Cancel)
		if c.By != "alice" || c.Note != "wrong bundle" {
			t.Fatalf("cancel to %s: %+v", d.id, c)
		}
	}
	if cmds, _ := e.st.Commands(bg, ""); len(cmds) != 1 || cmds[0].Device != "dev-1" || cmds[0].Type != transport.TypeCancel {
		t.Fatalf("pending commands: %+v, want the cancel to the running dev-1", cmds)
	}
	// A second cancel sends the same cancel (same id) again.
	if _, err := e.ctrl.Cancel(bg, dep.ID, api.Cancel{}); err != nil {
		t.Fatal(err)
	}
	c := d1.waitCommands(transport.TypeCancel, dep.ID, 2)
	if c[0].ID != c[1].ID {
		t.Fatalf("cancel sent again as %s, want %s", c[1].ID, c[0].ID)
	}

	d1.event(2, &transport.FlowFinished{Deployment: dep.ID, Execution: "ex-1", Flow: "app", Status: transport.StatusRolledBack,
		Error: &transport.ErrorInfo{Type: onfailure.UserMarkedFailure, Message: "cancelled by alice"}})
	final := e.waitDeployment(dep.ID, api.DeploymentCancelled)
	wantCounts(t, final, map[string]int{"RolledBack": 1, "Cancelled": 1})
	if final.Finished == nil {
		t.Fatal("a cancelled deployment without its finish time")
	}
	if cmds, _ := e.st.Commands(bg, ""); len(cmds) != 0 {
		t.Fatalf("pending commands left: %+v", cmds)
	}
	_, err = e.ctrl.Cancel(bg, dep.ID, api.Cancel{})
	var ce *controller.Error
	if !errors.As(err, &ce) || ce.Code != api.CodeConflict {
		t.Fatalf("cancel a final deployment: %v, want a conflict", err)
	}

	// The device ran it after all (it had the dispatch): its reports
	// still move the Cancelled run, and the deployment stays Cancelled.
	m2 := d2.waitCommands(transport.TypeDispatch, dep.ID, 1)[0]
	d2.event(1, accepted(dep.ID, m2.ID))
	r := e.waitRun(dep.ID, "dev-2", "Running")
	if d := e.deployment(dep.ID); d.Status != api.DeploymentCancelled || r.Execution != "ex-1" {
		t.Fatalf("after a late report: %+v", d)
	}
}

// TestRefusedAndStray acknowledges a refused event whose seq is readable,
// and stores an event for a deployment the controller does not know.
func TestRefusedAndStray(t *testing.T) {
	e := newEnv(t, nil)
	d := e.device("dev-1")
	d.presence(transport.Online, nil)
	now := "2025-06-01T10:00:00Z"
	// No execution: refused, but its seq is acknowledged.
	d.publish(transport.ChannelEvents, []byte(`{"v":1,"id":"a1","type":"accepted","device":"dev-1","time":"`+now+`","seq":1,"body":{"deployment":"dep-x","dispatch":"d"}}`))
	d.waitAck(1)
	// Not JSON: nothing to acknowledge.
	d.publish(transport.ChannelEvents, []byte(`garbage`))
	// Another device's event on dev-1's topic: refused; the seq is the
	// topic's device's.
	d.publish(transport.ChannelEvents, []byte(`{"v":1,"id":"a2","type":"accepted","device":"dev-9","time":"`+now+`","seq":2,"body":{"deployment":"dep-x","dispatch":"d","execution":"e","flow":"f"}}`))
	d.waitAck(2)
	// An unknown deployment: stored and acknowledged.
	d.event(3, accepted("dep-unknown", "d"))
	d.waitAck(3)
	events, err := e.st.Events(bg, "dep-unknown", "dev-1")
	if err != nil || len(events) != 1 || events[0].Seq != 3 {
		t.Fatalf("stray event: %+v %v", events, err)
	}
	if _, err := e.st.Device(bg, "dev-9"); err == nil {
		t.Fatal("a refused message created a device")
	}
	// An offline presence keeps the inventory.
	d.presence(transport.Offline, nil)
	eventually(t, "dev-1 offline", func() bool {
		dev, _ := e.ctrl.Device(bg, "dev-1")
		return dev.Status == transport.Offline && dev.Capabilities != nil
	})
}

// TestManyEvents pushes a burst through batching: every event is applied
// once, in order.
func TestManyEvents(t *testing.T) {
	e := newEnv(t, func(o *controller.Options) { o.MaxBatch = 7 })
	d := e.device("dev-1")
	b := e.addBundle(testBundle(t))
	dep := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-1"}})
	d.event(1, accepted(dep.ID, dep.Devices[0].Dispatch))
	const steps = 60
	seq := uint64(1)
	for i := range steps {
		seq++
		d.event(seq, stepStarted(dep.ID, fmt.Sprintf("s%02d", i)))
		seq++
		d.event(seq, stepFinished(dep.ID, fmt.Sprintf("s%02d", i), transport.StatusSucceeded, ""))
	}
	seq++
	d.event(seq, flowFinished(dep.ID, transport.StatusSucceeded))
	d.waitAck(seq)
	final := e.waitDeployment(dep.ID, api.DeploymentSucceeded)
	r := final.Devices[0]
	if len(r.Steps) != steps || r.Steps[0].Name != "s00" || r.Steps[steps-1].Name != fmt.Sprintf("s%02d", steps-1) {
		t.Fatalf("steps: %d, first %+v", len(r.Steps), r.Steps[0])
	}
	if last, _ := e.st.LastSeq(bg, "dev-1"); last.Seq != seq {
		t.Fatalf("last seq %+v, want %d", last, seq)
	}
}

// TestNewStream forgets a device's seq when its presence names a new
// event stream (a reinstalled agent numbers its events from 1 again).
func TestNewStream(t *testing.T) {
	e := newEnv(t, nil)
	d := e.device("dev-1")
	d.presence(transport.Online, nil)
	b := e.addBundle(testBundle(t))
	first := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-1"}})
	d.event(1, accepted(first.ID, first.Devices[0].Dispatch))
	d.event(2, flowFinished(first.ID, transport.StatusSucceeded))
	d.waitAck(2)
	if last, _ := e.st.LastSeq(bg, "dev-1"); last != (store.DeviceSeq{Stream: d.stream, Seq: 2}) {
		t.Fatalf("last seq: %+v", last)
	}

	// The same stream again (a reconnect): nothing is forgotten, 3 is next.
	d.presence(transport.Online, nil)
	d.event(3, flowFinished(first.ID, transport.StatusSucceeded))
	d.waitAck(3)

	// Reinstalled: a new stream, from seq 1.
	d.stream = "stream-reinstalled"
	d.presence(transport.Online, nil)
	second := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-1"}})
	before := len(d.ackList())
	d.event(1, accepted(second.ID, second.Devices[0].Dispatch))
	e.waitRun(second.ID, "dev-1", "Running")
	// The acks of the old stream (up to 3) are in already: wait for the
	// new one.
	var acks []uint64
	eventually(t, "the ack of the new stream's seq 1", func() bool {
		acks = d.ackList()
		return len(acks) > before
	})
	if acks[len(acks)-1] != 1 {
		t.Fatalf("acks: %v, want 1 last", acks)
	}
	if last, _ := e.st.LastSeq(bg, "dev-1"); last != (store.DeviceSeq{Stream: "stream-reinstalled", Seq: 1}) {
		t.Fatalf("last seq after the new stream: %+v", last)
	}
}

// TestAckedAhead goes on from the seq a device's presence says was
// acknowledged when the controller's store remembers less (restored from
// an older backup), instead of waiting for events the device deleted.
func TestAckedAhead(t *testing.T) {
	e := newEnv(t, nil)
	d := e.device("dev-1")
	d.presence(transport.Online, nil)
	b := e.addBundle(testBundle(t))
	dep := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-1"}})
	d.event(1, accepted(dep.ID, dep.Devices[0].Dispatch))
	d.waitAck(1)

	// Events 2..7 were acknowledged by a controller whose store is lost.
	d.acked = 7
	d.presence(transport.Online, nil)
	d.event(8, flowFinished(dep.ID, transport.StatusSucceeded))
	if acks := d.waitAck(8); acks[len(acks)-1] != 8 {
		t.Fatalf("acks: %v, want 8 last", acks)
	}
	e.waitRun(dep.ID, "dev-1", "Succeeded")
}
