package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// Run ingests the messages the MQTT client receives (subscribed to
// Topics.Filter(ChannelEvents) and Topics.Filter(ChannelPresence)) until
// ctx ends, in batches of what has arrived, sends pending commands again
// when OnConnect or a device's presence asks for it, and keeps the
// rollouts' timers (armed from the store when it starts). Run it once, in
// its own goroutine; it returns when ctx ends or msgs is closed.
func (c *Controller) Run(ctx context.Context, msgs <-chan mqtt.Message) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.resendLoop(ctx)
	}()
	defer wg.Wait()
	// Commands stored by an earlier run of the controller go out again
	// now (and on every reconnect, through OnConnect).
	c.resends.requestAll()
	// The rollouts' timers (pauses between waves, device deadlines) are
	// armed again from the store, and what came due meanwhile is done.
	c.startTimers(ctx)
	defer c.stopTimers()
	for {
		var batch []mqtt.Message
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			batch = append(batch, m)
		}
		closed := false
	more:
		for len(batch) < c.opts.MaxBatch {
			select {
			case m, ok := <-msgs:
				if !ok {
					closed = true
					break more
				}
				batch = append(batch, m)
			default:
				break more
			}
		}
		// Ingest logs its errors; what it did not store is sent again.
		_ = c.Ingest(ctx, batch)
		if closed {
			return
		}
	}
}

// OnConnect asks Run to send every pending command again; call it after
// every (re)connect of the MQTT client (mqtt.Options.OnConnect). It
// returns at once.
func (c *Controller) OnConnect() { c.resends.requestAll() }

// outcome is what a message needs after the commit.
type outcome struct {
	// ack is the device whose cumulative ack covers this message ("":
	// no ack is due).
	ack string
	// resend is a device that came online: send its pending commands.
	resend string
}

// Ingest processes one batch of messages, in order: it stores what they
// report in one commit, publishes one cumulative ack per device whose
// events it stored or already had, and then acknowledges the messages to
// the broker. A message whose ack could not be published is not
// acknowledged to the broker, so that it comes again. When the commit
// fails, nothing is acknowledged and the error is returned: the agents
// send the events again.
func (c *Controller) Ingest(ctx context.Context, msgs []mqtt.Message) error {
	outs := make([]outcome, len(msgs))
	c.mu.Lock()
	w := c.newWork(ctx)
	var err error
	for i, m := range msgs {
		if outs[i], err = c.ingest(w, m); err != nil {
			break
		}
	}
	if err == nil {
		err = c.commit(w)
	}
	c.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("ingest %d messages: %w", len(msgs), err)
		c.log.Error("store agent messages; they stay unacknowledged", "messages", len(msgs), "error", err)
		return err
	}

	acks := map[string]uint64{}
	for _, o := range outs {
		if o.ack != "" {
			acks[o.ack] = w.seqs[o.ack].Seq
		}
	}
	failed := c.publishAcks(ctx, acks)
	for i, m := range msgs {
		if d := outs[i].ack; d != "" && failed[d] {
			continue
		}
		m.Ack()
	}
	for _, o := range outs {
		if o.resend != "" {
			c.resends.requestDevice(o.resend)
		}
	}
	// The rollouts' next dispatches (and timers) that the events decided.
	c.after(ctx, w)
	return nil
}

// ingest applies one message to the work. It returns an error only when
// the store cannot be read; a message it refuses is logged and dropped.
func (c *Controller) ingest(w *work, m mqtt.Message) (outcome, error) {
	device, ch, err := c.topics.Parse(m.Topic)
	if err != nil {
		c.log.Warn("drop message on unexpected topic", "topic", m.Topic, "error", err)
		return outcome{}, nil
	}
	switch ch {
	case transport.ChannelEvents:
		return c.ingestEvent(w, device, m)
	case transport.ChannelPresence:
		return c.ingestPresence(w, device, m)
	}
	c.log.Debug("drop message on a channel the controller does not read", "topic", m.Topic)
	return outcome{}, nil
}

