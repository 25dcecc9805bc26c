package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/journal"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/packaging/fetch"
	"github.com/edgeflow/edgeflow/steps/compose"
	"github.com/edgeflow/edgeflow/steps/docker"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// The daemon (edgeflow-agent run) keeps a device connected to its
// controller: it receives dispatches and commands over MQTT, runs one
// deployment at a time through the engine, and reports every step through
// the journal's outbox.
//
// A dispatch's life on the device (states of its queue entry and command
// record, all in the journal):
//
//	dispatch received ──(new id: recorded + queued, one transaction)──► queued
//	   │ (id seen before: report its state again, nothing else)          │ head of the queue
//	   ▼                                                                  ▼
//	 re-report                                                   download + verify
//	                                                   refused │            │ ok
//	                                                           ▼            ▼
//	                        rejected (event + dequeue, one tx)          running ──(agent restart)──► resumed
//	                                                                        │
//	                                                                        ▼
//	                                         finished (flow-finished + dequeue, one tx)
//
// A queued dispatch that is cancelled is dequeued with a rejected event
// of kind UserMarkedFailure; a running one is stopped as mark-failed does.
//
// A rollback command (capability-gated, docs/protocol.md) waits in the
// same queue, so it runs only when no flow runs, in arrival order:
//
//	rollback received ──(new id: recorded + queued, one tx)──► queued ──head──► check target
//	   │ (id seen before: nothing)                                 refused │         │ ok
//	   ▼                                                                   ▼         ▼
//	 ignored                        rolled-back Failed (+ dequeue, one tx)     undoing ──(restart)──► resumed
//	                                                                                 │
//	                                                                                 ▼
//	                  final record + rolled-back RolledBack/RollbackFailed + dequeue (one tx)

// Default daemon settings.
const (
	// DefaultRetransmit is how long the daemon waits for an ack before it
	// publishes the unacknowledged events again (doubling up to
	// MaxRetransmit while none comes).
	DefaultRetransmit = 30 * time.Second
	MaxRetransmit     = 5 * time.Minute
	// DownloadsDir is where, under the state dir, bundles are downloaded.
	DownloadsDir = "downloads"
	// downloadAttempts bounds the requests of one bundle download: with
	// fetch's backoff about a minute, enough to ride out a controller
	// restart.
	downloadAttempts = 8
)

// DaemonOptions configure the daemon.
type DaemonOptions struct {
	Config
	// Broker is the MQTT broker's URL.
	Broker   string
	Username string
	Password string
	// Prefix is the topic prefix; empty means transport.DefaultPrefix.
	Prefix string
	// TrustedKeys may sign bundles. Without any, AllowUnsigned must be set.
	TrustedKeys []packaging.PublicKey
	// AllowUnsigned accepts unsigned bundles when no key is trusted (labs).
	AllowUnsigned bool
	// Version is the agent's version, announced in presence.
	Version string
	// Retransmit overrides DefaultRetransmit (tests).
	Retransmit time.Duration
}

// Daemon is a running edgeflow-agent run.
type Daemon struct {
	opts   DaemonOptions
	log    *slog.Logger
	topics transport.Topics
	j      *journal.Journal
	client *mqtt.Client
	caps   *transport.Capabilities
	// stream names the journal's event stream (presence.stream).
	stream string

	workWake     chan struct{}
	sendWake     chan struct{}
	connected    chan struct{}
	presenceWake chan struct{}

	mu      sync.Mutex
	running *queued        // the dispatch being run
	eng     *engine.Engine // its engine, once the session is open
	// stopDownload ends the running dispatch's download (a cancel).
	stopDownload context.CancelFunc
}

// queued is a dispatch in the journal's queue.
type queued struct {
	pos        uint64
	Dispatch   string            `json:"dispatch"`
	Deployment string            `json:"deployment"`
	URL        string            `json:"url"`
	SHA256     string            `json:"sha256"`
	Size       int64             `json:"size"`
	Vars       map[string]string `json:"vars,omitempty"`
	// Cancel is set when the running dispatch was cancelled.
	Cancel *cancelRequest `json:"cancel,omitempty"`
	// GuidedFailure is the dispatch's guided failure, if it asks for it.
	GuidedFailure *transport.GuidedFailure `json:"guidedFailure,omitempty"`
	// FailureStrategies are the dispatch's flow-level failure strategies,
	// for a flow that takes them at deploy time.
	FailureStrategies []transport.Strategy `json:"failureStrategies,omitempty"`
	// Rollback is set on a rollback command's entry (Dispatch is then the
	// command's id): it undoes the deployment's execution.
	Rollback *rollbackRequest `json:"rollback,omitempty"`
	Received time.Time        `json:"received"`
	// Execution is set once the flow started (its accepted event is out).
	Execution string `json:"execution,omitempty"`
	Flow      string `json:"flow,omitempty"`
}

// Dispatch states in a command record.
const (
	stateQueued    = "queued"
	stateRunning   = "running"
	stateFinished  = "finished"
	stateRejected  = "rejected"
	stateCancelled = "cancelled"
)

