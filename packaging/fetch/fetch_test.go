package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

const (
	bundleSize = 3<<20 + 12345 // a few MiB, not a multiple of any buffer
	etag1      = `"v1"`
)

var modTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func randomData(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// served records one request the test server saw and what it answered.
type served struct {
	header http.Header
	status int
	sent   int64
}

// server is a loopback HTTP server that serves data with Range support
// (http.ServeContent) and the ETag etag, unless hook handles request number
// n itself (returning the status and the body bytes it sent).
type server struct {
	*httptest.Server
	mu   sync.Mutex
	data []byte
	etag string
	hook func(w http.ResponseWriter, r *http.Request, n int) (status int, sent int64, handled bool)
	log  []served
	stop chan struct{} // closed when the test ends; stalled handlers return
}

func newServer(t *testing.T, data []byte) *server {
	s := &server{data: data, etag: etag1, stop: make(chan struct{})}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	t.Cleanup(func() { close(s.stop) }) // runs first: unblocks stalled handlers
	return s
}

func (s *server) set(data []byte, etag string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data, s.etag = data, etag
}

func (s *server) setHook(h func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = h
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	n := len(s.log)
	s.log = append(s.log, served{header: r.Header.Clone()})
	data, etag, hook := s.data, s.etag, s.hook
	s.mu.Unlock()

	var rec served
	handled := false
	if hook != nil {
		rec.status, rec.sent, handled = hook(w, r, n)
	}
	if !handled {
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		w.Header().Set("ETag", etag)
		http.ServeContent(cw, r, "bundle", modTime, bytes.NewReader(data))
		rec.status, rec.sent = cw.status, cw.n
	}
	s.mu.Lock()
	s.log[n].status, s.log[n].sent = rec.status, rec.sent
	s.mu.Unlock()
}

func (s *server) requests() []served {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]served(nil), s.log...)
}

type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// cutOff answers 200 with the full Content-Length and etag, sends the first
// at bytes of data, and closes the connection.
func cutOff(t *testing.T, w http.ResponseWriter, data []byte, etag string, at int) (int, int64, bool) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return 0, 0, true
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: %s\r\nLast-Modified: %s\r\n\r\n",
		len(data), etag, modTime.Format(http.TimeFormat))
	_, _ = buf.Write(data[:at])
	_ = buf.Flush()
	return http.StatusOK, int64(at), true
}

// stall answers 200 with the full Content-Length, sends the first at bytes,
// and then holds the connection open until the client goes away or the test
// ends.
func (s *server) stall(w http.ResponseWriter, r *http.Request, data []byte, at int) (int, int64, bool) {
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("ETag", etag1)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data[:at])
	_ = http.NewResponseController(w).Flush()
	select {
	case <-r.Context().Done():
	case <-s.stop:
	}
	return http.StatusOK, int64(at), true
}

func request(s *server, dir string, data []byte) Request {
	return Request{URL: s.URL + "/b.bundle", SHA256: sum(data), Size: int64(len(data)), Dir: dir, Backoff: time.Millisecond}
}

// checkBundle asserts that Fetch returned the bundle with the right content
// and left no download state behind.
// fetchOK fetches req and checks the bundle it returns holds data.
func fetchOK(t *testing.T, req Request, data []byte) {
	t.Helper()
	path, err := Fetch(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	checkBundle(t, path, req, data)
}

func checkBundle(t *testing.T, path string, req Request, data []byte) {
	t.Helper()
	if want := filepath.Join(req.Dir, req.SHA256+".bundle"); path != want {
		t.Fatalf("path %s, want %s", path, want)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("bundle content differs (%d bytes, want %d)", len(got), len(data))
	}
	for _, ext := range []string{".part", ".part.json", ".lock"} {
		if _, err := os.Stat(filepath.Join(req.Dir, req.SHA256+ext)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind (%v)", ext, err)
		}
	}
}

// checkClean asserts that a failed Fetch left neither bundle nor part.
func checkClean(t *testing.T, req Request) {
	t.Helper()
	for _, ext := range []string{".bundle", ".part", ".part.json"} {
		if _, err := os.Stat(filepath.Join(req.Dir, req.SHA256+ext)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind (%v)", ext, err)
		}
	}
}

func wantKind(t *testing.T, err error, k onfailure.Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s", k)
	}
	if got := onfailure.KindOf(err); got != k {
		t.Fatalf("kind %s (%v), want %s", got, err, k)
	}
}

