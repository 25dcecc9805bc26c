// Package mqtt is edgeflow's MQTT client: the only package that imports
// paho. Agents and the controller use it alike.
//
// What it adds to paho:
//
//   - a persistent session by default (clean session off), QoS 1 for every
//     publish and subscription, automatic reconnect with backoff, and a last
//     will;
//   - received messages go into an unbounded in-order queue read from
//     Messages, so a paho handler never blocks; a message is acknowledged
//     to the broker (PUBACK) only when the reader calls Message.Ack, after
//     it has journaled what the message asks, so a crash before that makes
//     the broker deliver it again;
//   - subscriptions are made again on every connect (a broker that lost
//     the session, such as a restarted embedded broker, gets them back);
//     a subscription the broker refuses (its ACL) is logged as an error of
//     kind Authorization;
//   - errors carry their onfailure kind: Connectivity for a broker that is
//     away, Authentication for refused credentials, Timeout for a publish
//     whose acknowledgement did not come in time. Connect attempts that
//     fail are logged with their kind (a warning when the reason changes).
//
// A publish returning nil means the broker acknowledged it (PUBACK), not
// that anyone processed it: delivery to the controller is the outbox's
// job, with sequence numbers and the controller's acks. A broker also
// acknowledges a publish that its ACL refuses (Mosquitto drops it
// silently), so nil does not even mean that the broker kept it.
//
// An acknowledgement belongs to the connection a message arrived on:
// Message.Ack after that connection was lost does nothing, and the broker
// delivers the message again (with Duplicate set) once the client is back,
// from the persistent session. Readers must therefore expect the same
// message more than once, which the protocol's ids and seq absorb.
//
// Connection states:
//
//	     Start
//	       │
//	       ▼
//	┌─► connecting ──(CONNACK)──► connected ──► resubscribe, then OnConnect
//	│      │  ▲                      │
//	│      └──┘ retry with backoff   │ connection lost (OnConnectionLost)
//	└────────────────────────────────┘
//	Close: disconnect (no will) ──► closed
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgeflow/edgeflow/onfailure"
)

// QoS is the quality of service of every publish and subscription.
const QoS = 1

// Defaults.
const (
	DefaultKeepAlive            = 30 * time.Second
	DefaultConnectTimeout       = 10 * time.Second
	DefaultMaxReconnectInterval = 30 * time.Second
)

// Will is the message the broker publishes when the client goes away
// without disconnecting.
type Will struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Options configure a Client.
type Options struct {
	// Broker is the broker's URL: tcp://, mqtt://, ssl://, tls:// or
	// mqtts://HOST:PORT.
	Broker   string
	ClientID string
	Username string
	// Password is never logged.
	Password string
	// TLS configures ssl:// and tls:// brokers; nil means the system's
	// roots.
	TLS *tls.Config
	// CleanSession drops the broker's session state at connect. Agents and
	// the controller keep it (false) so that QoS 1 messages sent while they
	// are away are delivered when they come back.
	CleanSession bool
	Will         *Will
	// Subscriptions are the topic filters subscribed (QoS 1) on every
	// connect.
	Subscriptions []string
	// OnConnect is called, in its own goroutine, after every connect and
	// once the subscriptions are made.
	OnConnect func()
	// OnConnectionLost is called, in its own goroutine, when an
	// established connection is lost.
	OnConnectionLost func(error)
	// KeepAlive, ConnectTimeout and MaxReconnectInterval default to the
	// constants above.
	KeepAlive            time.Duration
	ConnectTimeout       time.Duration
	MaxReconnectInterval time.Duration
	Logger               *slog.Logger
}

// Message is a received message. Call Ack once it has been handled (or
// durably recorded); until then the broker may deliver it again.
type Message struct {
	Topic   string
	Payload []byte
	// Retained is set for a retained message that the broker sent because
	// of a new subscription (such as a device's last presence), not for
	// one published while the client was subscribed.
	Retained bool
	// Duplicate is set when the broker says it may have sent this message
	// before (a redelivery after a reconnect).
	Duplicate bool
	ack       func()
}