// command is the journal's record of a handled dispatch or command: what
// a redelivery of the same id reports again.
type command struct {
	Type       transport.Type       `json:"type"`
	Deployment string               `json:"deployment"`
	State      string               `json:"state,omitempty"`
	Execution  string               `json:"execution,omitempty"`
	Flow       string               `json:"flow,omitempty"`
	Status     transport.Status     `json:"status,omitempty"`
	Error      *transport.ErrorInfo `json:"error,omitempty"`
	DurationMS int64                `json:"durationMs,omitempty"`
}

// NewDaemon checks opts and opens the state dir's journal (an agent
// holding it already is an *journal.InUseError).
func NewDaemon(opts DaemonOptions) (*Daemon, error) {
	if err := transport.CheckDeviceID(opts.DeviceID); err != nil {
		return nil, &UsageError{Err: fmt.Errorf("--device-id: %w", err)}
	}
	if len(opts.TrustedKeys) == 0 && !opts.AllowUnsigned {
		return nil, &UsageError{Err: errors.New("no trusted key: give --trusted-key (or trustedKeys in the config file) so that only signed bundles run, or --allow-unsigned for a lab")}
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = transport.DefaultPrefix
	}
	topics, err := transport.NewTopics(prefix)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("--prefix: %w", err)}
	}
	if opts.Retransmit <= 0 {
		opts.Retransmit = DefaultRetransmit
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Logger = log
	opts.NoControl = true
	j, err := journal.Open(opts.StateDir, journal.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	stream, err := j.OutboxStream()
	if err != nil {
		j.Close()
		return nil, err
	}
	return &Daemon{
		opts: opts, log: log, topics: topics, j: j, stream: stream,
		workWake: make(chan struct{}, 1), sendWake: make(chan struct{}, 1),
		connected: make(chan struct{}, 1), presenceWake: make(chan struct{}, 1),
	}, nil
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Run connects and serves until ctx ends; then it leaves a running flow
// to be resumed on the next start, says offline and closes the journal.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.j.Close()
	d.caps = detectCapabilities(ctx, d.opts.Config)
	ctl, err := ServeControl(d.opts.StateDir, daemonControl{d}, d.log)
	if err != nil {
		return err
	}
	defer ctl.Close()

	cmdTopic, _ := d.topics.Topic(d.opts.DeviceID, transport.ChannelCommands)
	ackTopic, _ := d.topics.Topic(d.opts.DeviceID, transport.ChannelAcks)
	willTopic, _ := d.topics.Topic(d.opts.DeviceID, transport.ChannelPresence)
	will, err := d.presence(transport.Offline)
	if err != nil {
		return err
	}
	d.client, err = mqtt.New(mqtt.Options{
		Broker: d.opts.Broker, ClientID: d.opts.DeviceID,
		Username: d.opts.Username, Password: d.opts.Password,
		Will:          &mqtt.Will{Topic: willTopic, Payload: will, Retained: true},
		Subscriptions: []string{cmdTopic, ackTopic},
		OnConnect:     func() { wake(d.connected) },
		Logger:        d.log,
	})
	if err != nil {
		return &UsageError{Err: err}
	}
	d.client.Start()
	d.log.Info("agent running", "device", d.opts.DeviceID, "broker", d.opts.Broker)

	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){d.receive, d.send, d.announce} {
		wg.Go(func() { loop(ctx) })
	}
	d.work(ctx)
	wg.Wait()

	// Say offline (the will would say it too, but only after the broker's
	// keepalive noticed).
	if data, err := d.presence(transport.Offline); err == nil {
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = d.client.Publish(pctx, willTopic, data, true)
		cancel()
	}
	d.client.Close(time.Second)
	return nil
}

// ---- receiving ----

func (d *Daemon) receive(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-d.client.Messages():
			d.handle(m)
		}
	}
}

// handle acts on one message and acknowledges it to the broker once what
// it asks is in the journal. A message the journal could not record is
// not acknowledged: the broker delivers it again after a reconnect. A
// refused message is acknowledged (and dropped).
func (d *Daemon) handle(m mqtt.Message) {
	if err := d.apply(m); err != nil {
		d.log.Error("message not recorded; the broker will deliver it again", "topic", m.Topic, "error", err)
		return
	}
	m.Ack()
}

func (d *Daemon) apply(m mqtt.Message) error {
	msg, err := d.topics.Decode(m.Topic, m.Payload)
	if err != nil {
		d.log.Warn("message refused", "topic", m.Topic, "error", err)
		return nil
	}
	if msg.Device != d.opts.DeviceID {
		d.log.Warn("message for another device refused", "topic", m.Topic, "device", msg.Device)
		return nil
	}
	switch b := msg.Body.(type) {
	case *transport.Ack:
		n, err := d.j.Ack(b.Seq)
		if errors.Is(err, journal.ErrAckAhead) {
			d.log.Warn("ack refused", "seq", b.Seq, "error", err)
			return nil
		}
		if err != nil {
			return err
		}
		d.log.Debug("events acknowledged", "seq", b.Seq, "removed", n)
		wake(d.sendWake)
		return nil
	case *transport.Dispatch:
		return d.dispatch(msg.ID, b)
	case *transport.Cancel:
		return d.command(msg.ID, b.Type(), b.Deployment, func() error { return d.cancel(b) })
	case *transport.Guide:
		return d.command(msg.ID, b.Type(), b.Deployment, func() error {
			return d.withEngine(b.Deployment, func(e *engine.Engine) error {
				return e.Guide(engine.Guidance{Step: b.Step, Action: b.Action, By: b.By, Note: b.Note})
			})
		})
	case *transport.MarkFailed:
		return d.command(msg.ID, b.Type(), b.Deployment, func() error {
			return d.withEngine(b.Deployment, func(e *engine.Engine) error { return e.MarkFailed(b.Step, b.By, b.Note) })
		})
	case *transport.Rollback:
		return d.rollback(msg.ID, b)
	}
	return nil
}

