package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/internal/brokertest"
	"github.com/edgeflow/edgeflow/internal/schematest"
	"github.com/edgeflow/edgeflow/journal"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// These tests drive the real edgeflow-agent daemon the way another MQTT
// backend would, from docs/protocol.md alone: plain JSON messages on the
// documented topics, written out here by hand, no controller code. Every
// message the agent publishes is checked against the JSON Schemas.

const interopDevice = "edge-lab-1"

// backend is the MQTT side of an interop test: it records every message
// on the device's topics and acknowledges events as a controller must.
type backend struct {
	t      *testing.T
	client *mqtt.Client
	vs     *schematest.Validators
	noAck  bool

	mu       sync.Mutex
	events   []map[string]any
	presence []map[string]any
	lastSeq  float64
}

func newBackend(t *testing.T, broker string) *backend {
	t.Helper()
	b := &backend{t: t, vs: schematest.Compile(t)}
	c, err := mqtt.New(mqtt.Options{
		Broker: broker, ClientID: "interop-backend", CleanSession: true,
		Subscriptions: []string{"edgeflow/v1/devices/" + interopDevice + "/events", "edgeflow/v1/devices/" + interopDevice + "/presence"},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.client = c
	c.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done; c.Close(time.Second) })
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-c.Messages():
				b.receive(m)
				m.Ack()
			}
		}
	}()
	waitFor(t, "the backend to connect", c.Connected)
	return b
}

func (b *backend) receive(m mqtt.Message) {
	b.vs.Validate(b.t, m.Payload)
	var msg map[string]any
	if err := json.Unmarshal(m.Payload, &msg); err != nil {
		b.t.Errorf("%s: %v", m.Topic, err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if strings.HasSuffix(m.Topic, "/presence") {
		b.presence = append(b.presence, msg)
		return
	}
	seq, _ := msg["seq"].(float64)
	switch {
	case seq <= b.lastSeq:
		// Seen already (a republish): acknowledge again, do not record.
	case seq == b.lastSeq+1:
		b.events = append(b.events, msg)
		b.lastSeq = seq
	default:
		// A gap: wait for the agent to send the missing ones first.
		return
	}
	if b.noAck {
		return
	}
	ack := fmt.Sprintf(`{"v":1,"id":"%s","type":"ack","device":"%s","time":"%s","body":{"seq":%d}}`,
		fmt.Sprintf("ack%029d", int(b.lastSeq)), interopDevice, time.Now().UTC().Format(time.RFC3339), int(b.lastSeq))
	go b.publish("acks", ack)
}

func (b *backend) publish(channel, payload string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.client.Publish(ctx, "edgeflow/v1/devices/"+interopDevice+"/"+channel, []byte(payload), false); err != nil {
		b.t.Errorf("publish on %s: %v", channel, err)
	}
}

// dispatch publishes a dispatch as docs/protocol.md shows it.
func (b *backend) dispatch(id, deployment, url, sha string, size int64) {
	b.publish("commands", fmt.Sprintf(`{
  "v": 1, "id": %q, "type": "dispatch", "device": %q, "time": %q,
  "body": {"deployment": %q, "url": %q, "sha256": %q, "size": %d}
}`, id, interopDevice, time.Now().UTC().Format(time.RFC3339), deployment, url, sha, size))
}

// types lists the event types (with step and status) recorded for a
// deployment, in seq order.
func (b *backend) types(deployment string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, e := range b.events {
		body, _ := e["body"].(map[string]any)
		if body["deployment"] != deployment {
			continue
		}
		s := e["type"].(string)
		if step, ok := body["step"].(string); ok {
			s += " " + step
		}
		if st, ok := body["status"].(string); ok {
			s += " " + st
		}
		out = append(out, s)
	}
	return out
}

// event returns the first recorded event of type typ for deployment.
func (b *backend) event(deployment, typ string) map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.events {
		body, _ := e["body"].(map[string]any)
		if e["type"] == typ && body["deployment"] == deployment {
			return body
		}
	}
	return nil
}

func (b *backend) count(deployment, typ string) int {
	n := 0
	for _, s := range b.types(deployment) {
		if strings.HasPrefix(s, typ) {
			n++
		}
	}
	return n
}

func (b *backend) lastPresence() map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.presence) == 0 {
		return nil
	}
	return b.presence[len(b.presence)-1]["body"].(map[string]any)
}