// Ack acknowledges the message to the broker (PUBACK). It does nothing
// for a message received on a connection that has since been lost: the
// broker delivers it again on the new one, and that copy is the one to
// acknowledge. Ack may block briefly while the connection is busy; call
// it from the reader's goroutine, not from a paho callback.
func (m Message) Ack() {
	if m.ack != nil {
		m.ack()
	}
}

// Client is a connection to a broker that reconnects by itself.
type Client struct {
	opts  Options
	log   *slog.Logger
	c     paho.Client
	store *resumeStore

	mu      sync.Mutex
	queue   []Message
	started bool
	failure string // the last connect failure logged as a warning
	wake    chan struct{}
	out     chan Message
	closed  chan struct{}
	stopped chan struct{}
	once    sync.Once
}

// New checks opts and makes a client; Start connects it.
func New(opts Options) (*Client, error) {
	u, err := url.Parse(opts.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("broker %q: want a URL such as tcp://HOST:1883", opts.Broker)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts":
	default:
		return nil, fmt.Errorf("broker %q: scheme %q: want tcp, mqtt, ssl, tls or mqtts", opts.Broker, u.Scheme)
	}
	if opts.ClientID == "" {
		return nil, errors.New("mqtt: a client id is required")
	}
	for _, f := range opts.Subscriptions {
		if err := checkFilter(f); err != nil {
			return nil, err
		}
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.MaxReconnectInterval == 0 {
		opts.MaxReconnectInterval = DefaultMaxReconnectInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		opts: opts, log: log, store: &resumeStore{OrderedMemoryStore: paho.NewOrderedMemoryStore()},
		wake: make(chan struct{}, 1), out: make(chan Message),
		closed: make(chan struct{}), stopped: make(chan struct{}),
	}
	po := paho.NewClientOptions().
		AddBroker(opts.Broker).
		SetClientID(opts.ClientID).
		SetUsername(opts.Username).
		SetPassword(opts.Password).
		SetCleanSession(opts.CleanSession).
		// MQTT 3.1.1 only: without this paho retries a refused connect
		// with MQTT 3.1, and a refusal's reason is reported twice.
		SetProtocolVersion(4).
		SetOrderMatters(true).
		SetAutoAckDisabled(true).
		SetStore(c.store).
		SetKeepAlive(opts.KeepAlive).
		SetPingTimeout(opts.KeepAlive/2 + time.Second).
		SetConnectTimeout(opts.ConnectTimeout).
		SetWriteTimeout(opts.ConnectTimeout).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(opts.MaxReconnectInterval).
		// onConnect subscribes on every connect; paho's own resume of
		// subscriptions would send each SUBSCRIBE twice, and its new token
		// would orphan onConnect's.
		SetResumeSubs(false).
		SetDefaultPublishHandler(c.enqueue).
		SetOnConnectHandler(c.onConnect).
		SetConnectionNotificationHandler(c.notify).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			log.Warn("mqtt connection lost", "broker", opts.Broker, "error", err)
			if opts.OnConnectionLost != nil {
				opts.OnConnectionLost(err)
			}
		})
	if opts.TLS != nil {
		po.SetTLSConfig(opts.TLS)
	}
	if w := opts.Will; w != nil {
		po.SetBinaryWill(w.Topic, w.Payload, QoS, w.Retained)
	}
	c.c = paho.NewClient(po)
	return c, nil
}

// Start connects in the background, retrying until it succeeds or Close;
// it returns at once. Messages flow once connected. Start does nothing on
// a client already started or closed.
func (c *Client) Start() {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return
	}
	select {
	case <-c.closed:
		c.mu.Unlock()
		return
	default:
	}
	c.started = true
	c.mu.Unlock()
	go c.deliver()
	tok := c.c.Connect()
	go func() {
		select {
		case <-tok.Done():
			select {
			case <-c.closed: // Close ends a connect in progress
			default:
				if err := tok.Error(); err != nil {
					err = classify("connect", err)
					c.log.Error("mqtt connect", "broker", c.opts.Broker, "kind", onfailure.KindOf(err), "error", err)
				}
			}
		case <-c.closed:
		}
	}()
}