// command runs a cancel, guide or mark-failed once per message id.
func (d *Daemon) command(id string, t transport.Type, deployment string, do func() error) error {
	seen := false
	err := d.j.Update(func(tx *journal.Tx) error {
		if tx.Command(id) != nil {
			seen = true
			return nil
		}
		return putCommand(tx, id, &command{Type: t, Deployment: deployment})
	})
	if err != nil {
		return fmt.Errorf("journal %s %s: %w", t, id, err)
	}
	if seen {
		d.log.Info("command seen before; ignored", "type", t, "id", id)
		return nil
	}
	if err := do(); err != nil {
		d.log.Warn("command not applied", "type", t, "deployment", deployment, "error", err)
	}
	return nil
}

func putCommand(tx *journal.Tx, id string, c *command) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return tx.PutCommand(id, data)
}

func getCommand(tx *journal.Tx, id string) (*command, error) {
	data := tx.Command(id)
	if data == nil {
		return nil, nil
	}
	var c command
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("command %s: %w", id, err)
	}
	return &c, nil
}

// withEngine runs fn on the engine running deployment.
func (d *Daemon) withEngine(deployment string, fn func(*engine.Engine) error) error {
	d.mu.Lock()
	run, eng := d.running, d.eng
	d.mu.Unlock()
	if run == nil || eng == nil || run.Deployment != deployment {
		return fmt.Errorf("deployment %s is not running on this device", deployment)
	}
	return fn(eng)
}

