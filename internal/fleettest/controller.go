package fleettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/client"
)

// ControllerOptions configure StartController.
type ControllerOptions struct {
	// Broker is the URL of an external MQTT broker (`edgeflow serve
	// --broker URL`, such as a brokertest.Mosquitto's); empty runs the
	// embedded broker on a free loopback port.
	Broker string
	// Data is the data dir; empty means a new temporary directory.
	Data string
	// Args are more flags for `edgeflow serve`.
	Args []string
}

// Controller is an `edgeflow serve` process.
type Controller struct {
	*process
	bins Binaries
	opts ControllerOptions
	// Data is the controller's data dir (--data).
	Data string

	// listen and mqttListen are the addresses serve is started with:
	// 127.0.0.1:0 at first, then the ports the first run got, so that a
	// restarted controller is where agents and the CLI look for it.
	listen, mqttListen string
	api, broker        string
	runLog             *syncBuffer // the output of the current run only
}

// readyLine is what `edgeflow serve` prints once it listens.
var readyLine = regexp.MustCompile(`^edgeflow controller: API on (\S+), MQTT broker (\S+?)( \(embedded\))?, agents download bundles from (\S+)$`)

// StartController starts `edgeflow serve` on free loopback ports and waits
// until its API answers and it is connected to its broker. It is killed
// when t ends.
func StartController(t testing.TB, bins Binaries, opts ControllerOptions) *Controller {
	t.Helper()
	data := opts.Data
	if data == "" {
		data = t.TempDir()
	}
	c := &Controller{
		process: newProcess(t, "edgeflow serve"),
		bins:    bins, opts: opts, Data: data,
		listen: "127.0.0.1:0", mqttListen: "127.0.0.1:0",
	}
	c.Start()
	return c
}

// API returns the URL of the controller's REST API, such as
// http://127.0.0.1:PORT: what `--controller` and $EDGEFLOW_CONTROLLER take.
func (c *Controller) API() string { return c.api }

// BrokerURL returns the URL agents connect to: the embedded broker's, or
// the external one the controller uses.
func (c *Controller) BrokerURL() string { return c.broker }

// Embedded reports whether the controller runs the embedded broker.
func (c *Controller) Embedded() bool { return c.opts.Broker == "" }

// Log returns what the controller printed in all its runs so far.
func (c *Controller) Log() string { return c.log.String() }

// Running reports whether the controller process runs now.
func (c *Controller) Running() bool { return c.running() }

// Start starts the controller (again, after Stop or Kill) with its data
// dir and addresses, and waits until its API answers and it is connected
// to its broker. While a port is still held (the restarted controller's
// old connections), it tries again until Deadline.
func (c *Controller) Start() {
	c.t.Helper()
	end := time.Now().Add(Deadline)
	for {
		err := c.startOnce(end)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortTaken) || time.Now().After(end) {
			c.t.Fatalf("start edgeflow serve: %v\n%s", err, c.runLog.tail(16<<10))
		}
		time.Sleep(100 * time.Millisecond)
	}
	cl := c.Client()
	WaitFor(c.t, "the controller to answer and connect to its broker", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h, err := cl.Health(ctx)
		if err != nil {
			return err
		}
		if h.MQTT != "connected" {
			return fmt.Errorf("health says mqtt %q", h.MQTT)
		}
		return nil
	})
}

var errPortTaken = errors.New("a port is taken")

func (c *Controller) startOnce(end time.Time) error {
	args := []string{"serve", "--data", c.Data, "--listen", c.listen, "--log-level", "debug"}
	if c.opts.Broker != "" {
		args = append(args, "--broker", c.opts.Broker)
	} else {
		args = append(args, "--mqtt-listen", c.mqttListen)
	}
	args = append(args, c.opts.Args...)
	cmd := exec.Command(c.bins.Edgeflow, args...)
	c.runLog = &syncBuffer{}
	out := io.MultiWriter(c.log, c.runLog)
	cmd.Stderr = out
	lines := make(chan string, 1)
	cmd.Stdout = &firstLine{w: out, line: lines}
	if err := c.start(cmd); err != nil {
		return err
	}
	var err error
	select {
	case line := <-lines:
		m := readyLine.FindStringSubmatch(line)
		if m == nil {
			c.signal(syscall.SIGKILL)
			return fmt.Errorf("edgeflow serve printed %q, want its ready line", line)
		}
		if c.opts.Broker == "" && m[3] == "" || c.opts.Broker != "" && m[3] != "" {
			c.signal(syscall.SIGKILL)
			return fmt.Errorf("edgeflow serve printed %q: the wrong broker", line)
		}
		c.api, c.broker = m[1], m[2]
		if c.listen, err = hostPort(c.api); err != nil {
			return err
		}
		if c.opts.Broker == "" {
			if c.mqttListen, err = hostPort(c.broker); err != nil {
				return err
			}
		}
		return nil
	case <-c.exited():
		if strings.Contains(c.runLog.String(), "address already in use") {
			return errPortTaken
		}
		cmd, _ := c.current()
		return fmt.Errorf("edgeflow serve exited: %v", cmd.ProcessState)
	case <-time.After(time.Until(end)):
		c.signal(syscall.SIGKILL)
		return errors.New("edgeflow serve printed nothing")
	}
}

// firstLine copies what is written to w and sends the first line
// (without its newline) to line.
type firstLine struct {
	w    io.Writer
	buf  []byte
	sent bool
	line chan<- string
}

func (f *firstLine) Write(p []byte) (int, error) {
	if !f.sent {
		f.buf = append(f.buf, p...)
		if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
			f.line <- string(f.buf[:i])
			f.sent, f.buf = true, nil
		}
	}
	return f.w.Write(p)
}

// hostPort returns the HOST:PORT of a URL.
func hostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("edgeflow serve printed the URL %q: %v", raw, err)
	}
	return u.Host, nil
}

// Stop stops the controller with SIGTERM, as an operator would, and fails
// t unless it exits 0.
func (c *Controller) Stop() {
	c.t.Helper()
	if code := c.signal(syscall.SIGTERM); code != 0 {
		c.t.Errorf("edgeflow serve exited %d after SIGTERM, want 0", code)
	}
}

// Kill ends the controller with SIGKILL, as a crash would. With the
// embedded broker, the broker goes with it.
func (c *Controller) Kill() {
	c.t.Helper()
	c.signal(syscall.SIGKILL)
}

// Restart stops the controller (SIGTERM) and starts it again on its data
// dir and addresses.
func (c *Controller) Restart() {
	c.t.Helper()
	c.Stop()
	c.Start()
}

// Client returns a Go client of the controller's API (controller/client),
// for a test's own polling; what a test asserts should rather come from
// the CLI, as a user sees it.
func (c *Controller) Client() *client.Client {
	cl, err := client.New(c.api, "", nil)
	if err != nil {
		c.t.Fatalf("API client: %v", err)
	}
	return cl
}
