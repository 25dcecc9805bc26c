// Package fetch downloads an update bundle over HTTP(S) into the agent's
// state dir, resumably, and hands it out only once its size and sha256 match
// what the caller expects.
//
// # Files on disk
//
// Everything lives in Request.Dir (the agent uses STATE_DIR/downloads), named
// by the expected sha256 in lowercase hex:
//
//	<sha256>.bundle     a complete, verified bundle; the only file Fetch returns
//	<sha256>.part       the bytes received so far, always a prefix of the body
//	<sha256>.part.json  the sidecar: URL, size and the server's ETag and
//	                    Last-Modified, written (and fsynced) before the first
//	                    byte of a body is appended to the .part
//	<sha256>.lock       held with flock(2) while a Fetch works on that sha256,
//	                    so two fetches of one bundle never share a .part;
//	                    removed once the bundle is complete
//
// # Protocol
//
//	            ┌────────────── .bundle exists and verifies ──────────────┐
//	            │                                                         ▼
//	start ──▶ lock ──▶ hash .part (streaming) ──▶ GET ──▶ append ──▶ verify ──▶ rename .part → .bundle
//	                          ▲                   │  ▲        │         │      fsync file, then dir
//	                          │                   │  └─retry──┘         │
//	                          └── start over ◀────┘  (transient)       └─ mismatch: remove .part, Integrity
//	                          (200, 416, new ETag)
//
// A .bundle that exists is verified again (size and sha256, streaming) and
// returned without touching the network; one that fails is removed and
// downloaded anew.
//
// A .part left by an earlier call (cut off by a dropped connection, a
// cancelled context, or a SIGKILLed agent) is resumed when its sidecar names
// the same URL and size: the part is hashed from the start, then the request
// carries "Range: bytes=N-" and, when the sidecar has one, "If-Range" with
// the strong ETag (else the Last-Modified date). The server's answer decides:
//
//   - 206 Partial Content whose Content-Range starts at N (and whose total,
//     when given, is Size): the body is appended and hashing continues.
//   - 200 OK: the server sent the whole body (the ETag changed, or it ignores
//     ranges); the part is truncated and the download starts over.
//   - 416 Range Not Satisfiable, or a 206 starting elsewhere: start over.
//
// A .part without a matching sidecar, or longer than Size, is discarded.
//
// Inside one call, transient failures (a refused or reset connection, a body
// cut off mid-way, a stalled body, HTTP 408, 429 and 5xx) are retried up to
// Request.MaxAttempts times with exponential backoff, each attempt resuming
// from what is on disk, and never past the context's deadline.
//
// The body is streamed to disk through a hashing writer; it is never held in
// memory, and at most Size+1 bytes are read, so an endless body cannot fill
// the disk.
//
// # Error kinds
//
// Errors are *onfailure.Error values; onfailure.KindOf gives the kind:
//
//   - Connectivity: the server could not be reached or the connection broke
//     (classified from the net and syscall errors, never from message text),
//     and HTTP 408, 429 and 5xx once the attempts run out.
//   - Timeout: the context's deadline passed, or a body stalled for longer
//     than Request.StallTimeout on the last attempt.
//   - Authentication: HTTP 401, or a server certificate that does not verify.
//   - Authorization: HTTP 403, or a permission error in Dir.
//   - Unknown: HTTP 404, 410 and every other status Fetch cannot use; the
//     message names the status.
//   - Integrity: a body whose size or sha256 is not the expected one, or that
//     is longer than Size, or a Size over MaxSize. The bad .part is removed,
//     so the next call starts clean.
//   - ResourceExhausted: the disk is full (ENOSPC and friends).
//
// A cancelled context is not a failure: the error wraps context.Canceled,
// and the .part stays on disk for the next call to resume.
package fetch

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Defaults for the zero values of Request's tuning fields.
const (
	DefaultMaxAttempts  = 5
	DefaultBackoff      = 500 * time.Millisecond
	DefaultMaxBackoff   = 30 * time.Second
	DefaultStallTimeout = 60 * time.Second
)