// dispatch records and queues a new dispatch, or reports a known one's
// state again.
func (d *Daemon) dispatch(id string, b *transport.Dispatch) error {
	var report transport.Body
	seen := false
	err := d.j.Update(func(tx *journal.Tx) error {
		c, err := getCommand(tx, id)
		if err != nil {
			return err
		}
		q, err := readQueue(tx)
		if err != nil {
			return err
		}
		if c != nil {
			seen = true
			report = d.again(id, c, q)
			if report == nil {
				return nil
			}
			return d.appendTx(tx, report)
		}
		if err := putCommand(tx, id, &command{Type: transport.TypeDispatch, Deployment: b.Deployment, State: stateQueued}); err != nil {
			return err
		}
		e := &queued{Dispatch: id, Deployment: b.Deployment, URL: b.URL, SHA256: b.SHA256, Size: b.Size, Vars: b.Vars,
			GuidedFailure: b.GuidedFailure, FailureStrategies: b.FailureStrategies, Received: time.Now().UTC()}
		data, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if _, err := tx.Enqueue(data); err != nil {
			return err
		}
		if len(q) > 0 {
			return d.appendTx(tx, &transport.Queued{Deployment: b.Deployment, Dispatch: id, Position: len(q)})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("journal dispatch %s of deployment %s: %w", id, b.Deployment, err)
	}
	switch {
	case report != nil:
		d.log.Info("dispatch seen before; reporting its state again", "deployment", b.Deployment, "dispatch", id, "report", report.Type())
	case seen:
		d.log.Info("dispatch seen before; nothing to report yet", "deployment", b.Deployment, "dispatch", id)
	default:
		d.log.Info("dispatch queued", "deployment", b.Deployment, "dispatch", id)
	}
	wake(d.sendWake)
	wake(d.workWake)
	return nil
}

// again is the event that reports a known dispatch's state.
func (d *Daemon) again(id string, c *command, q []*queued) transport.Body {
	switch c.State {
	case stateQueued, stateRunning:
		for i, e := range q {
			if e.Dispatch != id {
				continue
			}
			if e.Execution != "" {
				return &transport.Accepted{Deployment: e.Deployment, Dispatch: id, Execution: e.Execution, Flow: e.Flow}
			}
			if i > 0 {
				return &transport.Queued{Deployment: e.Deployment, Dispatch: id, Position: i}
			}
			return nil // about to start: its accepted event follows
		}
	case stateFinished:
		return &transport.FlowFinished{Deployment: c.Deployment, Execution: c.Execution, Flow: c.Flow, Status: c.Status, Error: c.Error, DurationMS: c.DurationMS}
	case stateRejected, stateCancelled:
		return &transport.Rejected{Deployment: c.Deployment, Dispatch: id, Error: c.Error}
	}
	return nil
}

// cancelRequest is a cancel of the running dispatch.
type cancelRequest struct {
	By   string `json:"by,omitempty"`
	Note string `json:"note"`
	// Applied is set once a step or pause was stopped by it: from then on
	// the flow's strategies decide, as for any failure.
	Applied bool `json:"applied,omitempty"`
}

// applyCancel stops what the engine runs (step, or every running step when
// empty) as failed by the operator, and aborts a paused step: a paused
// step is waiting for guidance, and a cancel is the guidance to stop.
func (d *Daemon) applyCancel(q *queued, eng *engine.Engine, c *cancelRequest, step string) {
	marked := eng.MarkFailed(step, c.By, c.Note) == nil
	aborted := false
	if r := eng.Current(); r != nil {
		for _, p := range r.Pauses {
			if eng.Guide(engine.Guidance{Step: p.Step, Action: onfailure.Abort, By: c.By, Note: c.Note}) == nil {
				aborted = true
			}
		}
	}
	if !marked && !aborted {
		d.log.Debug("cancel: nothing running or paused yet; it applies at the next step")
		return
	}
	d.mu.Lock()
	c.Applied = true
	d.mu.Unlock()
	if err := d.j.Update(func(tx *journal.Tx) error { return setQueuedLocked(d, tx, q) }); err != nil {
		d.log.Warn("journal applied cancel", "error", err)
	}
}

// setQueuedLocked journals q, reading it under d.mu.
func setQueuedLocked(d *Daemon, tx *journal.Tx, q *queued) error {
	d.mu.Lock()
	data, err := json.Marshal(q)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	return tx.SetQueued(q.pos, data)
}

// cancel drops a queued deployment, or stops the running one.
func (d *Daemon) cancel(b *transport.Cancel) error {
	c := &cancelRequest{By: b.By, Note: "cancelled"}
	if b.Note != "" {
		c.Note += ": " + b.Note
	}
	d.mu.Lock()
	run, eng, stop := d.running, d.eng, d.stopDownload
	if run != nil && run.Rollback != nil {
		run = nil // a rollback is not cancelled; its dispatch is done
	}
	if run != nil && run.Deployment == b.Deployment {
		run.Cancel = c
	}
	d.mu.Unlock()
	if run != nil && run.Deployment == b.Deployment {
		// Journaled with the dispatch, the cancel outlives a restart: the
		// run refuses to start its flow, and a flow that started stops at
		// its next step or pause (the observer applies it), so a cancel
		// that comes while the bundle downloads or the flow is between two
		// steps is not lost.
		if err := d.j.Update(func(tx *journal.Tx) error { return setQueuedLocked(d, tx, run) }); err != nil {
			return err
		}
		if stop != nil {
			stop()
		}
		if eng != nil {
			d.applyCancel(run, eng, c, "")
		}
		return nil
	}
	found := false
	err := d.j.Update(func(tx *journal.Tx) error {
		q, err := readQueue(tx)
		if err != nil {
			return err
		}
		for _, e := range q {
			if e.Deployment != b.Deployment || e.Execution != "" || e.Rollback != nil || (run != nil && run.Dispatch == e.Dispatch) {
				continue
			}
			found = true
			msg := "cancelled before it started"
			if b.By != "" {
				msg += " by " + b.By
			}
			if b.Note != "" {
				msg += ": " + b.Note
			}
			ei := &transport.ErrorInfo{Type: onfailure.UserMarkedFailure, Message: clip(msg)}
			if err := tx.Dequeue(e.pos); err != nil {
				return err
			}
			if err := putCommand(tx, e.Dispatch, &command{Type: transport.TypeDispatch, Deployment: e.Deployment, State: stateCancelled, Error: ei}); err != nil {
				return err
			}
			return d.appendTx(tx, &transport.Rejected{Deployment: e.Deployment, Dispatch: e.Dispatch, Error: ei})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("deployment %s is neither queued nor running here", b.Deployment)
	}
	wake(d.sendWake)
	return nil
}

func readQueue(tx *journal.Tx) ([]*queued, error) {
	entries, err := tx.Queue()
	if err != nil {
		return nil, err
	}
	out := make([]*queued, 0, len(entries))
	for _, e := range entries {
		var q queued
		if err := json.Unmarshal(e.Data, &q); err != nil {
			return nil, fmt.Errorf("queue entry %d: %w", e.Pos, err)
		}
		q.pos = e.Pos
		out = append(out, &q)
	}
	return out, nil
}

// ---- the outbox ----

// appendTx puts an event for this device in the outbox, inside tx.
func (d *Daemon) appendTx(tx *journal.Tx, b transport.Body) error {
	m, err := transport.New(d.opts.DeviceID, b)
	if err != nil {
		return err
	}
	_, err = tx.AppendEvent(func(seq uint64) ([]byte, error) {
		m.Seq = seq
		return m.Encode()
	})
	return err
}

// emit puts an event in the outbox in its own transaction.
func (d *Daemon) emit(b transport.Body) {
	if err := d.j.Update(func(tx *journal.Tx) error { return d.appendTx(tx, b) }); err != nil {
		d.log.Error("journal event", "type", b.Type(), "error", err)
		return
	}
	wake(d.sendWake)
}

// send publishes the outbox in seq order whenever there is something new
// or the connection came back, and again from the last acknowledged event
// when no ack comes for a while. It sleeps while the outbox is empty.
func (d *Daemon) send(ctx context.Context) {
	topic, _ := d.topics.Topic(d.opts.DeviceID, transport.ChannelEvents)
	var sent, lastAcked uint64
	backoff := d.opts.Retransmit
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-d.connected:
			// Presence first: it names the stream the events belong to.
			d.publishPresence(ctx)
			sent = 0
		case <-timer.C:
			armed = false
			sent = 0
			backoff = min(2*backoff, MaxRetransmit)
			d.log.Info("no ack; publishing unacknowledged events again")
		case <-d.sendWake:
		}
		last, acked, err := d.j.OutboxState()
		if err != nil {
			d.log.Error("read outbox", "error", err)
			continue
		}
		if acked > lastAcked {
			lastAcked, backoff = acked, d.opts.Retransmit
			if armed && !timer.Stop() {
				<-timer.C
			}
			armed = false
		}
		sent = max(sent, acked)
		if d.client.Connected() {
			sent = d.publishFrom(ctx, topic, sent)
		}
		if last > acked && !armed {
			timer.Reset(backoff)
			armed = true
		}
	}
}

// publishFrom publishes the events after seq, in order, until one fails;
// it returns the last one published.
func (d *Daemon) publishFrom(ctx context.Context, topic string, seq uint64) uint64 {
	for {
		evs, err := d.j.Outbox(seq, 64)
		if err != nil {
			d.log.Error("read outbox", "error", err)
			return seq
		}
		if len(evs) == 0 {
			return seq
		}
		for _, ev := range evs {
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := d.client.Publish(pctx, topic, ev.Data, false)
			cancel()
			if err != nil {
				d.log.Warn("publish event", "seq", ev.Seq, "error", err)
				return seq
			}
			seq = ev.Seq
		}
	}
}

// ---- presence ----

// announce publishes the retained presence whenever the running
// execution changes (send publishes it on every connect).
func (d *Daemon) announce(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.presenceWake:
		}
		d.publishPresence(ctx)
	}
}