func partSize(t *testing.T, req Request) int64 {
	t.Helper()
	info, err := os.Stat(filepath.Join(req.Dir, req.SHA256+".part"))
	if err != nil {
		t.Fatal(err)
	}
	return info.Size()
}

// checkResumed asserts that request r asked for the rest from offset with
// If-Range etag and got only the rest.
func checkResumed(t *testing.T, r served, offset int64, total int) {
	t.Helper()
	if got, want := r.header.Get("Range"), fmt.Sprintf("bytes=%d-", offset); got != want {
		t.Errorf("Range %q, want %q", got, want)
	}
	if got := r.header.Get("If-Range"); got != etag1 {
		t.Errorf("If-Range %q, want %q", got, etag1)
	}
	if r.status != http.StatusPartialContent {
		t.Errorf("status %d, want 206", r.status)
	}
	if r.sent != int64(total)-offset || r.sent >= int64(total) {
		t.Errorf("server re-sent %d bytes, want the %d after offset %d", r.sent, int64(total)-offset, offset)
	}
}

func TestFetchFull(t *testing.T) {
	data := randomData(1, bundleSize)
	s := newServer(t, data)
	req := request(s, filepath.Join(t.TempDir(), "downloads"), data)
	fetchOK(t, req, data)
	reqs := s.requests()
	if len(reqs) != 1 || reqs[0].header.Get("Range") != "" || reqs[0].sent != bundleSize {
		t.Fatalf("requests %+v, want one without Range", reqs)
	}
}

func TestResumeWithinCall(t *testing.T) {
	data := randomData(2, bundleSize)
	s := newServer(t, data)
	half := bundleSize / 2
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		if n == 0 {
			return cutOff(t, w, data, etag1, half)
		}
		return 0, 0, false
	})
	req := request(s, t.TempDir(), data)
	fetchOK(t, req, data)
	reqs := s.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	checkResumed(t, reqs[1], int64(half), bundleSize)
}

func TestResumeAfterRestart(t *testing.T) {
	data := randomData(3, bundleSize)
	s := newServer(t, data)
	cut := bundleSize/3 + 7
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		if n == 0 {
			return cutOff(t, w, data, etag1, cut)
		}
		return 0, 0, false
	})
	req := request(s, t.TempDir(), data)
	req.MaxAttempts = 1
	_, err := Fetch(context.Background(), req)
	wantKind(t, err, onfailure.Connectivity)
	if got := partSize(t, req); got != int64(cut) {
		t.Fatalf("part holds %d bytes, want %d", got, cut)
	}
	var meta sidecar
	if b, err := os.ReadFile(filepath.Join(req.Dir, req.SHA256+".part.json")); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &meta); err != nil || meta.ETag != etag1 || meta.URL != req.URL {
		t.Fatalf("sidecar %s (%v)", b, err)
	}

	// The agent restarts: a new call resumes from the part on disk.
	fetchOK(t, req, data)
	reqs := s.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	checkResumed(t, reqs[1], int64(cut), bundleSize)
}

const helperEnv = "EDGEFLOW_FETCH_HELPER"

// helperSpec is what the child process of TestResumeAfterSIGKILL fetches.
type helperSpec struct {
	URL, SHA256 string
	Size        int64
	Dir         string
}

// TestHelperProcess is not a test: run as a child by TestResumeAfterSIGKILL,
// it fetches the Request in $EDGEFLOW_FETCH_HELPER until it is killed.
func TestHelperProcess(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process for TestResumeAfterSIGKILL")
	}
	var h helperSpec
	if err := json.Unmarshal([]byte(spec), &h); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	req := Request{URL: h.URL, SHA256: h.SHA256, Size: h.Size, Dir: h.Dir, MaxAttempts: 1, StallTimeout: time.Hour}
	_, err := Fetch(context.Background(), req)
	fmt.Fprintln(os.Stderr, "helper: fetch returned:", err)
	os.Exit(4)
}