// notify logs failed connect attempts, which paho otherwise retries
// silently: a warning when the reason changes, debug while it stays.
func (c *Client) notify(_ paho.Client, n paho.ConnectionNotification) {
	var reason error
	switch n := n.(type) {
	case paho.ConnectionNotificationConnecting:
		// Called in the connecting goroutine before each attempt, while
		// Publish refuses to run: what is stored now is what a resume
		// after this attempt may send again.
		c.store.mark()
		return
	case paho.ConnectionNotificationFailed:
		reason = n.Reason
	case paho.ConnectionNotificationConnected:
		c.mu.Lock()
		c.failure = ""
		c.mu.Unlock()
		return
	default:
		return
	}
	if reason == nil {
		return
	}
	err := classify("connect to "+c.opts.Broker, reason)
	c.mu.Lock()
	changed := c.failure != err.Error()
	c.failure = err.Error()
	c.mu.Unlock()
	level := slog.LevelDebug
	if changed {
		level = slog.LevelWarn
	}
	c.log.Log(context.Background(), level, "mqtt connect failed; retrying", "broker", c.opts.Broker, "client", c.opts.ClientID, "kind", onfailure.KindOf(err), "error", err)
}

func (c *Client) onConnect(pc paho.Client) {
	c.log.Info("mqtt connected", "broker", c.opts.Broker, "client", c.opts.ClientID)
	if len(c.opts.Subscriptions) > 0 && !c.subscribe(pc) {
		return
	}
	if c.opts.OnConnect != nil {
		c.opts.OnConnect()
	}
}

// subscribe makes the subscriptions on the connection just made, trying
// again while it stays up without an answer. It reports false when the
// connection or the client ended first (the next connect subscribes
// again).
func (c *Client) subscribe(pc paho.Client) bool {
	filters := map[string]byte{}
	for _, f := range c.opts.Subscriptions {
		filters[f] = QoS
	}
	for {
		// No callback: the default handler (enqueue) takes every message
		// once, even one that matches several filters.
		tok := pc.SubscribeMultiple(filters, nil)
		answered := false
		select {
		case <-tok.Done():
			answered = true
		case <-c.closed:
			return false
		case <-time.After(c.opts.ConnectTimeout):
		}
		err := tok.Error()
		if answered && err == nil {
			if st, ok := tok.(*paho.SubscribeToken); ok {
				for f, code := range st.Result() {
					if code == subackFailure {
						err := onfailure.Errorf(onfailure.Authorization, "subscribe %s: refused by the broker", f)
						c.log.Error("mqtt subscription refused", "broker", c.opts.Broker, "client", c.opts.ClientID, "filter", f, "kind", onfailure.Authorization, "error", err)
					}
				}
			}
			return true
		}
		if err == nil {
			err = fmt.Errorf("no answer within %v", c.opts.ConnectTimeout)
		}
		err = classify("subscribe", err)
		c.log.Warn("mqtt subscribe failed", "broker", c.opts.Broker, "filters", c.opts.Subscriptions, "kind", onfailure.KindOf(err), "error", err)
		if !pc.IsConnectionOpen() {
			return false
		}
		select {
		case <-c.closed:
			return false
		case <-time.After(time.Second):
		}
	}
}