// checkSeqs asserts that the recorded events are numbered 1, 2, 3, ...
func (b *backend) checkSeqs() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.events {
		if int(e["seq"].(float64)) != i+1 {
			b.t.Errorf("event %d has seq %v", i+1, e["seq"])
		}
	}
}

// newInterop starts an embedded broker and a backend on it, and makes a
// device case (not yet started) that connects to it.
func newInterop(t *testing.T) (*backend, *daemonCase) {
	t.Helper()
	b := brokertest.Embedded(t)
	return newBackend(t, b.URL()), newDaemonCase(t, b.URL())
}

// waitOnline waits for the device's presence to say online.
func (b *backend) waitOnline() {
	b.t.Helper()
	waitFor(b.t, "presence online", func() bool { p := b.lastPresence(); return p != nil && p["status"] == "online" })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// daemonCase is a device running the daemon, a bundle server and a signed
// bundle.
type daemonCase struct {
	t      *testing.T
	dir    string
	state  string
	broker string
	pub    string
	key    packaging.PrivateKey
	srv    *httptest.Server
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr *bytes.Buffer
}

func (c *daemonCase) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.Write(p)
}

func newDaemonCase(t *testing.T, broker string) *daemonCase {
	t.Helper()
	dir := t.TempDir()
	priv, _, err := packaging.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	_, pub, err := packaging.WriteKeyFiles(filepath.Join(dir, "release"), priv)
	if err != nil {
		t.Fatal(err)
	}
	c := &daemonCase{t: t, dir: dir, state: filepath.Join(dir, "state"), broker: broker, pub: pub, key: priv}
	c.srv = httptest.NewServer(http.FileServer(http.Dir(filepath.Join(dir, "served"))))
	t.Cleanup(c.srv.Close)
	return c
}

// bundle builds and serves a bundle of a flow and returns its URL, sha256
// and size.
func (c *daemonCase) bundle(name, flowDoc string, version uint64) (string, string, int64) {
	c.t.Helper()
	src := filepath.Join(c.dir, "src-"+name)
	writeFile(c.t, filepath.Join(src, "flow.yaml"), flowDoc)
	var buf bytes.Buffer
	if _, err := packaging.Build(filepath.Join(src, "flow.yaml"), &buf, packaging.Options{Key: c.key, Version: version}); err != nil {
		c.t.Fatal(err)
	}
	writeFile(c.t, filepath.Join(c.dir, "served", name+".bundle"), buf.String())
	sum := sha256.Sum256(buf.Bytes())
	return c.srv.URL + "/" + name + ".bundle", hex.EncodeToString(sum[:]), int64(buf.Len())
}