func TestResumeAfterSIGKILL(t *testing.T) {
	data := randomData(4, bundleSize)
	s := newServer(t, data)
	first := 1 << 20
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		if n == 0 {
			return s.stall(w, r, data, first)
		}
		return 0, 0, false
	})
	req := request(s, t.TempDir(), data)
	spec, err := json.Marshal(helperSpec{URL: req.URL, SHA256: req.SHA256, Size: req.Size, Dir: req.Dir})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	// Wait until the child has written what the server sent.
	partPath := filepath.Join(req.Dir, req.SHA256+".part")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if info, err := os.Stat(partPath); err == nil && info.Size() == int64(first) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child never wrote %d bytes to the part; stderr:\n%s", first, stderr.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL; stderr:\n%s", cmd.ProcessState, stderr.String())
	}
	n := partSize(t, req)

	fetchOK(t, req, data)
	reqs := s.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	checkResumed(t, reqs[1], n, bundleSize)
}

func TestETagChangedStartsOver(t *testing.T) {
	old := randomData(5, bundleSize)
	data := randomData(6, bundleSize)
	s := newServer(t, old)
	half := bundleSize / 2
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		if n == 0 {
			return cutOff(t, w, old, etag1, half)
		}
		return 0, 0, false
	})
	req := request(s, t.TempDir(), data)
	req.MaxAttempts = 1
	_, err := Fetch(context.Background(), req)
	wantKind(t, err, onfailure.Connectivity)

	// The server now has a new version: the old half must not be kept.
	s.set(data, `"v2"`)
	fetchOK(t, req, data)
	reqs := s.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	r := reqs[1]
	if r.header.Get("Range") != fmt.Sprintf("bytes=%d-", half) || r.header.Get("If-Range") != etag1 {
		t.Errorf("second request Range %q If-Range %q", r.header.Get("Range"), r.header.Get("If-Range"))
	}
	if r.status != http.StatusOK || r.sent != bundleSize {
		t.Errorf("second answer %d with %d bytes, want 200 with all", r.status, r.sent)
	}
}

func TestRangeNotSatisfiableStartsOver(t *testing.T) {
	data := randomData(7, bundleSize)
	s := newServer(t, data)
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		switch n {
		case 0:
			return cutOff(t, w, data, etag1, 1000)
		case 1:
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return http.StatusRequestedRangeNotSatisfiable, 0, true
		}
		return 0, 0, false
	})
	req := request(s, t.TempDir(), data)
	fetchOK(t, req, data)
	reqs := s.requests()
	if len(reqs) != 3 || reqs[1].header.Get("Range") != "bytes=1000-" || reqs[2].header.Get("Range") != "" {
		t.Fatalf("requests %+v, want a cut, a 416 for bytes=1000-, and a full one", reqs)
	}
}

func TestWrongSHA256(t *testing.T) {
	data := randomData(8, bundleSize)
	s := newServer(t, data)
	req := request(s, t.TempDir(), data)
	req.SHA256 = sum([]byte("something else"))
	_, err := Fetch(context.Background(), req)
	wantKind(t, err, onfailure.Integrity)
	if !strings.Contains(err.Error(), "sha256") {
		t.Errorf("error %q does not name the sha256", err)
	}
	checkClean(t, req)
}

func TestTooLong(t *testing.T) {
	data := randomData(9, bundleSize)
	more := append(append([]byte(nil), data...), randomData(10, 1<<20)...)
	cases := []struct {
		name string
		hook func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool)
	}{
		{"content-length", nil}, // ServeContent of the longer body
		{"chunked", func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
			// No Content-Length: the client finds out by reading.
			var sent int64
			for off := 0; off < len(more); off += 64 << 10 {
				m, err := w.Write(more[off:min(off+64<<10, len(more))])
				sent += int64(m)
				if err != nil {
					break
				}
				_ = http.NewResponseController(w).Flush()
			}
			return http.StatusOK, sent, true
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newServer(t, more)
			s.setHook(c.hook)
			req := request(s, t.TempDir(), data)
			_, err := Fetch(context.Background(), req)
			wantKind(t, err, onfailure.Integrity)
			checkClean(t, req)
			if n := len(s.requests()); n != 1 {
				t.Errorf("%d requests, want 1 (no retry)", n)
			}
		})
	}
}