// publishPresence publishes the online presence, retained.
func (d *Daemon) publishPresence(ctx context.Context) {
	topic, _ := d.topics.Topic(d.opts.DeviceID, transport.ChannelPresence)
	data, err := d.presence(transport.Online)
	if err != nil {
		d.log.Error("presence", "error", err)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := d.client.Publish(pctx, topic, data, true); err != nil {
		d.log.Warn("publish presence", "error", err)
	}
}

func (d *Daemon) presence(status string) ([]byte, error) {
	p := &transport.Presence{Status: status, Agent: d.opts.Version}
	if status == transport.Online {
		p.Protocol = []int{transport.Version}
		p.Stream = d.stream
		if _, acked, err := d.j.OutboxState(); err == nil {
			p.Acked = acked
		}
		p.Labels = d.opts.Labels
		p.Capabilities = d.caps
		d.mu.Lock()
		if r := d.running; r != nil && r.Execution != "" {
			p.Execution = &transport.Current{Deployment: r.Deployment, Execution: r.Execution, Flow: r.Flow, Status: transport.StatusRunning}
		}
		d.mu.Unlock()
	}
	m, err := transport.New(d.opts.DeviceID, p)
	if err != nil {
		return nil, err
	}
	return m.Encode()
}

// ---- running ----

// work runs the queue, one dispatch at a time, until ctx ends. It first
// finishes what an earlier run of the agent left: an unfinished execution
// is resumed, a finished one whose end was not yet reported is reported.
func (d *Daemon) work(ctx context.Context) {
	// progress is what the last round started from: a round that starts
	// from the same place again made no progress (the journal failed), and
	// waits before it tries again rather than spin.
	var progress string
	for ctx.Err() == nil {
		cur, err := d.j.Current()
		var head *queued
		if err == nil {
			err = d.j.View(func(tx *journal.Tx) error {
				q, err := readQueue(tx)
				if len(q) > 0 {
					head = q[0]
				}
				return err
			})
		}
		here := cur
		if head != nil {
			here += fmt.Sprintf("/%d/%s", head.pos, head.Execution)
		}
		switch {
		case err != nil:
			d.log.Error("read the journal", "error", err)
		case here != "" && here == progress:
			d.log.Error("no progress on the queue; trying again in a while", "execution", cur)
		case cur != "" || (head != nil && head.Execution != ""):
			progress = here
			if err := d.recover(ctx); err != nil {
				d.log.Error("recover the interrupted deployment", "error", err)
			}
			continue
		case head != nil:
			progress = here
			d.run(ctx, head)
			continue
		}
		var retry <-chan time.Time
		if err != nil || here != "" {
			retry = time.After(d.opts.Retransmit)
		}
		select {
		case <-ctx.Done():
			return
		case <-d.workWake:
			progress = ""
		case <-retry:
			progress = ""
		}
	}
}

// recover resumes or reports the execution an earlier run left.
func (d *Daemon) recover(ctx context.Context) error {
	id, err := d.j.Current()
	if err != nil {
		return err
	}
	var q []*queued
	if err := d.j.View(func(tx *journal.Tx) (err error) { q, err = readQueue(tx); return err }); err != nil {
		return err
	}
	if id != "" {
		rec, err := readExecution(d.j, id)
		if err != nil {
			return err
		}
		saved, err := savedSettings(rec)
		if err != nil {
			return err
		}
		if rec.Undo != nil {
			// A rollback a restart cut off: it carries on, and reports.
			for _, e := range q {
				if e.Rollback != nil && saved.Dispatch != nil && e.Deployment == saved.Dispatch.Deployment {
					d.runRollback(ctx, e)
					return nil
				}
			}
		}
		var entry *queued
		if saved.Dispatch != nil {
			for _, e := range q {
				if e.Dispatch == saved.Dispatch.ID {
					entry = e
				}
			}
		}
		if entry == nil {
			// An execution started by apply, or whose dispatch is gone:
			// resume it without reporting.
			d.log.Warn("resuming an execution no dispatch is waiting for", "execution", id)
			_, err := resume(ctx, d.opts.Config, d.j, rec, nil, nil)
			return err
		}
		entry.Flow = rec.Flow
		d.setRunning(entry, nil)
		defer d.setRunning(nil, nil)
		res, err := resume(ctx, d.opts.Config, d.j, rec, d.observer(entry), func(e *engine.Engine) { d.setRunning(entry, e) })
		d.ended(ctx, entry, res, err)
		return nil
	}
	// A head entry with an execution whose end was journaled but not
	// reported: report it now.
	if len(q) > 0 && q[0].Execution != "" && q[0].Rollback == nil {
		rec, err := readExecution(d.j, q[0].Execution)
		if err != nil {
			return err
		}
		d.finish(q[0], rec.Result())
	}
	return nil
}

// setRunning records the dispatch being run and its engine, and has the
// presence published again when the execution it shows changed (a
// dispatch that has not started its execution shows none).
func (d *Daemon) setRunning(q *queued, eng *engine.Engine) {
	d.mu.Lock()
	changed := shownExecution(d.running) != shownExecution(q)
	d.running, d.eng = q, eng
	d.mu.Unlock()
	if changed {
		wake(d.presenceWake)
	}
}

// shownExecution is the execution presence shows for a running dispatch.
func shownExecution(q *queued) string {
	if q == nil {
		return ""
	}
	return q.Execution
}

// run downloads, verifies and runs the dispatch at the head of the queue
// (or runs the rollback there).
func (d *Daemon) run(ctx context.Context, q *queued) {
	if q.Rollback != nil {
		d.runRollback(ctx, q)
		return
	}
	d.setRunning(q, nil)
	defer d.setRunning(nil, nil)
	log := d.log.With("deployment", q.Deployment, "dispatch", q.Dispatch)
	log.Info("downloading bundle", "url", q.URL, "size", q.Size)
	dctx, stop := context.WithCancel(ctx)
	d.mu.Lock()
	d.stopDownload = stop
	d.mu.Unlock()
	path, err := fetch.Fetch(dctx, fetch.Request{
		URL: q.URL, SHA256: q.SHA256, Size: q.Size,
		Dir: filepath.Join(d.opts.StateDir, DownloadsDir), MaxAttempts: downloadAttempts, Logger: log,
	})
	d.mu.Lock()
	d.stopDownload = nil
	d.mu.Unlock()
	stop()
	if ctx.Err() != nil {
		return // shutting down: the dispatch stays queued
	}
	if c := d.cancelOf(q); c != nil {
		d.reject(q, cancelError(c))
		return
	}
	if err != nil {
		d.reject(q, err)
		return
	}
	defer os.Remove(path)

	var x *extracted
	policy := bundlePolicy{TrustedKeys: d.opts.TrustedKeys}
	s, err := openSession(d.opts.Config, d.j, q.Vars, d.observer(q), func(s *session) (err error) {
		s.dispatch = &dispatchRef{ID: q.Dispatch, Deployment: q.Deployment}
		s.guided = guidedFailure(q.GuidedFailure)
		if s.strategies, err = transport.Policies(q.FailureStrategies); err != nil {
			return err
		}
		x, err = extractBundle(s, path, policy)
		return err
	})
	if err != nil {
		d.reject(q, err)
		return
	}
	defer s.close()
	if x.refused != nil {
		if _, err := s.eng.Reject(x.name, x.refused); err != nil {
			log.Error("journal refused bundle", "error", err)
		}
		d.reject(q, x.refused)
		return
	}
	if c := d.cancelOf(q); c != nil {
		_ = os.RemoveAll(x.dir)
		d.reject(q, cancelError(c))
		return
	}
	q.Flow = x.flow.Name
	d.setRunning(q, s.eng)
	res, err := s.eng.Run(ctx, x.flow)
	var pe *engine.PreflightError
	if errors.As(err, &pe) {
		_ = os.RemoveAll(x.dir)
		d.reject(q, err)
		return
	}
	s.done(err)
	d.ended(ctx, q, res, err)
}

// guidedFailure is the engine's form of a dispatch's guided failure (nil:
// none). The dispatch's check has bounded it.
func guidedFailure(g *transport.GuidedFailure) *engine.GuidedFailure {
	if g == nil {
		return nil
	}
	return &engine.GuidedFailure{Timeout: time.Duration(g.TimeoutSeconds) * time.Second, OnTimeout: g.OnTimeout}
}

// ended reports an execution's end, unless the agent is shutting down
// (the execution resumes on the next start).
func (d *Daemon) ended(ctx context.Context, q *queued, res *engine.Result, err error) {
	if res == nil || !res.Status.Done() {
		if ctx.Err() == nil {
			d.log.Error("execution stopped without an end", "deployment", q.Deployment, "error", err)
		}
		return
	}
	d.finish(q, res)
}

// finish reports res as the dispatch's end and takes it off the queue, in
// one transaction.
func (d *Daemon) finish(q *queued, res *engine.Result) {
	b := &transport.FlowFinished{Deployment: q.Deployment, Execution: res.Execution, Flow: res.Flow,
		Status: transport.Status(res.Status), Error: flowError(res)}
	if rec, err := readExecution(d.j, res.Execution); err == nil && rec.EndedAt != nil {
		b.DurationMS = rec.EndedAt.Sub(rec.StartedAt).Milliseconds()
	}
	err := d.j.Update(func(tx *journal.Tx) error {
		if err := tx.Dequeue(q.pos); err != nil {
			return err
		}
		if err := putCommand(tx, q.Dispatch, &command{Type: transport.TypeDispatch, Deployment: q.Deployment, State: stateFinished,
			Execution: b.Execution, Flow: b.Flow, Status: b.Status, Error: b.Error, DurationMS: b.DurationMS}); err != nil {
			return err
		}
		return d.appendTx(tx, b)
	})
	if err != nil {
		d.log.Error("journal the end of a deployment", "deployment", q.Deployment, "error", err)
		return
	}
	d.log.Info("deployment finished", "deployment", q.Deployment, "status", res.Status)
	wake(d.sendWake)
}

// reject reports the dispatch refused and takes it off the queue, in one
// transaction.
func (d *Daemon) reject(q *queued, cause error) {
	ei := &transport.ErrorInfo{Type: onfailure.KindOf(cause), Message: clip(cause.Error())}
	err := d.j.Update(func(tx *journal.Tx) error {
		if err := tx.Dequeue(q.pos); err != nil {
			return err
		}
		if err := putCommand(tx, q.Dispatch, &command{Type: transport.TypeDispatch, Deployment: q.Deployment, State: stateRejected, Error: ei}); err != nil {
			return err
		}
		return d.appendTx(tx, &transport.Rejected{Deployment: q.Deployment, Dispatch: q.Dispatch, Error: ei})
	})
	if err != nil {
		d.log.Error("journal a rejected dispatch", "deployment", q.Deployment, "error", err)
		return
	}
	d.log.Warn("dispatch rejected", "deployment", q.Deployment, "kind", ei.Type, "error", cause)
	wake(d.sendWake)
}

// observer turns the engine's progress into events of the outbox.
func (d *Daemon) observer(q *queued) func(engine.Event) {
	return func(ev engine.Event) {
		dep, ex := q.Deployment, ev.Execution
		var b transport.Body
		switch ev.Type {
		case engine.EventStart:
			d.started(q, ev)
			return
		case engine.EventStep:
			if ev.Status == engine.Running {
				if ev.Rollback == "" {
					d.cancelled(q, ev.Step)
				}
				b = &transport.StepStarted{Deployment: dep, Execution: ex, Step: ev.Step, Group: ev.Group, Rollback: ev.Rollback, Attempt: ev.Attempt}
				break
			}
			if !ev.Status.Done() {
				return
			}
			sf := &transport.StepFinished{Deployment: dep, Execution: ex, Step: ev.Step, Group: ev.Group, Rollback: ev.Rollback,
				Attempt: ev.Attempt, Status: transport.Status(ev.Status), Error: errInfo(ev.Error), Marked: ev.Marked,
				DurationMS: ev.Elapsed.Milliseconds()}
			if ev.Attempt > 0 {
				if log, err := d.j.Log(ex, ev.Step, ev.Attempt); err == nil {
					sf.Log, sf.LogTruncated = tail(log)
				}
			}
			b = sf
		case engine.EventAction:
			if !ev.Status.Done() {
				return
			}
			b = &transport.RollbackAction{Deployment: dep, Execution: ex, Step: ev.Step, Action: ev.Action, Trigger: ev.Trigger,
				Status: transport.Status(ev.Status), Error: errInfo(ev.Error)}
		case engine.EventPause:
			d.cancelled(q, "")
			p := &transport.Paused{Deployment: dep, Execution: ex, Step: ev.Step, Group: ev.Group, Error: errInfo(ev.Error)}
			if !ev.Until.IsZero() {
				u := ev.Until.UTC()
				p.Until = &u
			}
			b = p
		case engine.EventResume:
			b = &transport.Resumed{Deployment: dep, Execution: ex, Step: ev.Step, Group: ev.Group, Action: onfailure.Action(ev.Action), By: ev.By}
		default:
			// The flow's end is reported by finish, with the dispatch's
			// dequeue, so that it is never lost or doubled.
			return
		}
		d.emit(b)
	}
}

// cancelOf returns the cancel of the dispatch q, if one came.
func (d *Daemon) cancelOf(q *queued) *cancelRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	return q.Cancel
}

