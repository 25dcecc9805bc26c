// Package broker is the controller's embedded MQTT broker: the default for
// a single-machine controller, so that `edgeflow serve` needs nothing else
// running, and the broker of end-to-end tests. It wraps
// github.com/mochi-mqtt/server/v2 with the settings edgeflow needs:
//
//   - one plain TCP listener (Options.Listen), edgeflow's own in place of
//     mochi's (see tcpListener);
//   - allow-all authentication: any client may connect with any
//     credentials and publish or subscribe to any topic. Use it on trusted
//     networks only (a lab, a single host, a VPN). A fleet on networks you
//     do not trust belongs on Mosquitto with per-device credentials and ACLs
//     (docs/operations.md, "MQTT brokers"), which also gives TLS;
//   - retained messages and persistent sessions (clean session off), held
//     in memory: they are lost when the process ends. That is harmless for
//     edgeflow's protocol: agents republish their unacknowledged events
//     from their outbox on reconnect and publish their presence again on
//     connect, and the controller re-dispatches what a device has not
//     answered;
//   - a bounded queue per client (Options.MaxClientQueue) instead of
//     mochi's default, which costs about 130 KiB per client;
//   - no forced expiry of retained or queued messages (mochi expires them
//     after a day by default, which would drop a quiet device's retained
//     presence);
//   - the messages queued for a persistent session are sent again in the
//     order they were queued when the client comes back (mochi v2.7.9 on
//     its own sorts them by the second they were published, so messages of
//     the same second came back in random order: see queueOrder);
//   - mochi's own logging goes to the slog logger given, at warn level and
//     above, plus a warning for every message it drops because a client's
//     queue is full.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sort"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"
)

// DefaultMaxClientQueue is the per-client queue bound used when
// Options.MaxClientQueue is zero: room for a burst of 1024 QoS 1 messages
// to one client (the controller receives the whole fleet's events), at
// about 8 KiB of fixed cost per client.
const DefaultMaxClientQueue = 1024

// Options configure Start.
type Options struct {
	// Listen is the TCP address to listen on, host:port, such as ":1883"
	// or "127.0.0.1:0" (a free port; Addr tells which).
	Listen string
	// Logger receives the broker's warnings and errors; nil discards them.
	Logger *slog.Logger
	// MaxClientQueue bounds, per client, the QoS 1 messages the broker
	// holds for it: those waiting to be written to its connection and
	// those sent or queued but not yet acknowledged, including the ones
	// kept for a disconnected persistent session. Beyond it, new messages
	// for that client are dropped (and logged). It also sizes the client's
	// write queue, which is allocated up front (8 bytes a slot), so size it
	// for the fleet: 256 to 1024 for devices; the controller's own session
	// collects every device's events while it is away. Zero means
	// DefaultMaxClientQueue; at most 65535.
	MaxClientQueue int
}

// Broker is a running embedded broker.
type Broker struct {
	srv  *mochi.Server
	addr string
	log  *slog.Logger

	once sync.Once
}

// listenerID names the one listener in mochi.
const listenerID = "tcp"

// Start starts a broker listening on opts.Listen. It is accepting
// connections when Start returns.
func Start(opts Options) (*Broker, error) {
	if opts.Listen == "" {
		return nil, errors.New("mqtt broker: a listen address is required, such as :1883")
	}
	q := opts.MaxClientQueue
	switch {
	case q == 0:
		q = DefaultMaxClientQueue
	case q < 0 || q > math.MaxUint16:
		return nil, fmt.Errorf("mqtt broker: max client queue %d: want 1 to %d (0 for the default %d)", q, math.MaxUint16, DefaultMaxClientQueue)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "mqtt-broker")

	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = int32(q)
	caps.MaximumInflight = uint16(q)
	// 0: retained and queued messages never expire by age (mochi's default
	// is one day). MQTT 5 clients may still set a message expiry.
	caps.MaximumMessageExpiryInterval = 0

	srv := mochi.New(&mochi.Options{
		Capabilities: caps,
		Logger:       slog.New(warnOnly{log.Handler()}),
		// The $SYS topics are republished every 30 s instead of every
		// second: nothing in edgeflow reads them.
		SysTopicResendInterval: 30,
	})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("mqtt broker: allow-all auth: %w", err)
	}
	if err := srv.AddHook(&dropLog{log: log}, nil); err != nil {
		return nil, fmt.Errorf("mqtt broker: drop logging: %w", err)
	}
	if err := srv.AddHook(&queueOrder{srv: srv, next: map[string]int64{}}, nil); err != nil {
		return nil, fmt.Errorf("mqtt broker: queue order: %w", err)
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("mqtt broker: listen on %s: %w", opts.Listen, err)
	}
	tcp := newTCPListener(listenerID, ln, log)
	if err := srv.AddListener(tcp); err != nil {
		ln.Close()
		return nil, fmt.Errorf("mqtt broker: listen on %s: %w", opts.Listen, err)
	}
	// Serve starts accepting; connections made since net.Listen wait in
	// the backlog.
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return nil, fmt.Errorf("mqtt broker: serve on %s: %w", opts.Listen, err)
	}
	b := &Broker{srv: srv, addr: tcp.Address(), log: log}
	log.Info("mqtt broker listening", "addr", b.addr, "max_client_queue", q)
	return b, nil
}