func (c *daemonCase) start(extra ...string) {
	c.t.Helper()
	args := append([]string{"run", "--state-dir", c.state, "--device-id", interopDevice, "--broker", c.broker,
		"--trusted-key", c.pub, "--label", "site=lab", "--log-level", "debug"}, extra...)
	c.cmd = exec.Command(agentBin, args...)
	c.mu.Lock()
	c.stderr = &bytes.Buffer{}
	c.mu.Unlock()
	c.cmd.Stderr = c
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	cmd := c.cmd
	c.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// stderrText is what the agent logged so far.
func (c *daemonCase) stderrText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

func (c *daemonCase) kill() {
	c.t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

func (c *daemonCase) stop() {
	c.t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	if err := c.cmd.Wait(); err != nil {
		c.t.Errorf("agent after SIGTERM: %v\n%s", err, c.stderrText())
	}
}

const counterFlow = `version: 1
name: counter
steps:
  - name: count
    script: { run: "echo ran >> %s; echo counted" }
  - name: check
    verify: { command: "test -s %s" }
`

func TestDaemonInterop(t *testing.T) {
	be, c := newInterop(t)
	counter := filepath.Join(c.dir, "counter")
	url, sum, size := c.bundle("counter", fmt.Sprintf(counterFlow, counter, counter), 1)
	c.start()

	be.waitOnline()
	p := be.lastPresence()
	if labels, _ := p["labels"].(map[string]any); labels["site"] != "lab" {
		t.Errorf("presence labels = %v, want site=lab", p["labels"])
	}
	if caps, _ := p["capabilities"].(map[string]any); caps == nil || !strings.Contains(fmt.Sprint(caps["steps"]), "script") {
		t.Errorf("presence capabilities = %v, want the step types", p["capabilities"])
	}

	const d1 = "3f1c0e4a9b7d4c2e8f6a1b3c5d7e9f01"
	be.dispatch(d1, "dep-1", url, sum, size)
	waitFor(t, "flow-finished", func() bool { return be.event("dep-1", "flow-finished") != nil })
	want := []string{"accepted", "step-started count", "step-finished count Succeeded", "step-started check", "step-finished check Succeeded", "flow-finished Succeeded"}
	if got := be.types("dep-1"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q", got, want)
	}
	if sf := be.event("dep-1", "step-finished"); sf["log"] != "counted\n" || sf["attempt"] != float64(1) {
		t.Errorf("step-finished of count = %v, want log %q, attempt 1", sf, "counted\n")
	}

	// The same dispatch again (QoS 1 redelivery, or a backend that
	// resends): the agent reports its end again and runs nothing.
	be.dispatch(d1, "dep-1", url, sum, size)
	waitFor(t, "the end reported again", func() bool { return be.count("dep-1", "flow-finished") == 2 })
	if data, _ := os.ReadFile(counter); string(data) != "ran\n" {
		t.Errorf("the flow ran %d times, want once", strings.Count(string(data), "ran"))
	}

	// A bundle whose digest does not match is rejected, and nothing runs.
	be.dispatch("3f1c0e4a9b7d4c2e8f6a1b3c5d7e9f02", "dep-2", url, strings.Repeat("0", 64), size)
	waitFor(t, "rejected", func() bool { return be.event("dep-2", "rejected") != nil })
	if e := be.event("dep-2", "rejected")["error"].(map[string]any); e["type"] != "Integrity" {
		t.Errorf("rejected error = %v, want Integrity", e)
	}

	// A message for another device on this device's topic is refused.
	// The agent handles commands in order: once the dispatch sent after it
	// is answered, the refused one had its turn.
	be.publish("commands", fmt.Sprintf(`{"v":1,"id":"x1","type":"dispatch","device":"edge-other","time":"2025-06-01T10:00:00Z","body":{"deployment":"dep-3","url":%q,"sha256":%q,"size":%d}}`, url, sum, size))
	be.dispatch(d1, "dep-1", url, sum, size)
	waitFor(t, "the end reported a third time", func() bool { return be.count("dep-1", "flow-finished") == 3 })
	if got := be.types("dep-3"); len(got) != 0 {
		t.Errorf("the agent acted on a dispatch addressed to another device: %q", got)
	}
	be.checkSeqs()

	// SIGKILL: the broker publishes the retained last will.
	c.kill()
	waitFor(t, "the last will", func() bool { p := be.lastPresence(); return p != nil && p["status"] == "offline" })
}

const slowFlow = `version: 1
name: slow
steps:
  - name: wait
    script: { run: "if [ -e %[1]s.done ]; then echo second; exit 0; fi; touch %[1]s.started; sleep 60" }
    failureStrategies: [ { errors: [AgentRestart], action: Retry, retry: { count: 1, intervals: [1s] } } ]
  - name: after
    script: { run: "echo after >> %[1]s.after" }
`

// TestDaemonKilledMidStep kills the agent while a step runs, with the
// backend not acknowledging, and starts it again: it resumes the flow,
// the step's restart is retried, and every event arrives once, in order.
func TestDaemonKilledMidStep(t *testing.T) {
	be, c := newInterop(t)
	mark := filepath.Join(c.dir, "mark")
	url, sum, size := c.bundle("slow", fmt.Sprintf(slowFlow, mark), 1)
	c.start()
	be.waitOnline()

	be.dispatch("aa1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-slow", url, sum, size)
	// A second dispatch waits behind the first and says so.
	url2, sum2, size2 := c.bundle("counter", fmt.Sprintf(counterFlow, filepath.Join(c.dir, "counter"), filepath.Join(c.dir, "counter")), 1)
	waitFor(t, "the step to start", func() bool { _, err := os.Stat(mark + ".started"); return err == nil })
	be.dispatch("aa1c0e4a9b7d4c2e8f6a1b3c5d7e9f02", "dep-next", url2, sum2, size2)
	waitFor(t, "queued", func() bool { return be.event("dep-next", "queued") != nil })
	if pos := be.event("dep-next", "queued")["position"]; pos != float64(1) {
		t.Errorf("queued position = %v, want 1", pos)
	}

	c.kill()
	writeFile(t, mark+".done", "")
	c.start()
	waitFor(t, "the slow flow to finish", func() bool { return be.event("dep-slow", "flow-finished") != nil })
	waitFor(t, "the queued flow to finish", func() bool { return be.event("dep-next", "flow-finished") != nil })
	want := []string{"accepted", "step-started wait", "step-finished wait Failed", "step-started wait", "step-finished wait Succeeded",
		"step-started after", "step-finished after Succeeded", "flow-finished Succeeded"}
	if got := be.types("dep-slow"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q\nagent: %s", got, want, c.stderrText())
	}
	if data, _ := os.ReadFile(mark + ".after"); string(data) != "after\n" {
		t.Errorf("step after ran %q, want once", data)
	}
	if got := be.types("dep-next"); len(got) == 0 || got[0] != "queued" || got[len(got)-1] != "flow-finished Succeeded" {
		t.Errorf("queued deployment events = %q", got)
	}
	be.checkSeqs()
	c.stop()
	if p := be.lastPresence(); p["status"] != "offline" {
		t.Errorf("after SIGTERM presence = %v, want offline", p)
	}
}

// TestDaemonOutboxKeepsEventsUntilAcked runs a flow while the backend does
// not acknowledge, restarts the agent, and then acknowledges: the events
// come again after the restart, in order, and the outbox empties.
func TestDaemonOutboxKeepsEventsUntilAcked(t *testing.T) {
	be, c := newInterop(t)
	be.noAck = true
	counter := filepath.Join(c.dir, "counter")
	url, sum, size := c.bundle("counter", fmt.Sprintf(counterFlow, counter, counter), 1)
	c.start()
	be.waitOnline()
	be.dispatch("bb1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-1", url, sum, size)
	waitFor(t, "flow-finished", func() bool { return be.event("dep-1", "flow-finished") != nil })
	c.stop()

	// Forget what was received, as a backend that lost its state would,
	// and acknowledge from now on.
	be.mu.Lock()
	be.events, be.lastSeq, be.noAck = nil, 0, false
	be.mu.Unlock()
	c.start()
	waitFor(t, "the unacknowledged events again", func() bool { return be.event("dep-1", "flow-finished") != nil })
	if got := be.types("dep-1"); len(got) != 6 || got[0] != "accepted" {
		t.Errorf("events after restart = %q, want all six again", got)
	}
	be.checkSeqs()
	waitFor(t, "the acks to reach the agent", func() bool {
		return strings.Contains(c.stderrText(), "seq=6")
	})
	c.stop()
	j, err := journal.Open(c.state, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	last, acked, err := j.OutboxState()
	if err != nil || last != acked {
		t.Errorf("outbox: last %d, acked %d (%v); want everything acknowledged", last, acked, err)
	}
}

const pauseFlow = `version: 1
name: paused
steps:
  - name: migrate
    script: { run: "echo migrating; exit 3" }
    failureStrategies:
      - errors: [AllErrors]
        action: ManualIntervention
        manual: { timeout: 10m, onTimeout: Abort }
  - name: after
    script: { run: "echo after" }
`

// TestDaemonGuidanceAndCancel answers a paused step with a guide message
// and cancels a queued deployment, both as plain protocol messages.
func TestDaemonGuidanceAndCancel(t *testing.T) {
	be, c := newInterop(t)
	url, sum, size := c.bundle("paused", pauseFlow, 1)
	counter := filepath.Join(c.dir, "counter")
	url2, sum2, size2 := c.bundle("counter", fmt.Sprintf(counterFlow, counter, counter), 1)
	c.start()
	be.waitOnline()

	be.dispatch("cc1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-pause", url, sum, size)
	waitFor(t, "paused", func() bool { return be.event("dep-pause", "paused") != nil })
	p := be.event("dep-pause", "paused")
	if p["step"] != "migrate" || p["until"] == nil || p["error"].(map[string]any)["type"] != "Unknown" {
		t.Errorf("paused = %v", p)
	}
	waitFor(t, "presence with the running deployment", func() bool {
		x, _ := be.lastPresence()["execution"].(map[string]any)
		return x != nil && x["deployment"] == "dep-pause"
	})

	// A deployment queued behind the paused one, then cancelled.
	be.dispatch("cc1c0e4a9b7d4c2e8f6a1b3c5d7e9f02", "dep-later", url2, sum2, size2)
	waitFor(t, "queued", func() bool { return be.event("dep-later", "queued") != nil })
	cancel := `{"v":1,"id":"cc1c0e4a9b7d4c2e8f6a1b3c5d7e9f03","type":"cancel","device":"` + interopDevice + `","time":"2025-06-01T10:09:00Z","body":{"deployment":"dep-later","by":"alice","note":"not today"}}`
	be.publish("commands", cancel)
	waitFor(t, "the queued deployment rejected", func() bool { return be.event("dep-later", "rejected") != nil })
	if e := be.event("dep-later", "rejected")["error"].(map[string]any); e["type"] != "UserMarkedFailure" || !strings.Contains(e["message"].(string), "alice: not today") {
		t.Errorf("cancelled = %v", e)
	}

	guide := `{"v":1,"id":"cc1c0e4a9b7d4c2e8f6a1b3c5d7e9f04","type":"guide","device":"` + interopDevice + `","time":"2025-06-01T10:05:00Z","body":{"deployment":"dep-pause","step":"migrate","action":"Ignore","by":"alice","note":"known"}}`
	be.publish("commands", guide)
	waitFor(t, "flow-finished", func() bool { return be.event("dep-pause", "flow-finished") != nil })
	want := []string{"accepted", "step-started migrate", "paused migrate", "resumed migrate", "step-finished migrate Ignored",
		"step-started after", "step-finished after Succeeded", "flow-finished Succeeded"}
	if got := be.types("dep-pause"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q", got, want)
	}
	if r := be.event("dep-pause", "resumed"); r["action"] != "Ignore" || r["by"] != "alice" {
		t.Errorf("resumed = %v", r)
	}
	if _, err := os.Stat(counter); err == nil {
		t.Error("the cancelled deployment ran")
	}
	be.checkSeqs()
}

const longFlow = `version: 1
name: long
steps:
  - name: wait
    script: { run: "touch %[1]s.started; sleep 60" }
  - name: after
    script: { run: "echo after >> %[1]s.after" }
`

// TestDaemonCancelRunningAndPaused cancels a deployment whose step runs
// (the step is marked failed and the flow ends Failed, the next step never
// runs) and one whose step is paused for guidance (the pause is aborted).
func TestDaemonCancelRunningAndPaused(t *testing.T) {
	be, c := newInterop(t)
	mark := filepath.Join(c.dir, "mark")
	url, sum, size := c.bundle("long", fmt.Sprintf(longFlow, mark), 1)
	url2, sum2, size2 := c.bundle("paused", pauseFlow, 1)
	c.start()
	be.waitOnline()

	cancel := func(id, dep string) {
		be.publish("commands", `{"v":1,"id":"`+id+`","type":"cancel","device":"`+interopDevice+`","time":"2025-06-01T10:09:00Z","body":{"deployment":"`+dep+`","by":"alice","note":"stop"}}`)
	}
	be.dispatch("dd1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-long", url, sum, size)
	waitFor(t, "the step to run", func() bool { _, err := os.Stat(mark + ".started"); return err == nil })
	cancel("dd1c0e4a9b7d4c2e8f6a1b3c5d7e9f02", "dep-long")
	waitFor(t, "flow-finished", func() bool { return be.event("dep-long", "flow-finished") != nil })
	ff := be.event("dep-long", "flow-finished")
	if ff["status"] != "Failed" || ff["error"].(map[string]any)["type"] != "UserMarkedFailure" {
		t.Errorf("cancelled running flow ended %v", ff)
	}
	if _, err := os.Stat(mark + ".after"); err == nil {
		t.Error("the step after the cancelled one ran")
	}

	be.dispatch("dd1c0e4a9b7d4c2e8f6a1b3c5d7e9f03", "dep-pause", url2, sum2, size2)
	waitFor(t, "paused", func() bool { return be.event("dep-pause", "paused") != nil })
	cancel("dd1c0e4a9b7d4c2e8f6a1b3c5d7e9f04", "dep-pause")
	waitFor(t, "flow-finished", func() bool { return be.event("dep-pause", "flow-finished") != nil })
	if r := be.event("dep-pause", "resumed"); r["action"] != "Abort" || r["by"] != "alice" {
		t.Errorf("resumed = %v, want Abort by alice", r)
	}
	if ff := be.event("dep-pause", "flow-finished"); ff["status"] == "Succeeded" {
		t.Errorf("cancelled paused flow ended %v", ff)
	}
	be.checkSeqs()
}
