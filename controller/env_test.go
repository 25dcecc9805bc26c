package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller"
	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/internal/schematest"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// deadline bounds every wait for a condition: a safety net against a
// hang, not a performance assertion.
const deadline = 20 * time.Second

var bg = context.Background()

// eventually polls cond until it holds, failing t after deadline.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", deadline, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// env is a controller on a real broker, a real store in a temporary data
// dir and a real HTTP server, which a test can stop and start again.
type env struct {
	t       *testing.T
	data    string
	broker  string
	topics  transport.Topics
	schemas *schematest.Validators
	srv     *httptest.Server
	mod     func(*controller.Options)

	handler atomic.Pointer[http.Handler]
	st      *store.Bolt
	client  *mqtt.Client
	ctrl    *controller.Controller
	stopRun func()
}

// newEnv starts a controller on the embedded broker; mod, when not nil,
// changes its options.
func newEnv(t *testing.T, mod func(*controller.Options)) *env {
	return newEnvOn(t, brokertest.Embedded(t).URL(), mod)
}

func newEnvOn(t *testing.T, brokerURL string, mod func(*controller.Options)) *env {
	t.Helper()
	e := &env{t: t, data: t.TempDir(), broker: brokerURL, schemas: schematest.Compile(t), mod: mod}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := e.handler.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.Error(w, "controller stopped", http.StatusServiceUnavailable)
	}))
	t.Cleanup(e.srv.Close)
	e.start()
	t.Cleanup(e.stop)
	return e
}

// start opens the store and starts the controller, its MQTT client and
// its ingestion.
func (e *env) start() {
	t := e.t
	t.Helper()
	st, err := store.Open(e.data, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ctrl *controller.Controller
	client, err := mqtt.New(mqtt.Options{
		Broker: e.broker, ClientID: controller.ClientID,
		Subscriptions: []string{e.topics.Filter(transport.ChannelEvents), e.topics.Filter(transport.ChannelPresence)},
		OnConnect:     func() { ctrl.OnConnect() },
		Logger:        brokertest.TestLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	opts := controller.Options{
		Data: e.data, Store: st, Client: client, Topics: e.topics, PublicURL: e.srv.URL,
		Logger: brokertest.TestLogger(t).With("component", "controller"),
	}
	if e.mod != nil {
		e.mod(&opts)
	}
	if ctrl, err = controller.New(opts); err != nil {
		t.Fatal(err)
	}
	client.Start()
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctrl.Run(ctx, client.Messages())
	}()
	h := ctrl.Handler()
	e.handler.Store(&h)
	e.st, e.client, e.ctrl = st, client, ctrl
	e.stopRun = func() { cancel(); wg.Wait() }
	eventually(t, "the controller's MQTT connection", client.Connected)
}

// stop stops the controller and closes its client and store, as a
// controller process that ends.
func (e *env) stop() {
	if e.ctrl == nil {
		return
	}
	e.handler.Store(nil)
	e.stopRun()
	e.client.Close(time.Second)
	if err := e.st.Close(); err != nil {
		e.t.Errorf("close store: %v", err)
	}
	e.ctrl = nil
}

// restart stops the controller and starts a new one on the same data dir.
func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

// deployment returns the deployment as the controller has it now.
// mustCreate creates a deployment, failing the test if it cannot.
func (e *env) mustCreate(req api.CreateDeployment) api.Deployment {
	e.t.Helper()
	d, err := e.ctrl.Create(bg, req)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) deployment(id string) api.Deployment {
	e.t.Helper()
	d, err := e.ctrl.Deployment(bg, id)
	if err != nil {
		e.t.Fatalf("deployment %s: %v", id, err)
	}
	return d
}

func (e *env) run(dep, device string) api.DeviceRun {
	e.t.Helper()
	for _, r := range e.deployment(dep).Devices {
		if r.Device == device {
			return r
		}
	}
	e.t.Fatalf("deployment %s has no run on %s", dep, device)
	return api.DeviceRun{}
}

// waitRun waits until the run of dep on device has status.
func (e *env) waitRun(dep, device, status string) api.DeviceRun {
	e.t.Helper()
	var r api.DeviceRun
	eventually(e.t, fmt.Sprintf("run of %s on %s to be %s", dep, device, status), func() bool {
		r = e.run(dep, device)
		return r.Status == status
	})
	return r
}

func (e *env) waitDeployment(dep, status string) api.Deployment {
	e.t.Helper()
	var d api.Deployment
	eventually(e.t, fmt.Sprintf("deployment %s to be %s", dep, status), func() bool {
		d = e.deployment(dep)
		return d.Status == status
	})
	return d
}

// addBundle uploads data through the controller.
func (e *env) addBundle(data []byte) api.Bundle {
	e.t.Helper()
	b, _, err := e.ctrl.AddBundle(bg, bytes.NewReader(data))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// testBundle builds a real, unsigned bundle of a one-step flow.
func testBundle(t testing.TB) []byte {
	t.Helper()
	dir := t.TempDir()
	flowPath := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flowPath, []byte("version: 1\nname: app\nsteps: [{name: s, script: {run: \"true\"}}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := packaging.Build(flowPath, &buf, packaging.Options{Version: 3}); err != nil {
		t.Fatalf("build bundle: %v", err)
	}
	return buf.Bytes()
}

// device is a fake agent made of plain protocol messages: an MQTT client
// with the device's id and a persistent session, subscribed to its
// commands and acks. Every message it receives is validated against the
// JSON Schemas.
type device struct {
	e      *env
	id     string
	client *mqtt.Client
	// stream is the event stream its presence names.
	stream string
	// acked is what the device says was acknowledged (presence.acked).
	acked uint64
	// gated are the capability-gated commands its presence lists
	// (capabilities.commands).
	gated []string

	mu       sync.Mutex
	commands []*transport.Message
	acks     []uint64
	seq      uint64 // the last seq send used
}

func (e *env) device(id string) *device {
	e.t.Helper()
	cmds, _ := e.topics.Topic(id, transport.ChannelCommands)
	acks, _ := e.topics.Topic(id, transport.ChannelAcks)
	c, err := mqtt.New(mqtt.Options{Broker: e.broker, ClientID: id, Subscriptions: []string{cmds, acks}})
	if err != nil {
		e.t.Fatal(err)
	}
	d := &device{e: e, id: id, client: c, stream: "stream-" + id}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case m := <-c.Messages():
				d.receive(m)
			}
		}
	}()
	e.t.Cleanup(func() {
		close(done)
		wg.Wait()
		c.Close(time.Second)
	})
	c.Start()
	eventually(e.t, "device "+id+" connected", c.Connected)
	return d
}

