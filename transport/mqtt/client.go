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
//   - subscriptions are made again on every connect;
//   - errors carry their onfailure kind: Connectivity for a broker that is
//     away, Authentication for refused credentials, Timeout for a publish
//     whose acknowledgement did not come in time.
//
// A publish returning nil means the broker acknowledged it (PUBACK), not
// that anyone processed it: delivery to the controller is the outbox's
// job, with sequence numbers and the controller's acks.
//
// Connection states:
//
//	        Start
//	          │
//	          ▼
//	   ┌─► connecting ──(CONNACK)──► connected ──► OnConnect, resubscribe
//	   │      │  ▲                      │
//	   │      └──┘ retry with backoff   │ connection lost (OnConnectionLost)
//	   └────────────────────────────────┘
//	   Close: disconnect (no will) ──► closed
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
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
	ack     func()
}

// Ack acknowledges the message to the broker.
func (m Message) Ack() {
	if m.ack != nil {
		m.ack()
	}
}

// Client is a connection to a broker that reconnects by itself.
type Client struct {
	opts Options
	log  *slog.Logger
	c    paho.Client

	mu      sync.Mutex
	queue   []Message
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
		opts: opts, log: log,
		wake: make(chan struct{}, 1), out: make(chan Message),
		closed: make(chan struct{}), stopped: make(chan struct{}),
	}
	po := paho.NewClientOptions().
		AddBroker(opts.Broker).
		SetClientID(opts.ClientID).
		SetUsername(opts.Username).
		SetPassword(opts.Password).
		SetCleanSession(opts.CleanSession).
		SetOrderMatters(true).
		SetAutoAckDisabled(true).
		SetStore(paho.NewOrderedMemoryStore()).
		SetKeepAlive(opts.KeepAlive).
		SetPingTimeout(opts.KeepAlive/2 + time.Second).
		SetConnectTimeout(opts.ConnectTimeout).
		SetWriteTimeout(opts.ConnectTimeout).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(opts.MaxReconnectInterval).
		SetResumeSubs(true).
		SetDefaultPublishHandler(c.enqueue).
		SetOnConnectHandler(c.onConnect).
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
// it returns at once. Messages flow once connected.
func (c *Client) Start() {
	go c.deliver()
	tok := c.c.Connect()
	go func() {
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				c.log.Error("mqtt connect", "broker", c.opts.Broker, "error", classify("connect", err))
			}
		case <-c.closed:
		}
	}()
}

func (c *Client) onConnect(pc paho.Client) {
	c.log.Info("mqtt connected", "broker", c.opts.Broker, "client", c.opts.ClientID)
	if len(c.opts.Subscriptions) > 0 {
		filters := map[string]byte{}
		for _, f := range c.opts.Subscriptions {
			filters[f] = QoS
		}
		tok := pc.SubscribeMultiple(filters, c.enqueue)
		if !tok.WaitTimeout(c.opts.ConnectTimeout) || tok.Error() != nil {
			err := tok.Error()
			if err == nil {
				err = errors.New("no answer")
			}
			c.log.Error("mqtt subscribe", "filters", c.opts.Subscriptions, "error", err)
			// Drop the connection so that the next connect subscribes again.
			pc.Disconnect(0)
			return
		}
	}
	if c.opts.OnConnect != nil {
		c.opts.OnConnect()
	}
}

// enqueue is paho's handler: it never blocks.
func (c *Client) enqueue(_ paho.Client, m paho.Message) {
	msg := Message{Topic: m.Topic(), Payload: m.Payload(), ack: m.Ack}
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
// acknowledgement, or until ctx ends. A client that is not connected fails
// at once with Connectivity.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, retained bool) error {
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
		return onfailure.E(onfailure.Timeout, "publish "+topic, ctx.Err())
	}
}

// Close disconnects (the broker does not publish the will) and stops
// delivery, waiting at most quiesce for work in flight.
func (c *Client) Close(quiesce time.Duration) {
	c.once.Do(func() {
		close(c.closed)
		c.c.Disconnect(uint(quiesce / time.Millisecond))
		<-c.stopped
	})
}

// classify gives a paho error its kind.
func classify(op string, err error) error {
	if errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised) {
		return onfailure.E(onfailure.Authentication, op, err)
	}
	// Everything else paho reports is about reaching the broker.
	return onfailure.E(onfailure.Connectivity, op, err)
}