func TestTooShort(t *testing.T) {
	data := randomData(11, bundleSize)
	s := newServer(t, data[:bundleSize-1])
	req := request(s, t.TempDir(), data)
	_, err := Fetch(context.Background(), req)
	wantKind(t, err, onfailure.Integrity)
	checkClean(t, req)
}

func TestMaxSize(t *testing.T) {
	data := randomData(12, bundleSize)
	s := newServer(t, data)
	req := request(s, t.TempDir(), data)
	req.MaxSize = bundleSize - 1
	_, err := Fetch(context.Background(), req)
	wantKind(t, err, onfailure.Integrity)
	if n := len(s.requests()); n != 0 {
		t.Errorf("%d requests, want none", n)
	}
}

func TestHTTPStatus(t *testing.T) {
	data := randomData(13, 1000)
	cases := []struct {
		status int
		kind   onfailure.Kind
	}{
		{http.StatusUnauthorized, onfailure.Authentication},
		{http.StatusForbidden, onfailure.Authorization},
		{http.StatusNotFound, onfailure.Unknown},
		{http.StatusGone, onfailure.Unknown},
		{http.StatusTeapot, onfailure.Unknown},
	}
	for _, c := range cases {
		t.Run(strconv.Itoa(c.status), func(t *testing.T) {
			s := newServer(t, data)
			s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
				w.WriteHeader(c.status)
				return c.status, 0, true
			})
			req := request(s, t.TempDir(), data)
			_, err := Fetch(context.Background(), req)
			wantKind(t, err, c.kind)
			if !strings.Contains(err.Error(), strconv.Itoa(c.status)) {
				t.Errorf("error %q does not name status %d", err, c.status)
			}
			if n := len(s.requests()); n != 1 {
				t.Errorf("%d requests, want 1 (no retry)", n)
			}
			checkClean(t, req)
		})
	}
}

func TestServerErrorRetried(t *testing.T) {
	data := randomData(14, 100_000)
	s := newServer(t, data)
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		if n < 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return http.StatusServiceUnavailable, 0, true
		}
		return 0, 0, false
	})
	req := request(s, t.TempDir(), data)
	fetchOK(t, req, data)
	if n := len(s.requests()); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestServerErrorAttemptsRunOut(t *testing.T) {
	data := randomData(15, 1000)
	s := newServer(t, data)
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		w.WriteHeader(http.StatusBadGateway)
		return http.StatusBadGateway, 0, true
	})
	req := request(s, t.TempDir(), data)
	req.MaxAttempts = 3
	_, err := Fetch(context.Background(), req)
	wantKind(t, err, onfailure.Connectivity)
	if !strings.Contains(err.Error(), "502") {
		t.Errorf("error %q does not name the status", err)
	}
	if n := len(s.requests()); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	data := randomData(16, 1000)
	req := Request{URL: "http://" + addr + "/b", SHA256: sum(data), Size: 1000, Dir: t.TempDir(), MaxAttempts: 2, Backoff: time.Millisecond}
	_, err = Fetch(context.Background(), req)
	wantKind(t, err, onfailure.Connectivity)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error %v does not wrap ECONNREFUSED", err)
	}
}