func (d *device) receive(m mqtt.Message) {
	defer m.Ack()
	d.e.schemas.Validate(d.e.t, m.Payload)
	msg, err := d.e.topics.Decode(m.Topic, m.Payload)
	if err != nil {
		d.e.t.Errorf("device %s: refuse %s: %v", d.id, m.Payload, err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := msg.Body.(*transport.Ack); ok {
		d.acks = append(d.acks, a.Seq)
		return
	}
	d.commands = append(d.commands, msg)
}

// publish sends payload on the device's channel ch.
func (d *device) publish(ch transport.Channel, payload []byte) {
	d.e.t.Helper()
	topic, err := d.e.topics.Topic(d.id, ch)
	if err != nil {
		d.e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, deadline)
	defer cancel()
	if err := d.client.Publish(ctx, topic, payload, ch == transport.ChannelPresence); err != nil {
		d.e.t.Fatal(err)
	}
}

// event publishes an event with seq.
func (d *device) event(seq uint64, body transport.Body) {
	d.e.t.Helper()
	m, err := transport.New(d.id, body)
	if err != nil {
		d.e.t.Fatal(err)
	}
	m.Seq = seq
	data, err := m.Encode()
	if err != nil {
		d.e.t.Fatal(err)
	}
	d.publish(transport.ChannelEvents, data)
}

// presence publishes the device's retained presence.
func (d *device) presence(status string, labels map[string]string) {
	d.e.t.Helper()
	p := &transport.Presence{Status: status, Agent: "0.7.0"}
	if status == transport.Online {
		p.Protocol, p.Labels, p.Stream, p.Acked = []int{1}, labels, d.stream, d.acked
		p.Capabilities = &transport.Capabilities{Docker: true, Compose: transport.ComposeV2, Steps: []string{"script"}, Commands: d.gated}
	}
	m, err := transport.New(d.id, p)
	if err != nil {
		d.e.t.Fatal(err)
	}
	data, err := m.Encode()
	if err != nil {
		d.e.t.Fatal(err)
	}
	d.publish(transport.ChannelPresence, data)
}

// waitCommands waits until the device has received n commands of type ty
// for deployment dep, and returns them.
func (d *device) waitCommands(ty transport.Type, dep string, n int) []*transport.Message {
	d.e.t.Helper()
	var got []*transport.Message
	eventually(d.e.t, fmt.Sprintf("%d %s for %s on %s", n, ty, dep, d.id), func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		got = nil
		for _, m := range d.commands {
			if m.Type == ty && transport.DeploymentOf(m.Body) == dep {
				got = append(got, m)
			}
		}
		return len(got) >= n
	})
	return got
}

// waitAck waits for an ack of seq or more and returns every ack so far.
func (d *device) waitAck(seq uint64) []uint64 {
	d.e.t.Helper()
	var acks []uint64
	eventually(d.e.t, fmt.Sprintf("ack %d on %s", seq, d.id), func() bool {
		acks = d.ackList()
		return len(acks) > 0 && slices.Max(acks) >= seq
	})
	return acks
}

func (d *device) ackList() []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.acks)
}