func (c *Controller) ingestPresence(w *work, device string, m mqtt.Message) (outcome, error) {
	if len(m.Payload) == 0 {
		// Someone cleared the retained presence: nothing to learn.
		c.log.Debug("empty presence", "device", device)
		return outcome{}, nil
	}
	msg, err := c.topics.Decode(m.Topic, m.Payload)
	if err != nil {
		c.log.Warn("refuse presence", "device", device, "error", err)
		return outcome{}, nil
	}
	p := msg.Body.(*transport.Presence)
	d, err := w.device(device)
	if err != nil {
		return outcome{}, err
	}
	wasOnline := d != nil && d.Status == transport.Online
	if d == nil {
		d = &api.Device{ID: device}
		c.log.Info("new device", "device", device, "status", p.Status)
	} else if d.Status != p.Status {
		c.log.Info("device presence changed", "device", device, "status", p.Status)
	}
	applyPresence(d, p)
	seen(d, msg.Time, c.now())
	w.putDevice(d)
	if p.Stream != "" {
		// A new event stream (a new journal on the device: reinstalled)
		// numbers its events from 1 again. The agent sends its presence
		// before its events, so this comes before the new stream's seq 1.
		last, err := w.lastSeq(device)
		if err != nil {
			return outcome{}, err
		}
		switch {
		case last.Stream == p.Stream && p.Acked > last.Seq:
			// The agent holds acknowledgements this controller does not
			// remember (its store was restored from an older backup): the
			// events between were acknowledged and are gone from the
			// device; waiting for them would stall the device for good.
			c.log.Warn("device acknowledged past this controller's store; skipping the missing events", "device", device, "last", last.Seq, "acked", p.Acked)
			w.setSeq(device, store.DeviceSeq{Stream: p.Stream, Seq: p.Acked})
		case last.Stream == p.Stream:
		case last.Stream == "":
			// The first stream named: the seq counted so far is its.
			w.setSeq(device, store.DeviceSeq{Stream: p.Stream, Seq: max(last.Seq, p.Acked)})
		default:
			c.log.Info("device has a new event stream: its seq starts again", "device", device, "stream", p.Stream, "last", last.Seq)
			w.setSeq(device, store.DeviceSeq{Stream: p.Stream, Seq: p.Acked})
		}
	}
	// A device that comes online gets its pending commands again. One
	// that was online already and says it is running a flow is not sent
	// them on each presence: it is busy (its dispatches would only be
	// queued, and the one it runs would only be reported again); they go
	// again with its next presence that shows it idle.
	if p.Status == transport.Online && (!wasOnline || p.Execution == nil) {
		return outcome{resend: device}, nil
	}
	return outcome{}, nil
}

func (c *Controller) ingestEvent(w *work, device string, m mqtt.Message) (outcome, error) {
	msg, derr := c.topics.Decode(m.Topic, m.Payload)
	var seq uint64
	if derr != nil {
		// A refused event is still acknowledged when its seq is readable,
		// so that one bad event does not stall the device's outbox.
		var de *transport.DecodeError
		if errors.As(derr, &de) {
			seq = de.Seq
		}
		c.log.Warn("refuse event", "device", device, "seq", seq, "error", derr)
		if seq == 0 {
			return outcome{}, nil
		}
	} else {
		seq = msg.Seq
	}
	last, err := w.lastSeq(device)
	if err != nil {
		return outcome{}, err
	}
	switch {
	case seq <= last.Seq:
		c.log.Debug("duplicate event", "device", device, "seq", seq, "last", last.Seq)
		return outcome{ack: device}, nil
	case seq > last.Seq+1:
		c.log.Warn("event gap: drop until the agent sends the missing events", "device", device, "seq", seq, "want", last.Seq+1)
		return outcome{}, nil
	}
	w.setSeq(device, store.DeviceSeq{Stream: last.Stream, Seq: seq})
	if derr != nil {
		return outcome{ack: device}, nil
	}
	return outcome{ack: device}, c.applyEvent(w, device, msg, m.Payload)
}

// dispatchOf returns the dispatch id an answer to a dispatch names.
func dispatchOf(b transport.Body) string {
	switch b := b.(type) {
	case *transport.Accepted:
		return b.Dispatch
	case *transport.Rejected:
		return b.Dispatch
	case *transport.Queued:
		return b.Dispatch
	}
	return ""
}