// enqueue is paho's handler: it never blocks.
func (c *Client) enqueue(_ paho.Client, m paho.Message) {
	msg := Message{Topic: m.Topic(), Payload: m.Payload(), Retained: m.Retained(), Duplicate: m.Duplicate(), ack: m.Ack}
	c.mu.Lock()
	c.queue = append(c.queue, msg)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// deliver moves queued messages to Messages, in order.
func (c *Client) deliver() {
	defer close(c.stopped)
	for {
		c.mu.Lock()
		var next *Message
		if len(c.queue) > 0 {
			m := c.queue[0]
			c.queue[0] = Message{}
			c.queue = c.queue[1:]
			next = &m
		}
		c.mu.Unlock()
		if next == nil {
			select {
			case <-c.wake:
				continue
			case <-c.closed:
				return
			}
		}
		select {
		case c.out <- *next:
		case <-c.closed:
			return
		}
	}
}

// Messages returns the received messages, in the order they arrived. It
// is never closed; stop reading when the client is closed.
func (c *Client) Messages() <-chan Message { return c.out }

// Connected reports whether the client is connected now.
func (c *Client) Connected() bool { return c.c.IsConnectionOpen() }

// Publish sends payload on topic with QoS 1 and waits for the broker's
// acknowledgement, or until ctx ends. A client that is not connected (not
// yet, not now, or closed) fails at once with Connectivity. When the
// connection is lost during the wait, paho sends the message again after
// reconnecting and Publish keeps waiting: a ctx deadline then ends it
// with Timeout, a cancelled ctx with an error that wraps
// context.Canceled. Either way the message may still reach the broker
// later.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, retained bool) error {
	if err := ctx.Err(); err != nil {
		return ctxError("publish "+topic, err)
	}
	if !c.c.IsConnectionOpen() {
		return onfailure.Errorf(onfailure.Connectivity, "publish %s: not connected to %s", topic, c.opts.Broker)
	}
	tok := c.c.Publish(topic, QoS, retained, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return classify("publish "+topic, err)
		}
		return nil
	case <-ctx.Done():
		return ctxError("publish "+topic, ctx.Err())
	}
}

// ctxError is the error of an operation whose context ended: Timeout for
// a deadline; a cancellation (shutdown) keeps context.Canceled visible and
// has no failure kind of its own.
func ctxError(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return onfailure.E(onfailure.Timeout, op, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Close disconnects (the broker does not publish the will) and stops
// delivery, waiting at most quiesce for work in flight. A client that was
// never started is just marked closed.
func (c *Client) Close(quiesce time.Duration) {
	c.once.Do(func() {
		c.mu.Lock()
		close(c.closed)
		started := c.started
		c.mu.Unlock()
		if !started {
			return
		}
		c.c.Disconnect(uint(quiesce / time.Millisecond))
		<-c.stopped
	})
}

// checkFilter refuses a topic filter that no broker accepts (MQTT 3.1.1,
// 4.7): empty, or with a wildcard that is not a whole level, or '#' before
// the last level.
func checkFilter(f string) error {
	if f == "" {
		return errors.New("mqtt: subscription: empty topic filter")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return fmt.Errorf("mqtt: subscription %q: '#' must be the last level", f)
		case l != "#" && l != "+" && strings.ContainsAny(l, "#+"):
			return fmt.Errorf("mqtt: subscription %q: a wildcard must be a whole level", f)
		}
	}
	return nil
}

// subackFailure is the SUBACK return code of a refused subscription
// (MQTT 3.1.1, 3.9.3).
const subackFailure = 0x80

// resumeStore is paho's OrderedMemoryStore, except that what paho sends
// again after a connect (its resume: the QoS 1 publishes not yet
// acknowledged) is only what was stored before that connect attempt
// began. Paho reports the connection open, and so lets Publish through,
// before it resumes; a publish made in that moment was stored in time to
// be resumed too: sent twice, its token completed early by the resume,
// and its packet written by paho's writer while the resume set its DUP
// flag (a data race).
type resumeStore struct {
	*paho.OrderedMemoryStore

	mu     sync.Mutex
	before map[string]bool // the keys stored when the last attempt began; nil: all
}

// mark records the keys stored now.
func (s *resumeStore) mark() {
	keys := s.OrderedMemoryStore.All()
	before := make(map[string]bool, len(keys))
	for _, k := range keys {
		before[k] = true
	}
	s.mu.Lock()
	s.before = before
	s.mu.Unlock()
}

// All returns the stored keys, oldest first, that were already stored
// when the last connect attempt began. Paho calls it to resume, and to
// reserve the ids of stored publishes in Connect (before any attempt).
func (s *resumeStore) All() []string {
	keys := s.OrderedMemoryStore.All()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.before == nil {
		return keys
	}
	kept := keys[:0]
	for _, k := range keys {
		if s.before[k] {
			kept = append(kept, k)
		}
	}
	return kept
}

// classify gives a paho error its kind.
func classify(op string, err error) error {
	if errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised) {
		return onfailure.E(onfailure.Authentication, op, err)
	}
	// Everything else paho reports is about reaching the broker.
	return onfailure.E(onfailure.Connectivity, op, err)
}