// do makes an HTTP request to the controller's API.
func (e *env) do(method, path string, body io.Reader, header ...string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, data
}

// decodeJSON decodes data into a new T, failing t.
func decodeJSON[T any](t testing.TB, data []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
	return v
}

// clock is a fake clock for the controller's Now and AfterFunc: time
// moves only with Advance, which fires the timers that came due (each in
// its own goroutine, as time.AfterFunc does).
type clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*clockTimer
}

type clockTimer struct {
	at              time.Time
	f               func()
	stopped, called bool
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 2, 10, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	t := &clockTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	due := !t.at.After(c.now)
	if due {
		t.called = true
	}
	c.mu.Unlock()
	if due {
		go f()
	}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped && !t.called
		t.stopped = true
		return was
	}
}

// Advance moves the clock on by d and fires the timers due.
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	for _, t := range c.timers {
		if !t.stopped && !t.called && !t.at.After(c.now) {
			t.called = true
			due = append(due, t.f)
		}
	}
	c.mu.Unlock()
	for _, f := range due {
		go f()
	}
}

// armed returns how many timers wait to fire.
func (c *clock) armed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped && !t.called {
			n++
		}
	}
	return n
}

// withClock sets the controller's clock to c (and applies more).
func withClock(c *clock, more ...func(*controller.Options)) func(*controller.Options) {
	return func(o *controller.Options) {
		o.Now, o.AfterFunc = c.Now, c.AfterFunc
		for _, m := range more {
			m(o)
		}
	}
}

// send publishes an event with the device's next seq.
func (d *device) send(body transport.Body) uint64 {
	d.e.t.Helper()
	d.mu.Lock()
	d.seq++
	seq := d.seq
	d.mu.Unlock()
	d.event(seq, body)
	return seq
}

// dispatch waits for the device's dispatch of dep and returns it.
func (d *device) dispatch(dep string) *transport.Message {
	d.e.t.Helper()
	return d.waitCommands(transport.TypeDispatch, dep, 1)[0]
}

// finish runs dep on the device to its end: accepted, then flow-finished
// with status.
func (d *device) finish(dep string, status transport.Status) {
	d.e.t.Helper()
	m := d.dispatch(dep)
	d.send(accepted(dep, m.ID))
	d.send(flowFinished(dep, status))
}

// commandsOf returns the commands of type ty for dep the device has now.
func (d *device) commandsOf(ty transport.Type, dep string) []*transport.Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*transport.Message
	for _, m := range d.commands {
		if m.Type == ty && transport.DeploymentOf(m.Body) == dep {
			out = append(out, m)
		}
	}
	return out
}

// postJSON posts v as JSON to path and decodes a 2xx answer into a new T;
// it returns the status and the body too.
func postJSON[T any](e *env, path string, v any) (T, int, []byte) {
	e.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, body := e.do("POST", path, bytes.NewReader(data), "Content-Type", "application/json")
	var out T
	if resp.StatusCode/100 == 2 {
		out = decodeJSON[T](e.t, body)
	}
	return out, resp.StatusCode, body
}
