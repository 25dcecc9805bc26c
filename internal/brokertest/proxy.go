package brokertest

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on a loopback port in front of a broker. Cut drops
// every connection through it abruptly (as a network failure or a killed
// peer would: the client and the broker both see the connection end
// without an MQTT DISCONNECT), while the proxy keeps accepting new ones.
type Proxy struct {
	t      testing.TB
	target string
	l      net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewProxy starts a proxy on 127.0.0.1:0 to target (host:port), closed
// when t ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: listen: %v", err)
	}
	p := &Proxy{t: t, target: target, l: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// URL returns the proxy's URL for MQTT clients: tcp://127.0.0.1:PORT.
func (p *Proxy) URL() string { return "tcp://" + p.l.Addr().String() }

// Addr returns the proxy's address.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			abort(c)
			abort(up)
			return
		}
		p.conns[c] = struct{}{}
		p.conns[up] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// pipe copies from src to dst; when either side ends, both are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src) // the end of a connection is expected
	for _, c := range []net.Conn{dst, src} {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		abort(c)
	}
}

// Cut closes every connection through the proxy abruptly (TCP RST where
// the system allows it). New connections are accepted as before.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		abort(c)
	}
}

// Close stops the proxy and closes every connection through it.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	if err := p.l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		p.t.Errorf("proxy: close: %v", err)
	}
	p.Cut()
	p.wg.Wait()
}

// abort closes c, with a reset rather than an orderly FIN for TCP.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
