package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// Short timings keep the tests quick; nothing asserts how long anything
// took.
const (
	interval = 20 * time.Millisecond
	short    = 300 * time.Millisecond
)

func newEnv(t *testing.T) *steps.Env {
	t.Helper()
	return &steps.Env{
		Step:   "smoke",
		Root:   t.TempDir(),
		Log:    steps.NewLogBuffer(0),
		Expand: func(s string) (string, error) { return s, nil },
	}
}

func verifyStep(v flow.Verify) *flow.Step {
	if v.Interval == 0 {
		v.Interval = interval
	}
	if v.Timeout == 0 {
		v.Timeout = short
	}
	return &flow.Step{Name: "smoke", Verify: &v}
}

func run(t *testing.T, v flow.Verify) (*steps.Env, error) {
	t.Helper()
	env := newEnv(t)
	r := &Runner{Grace: 100 * time.Millisecond}
	return env, r.Run(context.Background(), verifyStep(v), env)
}

// wantKind fails unless err has kind k and its message contains every part.
func wantKind(t *testing.T, err error, k onfailure.Kind, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got success, want a %s error", k)
	}
	if got := onfailure.KindOf(err); got != k {
		t.Errorf("kind %q, want %q (error: %v)", got, k, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func wantLog(t *testing.T, env *steps.Env, parts ...string) {
	t.Helper()
	log := env.Log.String()
	for _, p := range parts {
		if !strings.Contains(log, p) {
			t.Errorf("log does not contain %q:\n%s", p, log)
		}
	}
}

// server answers with h and counts requests.
func server(t *testing.T, h func(n int64, w http.ResponseWriter, r *http.Request)) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h(n.Add(1), w, r)
	}))
	t.Cleanup(func() {
		// Ends the requests of handlers that wait for their client.
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv, &n
}

func status(code int, body string) func(int64, http.ResponseWriter, *http.Request) {
	return func(_ int64, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func TestHTTPPassesAtOnce(t *testing.T) {
	srv, n := server(t, status(200, "ok"))
	env, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL + "/health"}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != 1 {
		t.Errorf("%d requests, want 1", n.Load())
	}
	wantLog(t, env, "probe 1: passed")
}

func TestHTTPPassesAfterFailures(t *testing.T) {
	srv, n := server(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if n < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	env, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != 3 {
		t.Errorf("%d requests, want 3", n.Load())
	}
	wantLog(t, env, "probe 1: status 503, want 200\n", "probe 2: status 503, want 200\n", "probe 3: passed\n")
}

func TestHTTPStatus(t *testing.T) {
	cases := []struct {
		name   string
		code   int
		expect int
		fail   string // "" means the probe passes
	}{
		{"wrong status", 503, 0, "status 503, want 200"},
		{"expected status other than 200", 204, 204, ""},
		{"200 when another is expected", 200, 418, "status 200, want 418"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv, _ := server(t, status(c.code, ""))
			url := srv.URL + "/health"
			env, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: url, ExpectStatus: c.expect}})
			if c.fail == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantKind(t, err, onfailure.Verification, "verify failed after ", " probes: GET "+url+": "+c.fail)
			wantLog(t, env, "probe 1: "+c.fail)
		})
	}
}

func TestHTTPBody(t *testing.T) {
	big := strings.Repeat("x", MaxBody) + "needle"
	cases := []struct {
		name, served, want string
		fail               string
	}{
		{"contains", "status: ok\n", "ok", ""},
		{"missing", "status: starting\n", "ready", `body does not contain "ready"`},
		{"only past the first MiB", big, "needle", `body does not contain "needle" (in its first 1048576 bytes)`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv, _ := server(t, status(200, c.served))
			_, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL, Body: c.want}})
			if c.fail == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantKind(t, err, onfailure.Verification, "GET "+srv.URL+": "+c.fail)
		})
	}
}

func TestHTTPURLExpanded(t *testing.T) {
	srv, _ := server(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/dev-1/health" {
			w.WriteHeader(http.StatusNotFound)
		}
	})
	env := newEnv(t)
	env.Expand = func(s string) (string, error) {
		return strings.NewReplacer("${{ vars.BASE }}", srv.URL, "${{ device.id }}", "dev-1").Replace(s), nil
	}
	s := verifyStep(flow.Verify{HTTP: &flow.HTTPProbe{URL: "${{ vars.BASE }}/${{ device.id }}/health"}})
	if err := new(Runner).Run(context.Background(), s, env); err != nil {
		t.Fatal(err)
	}
}

