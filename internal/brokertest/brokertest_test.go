package brokertest

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEmbedded(t *testing.T) {
	t.Parallel()
	b := Embedded(t)
	if !strings.HasPrefix(b.URL(), "tcp://127.0.0.1:") {
		t.Errorf("URL() = %q, want tcp://127.0.0.1:PORT", b.URL())
	}
	MustWaitTCP(t, b.Addr())
	addr := b.Addr()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	again := EmbeddedOn(t, addr)
	if again.Addr() != addr {
		t.Errorf("EmbeddedOn(%s) listens on %s", addr, again.Addr())
	}
}

func TestWaitTCP(t *testing.T) {
	t.Parallel()
	addr := FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := WaitTCP(ctx, addr); err == nil {
		t.Fatalf("WaitTCP(%s) succeeded with nothing listening", addr)
	}
	if err := WaitTCPClosed(context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the free port was taken meanwhile: %v", err)
	}
	defer l.Close()
	MustWaitTCP(t, addr)
}

// TestMosquitto: the process starts, stops, is killed and restarts on its
// port; its configuration has what the helpers promise.
func TestMosquitto(t *testing.T) {
	t.Parallel()
	m := Mosquitto(t, WithUsers(map[string]string{"dev-a": "a-secret"}), WithACL("pattern read x/%u\n"), WithConfig("max_queued_messages 10"))
	if !strings.HasPrefix(m.URL(), "tcp://127.0.0.1:") || !m.Running() {
		t.Fatalf("URL %q, running %v", m.URL(), m.Running())
	}
	conf, err := os.ReadFile(filepath.Join(m.Dir(), "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"persistence true", "allow_anonymous false", "password_file ", "acl_file ", "max_queued_messages 10", "listener "} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("mosquitto.conf lacks %q:\n%s", want, conf)
		}
	}
	passwd, err := os.ReadFile(filepath.Join(m.Dir(), "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(passwd), "dev-a:$") || strings.Contains(string(passwd), "a-secret") {
		t.Errorf("password file not hashed: %q", passwd)
	}

	ctx, cancel := context.WithTimeout(context.Background(), Deadline)
	defer cancel()
	m.Stop()
	if m.Running() {
		t.Error("running after Stop")
	}
	if err := WaitTCPClosed(ctx, m.Addr()); err != nil {
		t.Fatal(err)
	}
	m.Restart()
	MustWaitTCP(t, m.Addr())
	m.Kill()
	if m.Running() {
		t.Error("running after Kill")
	}
	m.Restart()
	if !m.Running() {
		t.Error("not running after Restart")
	}
	if !strings.Contains(m.Log(), "mosquitto version") {
		t.Errorf("mosquitto log lacks its start lines:\n%s", m.Log())
	}
}

// TestProxy: bytes pass both ways; Cut ends the connections through it;
// new ones work.
func TestProxy(t *testing.T) {
	t.Parallel()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	p := NewProxy(t, echo.Addr().String())
	roundTrip := func(c net.Conn, r *bufio.Reader, line string) error {
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			return err
		}
		got, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if got != line+"\n" {
			t.Errorf("echo %q, want %q", got, line)
		}
		return nil
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if err := roundTrip(c, r, "hello"); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	if err := c.SetReadDeadline(time.Now().Add(Deadline)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("the connection still works after Cut")
	} else if os.IsTimeout(err) {
		t.Fatal("the connection was not ended by Cut")
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := roundTrip(c2, bufio.NewReader(c2), "again"); err != nil {
		t.Fatal(err)
	}
}
