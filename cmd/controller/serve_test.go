package main

// `edgeflow serve` as a process: the real binary, built by the test, started on
// loopback ports with the embedded broker, driven over HTTP and MQTT, and
// stopped with SIGTERM.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// serveDeadline bounds every wait: a safety net, not a performance
// assertion.
const serveDeadline = 30 * time.Second

// buildEdgeflow builds the edgeflow binary into a temporary directory of
// t.
func buildEdgeflow(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "edgeflow")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build edgeflow: %v\n%s", err, out)
	}
	return bin
}

// serveProc is a running `edgeflow serve`.
type serveProc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan struct{}
	api    string
	broker string
	public string
}

var readyLine = regexp.MustCompile(`^edgeflow controller: API on (\S+), MQTT broker (\S+) \(embedded\), agents download bundles from (\S+)$`)

func startServe(t *testing.T, bin string, args ...string) *serveProc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &serveProc{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{w: p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("edgeflow serve stderr:\n%s", p.stderr.String())
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case line := <-lines:
		m := readyLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("serve printed %q", line)
		}
		p.api, p.broker, p.public = m[1], m[2], m[3]
	case <-p.done:
		t.Fatalf("serve exited: %v\n%s", cmd.ProcessState, p.stderr.String())
	case <-time.After(serveDeadline):
		t.Fatal("serve printed nothing")
	}
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// get makes an API request with the token and decodes a JSON answer.
func apiCall(t *testing.T, method, url, token string, body io.Reader, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, data)
		}
	}
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(serveDeadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeProcess(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600)
	bin := buildEdgeflow(t)
	p := startServe(t, bin, "--data", data, "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--token-file", tokenFile, "--log-level", "debug",
		"--guided-failure-selector", "site=a", "--guided-failure-timeout", "10m", "--allow-mark-failed")
	if !strings.HasPrefix(p.broker, "tcp://127.0.0.1:") || p.public != p.api {
		t.Fatalf("serve listens on %s, broker %s, public %s", p.api, p.broker, p.public)
	}
	waitFor(t, "the controller connected to its broker", func() bool {
		var h api.Health
		return apiCall(t, "GET", p.api+"/v1/health", "", nil, &h) == 200 && h.MQTT == "connected"
	})
	if code := apiCall(t, "GET", p.api+"/v1/devices", "", nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("devices without the token: %d", code)
	}

	// A device: presence, then a dispatch.
	topics := transport.Topics{}
	cmdTopic, _ := topics.Topic("dev-1", transport.ChannelCommands)
	dev, err := mqtt.New(mqtt.Options{Broker: p.broker, ClientID: "dev-1", Subscriptions: []string{cmdTopic}})
	if err != nil {
		t.Fatal(err)
	}
	dev.Start()
	defer dev.Close(time.Second)
	waitFor(t, "the device connected", dev.Connected)
	pres, _ := transport.New("dev-1", &transport.Presence{Status: transport.Online, Agent: "0.7.0", Labels: map[string]string{"site": "a"}})
	payload, _ := pres.Encode()
	presTopic, _ := topics.Topic("dev-1", transport.ChannelPresence)
	if err := dev.Publish(context.Background(), presTopic, payload, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the device known", func() bool {
		var d api.Device
		return apiCall(t, "GET", p.api+"/v1/devices/dev-1", "s3cret", nil, &d) == 200 && d.Status == transport.Online
	})

	flowDir := filepath.Join(dir, "flow")
	os.MkdirAll(flowDir, 0o755)
	os.WriteFile(filepath.Join(flowDir, "flow.yaml"), []byte("version: 1\nname: app\nsteps: [{name: s, script: {run: \"true\"}}]\n"), 0o644)
	var bundle bytes.Buffer
	if _, err := packaging.Build(filepath.Join(flowDir, "flow.yaml"), &bundle, packaging.Options{Version: 1}); err != nil {
		t.Fatal(err)
	}
	var b api.Bundle
	if code := apiCall(t, "POST", p.api+"/v1/bundles", "s3cret", bytes.NewReader(bundle.Bytes()), &b); code != http.StatusCreated {
		t.Fatalf("upload: %d", code)
	}
	var dep api.Deployment
	if code := apiCall(t, "POST", p.api+"/v1/deployments", "s3cret", strings.NewReader(`{"bundle":"`+b.SHA256+`","devices":["dev-1"]}`), &dep); code != http.StatusCreated {
		t.Fatalf("create deployment: %d", code)
	}
	var got *transport.Message
	waitFor(t, "the dispatch", func() bool {
		select {
		case m := <-dev.Messages():
			m.Ack()
			msg, err := topics.Decode(m.Topic, m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			got = msg
			return true
		default:
			return false
		}
	})
	// The device's labels match --guided-failure-selector.
	if g := got.Body.(*transport.Dispatch).GuidedFailure; g == nil || g.TimeoutSeconds != 600 || g.OnTimeout != onfailure.Abort {
		t.Fatalf("dispatch guided failure: %+v", g)
	}
	// --allow-mark-failed: not refused (409: dev-1 has not started).
	var e api.Error
	if code := apiCall(t, "POST", p.api+"/v1/deployments/"+dep.ID+"/mark-failed", "s3cret", strings.NewReader(`{"all":true}`), &e); code != http.StatusConflict {
		t.Fatalf("mark-failed: %d %+v", code, e)
	}
	url := got.Body.(*transport.Dispatch).URL
	resp, err := http.Get(url) // agents download without the token
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, bundle.Bytes()) {
		t.Fatalf("download %s: %d, %d bytes", url, resp.StatusCode, len(body))
	}

	// A second controller on the same data dir is refused.
	second := exec.Command(bin, "serve", "--data", data, "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0")
	out, err := second.CombinedOutput()
	if second.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "another controller holds "+data) {
		t.Fatalf("second controller: %v %s", err, out)
	}

	// SIGTERM: a clean stop, exit 0.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(serveDeadline):
		t.Fatal("serve did not stop on SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("serve exited %d after SIGTERM", code)
	}
}

func TestServeUsage(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"serve"},
		{"serve", "--data", dir, "--broker", "nonsense"},
		{"serve", "--data", dir, "--prefix", "a/#"},
		{"serve", "--data", dir, "--public-url", "ftp://x"},
		{"serve", "--data", dir, "--token-file", filepath.Join(dir, "missing")},
		{"serve", "--data", dir, "--log-level", "loud"},
		{"serve", "--data", dir, "extra"},
		{"serve", "--data", dir, "--guided-failure-selector", "novalue"},
		{"serve", "--data", dir, "--guided-failure-selector", "env=prod", "--guided-failure-timeout", "0s"},
		{"serve", "--data", dir, "--guided-failure-selector", "env=prod", "--guided-failure-on-timeout", "Retry"},
		{"serve", "--data", dir, "--guided-failure-timeout", "5m"},
	} {
		if code, _, errs := edgeflow(t, args...); code != 2 {
			t.Errorf("%v: exit %d (%q), want 2", args, code, errs)
		}
	}
}
