package mqtt_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// deviceACL is the Mosquitto ACL file of docs/operations.md ("MQTT
// brokers"): each device, whose user name is its device id, publishes only
// its own events and presence and reads only its own commands and acks;
// the controller reads every device's events and presence and writes every
// device's commands and acks.
const deviceACL = `# edgeflow: the controller
user edgeflow-controller
topic read edgeflow/v1/devices/+/events
topic read edgeflow/v1/devices/+/presence
topic write edgeflow/v1/devices/+/commands
topic write edgeflow/v1/devices/+/acks

# edgeflow: every device, whose user name is its device id
pattern write edgeflow/v1/devices/%u/events
pattern write edgeflow/v1/devices/%u/presence
pattern read edgeflow/v1/devices/%u/commands
pattern read edgeflow/v1/devices/%u/acks
`

func dev(id, kind string) string { return "edgeflow/v1/devices/" + id + "/" + kind }

// TestMosquittoDeviceACL: with per-device users and the ACL above, device
// A can neither publish as device B nor read B's commands; what it may do
// works.
func TestMosquittoDeviceACL(t *testing.T) {
	t.Parallel()
	m := brokertest.Mosquitto(t,
		brokertest.WithUsers(map[string]string{
			"edgeflow-controller": "ctl-secret",
			"dev-a":               "a-secret",
			"dev-b":               "b-secret",
		}),
		brokertest.WithACL(deviceACL),
		brokertest.WithConfig("use_username_as_clientid true"),
	)
	ctl := connected(t, m.URL(), "edgeflow-controller", mqtt.Options{
		Username: "edgeflow-controller", Password: "ctl-secret",
		Subscriptions: []string{dev("+", "events"), dev("+", "presence")},
	})
	logA := &records{}
	a := connected(t, m.URL(), "dev-a", mqtt.Options{
		Username: "dev-a", Password: "a-secret",
		// The last filter is B's: the broker refuses it.
		Subscriptions: []string{dev("dev-a", "commands"), dev("dev-a", "acks"), dev("dev-b", "commands")},
		Logger:        slog.New(logA),
	})
	b := connected(t, m.URL(), "dev-b", mqtt.Options{
		Username: "dev-b", Password: "b-secret",
		Subscriptions: []string{dev("dev-b", "commands"), dev("dev-b", "acks")},
	})

	// A's subscription to B's commands: Mosquitto 2.0.11 grants it
	// (SUBACK QoS 1) and then delivers nothing on it, as checked below;
	// a broker that refuses it (SUBACK 0x80) makes the client log the
	// refusal with the kind Authorization.
	if r, ok := logA.find("mqtt subscription refused"); ok {
		if k, _ := r.attr("kind"); k != string(onfailure.Authorization) {
			t.Errorf("refused subscription of kind %q, want Authorization", k)
		}
		t.Logf("the broker refused the subscription to B's commands")
	} else {
		t.Logf("the broker granted the subscription to B's commands; its ACL filters the messages")
	}

	// A publishes as B: Mosquitto acknowledges the publish (MQTT 3.1.1 has
	// no way to refuse it) and drops it. A's own event, published after
	// it, is the first thing the controller gets.
	a.publish(t, dev("dev-b", "events"), "forged by a", false)
	a.publish(t, dev("dev-a", "events"), "from a", false)
	ctl.expect(t, dev("dev-a", "events"), "from a").Ack()
	b.publish(t, dev("dev-b", "events"), "from b", false)
	ctl.expect(t, dev("dev-b", "events"), "from b").Ack()

	// The controller commands B, then A: A gets only its own.
	ctl.publish(t, dev("dev-b", "commands"), "for b", false)
	ctl.publish(t, dev("dev-a", "commands"), "for a", false)
	a.expect(t, dev("dev-a", "commands"), "for a").Ack()
	b.expect(t, dev("dev-b", "commands"), "for b").Ack()

	// A cannot command B either.
	a.publish(t, dev("dev-b", "commands"), "forged command", false)
	ctl.publish(t, dev("dev-b", "acks"), "ack for b", false)
	b.expect(t, dev("dev-b", "acks"), "ack for b").Ack()

	// A's retained presence is allowed, and reaches the controller.
	a.publish(t, dev("dev-a", "presence"), "online", true)
	ctl.expect(t, dev("dev-a", "presence"), "online").Ack()

	// With use_username_as_clientid, A's credentials with B's client id
	// do not take B's session over: B stays connected.
	a.Close(time.Second)
	impostor := connected(t, m.URL(), "dev-b", mqtt.Options{Username: "dev-a", Password: "a-secret"})
	ctl.publish(t, dev("dev-b", "commands"), "still for b", false)
	b.expect(t, dev("dev-b", "commands"), "still for b").Ack()
	if n := b.lost.Load(); n != 0 {
		t.Errorf("B lost its connection %d times after A connected with B's client id", n)
	}
	impostor.Close(time.Second)
}

// TestMosquittoBadPassword: refused credentials are logged with the kind
// Authentication, and the client keeps trying.
func TestMosquittoBadPassword(t *testing.T) {
	t.Parallel()
	m := brokertest.Mosquitto(t, brokertest.WithUsers(map[string]string{"dev-a": "a-secret"}))
	logs := &records{}
	c := newClient(t, m.URL(), "dev-a", mqtt.Options{Username: "dev-a", Password: "wrong", Logger: slog.New(logs)})
	var r rec
	waitUntil(t, "a refused connect is logged", func() bool {
		var ok bool
		r, ok = logs.find("mqtt connect failed; retrying")
		return ok
	})
	if k, _ := r.attr("kind"); k != string(onfailure.Authentication) {
		t.Errorf("refused connect of kind %q, want Authentication (%v)", k, r.Record)
	}
	if r.Level != slog.LevelWarn {
		t.Errorf("refused connect logged at %v, want WARN", r.Level)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if err := c.Publish(ctx, dev("dev-a", "events"), nil, false); onfailure.KindOf(err) != onfailure.Connectivity {
		t.Errorf("publish without a connection: %v, want Connectivity", err)
	}
}

// records is a slog handler that keeps every record.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

type rec struct{ slog.Record }

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, x slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, x.Clone())
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

func (r *records) find(msg string) (rec, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.recs {
		if x.Message == msg {
			return rec{x}, true
		}
	}
	return rec{}, false
}

// attr returns the value of the record's attribute key, as a string.
func (r rec) attr(key string) (string, bool) {
	var v string
	var ok bool
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v, ok = a.Value.String(), true
			return false
		}
		return true
	})
	return v, ok
}
