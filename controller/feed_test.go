package controller

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// recorder is a Publisher that keeps what it is given.
type recorder struct {
	mu   sync.Mutex
	sent []string
}

func (r *recorder) Publish(_ context.Context, topic string, _ []byte, _ bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, topic)
	return nil
}

// gatedWriter is a ResponseWriter whose writes wait until open is closed,
// as a watcher that does not read.
type gatedWriter struct {
	header  http.Header
	blocked chan struct{} // closed at the first write
	open    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (g *gatedWriter) Header() http.Header { return g.header }
func (g *gatedWriter) WriteHeader(int)     {}
func (g *gatedWriter) Flush()              {}
func (g *gatedWriter) Write(p []byte) (int, error) {
	g.once.Do(func() { close(g.blocked) })
	<-g.open
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

func TestHubDropsLaggingWatcher(t *testing.T) {
	h := newHub()
	slow, fast := h.subscribe("d"), h.subscribe("d")
	other := h.subscribe("e")
	done := make(chan struct{})
	go func() {
		for range fast.C {
		}
		close(done)
	}()
	for i := range subscriberBuffer + 10 {
		h.publish([]store.FeedEvent{{Deployment: "d", Event: api.Event{Seq: uint64(i + 1)}}})
	}
	n := 0
	for range slow.C {
		n++
	}
	if n != subscriberBuffer {
		t.Fatalf("the lagging watcher got %d events before its channel closed, want %d", n, subscriberBuffer)
	}
	h.unsubscribe(fast)
	<-done
	h.unsubscribe(slow) // already dropped: harmless
	if len(other.C) != 0 {
		t.Fatal("another deployment's watcher got events")
	}
}

// TestWatchCatchesUp stalls a watcher's connection while more events than
// its buffer come in: ingestion does not wait for it, and once the
// connection moves again the watcher gets every event, in order, from the
// store.
func TestWatchCatchesUp(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := New(Options{Data: t.TempDir(), Store: st, Client: &recorder{}, PublicURL: "http://controller.test:8080"})
	if err != nil {
		t.Fatal(err)
	}
	sha := strings.Repeat("a", 64)
	if _, _, err := st.AddBundle(ctx, store.Bundle{SHA256: sha, Size: 1, Flow: "f", Version: 1}); err != nil {
		t.Fatal(err)
	}
	dep, err := c.Create(ctx, api.CreateDeployment{Bundle: sha, Devices: []string{"dev-1"}})
	if err != nil {
		t.Fatal(err)
	}

	w := &gatedWriter{header: http.Header{}, blocked: make(chan struct{}), open: make(chan struct{})}
	req := httptest.NewRequest("GET", "/v1/deployments/"+dep.ID+"/events", nil)
	served := make(chan struct{})
	go func() {
		defer close(served)
		c.Handler().ServeHTTP(w, req)
	}()
	<-w.blocked // subscribed, and stuck writing the first event

	event := func(seq uint64, b transport.Body) mqtt.Message {
		m, err := transport.New("dev-1", b)
		if err != nil {
			t.Fatal(err)
		}
		m.Seq = seq
		data, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		topic, _ := c.topics.Topic("dev-1", transport.ChannelEvents)
		return mqtt.Message{Topic: topic, Payload: data}
	}
	msgs := []mqtt.Message{event(1, &transport.Accepted{Deployment: dep.ID, Dispatch: dep.Devices[0].Dispatch, Execution: "ex", Flow: "f"})}
	const steps = subscriberBuffer + 50
	for i := range steps {
		msgs = append(msgs, event(uint64(i+2), &transport.StepStarted{Deployment: dep.ID, Execution: "ex", Step: fmt.Sprint("s", i), Attempt: 1}))
	}
	msgs = append(msgs, event(steps+2, &transport.FlowFinished{Deployment: dep.ID, Execution: "ex", Flow: "f", Status: transport.StatusSucceeded}))
	for len(msgs) > 0 {
		n := min(len(msgs), 10)
		if err := c.Ingest(ctx, msgs[:n]); err != nil {
			t.Fatal(err)
		}
		msgs = msgs[n:]
	}
	close(w.open)
	select {
	case <-served:
	case <-time.After(20 * time.Second):
		t.Fatal("the stream did not end after the final event")
	}
	feed, _ := st.Feed(ctx, dep.ID, 0, 0)
	var ids []string
	for _, line := range strings.Split(w.buf.String(), "\n") {
		if id, ok := strings.CutPrefix(line, "id: "); ok {
			ids = append(ids, id)
		}
	}
	if len(ids) != len(feed) || len(feed) < steps {
		t.Fatalf("the watcher got %d events, the feed holds %d", len(ids), len(feed))
	}
	for i, id := range ids {
		if id != fmt.Sprint(i+1) {
			t.Fatalf("event %d has id %s", i, id)
		}
	}
}