// cancelled applies a cancel that came before the flow reached this step
// or pause. It runs on the engine's goroutine, so it leaves the engine's
// calls to a goroutine of its own.
func (d *Daemon) cancelled(q *queued, step string) {
	d.mu.Lock()
	c, eng := q.Cancel, d.eng
	pending := c != nil && !c.Applied
	d.mu.Unlock()
	if pending && eng != nil {
		go d.applyCancel(q, eng, c, step)
	}
}

// cancelError is the error a dispatch cancelled before its flow started is
// rejected with.
func cancelError(c *cancelRequest) error {
	msg := "cancelled before it started"
	if c.By != "" {
		msg += " by " + c.By
	}
	if n, ok := strings.CutPrefix(c.Note, "cancelled: "); ok {
		msg += ": " + n
	}
	return onfailure.Errorf(onfailure.UserMarkedFailure, "%s", msg)
}

// started reports a new execution accepted (an execution resumed after a
// restart was accepted before, unless the restart came first).
func (d *Daemon) started(q *queued, ev engine.Event) {
	d.mu.Lock()
	known := q.Execution != ""
	if !known {
		q.Execution = ev.Execution
	}
	d.mu.Unlock()
	if known {
		return
	}
	err := d.j.Update(func(tx *journal.Tx) error {
		if err := setQueuedLocked(d, tx, q); err != nil {
			return err
		}
		if err := putCommand(tx, q.Dispatch, &command{Type: transport.TypeDispatch, Deployment: q.Deployment, State: stateRunning, Execution: ev.Execution, Flow: q.Flow}); err != nil {
			return err
		}
		return d.appendTx(tx, &transport.Accepted{Deployment: q.Deployment, Dispatch: q.Dispatch, Execution: ev.Execution, Flow: q.Flow})
	})
	if err != nil {
		d.log.Error("journal accepted", "deployment", q.Deployment, "error", err)
		return
	}
	wake(d.sendWake)
	wake(d.presenceWake)
}