// Request says what to fetch, where to, and how hard to try.
type Request struct {
	// URL is the http or https address of the bundle.
	URL string
	// SHA256 is the expected sha256 of the body in hex (either case).
	SHA256 string
	// Size is the expected size of the body in bytes; it must be positive.
	Size int64
	// Dir is the download directory, such as STATE_DIR/downloads. It is
	// created (0700) when missing.
	Dir string

	// Client sends the requests. Nil means a client with dial, TLS handshake
	// and response header timeouts but no overall timeout, so that a large
	// bundle on a slow link can finish; StallTimeout guards the body.
	Client *http.Client
	// Header holds extra request headers, such as Authorization.
	Header http.Header
	// MaxSize, when positive, caps Size: a larger Size is refused with
	// Integrity before any request.
	MaxSize int64
	// MaxAttempts bounds the requests of one call (0: DefaultMaxAttempts).
	MaxAttempts int
	// Backoff is the wait before the second attempt, doubled for each
	// further one up to DefaultMaxBackoff (0: DefaultBackoff).
	Backoff time.Duration
	// StallTimeout ends an attempt whose body delivers no byte for this long
	// (0: DefaultStallTimeout).
	StallTimeout time.Duration
	// Logger receives one line per retry; nil discards them.
	Logger *slog.Logger
}

