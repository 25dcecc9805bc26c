package mqtt_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// deadline bounds every wait for a condition. It is a safety net against a
// hang, not a performance assertion.
const deadline = brokertest.Deadline

// testBroker is a broker under test, of either kind.
type testBroker struct {
	url string
	// restart takes the broker down and brings it back on the same port.
	restart func(t *testing.T)
	// stop takes the broker down for good.
	stop func(t *testing.T)
	// keepsSessions says whether sessions and retained messages survive
	// restart (Mosquitto with persistence: yes; embedded: no).
	keepsSessions bool
}

var brokerKinds = []struct {
	name  string
	start func(t *testing.T) *testBroker
}{
	{"embedded", startEmbedded},
	{"mosquitto", startMosquitto},
}

func startEmbedded(t *testing.T) *testBroker {
	b := brokertest.Embedded(t)
	tb := &testBroker{url: b.URL()}
	current := b
	tb.restart = func(t *testing.T) {
		t.Helper()
		addr := current.Addr()
		if err := current.Close(); err != nil {
			t.Fatal(err)
		}
		current = brokertest.EmbeddedOn(t, addr)
	}
	tb.stop = func(t *testing.T) {
		t.Helper()
		if err := current.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return tb
}

func startMosquitto(t *testing.T) *testBroker {
	m := brokertest.Mosquitto(t)
	return &testBroker{
		url:           m.URL(),
		restart:       func(*testing.T) { m.Restart() },
		stop:          func(*testing.T) { m.Stop() },
		keepsSessions: true,
	}
}

// eachBroker runs f as a parallel subtest against a fresh broker of each
// kind.
func eachBroker(t *testing.T, f func(t *testing.T, b *testBroker)) {
	t.Helper()
	for _, k := range brokerKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			f(t, k.start(t))
		})
	}
}

// client is a started client with a count of its connects.
type client struct {
	*mqtt.Client
	id       string
	connects chan struct{}
	lost     atomic.Int32
}

// newClient starts a client of url with a persistent session unless opts
// says otherwise; it is closed when t ends.
func newClient(t *testing.T, url, id string, opts mqtt.Options) *client {
	t.Helper()
	c := &client{id: id, connects: make(chan struct{}, 100)}
	opts.Broker = url
	opts.ClientID = id
	if opts.MaxReconnectInterval == 0 {
		opts.MaxReconnectInterval = 2 * time.Second
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = brokertest.TestLogger(t).With("client", id)
	}
	onConnect := opts.OnConnect
	opts.OnConnect = func() {
		if onConnect != nil {
			onConnect()
		}
		c.connects <- struct{}{}
	}
	onLost := opts.OnConnectionLost
	opts.OnConnectionLost = func(err error) {
		c.lost.Add(1)
		if onLost != nil {
			onLost(err)
		}
	}
	mc, err := mqtt.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	c.Client = mc
	mc.Start()
	t.Cleanup(func() { mc.Close(time.Second) })
	return c
}

// connected starts a client and waits for its first connect (with its
// subscriptions made).
func connected(t *testing.T, url, id string, opts mqtt.Options) *client {
	t.Helper()
	c := newClient(t, url, id, opts)
	c.waitConnect(t)
	return c
}

// waitConnect waits for the client's next connect (subscriptions made).
func (c *client) waitConnect(t *testing.T) {
	t.Helper()
	select {
	case <-c.connects:
	case <-time.After(deadline):
		t.Fatalf("client %s did not connect within %v", c.id, deadline)
	}
}

// recv waits for the client's next message.
func (c *client) recv(t *testing.T) mqtt.Message {
	t.Helper()
	select {
	case m := <-c.Messages():
		return m
	case <-time.After(deadline):
		t.Fatalf("client %s received nothing within %v", c.id, deadline)
		return mqtt.Message{}
	}
}

