package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/internal/fleettest"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// countFlow appends a line to @MARKS@/DEVICE.count each time it runs.
const countFlow = `version: 1
name: count
steps:
  - name: count
    script: { run: 'echo ran >> "@MARKS@/$EDGEFLOW_DEVICE_ID.count"; echo counted' }
`

// spy is an MQTT client that records what goes to and from one device:
// the controller's commands and acks, and the agent's events.
type spy struct {
	t      *testing.T
	client *mqtt.Client
	topics transport.Topics

	mu       sync.Mutex
	commands [][]byte             // payloads on the commands topic
	events   []*transport.Message // messages on the events topic
	acked    uint64               // the highest ack seen
}

func newSpy(t *testing.T, broker, device string) *spy {
	t.Helper()
	s := &spy{t: t}
	var subs []string
	for _, ch := range []transport.Channel{transport.ChannelCommands, transport.ChannelEvents, transport.ChannelAcks} {
		topic, err := s.topics.Topic(device, ch)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, topic)
	}
	connected := make(chan struct{})
	var once sync.Once
	c, err := mqtt.New(mqtt.Options{Broker: broker, ClientID: "e2e-spy-" + device, CleanSession: true, Subscriptions: subs,
		OnConnect: func() { once.Do(func() { close(connected) }) }})
	if err != nil {
		t.Fatal(err)
	}
	s.client = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done; c.Close(time.Second) })
	c.Start()
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-c.Messages():
				s.receive(m)
				m.Ack()
			}
		}
	}()
	select {
	case <-connected:
	case <-time.After(fleettest.Deadline):
		t.Fatal("the spy did not connect and subscribe")
	}
	return s
}

func (s *spy) receive(m mqtt.Message) {
	msg, err := s.topics.Decode(m.Topic, m.Payload)
	if err != nil {
		s.t.Errorf("spy: %s: %v", m.Topic, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch b := msg.Body.(type) {
	case *transport.Dispatch:
		s.commands = append(s.commands, m.Payload)
	case *transport.Ack:
		s.acked = max(s.acked, b.Seq)
	default:
		if msg.Seq > 0 {
			s.events = append(s.events, msg)
		}
	}
}

// dispatches returns the dispatch payloads seen.
func (s *spy) dispatches() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.commands...)
}

// lastEvent returns the seq of the latest event seen, and the highest ack.
func (s *spy) lastEvent() (seq, acked uint64, typ transport.Type) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.events {
		if e.Seq > seq {
			seq, typ = e.Seq, e.Type
		}
	}
	return seq, s.acked, typ
}

// TestRedeliveredDispatch publishes the dispatch the controller sent,
// byte for byte, once more after the deployment ended, as a broker's QoS
// 1 redelivery would: the agent does not run the flow again (its side
// effect happened once), it reports the dispatch's end again, the
// controller acknowledges that report, and the deployment is unchanged.
func TestRedeliveredDispatch(t *testing.T) {
	t.Parallel()
	f := fleettest.New(t, fleettest.Options{Devices: []fleettest.Device{{ID: "kiosk-1", Labels: map[string]string{"role": "kiosk"}}}})
	s := newSpy(t, f.Controller.BrokerURL(), "kiosk-1")
	marks := t.TempDir()

	r := f.CLI("deploy", writeFlow(t, countFlow, marks), "--device", "kiosk-1", "--key", f.Key.Private, "--wait")
	expectCode(t, r, 0)
	id := deploymentID(t, r)
	before := f.CLI("deployment", "show", id, "-o", "json")
	expectCode(t, before, 0)
	ds := s.dispatches()
	if len(ds) == 0 {
		t.Fatal("the spy saw no dispatch on kiosk-1's commands topic")
	}
	fleettest.WaitFor(t, "the controller to acknowledge kiosk-1's events", func() error {
		if seq, acked, typ := s.lastEvent(); typ != transport.TypeFlowFinished || acked < seq {
			return fmt.Errorf("last event %d (%s), acked %d", seq, typ, acked)
		}
		return nil
	})
	last, _, _ := s.lastEvent()

	topic, _ := s.topics.Topic("kiosk-1", transport.ChannelCommands)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.client.Publish(ctx, topic, ds[0], false); err != nil {
		t.Fatal(err)
	}
	fleettest.WaitFor(t, "kiosk-1 to report the dispatch's end again, and the controller to acknowledge it", func() error {
		seq, acked, typ := s.lastEvent()
		if seq <= last || typ != transport.TypeFlowFinished || acked < seq {
			return fmt.Errorf("last event %d (%s), acked %d; before the redelivery: %d", seq, typ, acked, last)
		}
		return nil
	})

	if got := readFile(t, filepath.Join(marks, "kiosk-1.count")); got != "ran\n" {
		t.Errorf("the flow ran %q, want once", got)
	}
	after := f.CLI("deployment", "show", id, "-o", "json")
	expectCode(t, after, 0)
	if after.Stdout != before.Stdout {
		t.Errorf("the deployment changed after the redelivery:\nbefore: %s\nafter: %s", before.Stdout, after.Stdout)
	}
}