func TestHTTPURLProblemsFailAtOnce(t *testing.T) {
	srv, n := server(t, status(200, ""))
	bad := errors.New(`variable "BASE" is not set`)
	cases := []struct {
		name   string
		expand func(string) (string, error)
		want   string
	}{
		{"expansion fails", func(string) (string, error) { return "", bad }, `variable "BASE" is not set`},
		{"not http after expansion", func(string) (string, error) { return "ftp://" + srv.Listener.Addr().String(), nil }, "is not an http:// or https:// URL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t)
			env.Expand = c.expand
			err := new(Runner).Run(context.Background(), verifyStep(flow.Verify{HTTP: &flow.HTTPProbe{URL: "${{ vars.BASE }}"}}), env)
			wantKind(t, err, onfailure.Unknown, c.want)
		})
	}
	if n.Load() != 0 {
		t.Errorf("%d requests, want none", n.Load())
	}
}

func TestHTTPRedirectNotFollowed(t *testing.T) {
	srv, _ := server(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.Redirect(w, r, "/new", http.StatusFound)
		}
	})
	_, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL + "/old"}})
	wantKind(t, err, onfailure.Verification, "status 302, want 200")
	if _, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL + "/old", ExpectStatus: 302}}); err != nil {
		t.Fatal(err)
	}
}

func TestHTTPRefusedIsVerdict(t *testing.T) {
	url := "http://" + freeAddr(t) + "/health"
	env, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: url}})
	wantKind(t, err, onfailure.Verification, "GET "+url+": connection refused")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%v does not wrap ECONNREFUSED", err)
	}
	wantLog(t, env, "probe 1: connection refused\n")
}

// hang returns a handler that answers status codes from first, in order,
// then blocks until the client gives up (or the test's server closes).
func hang(first ...int) func(int64, http.ResponseWriter, *http.Request) {
	return func(n int64, w http.ResponseWriter, r *http.Request) {
		if int(n) <= len(first) {
			w.WriteHeader(first[n-1])
			return
		}
		<-r.Context().Done()
	}
}

func TestHTTPNoAnswerIsTimeout(t *testing.T) {
	srv, _ := server(t, hang())
	url := srv.URL + "/health"
	env, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: url}})
	wantKind(t, err, onfailure.Timeout, "no answer from "+url+" within 300ms (1 probe): timed out after 300ms")
	wantLog(t, env, "probe 1: no answer: timed out after 300ms")
}

func TestHTTPSlowBodyIsNoAnswer(t *testing.T) {
	srv, _ := server(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = w.Write([]byte("starting"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	_, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL, Body: "ok"}})
	wantKind(t, err, onfailure.Timeout, "no answer from "+srv.URL)
}

func TestLatestVerdictDecides(t *testing.T) {
	// The first probe gets a 503, every later one no answer: the 503 is
	// the verdict.
	srv, _ := server(t, hang(503))
	_, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL}, Timeout: 800 * time.Millisecond})
	wantKind(t, err, onfailure.Verification, "GET "+srv.URL+": status 503, want 200", "the latest answer, probe 1;", "no answer: timed out after")
}

func TestTCPListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	env, err := run(t, flow.Verify{TCP: &flow.TCPProbe{Address: l.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	wantLog(t, env, "probe 1: passed")
}

func TestTCPRefused(t *testing.T) {
	addr := freeAddr(t)
	_, err := run(t, flow.Verify{TCP: &flow.TCPProbe{Address: addr}})
	wantKind(t, err, onfailure.Verification, "dial "+addr+": connection refused")
}

// fullListener returns the address of a loopback listener whose accept
// queue is full, so that a new connection is never answered: Linux drops
// the SYN instead of refusing it.
func fullListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	for range 10 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
			continue
		}
		if timedOut(err) {
			return addr
		}
		t.Skipf("SKIP: a full accept queue here does not leave connections unanswered (%v)", err)
	}
	t.Skip("SKIP: could not fill the accept queue of a loopback listener")
	return ""
}

func TestTCPNoAnswerIsTimeout(t *testing.T) {
	addr := fullListener(t)
	env, err := run(t, flow.Verify{TCP: &flow.TCPProbe{Address: addr}})
	wantKind(t, err, onfailure.Timeout, "no answer from "+addr+" within 300ms (1 probe): timed out after 300ms")
	wantLog(t, env, "probe 1: no answer: timed out")
}