// Addr returns the address the broker listens on, host:port, with the
// port it was given when Options.Listen asked for port 0.
func (b *Broker) Addr() string { return b.addr }

// URL returns the broker's URL for clients: "tcp://" + Addr().
func (b *Broker) URL() string { return "tcp://" + b.addr }

// Close disconnects every client (their wills are published), stops
// listening and waits for the connections to end. Sessions and retained
// messages are lost. Close may be called more than once.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() {
		err = b.srv.Close()
		if err != nil {
			err = fmt.Errorf("mqtt broker: close: %w", err)
		}
	})
	return err
}

// warnOnly passes records of level warn and above to h. Mochi logs every
// connection at info; edgeflow keeps only what needs attention.
type warnOnly struct{ h slog.Handler }

func (w warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.h.Enabled(ctx, l)
}

func (w warnOnly) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "" {
		r.Message = "mqtt broker warning" // mochi leaves some empty
	}
	return w.h.Handle(ctx, r)
}

func (w warnOnly) WithAttrs(as []slog.Attr) slog.Handler { return warnOnly{w.h.WithAttrs(as)} }
func (w warnOnly) WithGroup(name string) slog.Handler    { return warnOnly{w.h.WithGroup(name)} }

// dropLog is a mochi hook that logs the messages mochi drops because a
// client's write queue is full (mochi itself logs that only at debug).
type dropLog struct {
	mochi.HookBase
	log *slog.Logger
}

func (h *dropLog) ID() string { return "edgeflow-drop-log" }

func (h *dropLog) Provides(b byte) bool { return b == mochi.OnPublishDropped }

func (h *dropLog) OnPublishDropped(cl *mochi.Client, pk packets.Packet) {
	h.log.Warn("mqtt message dropped: client queue full", "client", cl.ID, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos)
}

// queueOrder is a mochi hook that keeps a client's QoS 1 messages in order
// when mochi sends them again after the client reconnects to its
// persistent session: the commands queued for a device that was offline,
// the events queued for the controller.
//
// Mochi v2.7.9 sends them again sorted by their Created field, a Unix time
// in seconds, compared truncated to 16 bits (Inflight.GetAll), with
// sort.Slice, which is not stable: messages published within the same
// second came back in random order. With the forced expiry turned off
// (Start sets MaximumMessageExpiryInterval to 0) mochi uses Created for
// nothing else, so this hook replaces it:
//
//   - in every message mochi stores for a client, by the next number of a
//     counter of that client (OnQosPublish);
//   - when the client reconnects, before mochi takes its session over, the
//     stored messages are numbered 1, 2, 3, ... in the order of those
//     numbers (OnSessionEstablish), so that the 16-bit comparison holds
//     (MaxClientQueue is at most 65535).
type queueOrder struct {
	mochi.HookBase
	srv *mochi.Server

	mu   sync.Mutex
	next map[string]int64 // the last number given, per client id
}

func (h *queueOrder) ID() string { return "edgeflow-queue-order" }

func (h *queueOrder) Provides(b byte) bool {
	return b == mochi.OnQosPublish || b == mochi.OnSessionEstablish || b == mochi.OnDisconnect
}

// OnQosPublish is called after mochi stored pk for cl (a new message, or
// one it is about to send again) and before it is written.
func (h *queueOrder) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish {
		return // the acknowledgements mochi keeps for QoS 2 flows
	}
	stored, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok || stored.FixedHeader.Type != packets.Publish || stored.TopicName != pk.TopicName {
		return
	}
	h.mu.Lock()
	h.next[cl.ID]++
	stored.Created = h.next[cl.ID]
	h.mu.Unlock()
	cl.State.Inflight.Set(stored)
}

// OnSessionEstablish is called when cl has connected, before mochi takes
// over the session of the same client id and sends its stored messages
// again: it numbers them from 1 in their order.
func (h *queueOrder) OnSessionEstablish(cl *mochi.Client, _ packets.Packet) {
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	var queued []packets.Packet
	for _, pk := range old.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish {
			queued = append(queued, pk)
		}
	}
	sort.SliceStable(queued, func(i, j int) bool { return queued[i].Created < queued[j].Created })
	for i, pk := range queued {
		pk.Created = int64(i + 1)
		old.State.Inflight.Set(pk)
	}
}

// OnDisconnect forgets the counter of a client whose session ends with it
// (clean session): its stored messages are dropped too.
func (h *queueOrder) OnDisconnect(cl *mochi.Client, _ error, expire bool) {
	if expire {
		h.mu.Lock()
		delete(h.next, cl.ID)
		h.mu.Unlock()
	}
}