func TestAlreadyDownloaded(t *testing.T) {
	data := randomData(17, bundleSize)
	s := newServer(t, data)
	req := request(s, t.TempDir(), data)
	final := filepath.Join(req.Dir, req.SHA256+".bundle")
	if err := os.WriteFile(final, data, 0o600); err != nil {
		t.Fatal(err)
	}
	path, err := Fetch(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	checkBundle(t, path, req, data)
	if n := len(s.requests()); n != 0 {
		t.Fatalf("%d requests, want none", n)
	}

	// A bundle damaged on disk is fetched again.
	bad := append([]byte(nil), data...)
	bad[100] ^= 1
	if err := os.WriteFile(final, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	path, err = Fetch(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	checkBundle(t, path, req, data)
	if n := len(s.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestConcurrentFetchesShareOneDownload(t *testing.T) {
	data := randomData(18, bundleSize)
	s := newServer(t, data)
	req := request(s, t.TempDir(), data)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { _, errs[i] = Fetch(context.Background(), req) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	checkBundle(t, filepath.Join(req.Dir, req.SHA256+".bundle"), req, data)
	if n := len(s.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestDiskFull(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skipf("no /dev/full to simulate a full disk: %v", err)
	}
	data := randomData(19, 100_000)
	s := newServer(t, data)
	req := request(s, t.TempDir(), data)
	// Every write to the part fails with ENOSPC.
	if err := os.Symlink("/dev/full", filepath.Join(req.Dir, req.SHA256+".part")); err != nil {
		t.Fatal(err)
	}
	_, err := Fetch(context.Background(), req)
	wantKind(t, err, onfailure.ResourceExhausted)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("error %v does not wrap ENOSPC", err)
	}
	if n := len(s.requests()); n != 1 {
		t.Errorf("%d requests, want 1 (a full disk is not retried)", n)
	}
}

func TestDeadline(t *testing.T) {
	data := randomData(20, bundleSize)
	s := newServer(t, data)
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		return s.stall(w, r, data, 1000)
	})
	req := request(s, t.TempDir(), data)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := Fetch(ctx, req)
	wantKind(t, err, onfailure.Timeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap the deadline", err)
	}
}

func TestCancelIsNotAFailure(t *testing.T) {
	data := randomData(21, bundleSize)
	s := newServer(t, data)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		cancel()
		return s.stall(w, r, data, 1000)
	})
	req := request(s, t.TempDir(), data)
	_, err := Fetch(ctx, req)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want one wrapping context.Canceled", err)
	}
	var fe *onfailure.Error
	if errors.As(err, &fe) {
		t.Errorf("cancellation carries kind %s, want none", fe.Kind)
	}
}

func TestStalledBodyRetried(t *testing.T) {
	data := randomData(22, bundleSize)
	s := newServer(t, data)
	s.setHook(func(w http.ResponseWriter, r *http.Request, n int) (int, int64, bool) {
		if n == 0 {
			return s.stall(w, r, data, 1000)
		}
		return 0, 0, false
	})
	req := request(s, t.TempDir(), data)
	req.StallTimeout = 200 * time.Millisecond
	fetchOK(t, req, data)
	// Counts only: how many bytes arrived before the stall depends on timing.
	if n := len(s.requests()); n < 2 {
		t.Fatalf("%d requests, want the stalled one and at least one more", n)
	}
}

func TestBadRequest(t *testing.T) {
	good := Request{URL: "http://127.0.0.1:1/b", SHA256: strings.Repeat("ab", 32), Size: 1, Dir: t.TempDir()}
	cases := map[string]func(r *Request){
		"relative url":  func(r *Request) { r.URL = "/b" },
		"ftp url":       func(r *Request) { r.URL = "ftp://h/b" },
		"short sha256":  func(r *Request) { r.SHA256 = "abcd" },
		"non-hex":       func(r *Request) { r.SHA256 = strings.Repeat("zz", 32) },
		"zero size":     func(r *Request) { r.Size = 0 },
		"no dir":        func(r *Request) { r.Dir = "" },
		"sha with path": func(r *Request) { r.SHA256 = "../" + strings.Repeat("a", 61) },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			r := good
			mutate(&r)
			_, err := Fetch(context.Background(), r)
			wantKind(t, err, onfailure.Unknown)
		})
	}
}

func TestParseContentRange(t *testing.T) {
	cases := []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 0-9/10", 0, 10, true},
		{"bytes 5-9/*", 5, -1, true},
		{"bytes 5-9/9", 0, 0, false},
		{"bytes 9-5/10", 0, 0, false},
		{"bytes */10", 0, 0, false},
		{"items 0-9/10", 0, 0, false},
		{"", 0, 0, false},
	}
	for _, c := range cases {
		start, total, ok := parseContentRange(c.in)
		if ok != c.ok || (ok && (start != c.start || total != c.total)) {
			t.Errorf("%q: %d %d %v, want %d %d %v", c.in, start, total, ok, c.start, c.total, c.ok)
		}
	}
}