func TestTCPDNSFailureIsNoVerdict(t *testing.T) {
	// .invalid never resolves (RFC 6761); whether the resolver says so or
	// hangs, the probe gets no answer from the target.
	_, err := run(t, flow.Verify{TCP: &flow.TCPProbe{Address: "nosuch.invalid:80"}})
	wantKind(t, err, onfailure.Timeout, "no answer from nosuch.invalid:80 within 300ms")
}

func TestCommand(t *testing.T) {
	env, err := run(t, flow.Verify{Command: "echo healthy; exit 0"})
	if err != nil {
		t.Fatal(err)
	}
	wantLog(t, env, "healthy\n", "probe 1: passed")

	env, err = run(t, flow.Verify{Command: "echo checking; echo 'not ready' >&2; exit 3"})
	wantKind(t, err, onfailure.Verification, "verify failed after", "command exited 3: not ready")
	wantLog(t, env, "checking\nnot ready\nprobe 1: command exited 3: not ready\n")
}

func TestCommandRunsInFlowDir(t *testing.T) {
	env := newEnv(t)
	if err := os.WriteFile(filepath.Join(env.Root, "check.sh"), []byte("exit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := new(Runner).Run(context.Background(), verifyStep(flow.Verify{Command: "sh ./check.sh"}), env); err != nil {
		t.Fatal(err)
	}
}

// alive reports whether pid is a process that has not exited (a zombie
// has).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// pids reads the process ids a command wrote to file, one per line.
func pids(t *testing.T, file string) []int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for f := range strings.FieldsSeq(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pid)
	}
	if len(out) != 2 {
		t.Fatalf("pid file %q: want 2 pids", b)
	}
	return out
}

// wantGone fails unless every pid exits. The wait is a guard against a
// leak, not a measure of speed: the processes got SIGTERM already.
func wantGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		for i := 0; alive(pid); i++ {
			if i == 500 {
				t.Errorf("process %d is still running", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// sleeper writes the shell's pid and its background sleep's to a file in
// the flow's directory, then waits for the sleep.
const sleeper = "echo $$ > pids; sleep 100 & echo $! >> pids; wait"

func TestCommandKilledAtDeadlineIsNoVerdict(t *testing.T) {
	env, err := run(t, flow.Verify{Command: sleeper})
	wantKind(t, err, onfailure.Timeout, `no answer from command "`+sleeper+`" within 300ms (1 probe): command did not finish within 300ms`)
	wantGone(t, pids(t, filepath.Join(env.Root, "pids")))
}

// runUntilCancelled runs s, cancels its context with cause once started
// says so, and returns Run's error.
func runUntilCancelled(t *testing.T, s *flow.Step, env *steps.Env, started <-chan struct{}, cause error) error {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- (&Runner{Grace: time.Second}).Run(ctx, s, env) }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("Run returned before it was cancelled: %v", err)
	}
	cancel(cause)
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second): // a hang guard, not a speed check
		t.Fatal("Run did not stop when its context ended")
		return nil
	}
}

func TestMarkedFailedStopsHTTP(t *testing.T) {
	started := make(chan struct{})
	var once sync.Once
	srv, _ := server(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
		once.Do(func() { close(started) })
		w.WriteHeader(503)
	})
	cause := onfailure.Errorf(onfailure.UserMarkedFailure, "marked as failed by operator")
	s := verifyStep(flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL}, Timeout: time.Hour})
	err := runUntilCancelled(t, s, newEnv(t), started, cause)
	wantKind(t, err, onfailure.UserMarkedFailure, "verify stopped after", "marked as failed by operator")
	if !errors.Is(err, cause) {
		t.Errorf("%v does not wrap the cause", err)
	}
}

func TestMarkedFailedStopsCommand(t *testing.T) {
	env := newEnv(t)
	pidFile := filepath.Join(env.Root, "pids")
	started := make(chan struct{})
	go func() {
		// Started once the command has written both pids.
		for {
			if b, err := os.ReadFile(pidFile); err == nil && len(strings.Fields(string(b))) == 2 {
				close(started)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	cause := onfailure.Errorf(onfailure.UserMarkedFailure, "marked as failed by operator")
	s := verifyStep(flow.Verify{Command: sleeper, Interval: time.Hour, Timeout: time.Hour})
	err := runUntilCancelled(t, s, env, started, cause)
	wantKind(t, err, onfailure.UserMarkedFailure, "marked as failed by operator")
	wantGone(t, pids(t, pidFile))
}

func TestFlowTimeoutCauseKeepsItsKind(t *testing.T) {
	srv, _ := server(t, status(503, ""))
	cause := onfailure.Errorf(onfailure.Timeout, "flow timed out after 100ms")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 100*time.Millisecond, cause)
	defer cancel()
	err := new(Runner).Run(ctx, verifyStep(flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL}, Timeout: time.Hour}), newEnv(t))
	wantKind(t, err, onfailure.Timeout, "verify stopped after", "flow timed out after 100ms")
	if !errors.Is(err, cause) {
		t.Errorf("%v does not wrap the cause", err)
	}
}