// expect waits for the client's next message and checks its topic and
// payload.
func (c *client) expect(t *testing.T, topic, payload string) mqtt.Message {
	t.Helper()
	m := c.recv(t)
	if m.Topic != topic || string(m.Payload) != payload {
		t.Fatalf("client %s received %q on %s, want %q on %s", c.id, m.Payload, m.Topic, payload, topic)
	}
	return m
}

// sync waits until the broker has handled everything the client sent
// before: the client publishes on a topic of its own and waits for the
// PUBACK, which a broker sends after reading what came before it on the
// connection. Two things need it:
//
//   - Ack only queues the PUBACK;
//   - mochi acknowledges a QoS 1 publish before it routes it to the
//     subscribers, so a subscriber that connects right after a publish
//     returned may take its session over while the message is being
//     stored in the old one, and lose it. Mochi has routed a publish once
//     it acknowledged the next one from the same client.
func (c *client) sync(t *testing.T) {
	t.Helper()
	c.publish(t, "edgeflow-test/sync/"+c.id, "sync", false)
}

// ackSynced acknowledges m and waits until the broker has read the
// acknowledgement.
func (c *client) ackSynced(t *testing.T, m mqtt.Message) {
	t.Helper()
	m.Ack()
	c.sync(t)
}

// publish publishes and fails t on an error.
func (c *client) publish(t *testing.T, topic, payload string, retained bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if err := c.Publish(ctx, topic, []byte(payload), retained); err != nil {
		t.Fatalf("client %s: %v", c.id, err)
	}
}

// topic returns a topic private to the test.
func topic(t *testing.T, suffix string) string {
	return "edgeflow-test/" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + randomHex(4) + "/" + suffix
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *testBroker) {
		tp := topic(t, "events")
		sub := connected(t, b.url, "sub", mqtt.Options{Subscriptions: []string{tp}})
		pub := connected(t, b.url, "pub", mqtt.Options{})
		for i := range 3 {
			pub.publish(t, tp, fmt.Sprint("hello ", i), false)
		}
		for i := range 3 {
			m := sub.expect(t, tp, fmt.Sprint("hello ", i))
			if m.Retained || m.Duplicate {
				t.Errorf("live message: retained %v, duplicate %v; want neither", m.Retained, m.Duplicate)
			}
			m.Ack()
		}
	})
}

// TestWillRetainedOnKill: a client process killed with SIGKILL gets its
// last will published by the broker, retained, so that a later subscriber
// sees the device offline.
func TestWillRetainedOnKill(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *testBroker) {
		will := topic(t, "presence")
		dev := startChild(t, childBroker+"="+b.url, childClientID+"=dev-will", childWillTopic+"="+will, childWillText+"=offline")
		dev.kill()

		// The broker publishes the will once it sees the connection end;
		// this observer may get it live or retained.
		obs := connected(t, b.url, "observer-1", mqtt.Options{CleanSession: true, Subscriptions: []string{will}})
		obs.expect(t, will, "offline").Ack()
		// Now that it is published, a new subscriber can only get it
		// because it is retained.
		late := connected(t, b.url, "observer-2", mqtt.Options{CleanSession: true, Subscriptions: []string{will}})
		if m := late.expect(t, will, "offline"); !m.Retained {
			t.Errorf("the will reached a later subscriber without the retained flag")
		}
	})
}

// TestReconnectAfterBrokerRestart: clients reconnect by themselves after
// the broker restarts, and their subscriptions work again (made again by
// the client, which matters for the embedded broker that lost them).
func TestReconnectAfterBrokerRestart(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *testBroker) {
		tp := topic(t, "commands")
		sub := connected(t, b.url, "sub", mqtt.Options{Subscriptions: []string{tp}})
		pub := connected(t, b.url, "pub", mqtt.Options{})
		pub.publish(t, tp, "before", false)
		sub.expect(t, tp, "before").Ack()

		b.restart(t)
		sub.waitConnect(t)
		pub.waitConnect(t)
		if sub.lost.Load() == 0 || pub.lost.Load() == 0 {
			t.Errorf("connection lost: subscriber %d times, publisher %d times; want both at least once", sub.lost.Load(), pub.lost.Load())
		}
		pub.publish(t, tp, "after", false)
		sub.expect(t, tp, "after").Ack()
	})
}

