package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/broker"
	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

const deadline = brokertest.Deadline

// records is a slog handler that keeps what it is given.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
	seen chan struct{}
}

func newRecords() *records { return &records{seen: make(chan struct{}, 1000)} }

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
	select {
	case r.seen <- struct{}{}:
	default:
	}
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

func (r *records) all() []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]slog.Record(nil), r.recs...)
}

// waitFor waits until a record with msg has been logged.
func (r *records) waitFor(t *testing.T, msg string) slog.Record {
	t.Helper()
	timeout := time.After(deadline)
	for {
		for _, rec := range r.all() {
			if rec.Message == msg {
				return rec
			}
		}
		select {
		case <-r.seen:
		case <-timeout:
			t.Fatalf("no log record %q within %v; got %v", msg, deadline, messages(r.all()))
		}
	}
}

func messages(recs []slog.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Level.String()+" "+r.Message)
	}
	return out
}

func start(t *testing.T, opts broker.Options) *broker.Broker {
	t.Helper()
	b, err := broker.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// client starts a persistent-session client and waits for its first
// connect (subscriptions made).
func client(t *testing.T, url, id string, subs ...string) *mqtt.Client {
	t.Helper()
	connected := make(chan struct{}, 10)
	c, err := mqtt.New(mqtt.Options{
		Broker: url, ClientID: id, Subscriptions: subs,
		MaxReconnectInterval: 2 * time.Second,
		Logger:               brokertest.TestLogger(t).With("client", id),
		OnConnect:            func() { connected <- struct{}{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	t.Cleanup(func() { c.Close(time.Second) })
	select {
	case <-connected:
	case <-time.After(deadline):
		t.Fatalf("client %s did not connect within %v", id, deadline)
	}
	return c
}

func publish(t *testing.T, c *mqtt.Client, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if err := c.Publish(ctx, topic, []byte(payload), false); err != nil {
		t.Fatal(err)
	}
}

func expect(t *testing.T, c *mqtt.Client, topic, payload string) mqtt.Message {
	t.Helper()
	select {
	case m := <-c.Messages():
		if m.Topic != topic || string(m.Payload) != payload {
			t.Fatalf("received %q on %s, want %q on %s", m.Payload, m.Topic, payload, topic)
		}
		return m
	case <-time.After(deadline):
		t.Fatalf("nothing received within %v, want %q on %s", deadline, payload, topic)
		return mqtt.Message{}
	}
}

func TestStartAddrURLClose(t *testing.T) {
	t.Parallel()
	b := start(t, broker.Options{Listen: "127.0.0.1:0"})
	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" || port == "" {
		t.Fatalf("Addr() = %q (%v), want 127.0.0.1 and the port given", b.Addr(), err)
	}
	if b.URL() != "tcp://"+b.Addr() {
		t.Errorf("URL() = %q, want tcp://%s", b.URL(), b.Addr())
	}
	// Listening when Start returns: a connection succeeds at once.
	c, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatalf("dial right after Start: %v", err)
	}
	c.Close()

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if err := brokertest.WaitTCPClosed(ctx, b.Addr()); err != nil {
		t.Fatal(err)
	}
	// The port is free again: a new broker takes it.
	again := start(t, broker.Options{Listen: b.Addr()})
	if again.Addr() != b.Addr() {
		t.Errorf("restarted on %s, want %s", again.Addr(), b.Addr())
	}
}

func TestStartRefuses(t *testing.T) {
	t.Parallel()
	busy := start(t, broker.Options{Listen: "127.0.0.1:0"})
	for _, tc := range []struct {
		name string
		opts broker.Options
		want string
	}{
		{"no address", broker.Options{}, "listen address is required"},
		{"negative queue", broker.Options{Listen: "127.0.0.1:0", MaxClientQueue: -1}, "max client queue -1"},
		{"queue too large", broker.Options{Listen: "127.0.0.1:0", MaxClientQueue: 70000}, "max client queue 70000"},
		{"port in use", broker.Options{Listen: busy.Addr()}, "listen on " + busy.Addr()},
		{"bad address", broker.Options{Listen: "nowhere"}, "listen on nowhere"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := broker.Start(tc.opts)
			if err == nil {
				b.Close()
				t.Fatalf("Start(%+v) succeeded", tc.opts)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestLogging: mochi's records reach the logger from warn up, and only
// those; a connection that fails is a warning.
func TestLogging(t *testing.T) {
	t.Parallel()
	rec := newRecords()
	b := start(t, broker.Options{Listen: "127.0.0.1:0", Logger: slog.New(rec)})
	c := client(t, b.URL(), "logged", "edgeflow-test/log")
	publish(t, c, "edgeflow-test/log", "x")
	expect(t, c, "edgeflow-test/log", "x").Ack()

	// A connection that does not speak MQTT makes mochi warn.
	conn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	r := rec.waitFor(t, "mqtt client session ended with an error")
	if r.Level != slog.LevelWarn {
		t.Errorf("level %v, want WARN", r.Level)
	}
	for _, r := range rec.all() {
		if r.Level < slog.LevelWarn && r.Message != "mqtt broker listening" {
			t.Errorf("record below warn reached the logger: %v %q", r.Level, r.Message)
		}
		if r.Message == "" {
			t.Errorf("record with an empty message: %v", r)
		}
	}
}

// TestQueueOrder: the messages queued for a persistent session while its
// client is away come back in the order they were published (mochi alone
// shuffles those of the same second), and again after a second reconnect
// without acknowledging them.
func TestQueueOrder(t *testing.T) {
	t.Parallel()
	b := start(t, broker.Options{Listen: "127.0.0.1:0"})
	topic := "edgeflow/v1/devices/dev-1/commands"
	away := client(t, b.URL(), "dev-1", topic)
	away.Close(time.Second)

	pub := client(t, b.URL(), "controller")
	const n = 100
	for i := range n {
		publish(t, pub, topic, fmt.Sprint("command ", i))
	}
	// Mochi acknowledges a publish before it routes it: once it has
	// acknowledged a later one from the same client, it has routed it, and
	// the subscriber can connect without racing with it.
	publish(t, pub, "edgeflow-test/sync", "sync")
	back := client(t, b.URL(), "dev-1", topic)
	for i := range n {
		expect(t, back, topic, fmt.Sprint("command ", i)) // not acknowledged
	}
	back.Close(time.Second)
	again := client(t, b.URL(), "dev-1", topic)
	for i := range n {
		m := expect(t, again, topic, fmt.Sprint("command ", i))
		if !m.Duplicate {
			t.Errorf("redelivered command %d without the DUP flag", i)
		}
		m.Ack()
	}
}

// TestMaxClientQueue: at most MaxClientQueue messages are kept for an
// offline persistent session; the rest are dropped with a warning.
func TestMaxClientQueue(t *testing.T) {
	t.Parallel()
	rec := newRecords()
	b := start(t, broker.Options{Listen: "127.0.0.1:0", MaxClientQueue: 3, Logger: slog.New(rec)})
	topic := "edgeflow/v1/devices/dev-q/commands"
	away := client(t, b.URL(), "dev-q", topic)
	away.Close(time.Second)

	pub := client(t, b.URL(), "controller")
	for i := range 5 {
		publish(t, pub, topic, fmt.Sprint("command ", i))
	}
	publish(t, pub, "edgeflow-test/sync", "sync") // see TestQueueOrder
	rec.waitFor(t, "client store quota reached")

	back := client(t, b.URL(), "dev-q", topic)
	for i := range 3 {
		expect(t, back, topic, fmt.Sprint("command ", i)).Ack()
	}
	// Ack only queues the PUBACKs: a publish of the device's own, once
	// acknowledged, shows the broker has read them (and so has room
	// again; a message beyond the bound is dropped even for a client that
	// is online).
	publish(t, back, "edgeflow/v1/devices/dev-q/events", "sync")
	// Commands 3 and 4 were dropped: the next message is a new one.
	publish(t, pub, topic, "after")
	expect(t, back, topic, "after").Ack()
}

// TestRetainedAndRestart: retained messages are kept while the broker
// runs and lost with it; so are sessions.
func TestRetainedAndRestart(t *testing.T) {
	t.Parallel()
	b := start(t, broker.Options{Listen: "127.0.0.1:0"})
	presence := "edgeflow/v1/devices/dev-r/presence"
	dev := client(t, b.URL(), "dev-r")
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if err := dev.Publish(ctx, presence, []byte("online"), true); err != nil {
		t.Fatal(err)
	}
	ctl := client(t, b.URL(), "edgeflow-controller", "edgeflow/v1/devices/+/presence")
	if m := expect(t, ctl, presence, "online"); !m.Retained {
		t.Error("the retained presence came without the retained flag")
	}
	ctl.Close(time.Second)
	dev.Close(time.Second)

	addr := b.Addr()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := start(t, broker.Options{Listen: addr})
	ctl2 := client(t, b2.URL(), "edgeflow-controller-2", "edgeflow/v1/devices/+/presence")
	// Nothing retained survived: the first message is a new one.
	pub := client(t, b2.URL(), "dev-r")
	publish(t, pub, presence, "new")
	if m := expect(t, ctl2, presence, "new"); m.Retained {
		t.Error("a live message came with the retained flag")
	}
}

// TestCloseWithSilentConnection: Close does not wait for a connection that
// never sends CONNECT, nor race with connections arriving meanwhile.
func TestCloseWithSilentConnection(t *testing.T) {
	t.Parallel()
	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	silent, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Connections keep arriving while the broker closes.
	stop := make(chan struct{})
	var dialers sync.WaitGroup
	for range 4 {
		dialers.Add(1)
		go func() {
			defer dialers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
					c.Close()
				}
			}
		}()
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(deadline):
		t.Fatal("Close did not return with a connection that never sent CONNECT")
	}
	close(stop)
	dialers.Wait()
}