// sidecar is the content of <sha256>.part.json.
type sidecar struct {
	URL          string `json:"url"`
	Size         int64  `json:"size"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

var hexSHA256 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Fetch returns the path of Dir/<sha256>.bundle once it holds the body of
// req.URL with the expected size and sha256, downloading (or resuming) it
// when needed. See the package documentation for the files, the resume
// rules and the error kinds.
func Fetch(ctx context.Context, req Request) (string, error) {
	f, err := newFetcher(req)
	if err != nil {
		return "", err
	}
	return f.run(ctx)
}

type fetcher struct {
	req      Request
	sum      string
	final    string
	part     string
	meta     string
	lockPath string
	client   *http.Client
	log      *slog.Logger
	op       string
}

func newFetcher(req Request) (*fetcher, error) {
	op := "fetch " + req.URL
	u, err := url.Parse(req.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, onfailure.E(onfailure.Unknown, op, errors.New("URL must be an absolute http or https URL"))
	}
	sum := strings.ToLower(req.SHA256)
	if !hexSHA256.MatchString(sum) {
		return nil, onfailure.E(onfailure.Unknown, op, fmt.Errorf("sha256 %q is not 64 hex digits", req.SHA256))
	}
	if req.Size <= 0 {
		return nil, onfailure.E(onfailure.Unknown, op, fmt.Errorf("size %d must be positive", req.Size))
	}
	if req.MaxSize > 0 && req.Size > req.MaxSize {
		return nil, onfailure.E(onfailure.Integrity, op, fmt.Errorf("size %d is over the cap of %d bytes", req.Size, req.MaxSize))
	}
	if req.Dir == "" {
		return nil, onfailure.E(onfailure.Unknown, op, errors.New("no download dir"))
	}
	if req.MaxAttempts <= 0 {
		req.MaxAttempts = DefaultMaxAttempts
	}
	if req.Backoff <= 0 {
		req.Backoff = DefaultBackoff
	}
	if req.StallTimeout <= 0 {
		req.StallTimeout = DefaultStallTimeout
	}
	f := &fetcher{
		req:      req,
		sum:      sum,
		final:    filepath.Join(req.Dir, sum+".bundle"),
		part:     filepath.Join(req.Dir, sum+".part"),
		meta:     filepath.Join(req.Dir, sum+".part.json"),
		lockPath: filepath.Join(req.Dir, sum+".lock"),
		client:   req.Client,
		log:      req.Logger,
		op:       op,
	}
	if f.client == nil {
		f.client = defaultClient
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	return f, nil
}

// defaultClient has timeouts for every phase before the body; the body is
// guarded by the stall timer instead of an overall deadline.
var defaultClient = &http.Client{Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	ForceAttemptHTTP2:     true,
	TLSHandshakeTimeout:   10 * time.Second,
	ResponseHeaderTimeout: 30 * time.Second,
	ExpectContinueTimeout: time.Second,
	IdleConnTimeout:       90 * time.Second,
	MaxIdleConns:          10,
}}

func (f *fetcher) run(ctx context.Context) (string, error) {
	if err := os.MkdirAll(f.req.Dir, 0o700); err != nil {
		return "", f.fsErr("create download dir", err)
	}
	unlock, err := f.lock(ctx)
	if err != nil {
		return "", err
	}
	done := false
	defer func() { unlock(done) }()

	// A bundle already here is returned if it still verifies.
	if ok, err := f.verifyFinal(); err != nil {
		return "", err
	} else if ok {
		done = true
		return f.final, nil
	}

	st, err := f.openPart()
	if err != nil {
		return "", err
	}
	defer func() {
		st.file.Close()
		if !done && st.n == 0 {
			// Nothing worth resuming: leave no empty part behind.
			_ = os.Remove(f.part)
			_ = os.Remove(f.meta)
		}
	}()

	backoff := f.req.Backoff
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return "", f.ctxErr(ctx)
		}
		if st.n == f.req.Size {
			break // everything is on disk; verify below
		}
		err := f.attempt(ctx, st)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return "", f.ctxErr(ctx)
		}
		var te *transientError
		if !errors.As(err, &te) {
			return "", err
		}
		if attempt >= f.req.MaxAttempts {
			return "", onfailure.E(te.kind, f.op, fmt.Errorf("after %d attempts: %w", attempt, te.err))
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		f.log.Warn("bundle download failed, retrying", "url", f.req.URL, "attempt", attempt, "offset", st.n, "kind", string(te.kind), "error", te.err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", f.ctxErr(ctx)
		case <-t.C:
		}
		backoff = min(2*backoff, DefaultMaxBackoff)
	}
	if err := f.finish(st); err != nil {
		return "", err
	}
	done = true
	return f.final, nil
}

// partState is the open .part, how many bytes it holds, and their running
// hash.
type partState struct {
	file *os.File
	n    int64
	h    hash.Hash
	meta sidecar
}

// openPart opens (or creates) the .part and hashes what it holds, or empties
// it when its sidecar does not match this request.
func (f *fetcher) openPart() (*partState, error) {
	file, err := os.OpenFile(f.part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, f.fsErr("open part", err)
	}
	st := &partState{file: file, h: sha256.New()}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, f.fsErr("stat part", err)
	}
	if info.Size() > 0 {
		meta, ok := f.readSidecar()
		if ok && meta.URL == f.req.URL && meta.Size == f.req.Size && info.Size() <= f.req.Size {
			n, err := io.Copy(st.h, io.NewSectionReader(file, 0, info.Size()))
			if err != nil {
				file.Close()
				return nil, f.fsErr("hash part", err)
			}
			st.n, st.meta = n, meta
		} else if err := f.restart(st); err != nil {
			file.Close()
			return nil, err
		}
	}
	if _, err := file.Seek(st.n, io.SeekStart); err != nil {
		file.Close()
		return nil, f.fsErr("seek part", err)
	}
	return st, nil
}

// restart empties the part and forgets its validators.
func (f *fetcher) restart(st *partState) error {
	if err := st.file.Truncate(0); err != nil {
		return f.fsErr("truncate part", err)
	}
	if _, err := st.file.Seek(0, io.SeekStart); err != nil {
		return f.fsErr("seek part", err)
	}
	st.n, st.meta = 0, sidecar{}
	st.h.Reset()
	return nil
}

// transientError is a failure worth another attempt; kind is what it is
// reported as when the attempts run out.
type transientError struct {
	kind onfailure.Kind
	err  error
}

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// attempt sends one request and appends what it gets to the part. A nil
// error means the part holds Size bytes (not yet verified).
func (f *fetcher) attempt(ctx context.Context, st *partState) error {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	stall := time.AfterFunc(f.req.StallTimeout, func() { stalled.Store(true); cancel() })
	defer stall.Stop()

	hreq, err := http.NewRequestWithContext(actx, http.MethodGet, f.req.URL, nil)
	if err != nil {
		return onfailure.E(onfailure.Unknown, f.op, err)
	}
	for k, vs := range f.req.Header {
		for _, v := range vs {
			hreq.Header.Add(k, v)
		}
	}
	// Ask for identity so that byte offsets are offsets into the bundle.
	hreq.Header.Set("Accept-Encoding", "identity")
	if st.n > 0 {
		hreq.Header.Set("Range", fmt.Sprintf("bytes=%d-", st.n))
		if st.meta.ETag != "" && !strings.HasPrefix(st.meta.ETag, "W/") {
			hreq.Header.Set("If-Range", st.meta.ETag)
		} else if st.meta.LastModified != "" {
			hreq.Header.Set("If-Range", st.meta.LastModified)
		}
	}
	resp, err := f.client.Do(hreq)
	if err != nil {
		return f.netErr(err, &stalled)
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusOK:
		if st.n > 0 {
			f.log.Info("server sent the whole bundle, starting over", "url", f.req.URL, "offset", st.n)
			if err := f.restart(st); err != nil {
				return err
			}
		}
	case http.StatusPartialContent:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != st.n {
			if err := f.restart(st); err != nil {
				return err
			}
			return &transientError{onfailure.Connectivity, fmt.Errorf("server answered range %d- with Content-Range %q", st.n, resp.Header.Get("Content-Range"))}
		}
		if total >= 0 && total != f.req.Size {
			return f.integrity(st, fmt.Errorf("server says the body is %d bytes, want %d", total, f.req.Size))
		}
	case http.StatusRequestedRangeNotSatisfiable:
		if err := f.restart(st); err != nil {
			return err
		}
		return &transientError{onfailure.Connectivity, fmt.Errorf("server refused range %d-: %s", st.n, resp.Status)}
	case http.StatusUnauthorized:
		return onfailure.E(onfailure.Authentication, f.op, fmt.Errorf("server answered %s", resp.Status))
	case http.StatusForbidden:
		return onfailure.E(onfailure.Authorization, f.op, fmt.Errorf("server answered %s", resp.Status))
	case http.StatusRequestTimeout, http.StatusTooManyRequests:
		return &transientError{onfailure.Connectivity, fmt.Errorf("server answered %s", resp.Status)}
	default:
		if resp.StatusCode >= 500 {
			return &transientError{onfailure.Connectivity, fmt.Errorf("server answered %s", resp.Status)}
		}
		return onfailure.E(onfailure.Unknown, f.op, fmt.Errorf("server answered %s", resp.Status))
	}
	if resp.ContentLength >= 0 && st.n+resp.ContentLength != f.req.Size {
		return f.integrity(st, fmt.Errorf("server sends %d bytes from offset %d, want %d in all", resp.ContentLength, st.n, f.req.Size))
	}

	// Remember the validators before the first byte lands in the part, so a
	// process killed mid-body can resume with If-Range.
	meta := sidecar{URL: f.req.URL, Size: f.req.Size, ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
	if resp.StatusCode == http.StatusPartialContent && meta.ETag == "" && meta.LastModified == "" {
		meta.ETag, meta.LastModified = st.meta.ETag, st.meta.LastModified
	}
	if meta != st.meta {
		if err := f.writeSidecar(meta); err != nil {
			return err
		}
		st.meta = meta
	}

	body := &stallReader{r: resp.Body, t: stall, d: f.req.StallTimeout}
	w := &partWriter{f: st.file, h: st.h}
	// Read at most one byte past Size: enough to tell the body is too long.
	n, err := io.Copy(w, io.LimitReader(body, f.req.Size-st.n+1))
	st.n += n
	if w.err != nil {
		return f.fsErr("write part", w.err)
	}
	if st.n > f.req.Size {
		return f.integrity(st, fmt.Errorf("body is longer than %d bytes", f.req.Size))
	}
	if err != nil {
		// Keep what arrived for the next attempt.
		if serr := st.file.Sync(); serr != nil {
			return f.fsErr("sync part", serr)
		}
		return f.netErr(err, &stalled)
	}
	if st.n < f.req.Size {
		return f.integrity(st, fmt.Errorf("body ended after %d bytes, want %d", st.n, f.req.Size))
	}
	return nil
}

// finish verifies the complete part and renames it to the bundle.
func (f *fetcher) finish(st *partState) error {
	if got := hex.EncodeToString(st.h.Sum(nil)); got != f.sum {
		return f.integrity(st, fmt.Errorf("sha256 is %s, want %s", got, f.sum))
	}
	if err := st.file.Sync(); err != nil {
		return f.fsErr("sync part", err)
	}
	if err := os.Rename(f.part, f.final); err != nil {
		return f.fsErr("rename part", err)
	}
	if err := os.Remove(f.meta); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return f.fsErr("remove sidecar", err)
	}
	return f.syncDir()
}

// integrity removes the bad part and its sidecar and returns an Integrity
// error: the next call starts clean.
func (f *fetcher) integrity(st *partState, cause error) error {
	_ = st.file.Truncate(0)
	st.n = 0
	st.h.Reset()
	_ = os.Remove(f.part)
	_ = os.Remove(f.meta)
	_ = f.syncDir()
	return onfailure.E(onfailure.Integrity, f.op, cause)
}

// verifyFinal reports whether the bundle exists with the expected size and
// sha256. A bundle that does not verify is removed.
func (f *fetcher) verifyFinal() (bool, error) {
	file, err := os.Open(f.final)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, f.fsErr("open bundle", err)
	}
	defer file.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(file, f.req.Size+1))
	if err != nil {
		return false, f.fsErr("hash bundle", err)
	}
	if n == f.req.Size && hex.EncodeToString(h.Sum(nil)) == f.sum {
		return true, nil
	}
	f.log.Warn("downloaded bundle does not verify, fetching it again", "path", f.final, "size", n)
	if err := os.Remove(f.final); err != nil {
		return false, f.fsErr("remove bad bundle", err)
	}
	return false, nil
}

func (f *fetcher) readSidecar() (sidecar, bool) {
	b, err := os.ReadFile(f.meta)
	if err != nil {
		return sidecar{}, false
	}
	var m sidecar
	if err := json.Unmarshal(b, &m); err != nil {
		return sidecar{}, false
	}
	return m, true
}

// writeSidecar replaces the sidecar atomically and durably.
func (f *fetcher) writeSidecar(m sidecar) error {
	b, err := json.Marshal(m)
	if err != nil {
		return onfailure.E(onfailure.Unknown, f.op, err)
	}
	tmp := f.meta + ".tmp"
	file, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return f.fsErr("write sidecar", err)
	}
	_, err = file.Write(b)
	if err == nil {
		err = file.Sync()
	}
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, f.meta)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return f.fsErr("write sidecar", err)
	}
	return f.syncDir()
}

func (f *fetcher) syncDir() error {
	d, err := os.Open(f.req.Dir)
	if err != nil {
		return f.fsErr("sync download dir", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return f.fsErr("sync download dir", err)
	}
	return nil
}

// lock takes an exclusive flock on <sha256>.lock, waiting (and polling the
// context) while another Fetch holds it. The returned func releases it and,
// once the bundle is complete, removes the lock file.
func (f *fetcher) lock(ctx context.Context) (func(done bool), error) {
	for {
		file, err := os.OpenFile(f.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, f.fsErr("open lock", err)
		}
		for {
			err = syscall.Flock(int(file.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
				break
			}
			t := time.NewTimer(50 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				file.Close()
				return nil, f.ctxErr(ctx)
			case <-t.C:
			}
		}
		if err != nil {
			file.Close()
			return nil, f.fsErr("lock", err)
		}
		// The holder before us may have removed the file it locked; then
		// lock the one that is there now.
		held, err1 := file.Stat()
		cur, err2 := os.Stat(f.lockPath)
		if err1 == nil && err2 == nil && os.SameFile(held, cur) {
			return func(done bool) {
				if done {
					_ = os.Remove(f.lockPath)
				}
				file.Close() // releases the flock
			}, nil
		}
		file.Close()
	}
}

// ctxErr reports why the context ended: Timeout for a deadline; a
// cancellation wraps context.Canceled and has no failure kind of its own.
func (f *fetcher) ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return onfailure.E(onfailure.Timeout, f.op, context.Cause(ctx))
	}
	return fmt.Errorf("%s: %w", f.op, context.Cause(ctx))
}

// fsErr classifies a local file system error: ENOSPC is ResourceExhausted,
// EACCES Authorization, and so on.
func (f *fetcher) fsErr(what string, err error) error {
	return onfailure.E(onfailure.Classify(err), f.op, fmt.Errorf("%s: %w", what, err))
}

// netErr turns an error from the client or from reading the body into a
// transientError, or into a final error when retrying cannot help.
func (f *fetcher) netErr(err error, stalled *atomic.Bool) error {
	if stalled.Load() {
		return &transientError{onfailure.Timeout, fmt.Errorf("no data for %s: %w", f.req.StallTimeout, err)}
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return onfailure.E(onfailure.Authentication, f.op, err)
	}
	switch k := onfailure.Classify(err); k {
	case onfailure.Connectivity, onfailure.Timeout:
		return &transientError{k, err}
	case onfailure.ResourceExhausted, onfailure.Authorization:
		return onfailure.E(k, f.op, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &transientError{onfailure.Timeout, err}
	}
	// Everything else the transport reports (a broken or cut-off stream, a
	// name that does not resolve, a malformed response) is a connection that
	// did not work.
	return &transientError{onfailure.Connectivity, err}
}

// partWriter writes to the part and the hash, and keeps the write error
// apart from read errors.
type partWriter struct {
	f   *os.File
	h   hash.Hash
	err error
}

func (w *partWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	if err != nil {
		w.err = err
	}
	return n, err
}

// stallReader pushes the stall timer back whenever bytes arrive.
type stallReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.t.Reset(s.d)
	}
	return n, err
}

// parseContentRange parses "bytes START-END/TOTAL"; total is -1 for "*".
func parseContentRange(s string) (start, total int64, ok bool) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, false
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil || t <= end {
			return 0, 0, false
		}
		total = t
	}
	return start, total, true
}