// TestPersistentSession: a client with a persistent session receives the
// QoS 1 messages published while it was away, in order. Mosquitto is
// restarted while the client is away (its persistence keeps the session);
// the embedded broker stays up.
func TestPersistentSession(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *testBroker) {
		tp := topic(t, "commands")
		opts := mqtt.Options{Subscriptions: []string{tp}}
		away := connected(t, b.url, "device-p", opts)
		away.Close(time.Second)

		pub := connected(t, b.url, "pub", mqtt.Options{})
		for i := range 3 {
			pub.publish(t, tp, fmt.Sprint("queued ", i), false)
		}
		pub.sync(t)
		if b.keepsSessions {
			b.restart(t)
		}
		back := connected(t, b.url, "device-p", opts)
		for i := range 3 {
			back.expect(t, tp, fmt.Sprint("queued ", i)).Ack()
		}
	})
}

// TestUnackedRedeliveredAfterKill: a message the client received but did
// not Ack before its process was killed is delivered again to the next
// connection with the same client id; once acknowledged, it is not.
func TestUnackedRedeliveredAfterKill(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *testBroker) {
		tp := topic(t, "commands")
		dev := startChild(t, childBroker+"="+b.url, childClientID+"=device-k", childSubscribe+"="+tp)
		pub := connected(t, b.url, "pub", mqtt.Options{})
		pub.publish(t, tp, "dispatch-1", false)
		dev.expect("received " + tp + " dispatch-1")
		dev.kill()

		opts := mqtt.Options{Subscriptions: []string{tp}}
		again := connected(t, b.url, "device-k", opts)
		m := again.expect(t, tp, "dispatch-1")
		if !m.Duplicate {
			t.Logf("the redelivery does not carry the DUP flag")
		}
		m.Ack()
		again.Close(time.Second)

		// Acknowledged: the next session gets only what is new.
		third := connected(t, b.url, "device-k", opts)
		pub.publish(t, tp, "dispatch-2", false)
		third.expect(t, tp, "dispatch-2").Ack()
	})
}

// TestUnackedRedeliveredAfterConnectionLoss: the same client, whose
// connection breaks while it holds an unacknowledged message, gets the
// message again after it reconnects by itself. The Ack of the first copy
// does nothing (its connection is gone); the second copy's Ack counts.
func TestUnackedRedeliveredAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *testBroker) {
		tp := topic(t, "commands")
		proxy := brokertest.NewProxy(t, strings.TrimPrefix(b.url, "tcp://"))
		dev := connected(t, proxy.URL(), "device-c", mqtt.Options{Subscriptions: []string{tp}})
		pub := connected(t, b.url, "pub", mqtt.Options{})
		pub.publish(t, tp, "dispatch-1", false)
		first := dev.expect(t, tp, "dispatch-1")

		proxy.Cut()
		dev.waitConnect(t)
		first.Ack() // the old connection's: dropped, must not block or fail
		second := dev.expect(t, tp, "dispatch-1")
		if !second.Duplicate {
			t.Logf("the redelivery does not carry the DUP flag")
		}
		dev.ackSynced(t, second)

		// Acknowledged: after another break only new messages come.
		proxy.Cut()
		dev.waitConnect(t)
		pub.publish(t, tp, "dispatch-2", false)
		dev.expect(t, tp, "dispatch-2").Ack()
	})
}