// flowError is why a flow ended as it did: its own error (a timeout), or
// else the error of the step that failed it.
func flowError(res *engine.Result) *transport.ErrorInfo {
	if res.Error != nil || res.Status == engine.Succeeded {
		return errInfo(res.Error)
	}
	for _, s := range res.Steps {
		if s.Status == engine.Failed && s.Error != nil {
			return &transport.ErrorInfo{Type: s.Error.Type, Message: clip("step " + s.Name + ": " + s.Error.Message)}
		}
	}
	return nil
}

func errInfo(e *engine.ErrorInfo) *transport.ErrorInfo {
	if e == nil {
		return nil
	}
	return &transport.ErrorInfo{Type: e.Type, Message: clip(e.Message)}
}

// clip cuts s to the protocol's text limit, on a rune boundary.
func clip(s string) string {
	if len(s) <= transport.MaxTextLen {
		return s
	}
	cut := transport.MaxTextLen - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// tail is the last transport.MaxLogTail bytes of log, starting on a rune.
func tail(log []byte) (string, bool) {
	if len(log) <= transport.MaxLogTail {
		return string(log), false
	}
	cut := len(log) - transport.MaxLogTail
	for cut < len(log) && !utf8.RuneStart(log[cut]) {
		cut++
	}
	return string(log[cut:]), true
}

// detectCapabilities says what the device can run: whether a Docker engine
// answers and which Compose CLI is installed.
func detectCapabilities(ctx context.Context, cfg Config) *transport.Capabilities {
	c := &transport.Capabilities{Commands: []string{transport.CommandRollback}}
	for t := range Runners(cfg, nil) {
		c.Steps = append(c.Steps, t)
	}
	slices.Sort(c.Steps)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c.Docker, c.Compose = probeDocker(dctx, cfg)
	return c
}

// daemonControl is what the local control socket drives while the daemon
// runs: the running engine, or nothing.
type daemonControl struct{ d *Daemon }

func (c daemonControl) engine() (*engine.Engine, error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	if c.d.eng == nil {
		return nil, errors.New("no flow is running")
	}
	return c.d.eng, nil
}

func (c daemonControl) Guide(g engine.Guidance) error {
	e, err := c.engine()
	if err != nil {
		return err
	}
	return e.Guide(g)
}

func (c daemonControl) MarkFailed(step, by, note string) error {
	e, err := c.engine()
	if err != nil {
		return err
	}
	return e.MarkFailed(step, by, note)
}

func (c daemonControl) Current() *engine.Result {
	if e, err := c.engine(); err == nil {
		if r := e.Current(); r != nil {
			return r
		}
	}
	if rec, err := LastExecution(c.d.j); err == nil {
		return rec.Result()
	}
	return nil
}

// probeDocker reports whether a Docker engine answers and which Compose
// CLI the compose steps use ("v2", "v1" or "").
func probeDocker(ctx context.Context, cfg Config) (bool, string) {
	up := false
	if c, err := docker.New(); err == nil {
		up = c.Ping(ctx) == nil
		_ = c.Close()
	}
	if len(cfg.ComposeCommand) > 0 {
		if cfg.ComposeCommand[0] == "docker-compose" {
			return up, transport.ComposeV1
		}
		return up, transport.ComposeV2
	}
	if cli, err := compose.Detect(ctx); err == nil {
		return up, cli.Name
	}
	return up, ""
}
