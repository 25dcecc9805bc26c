package verify

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"

	"github.com/edgeflow/edgeflow/steps/script"
)

// httpProbe GETs a URL.
type httpProbe struct {
	url    string // as requested
	shown  string // as written in messages, password redacted
	want   int
	body   string
	client *http.Client
}

func newHTTPProbe(u *url.URL, want int, body string) *httpProbe {
	t := http.DefaultTransport.(*http.Transport).Clone()
	// A health check tests a fresh connection every time, and leaves no
	// idle connection behind.
	t.DisableKeepAlives = true
	return &httpProbe{
		url: u.String(), shown: u.Redacted(), want: want, body: body,
		client: &http.Client{
			Transport: t,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
}

func (p *httpProbe) target() string { return p.shown }

func (p *httpProbe) probe(ctx context.Context, d time.Duration) (*failure, error) {
	op := "GET " + p.shown
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	req.Header.Set("User-Agent", "edgeflow-verify")
	resp, err := p.client.Do(req)
	if err != nil {
		return netFailure(op, err, d), nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != p.want {
		return &failure{verdict: true, op: op, msg: fmt.Sprintf("status %d, want %d", resp.StatusCode, p.want)}, nil
	}
	if p.body == "" {
		return nil, nil
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if err != nil {
		return netFailure(op, err, d), nil
	}
	if !bytes.Contains(data, []byte(p.body)) {
		msg := fmt.Sprintf("body does not contain %q", p.body)
		if len(data) == MaxBody {
			msg += fmt.Sprintf(" (in its first %d bytes)", MaxBody)
		}
		return &failure{verdict: true, op: op, msg: msg}, nil
	}
	return nil, nil
}

// tcpProbe dials an address.
type tcpProbe struct{ address string }

func (p *tcpProbe) target() string { return p.address }

func (p *tcpProbe) probe(ctx context.Context, d time.Duration) (*failure, error) {
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", p.address)
	if err != nil {
		return netFailure("dial "+p.address, err, d), nil
	}
	_ = conn.Close()
	return nil, nil
}

// commandProbe runs a shell command.
type commandProbe struct {
	text  string
	dir   string
	grace time.Duration
	log   io.Writer
}

func (p *commandProbe) target() string { return fmt.Sprintf("command %q", script.Clip(p.text, 80)) }

func (p *commandProbe) probe(ctx context.Context, d time.Duration) (*failure, error) {
	last := &script.LastLine{}
	code, err := script.Exec(ctx, script.Command{
		Text: p.text, Dir: p.dir, Grace: p.grace,
		Output: io.MultiWriter(p.log, last),
	})
	if err != nil {
		if ctx.Err() != nil {
			// Stopped at the probe's deadline (the caller tells the
			// step's own end apart): no verdict.
			return &failure{msg: fmt.Sprintf("command did not finish within %s", d), err: err}, nil
		}
		return nil, fmt.Errorf("verify: %w", err)
	}
	if code == 0 {
		return nil, nil
	}
	msg := fmt.Sprintf("command exited %d", code)
	if l := last.Line(); l != "" {
		msg += ": " + l
	}
	return &failure{verdict: true, msg: msg}, nil
}

// netFailure reads a network error as a verdict or as no verdict.
func netFailure(op string, err error, d time.Duration) *failure {
	return &failure{verdict: answered(err), op: op, msg: reason(err, d), err: err}
}

// answered reports whether err means the target answered (and said no),
// rather than that no answer came. See the package doc.
func answered(err error) bool {
	if timedOut(err) {
		return false
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return false
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	// The server closed the connection without a (whole) response.
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	// The server answered, but not with TLS we accept.
	var header tls.RecordHeaderError
	var cert *tls.CertificateVerificationError
	var alert tls.AlertError
	if errors.As(err, &header) || errors.As(err, &cert) || errors.As(err, &alert) {
		return true
	}
	// No route, unreachable host or network, and anything else that is not
	// an answer from the target.
	return false
}

// timedOut reports whether err is a deadline passing.
func timedOut(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// reason is the short text of a network error, without the operation the
// message already names.
func reason(err error, d time.Duration) string {
	if timedOut(err) {
		return fmt.Sprintf("timed out after %s", d)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.Error()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed without an answer"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// MaxLogLines is the most lines the failed probes of one step write to
// Env.Log.
const MaxLogLines = 50

// alwaysLogged is how many failed probes are logged even when their
// message repeats.
const alwaysLogged = 10

// probeLog writes the bounded per-probe lines of the package doc.
type probeLog struct {
	w     io.Writer
	lines int
	full  bool
	last  string
	// A run of suppressed repeats of last.
	same, sameFrom, sameTo int
}

func (l *probeLog) probe(n int, msg string) {
	msg = script.Clip(msg, 300)
	if l.lines >= alwaysLogged && msg == l.last {
		if l.same == 0 {
			l.sameFrom = n
		}
		l.same++
		l.sameTo = n
		return
	}
	l.flush()
	l.line(fmt.Sprintf("probe %d: %s", n, msg))
	l.last = msg
}

// flush writes the pending run of repeats, if any.
func (l *probeLog) flush() {
	switch {
	case l.same == 1:
		l.line(fmt.Sprintf("probe %d: the same", l.sameFrom))
	case l.same > 1:
		l.line(fmt.Sprintf("probes %d-%d: the same", l.sameFrom, l.sameTo))
	}
	l.same = 0
}

func (l *probeLog) line(s string) {
	if l.full {
		return
	}
	l.lines++
	if l.lines == MaxLogLines {
		l.full = true
		s = "further failed probes are not logged"
	}
	fmt.Fprintln(l.w, s)
}
