package mqtt_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// The test binary doubles as a small MQTT client, so that tests can kill a
// real process holding a connection with SIGKILL: a child started by
// startChild runs childMain instead of the tests.
const (
	childEnv       = "EDGEFLOW_MQTT_TEST_CHILD" // "1" runs childMain
	childBroker    = "EDGEFLOW_MQTT_TEST_BROKER"
	childClientID  = "EDGEFLOW_MQTT_TEST_CLIENT_ID"
	childSubscribe = "EDGEFLOW_MQTT_TEST_SUBSCRIBE" // a topic filter, or empty
	childWillTopic = "EDGEFLOW_MQTT_TEST_WILL_TOPIC"
	childWillText  = "EDGEFLOW_MQTT_TEST_WILL_PAYLOAD"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// childMain connects with a persistent session, the will and the
// subscription its environment gives, prints "connected" after every
// connect and "received TOPIC PAYLOAD" for every message, never
// acknowledges one, and runs until it is killed.
func childMain() int {
	var out sync.Mutex
	say := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	opts := mqtt.Options{
		Broker:               os.Getenv(childBroker),
		ClientID:             os.Getenv(childClientID),
		MaxReconnectInterval: 2 * time.Second,
		OnConnect:            func() { say("connected") },
	}
	if f := os.Getenv(childSubscribe); f != "" {
		opts.Subscriptions = []string{f}
	}
	if w := os.Getenv(childWillTopic); w != "" {
		opts.Will = &mqtt.Will{Topic: w, Payload: []byte(os.Getenv(childWillText)), Retained: true}
	}
	c, err := mqtt.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c.Start()
	for m := range c.Messages() {
		say("received %s %s", m.Topic, m.Payload)
	}
	return 0
}

// child is a running child client.
type child struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
}

// startChild runs the test binary as a child client with env (NAME=VALUE)
// and waits until it says it is connected. It is killed when t ends.
func startChild(t *testing.T, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	cmd.Stderr = &testWriter{t: t, prefix: "child: "}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the child client: %v", err)
	}
	c := &child{t: t, cmd: cmd, lines: make(chan string, 100)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	c.expect("connected")
	return c
}

// expect waits for the child to print line.
func (c *child) expect(line string) {
	c.t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("the child client ended before printing %q", line)
			}
			if l == line {
				return
			}
			c.t.Logf("child: %s", l)
		case <-timeout:
			c.t.Fatalf("the child client did not print %q within %v", line, deadline)
		}
	}
}

// kill sends SIGKILL to the child and waits for it to end.
func (c *child) kill() {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatalf("kill the child client: %v", err)
	}
	err := c.cmd.Wait()
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		c.t.Fatalf("the child client ended with %v, want SIGKILL", err)
	}
}

// testWriter writes lines to t's log.
type testWriter struct {
	mu     sync.Mutex
	t      *testing.T
	prefix string
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(w.prefix + l)
	}
	return len(p), nil
}
