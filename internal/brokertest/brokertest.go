// Package brokertest is test support for code that talks MQTT: real
// brokers on loopback ports, started and removed by the test.
//
//   - Embedded starts edgeflow's embedded broker (controller/broker) on
//     127.0.0.1:0; EmbeddedOn starts one on a given address, to "restart"
//     the embedded broker on the port its clients know.
//   - Mosquitto starts a real mosquitto process with a generated
//     configuration (persistence on, optionally a password file and an ACL
//     file) that the test can Stop, Kill and Restart on the same port.
//   - Proxy is a TCP proxy in front of a broker whose connections a test
//     can cut, so that a client loses its connection abruptly (as if the
//     network went away) while the broker stays up.
//   - WaitTCP, WaitTCPClosed and FreeAddr help with ports; TestLogger
//     gives a slog logger that writes to the test's log.
//
// # Availability
//
// Mosquitto needs the Debian package mosquitto (/usr/sbin/mosquitto and
// /usr/bin/mosquitto_passwd; scripts/services.sh installs it). When it is
// missing, the test is skipped with a loud reason, unless
// EDGEFLOW_REQUIRE_SERVICES=1 (CI), where it fails. The embedded broker
// is always there.
//
// Every wait is bounded by Deadline, a safety net against a hang and not
// a performance assertion.
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/broker"
)

// RequireEnv is the environment variable that turns a missing broker into
// a test failure instead of a skip (the same one internal/dockertest
// reads).
const RequireEnv = "EDGEFLOW_REQUIRE_SERVICES"

// Deadline bounds every wait of this package: generous, because test
// machines are noisy.
const Deadline = 20 * time.Second

// Embedded starts an embedded broker on 127.0.0.1:0, closed when t ends.
func Embedded(t testing.TB) *broker.Broker {
	t.Helper()
	return EmbeddedOn(t, "127.0.0.1:0")
}

// EmbeddedOn starts an embedded broker listening on addr, closed when t
// ends. To restart an embedded broker as its clients see it, Close it and
// call EmbeddedOn with its Addr: the sessions and retained messages are
// gone, as after a controller restart. While the port is still held (by
// connections of the closed broker whose clients have not closed their
// end yet, or by another program's connection that got it as its own
// port), EmbeddedOn tries again until Deadline.
func EmbeddedOn(t testing.TB, addr string) *broker.Broker {
	t.Helper()
	end := time.Now().Add(Deadline)
	for {
		b, err := broker.Start(broker.Options{Listen: addr, Logger: TestLogger(t)})
		if err == nil {
			t.Cleanup(func() {
				if err := b.Close(); err != nil {
					t.Errorf("close the embedded broker: %v", err)
				}
			})
			return b
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(end) {
			t.Fatalf("start the embedded broker: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitTCP waits until addr (host:port) accepts a TCP connection, or ctx
// ends.
func WaitTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to accept connections: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// MustWaitTCP waits at most Deadline until addr accepts a TCP connection,
// failing t otherwise.
func MustWaitTCP(t testing.TB, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Deadline)
	defer cancel()
	if err := WaitTCP(ctx, addr); err != nil {
		t.Fatal(err)
	}
}

// WaitTCPClosed waits until addr refuses TCP connections, or ctx ends.
func WaitTCPClosed(ctx context.Context, addr string) error {
	var d net.Dialer
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := d.DialContext(dctx, "tcp", addr)
		cancel()
		if err != nil && ctx.Err() == nil {
			return nil
		}
		if c != nil {
			c.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to stop accepting connections: %w", addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// FreeAddr returns a loopback address, 127.0.0.1:PORT, whose port was free
// a moment ago. Another process may take it before the caller binds it;
// callers that start a server on it retry with a new one when it is
// taken.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	return addr
}

// Unavailable ends t because a broker it needs cannot run here: a skip
// with a loud reason, or a failure when RequireEnv is 1.
func Unavailable(t testing.TB, what string, why error) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1 but %s is not available: %v (run scripts/services.sh)", RequireEnv, what, why)
	}
	t.Skipf("%s NOT AVAILABLE, SKIPPING %s: %v (run scripts/services.sh; set %s=1 to make this a failure)", strings.ToUpper(what), t.Name(), why, RequireEnv)
}

// errExited is returned by a wait that saw the broker process end.
var errExited = errors.New("the process exited")
