package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tcpListener is the broker's TCP listener, in place of mochi's
// listeners.TCP, which in v2.7.9:
//
//   - counts a connection in its clients' WaitGroup from the connection's
//     own goroutine, racing with the Wait of Close (the race detector
//     reports it when a client connects while the broker closes);
//   - never closes a connection that has not sent CONNECT yet, so Close
//     waits for such a client forever;
//   - stops accepting for good on the first Accept error, such as running
//     out of file descriptors;
//   - logs every ended connection as a warning with an empty message.
//
// This one counts each connection before its goroutine starts, and its
// Close stops accepting, lets mochi disconnect its clients, closes every
// connection left and waits for them all.
type tcpListener struct {
	id  string
	ln  net.Listener
	log *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newTCPListener(id string, ln net.Listener, log *slog.Logger) *tcpListener {
	return &tcpListener{id: id, ln: ln, log: log, conns: map[net.Conn]struct{}{}}
}

// Init does nothing: Start has bound the socket already.
func (l *tcpListener) Init(*slog.Logger) error { return nil }

func (l *tcpListener) ID() string       { return l.id }
func (l *tcpListener) Address() string  { return l.ln.Addr().String() }
func (l *tcpListener) Protocol() string { return "tcp" }

// Serve accepts connections and hands each to establish, in its own
// goroutine, until Close.
func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Such as EMFILE: wait a little and go on, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("mqtt broker accept failed; retrying", "error", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			err := establish(l.id, c)
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
			c.Close()
			l.logEnd(c, err)
		}()
	}
}

// logEnd logs a connection's end: at debug when the connection was just
// lost or closed (devices come and go), as a warning otherwise (a protocol
// error, refused credentials).
func (l *tcpListener) logEnd(c net.Conn, err error) {
	if err == nil {
		return
	}
	remote := c.RemoteAddr().String()
	if connectionLost(err) {
		l.log.Debug("mqtt client connection ended", "remote", remote, "error", err)
		return
	}
	l.log.Warn("mqtt client session ended with an error", "remote", remote, "error", err)
}

// connectionLost reports whether err only says that the connection went
// away.
func connectionLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (l *tcpListener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// Close stops accepting, has mochi disconnect the listener's clients
// (closeClients), closes the connections left (those still before
// CONNECT) and waits until every connection's goroutine has ended.
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.mu.Unlock()
	_ = l.ln.Close()
	closeClients(l.id)
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}