// applyEvent stores an event of the device's next seq and applies it to
// its run and deployment.
func (c *Controller) applyEvent(w *work, device string, msg *transport.Message, payload []byte) error {
	now := c.now().UTC()
	depID := transport.DeploymentOf(msg.Body)
	w.batch.Events = append(w.batch.Events, store.Event{
		Deployment: depID, Device: device, Seq: msg.Seq, Type: msg.Type, Received: now, Message: payload,
	})
	dev, err := w.device(device)
	if err != nil {
		return err
	}
	if dev != nil {
		seen(dev, msg.Time, now)
		w.putDevice(dev)
	}
	log := c.log.With("deployment", depID, "device", device, "seq", msg.Seq)
	d, err := w.deployment(depID)
	if err != nil {
		return err
	}
	if d == nil {
		log.Warn("event for an unknown deployment: stored, not applied", "type", msg.Type)
		return nil
	}
	r, err := w.run(depID, device)
	if err != nil {
		return err
	}
	if r == nil {
		log.Warn("event from a device that is not in the deployment: stored, not applied", "type", msg.Type)
		return nil
	}
	if id := dispatchOf(msg.Body); id != "" && id != r.Dispatch {
		log.Warn("agent answers another dispatch than the one sent", "dispatch", id, "sent", r.Dispatch)
	}
	// What the device reports ends the commands it answers, whatever it
	// does to the run (an Excluded or TimedOut run stays as it is).
	for _, ty := range answered(msg.Body) {
		w.batch.DeleteCommands = append(w.batch.DeleteCommands, store.CommandKey{Device: device, Deployment: depID, Type: ty})
	}
	old, oldErr := r.Status, r.Error
	if !applyEvent(&r.DeviceRun, msg, now) {
		log.Debug("event changes nothing", "type", msg.Type, "status", r.Status)
		return nil
	}
	moved(d, &r.DeviceRun, old, oldErr)
	if old == api.DeviceRollingBack && r.Status != old && d.Rollback != nil {
		// The rollback's answer; a run moves out of RollingBack once.
		if r.Status == string(transport.StatusRolledBack) {
			d.Rollback.RolledBack++
		} else {
			d.Rollback.Failed++
		}
		if b, ok := msg.Body.(*transport.RolledBack); ok && b.Execution != "" && r.Execution != "" && b.Execution != r.Execution {
			log.Warn("rolled-back names another execution than the run's", "execution", b.Execution, "run", r.Execution)
		}
	}
	if old != r.Status {
		log.Info("device run changed", "status", r.Status, "type", msg.Type)
		if r.Status != api.DevicePending {
			w.batch.DeleteCommands = append(w.batch.DeleteCommands, store.CommandKey{Device: device, Deployment: depID, Type: transport.TypeDispatch})
		}
		if runFinished(r.Status) {
			w.batch.DeleteCommands = append(w.batch.DeleteCommands, store.CommandKey{Device: device, Deployment: depID, Type: transport.TypeCancel})
		}
	}
	w.putRun(r)
	w.deviceEvent(d, r, payload)
	was := d.Status
	if err := w.advance(d, now); err != nil {
		return err
	}
	if d.Status != was {
		log.Info("deployment status changed", "status", d.Status, "counts", d.Counts)
	}
	return w.deploymentEvent(d, false)
}

// answered returns the types of the pending commands an event answers: a
// resumed answers a guide; a paused, or a step that failed as marked,
// answers a mark-failed; the end of the flow (flow-finished, rejected)
// answers every command of the deployment but a rollback, which only
// rolled-back answers.
func answered(b transport.Body) []transport.Type {
	switch b := b.(type) {
	case *transport.Resumed:
		return []transport.Type{transport.TypeGuide}
	case *transport.Paused:
		return []transport.Type{transport.TypeMarkFailed}
	case *transport.StepFinished:
		if b.Error != nil && b.Error.Type == onfailure.UserMarkedFailure {
			return []transport.Type{transport.TypeMarkFailed}
		}
	case *transport.FlowFinished, *transport.Rejected:
		return []transport.Type{transport.TypeDispatch, transport.TypeCancel, transport.TypeGuide, transport.TypeMarkFailed}
	case *transport.RolledBack:
		return []transport.Type{transport.TypeRollback}
	}
	return nil
}

// publishAcks publishes a cumulative ack per device and returns the
// devices whose ack failed.
func (c *Controller) publishAcks(ctx context.Context, acks map[string]uint64) map[string]bool {
	failed := map[string]bool{}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, 16)
	)
	for dev, seq := range acks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m, err := transport.New(dev, &transport.Ack{Seq: seq})
			if err == nil {
				err = c.send(ctx, m)
			}
			if err != nil {
				c.log.Warn("publish ack; the agent sends its events again", "device", dev, "seq", seq, "error", err)
				mu.Lock()
				failed[dev] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

// send encodes m and publishes it on its device's topic.
func (c *Controller) send(ctx context.Context, m *transport.Message) error {
	payload, err := m.Encode()
	if err != nil {
		return err
	}
	topic, err := c.topics.Topic(m.Device, m.Type.Channel())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.PublishTimeout)
	defer cancel()
	if err := c.client.Publish(ctx, topic, payload, false); err != nil {
		return fmt.Errorf("publish %s %s to device %s: %w", m.Type, m.ID, m.Device, err)
	}
	return nil
}