// TestEmbeddedRestartLosesSessions: the embedded broker keeps sessions in
// memory only; after a restart a persistent client starts afresh (its
// client subscribes again), and what was queued for it is gone.
func TestEmbeddedRestartLosesSessions(t *testing.T) {
	t.Parallel()
	b := startEmbedded(t)
	tp := topic(t, "commands")
	opts := mqtt.Options{Subscriptions: []string{tp}}
	away := connected(t, b.url, "device-e", opts)
	away.Close(time.Second)
	pub := newClient(t, b.url, "pub", mqtt.Options{})
	pub.waitConnect(t)
	pub.publish(t, tp, "lost", false)

	b.restart(t)
	back := connected(t, b.url, "device-e", opts)
	pub.waitConnect(t)
	pub.publish(t, tp, "after restart", false)
	back.expect(t, tp, "after restart").Ack()
}

// TestPublishNotConnected: Publish fails at once with Connectivity when
// the client is not connected: never connected, broker gone, or closed.
func TestPublishNotConnected(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, c *client, what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		err := c.Publish(ctx, "edgeflow-test/x", []byte("x"), false)
		if k := onfailure.KindOf(err); k != onfailure.Connectivity {
			t.Errorf("publish %s: error %v of kind %q, want %s", what, err, k, onfailure.Connectivity)
		}
	}
	t.Run("never connected", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, "tcp://"+brokertest.FreeAddr(t), "nobody", mqtt.Options{})
		check(t, c, "before any connect")
	})
	eachBroker(t, func(t *testing.T, b *testBroker) {
		c := connected(t, b.url, "pub", mqtt.Options{})
		c.publish(t, "edgeflow-test/x", "connected", false)
		b.stop(t)
		waitUntil(t, "the client sees the broker gone", func() bool { return !c.Connected() })
		check(t, c, "with the broker stopped")
		c.Close(time.Second)
		check(t, c, "after Close")
	})
	t.Run("cancelled", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, "tcp://"+brokertest.FreeAddr(t), "cancelled", mqtt.Options{})
		cctx, ccancel := context.WithCancel(context.Background())
		ccancel()
		if err := c.Publish(cctx, "edgeflow-test/x", nil, false); !errors.Is(err, context.Canceled) {
			t.Errorf("publish with a cancelled context: %v, want context.Canceled", err)
		}
	})
}

// TestCloseWithoutStart: Close on a client never started returns.
func TestCloseWithoutStart(t *testing.T) {
	t.Parallel()
	c, err := mqtt.New(mqtt.Options{Broker: "tcp://127.0.0.1:1", ClientID: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		c.Close(time.Second)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(deadline):
		t.Fatal("Close of a client never started did not return")
	}
	c.Start() // after Close: does nothing
	if c.Connected() {
		t.Error("a closed client connected")
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts mqtt.Options
		want string
	}{
		{"no scheme", mqtt.Options{Broker: "localhost:1883", ClientID: "a"}, "want a URL"},
		{"bad scheme", mqtt.Options{Broker: "http://localhost:1883", ClientID: "a"}, "scheme"},
		{"no client id", mqtt.Options{Broker: "tcp://localhost:1883"}, "client id"},
		{"empty filter", mqtt.Options{Broker: "tcp://localhost:1883", ClientID: "a", Subscriptions: []string{""}}, "empty topic filter"},
		{"hash not last", mqtt.Options{Broker: "tcp://localhost:1883", ClientID: "a", Subscriptions: []string{"a/#/b"}}, "last level"},
		{"partial wildcard", mqtt.Options{Broker: "tcp://localhost:1883", ClientID: "a", Subscriptions: []string{"a/b+"}}, "whole level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mqtt.New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	for _, f := range []string{"#", "+", "a/+/b", "a/#", "edgeflow/v1/devices/+/events"} {
		if _, err := mqtt.New(mqtt.Options{Broker: "tcp://localhost:1883", ClientID: "a", Subscriptions: []string{f}}); err != nil {
			t.Errorf("New with filter %q: %v", f, err)
		}
	}
}

// waitUntil polls cond until it holds, failing t after deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, deadline)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