func TestNotAVerifyStep(t *testing.T) {
	err := new(Runner).Run(context.Background(), &flow.Step{Name: "x", Script: &flow.Script{Run: "true"}}, newEnv(t))
	wantKind(t, err, onfailure.Unknown, `step "x" is not a verify step`)
}

func TestProbeTimeout(t *testing.T) {
	cases := []struct{ interval, left, want time.Duration }{
		{2 * time.Second, time.Minute, 2 * time.Second},                         // the interval
		{20 * time.Millisecond, time.Minute, MinProbeTimeout},                   // at least MinProbeTimeout
		{20 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond}, // unless less time is left
		{10 * time.Second, 3 * time.Second, 3 * time.Second},                    // never past the step's timeout
	}
	for _, c := range cases {
		if got := probeTimeout(c.interval, c.left); got != c.want {
			t.Errorf("probeTimeout(%v, %v) = %v, want %v", c.interval, c.left, got, c.want)
		}
	}
}

func TestAnswered(t *testing.T) {
	dial := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	cases := []struct {
		name    string
		err     error
		verdict bool
		reason  string
	}{
		{"refused", dial(syscall.ECONNREFUSED), true, "connection refused"},
		{"reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, true, "connection reset by peer"},
		{"closed without answer", fmt.Errorf("get: %w", errors.Join(errors.New("x"), io.EOF)), true, "connection closed without an answer"},
		{"no route", dial(syscall.EHOSTUNREACH), false, "no route to host"},
		{"network unreachable", dial(syscall.ENETUNREACH), false, "network is unreachable"},
		{"kernel connect timeout", dial(syscall.ETIMEDOUT), false, "timed out after 1s"},
		{"context deadline", fmt.Errorf("get: %w", context.DeadlineExceeded), false, "timed out after 1s"},
		{"socket deadline", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}, false, "timed out after 1s"},
		{"dns", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}}, false, "lookup x.invalid: no such host"},
		{"anything else", errors.New("malformed HTTP response"), false, "malformed HTTP response"},
	}
	for _, c := range cases {
		if got := answered(c.err); got != c.verdict {
			t.Errorf("%s: answered = %v, want %v", c.name, got, c.verdict)
		}
		if got := reason(c.err, time.Second); got != c.reason {
			t.Errorf("%s: reason = %q, want %q", c.name, got, c.reason)
		}
	}
}

func TestProbeLogIsBounded(t *testing.T) {
	var repeated strings.Builder
	l := &probeLog{w: &repeated}
	for n := 1; n <= 1000; n++ {
		l.probe(n, "status 503, want 200")
	}
	l.probe(1001, "connection refused")
	l.flush()
	want := ""
	for n := 1; n <= alwaysLogged; n++ {
		want += fmt.Sprintf("probe %d: status 503, want 200\n", n)
	}
	want += "probes 11-1000: the same\nprobe 1001: connection refused\n"
	if repeated.String() != want {
		t.Errorf("repeats logged as\n%s\nwant\n%s", repeated.String(), want)
	}

	var changing strings.Builder
	l = &probeLog{w: &changing}
	for n := 1; n <= 1000; n++ {
		l.probe(n, fmt.Sprintf("command exited 1: at tick %d", n))
	}
	l.flush()
	lines := strings.Split(strings.TrimSuffix(changing.String(), "\n"), "\n")
	if len(lines) != MaxLogLines || lines[len(lines)-1] != "further failed probes are not logged" {
		t.Errorf("%d lines ending %q, want %d ending with the cap marker", len(lines), lines[len(lines)-1], MaxLogLines)
	}
}

func TestManyProbesLogBounded(t *testing.T) {
	srv, n := server(t, status(503, ""))
	env, err := run(t, flow.Verify{HTTP: &flow.HTTPProbe{URL: srv.URL}, Interval: time.Millisecond, Timeout: 500 * time.Millisecond})
	wantKind(t, err, onfailure.Verification, "status 503, want 200")
	if lines := strings.Count(env.Log.String(), "\n"); lines > MaxLogLines {
		t.Errorf("%d log lines for %d requests, want at most %d", lines, n.Load(), MaxLogLines)
	}
}
