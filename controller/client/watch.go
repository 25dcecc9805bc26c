package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
)

// maxEvent bounds one server-sent event (all its lines), so a broken
// stream cannot make the client hold unbounded memory.
const maxEvent = 16 << 20

// Watch follows a deployment's event stream (GET .../events, server-sent
// events) and calls fn with each api.Event, in order, until fn has seen
// the deployment's final event (a "deployment" event whose status is
// final, as FinalStatus says: Watch then returns nil; a Paused deployment
// is not final, so Watch keeps waiting through a pause), fn returns an
// error (returned as is), or ctx ends (its error is returned, wrapped).
//
// lastEventID, when not empty, resumes after that event (it is sent as
// Last-Event-ID). A stream that drops — a reset or closed connection, the
// stream's end before the final event, a silence longer than
// DefaultIdleLimit, a 5xx, 408 or 429 answer — is reopened with the id of
// the last event received, after a delay that starts at the stream's
// "retry:" value (DefaultRetry without one) and doubles, with jitter, up
// to DefaultRetryMax; it is reset by every event received. Events at or
// below the last sequence number seen are not delivered twice.
//
// The first connection is not retried: a controller that cannot be
// reached at all, or any other error answer (404 for an unknown
// deployment, 401, ...), is returned at once.
func (c *Client) Watch(ctx context.Context, id, lastEventID string, fn func(api.Event) error) error {
	w := &watcher{c: c, id: id, last: lastEventID, fn: fn, delay: c.retryMin}
	if n, err := strconv.ParseUint(lastEventID, 10, 64); err == nil {
		w.seq = n
	}
	op := "watch deployment " + id
	failures := 0
	for first := true; ; first = false {
		err := w.stream(ctx, op)
		var fe *fnError
		switch {
		case err == nil:
			return nil // the final event
		case errors.As(err, &fe):
			return fe.err
		case ctx.Err() != nil:
			return fmt.Errorf("%s: %w", op, context.Cause(ctx))
		case first && !w.opened, !retryable(err):
			return err
		}
		if w.progress {
			failures = 0
		}
		w.progress, w.opened = false, false
		d := backoff(w.delay, c.retryMax, failures)
		failures++
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (reconnecting after: %v)", op, context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// backoff returns base·2^failures, capped at max, with up to 20% jitter
// taken off.
func backoff(base, max time.Duration, failures int) time.Duration {
	d := base
	for i := 0; i < failures && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	if d > 0 {
		d -= time.Duration(rand.Int64N(int64(d)/5 + 1))
	}
	return d
}

// retryable says whether a dropped stream may be reopened.
func retryable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusRequestTimeout || ae.Status == http.StatusTooManyRequests
	}
	var pe *protocolError
	if errors.As(err, &pe) {
		return false
	}
	k := onfailure.KindOf(err)
	return k != onfailure.Authentication && k != onfailure.Authorization
}

// fnError carries the callback's error out of the stream unchanged.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

// protocolError is a stream that is not what the API says: retrying would
// read the same.
type protocolError struct{ err error }

func (e *protocolError) Error() string { return e.err.Error() }
func (e *protocolError) Unwrap() error { return e.err }

// errDropped is a stream that ended or fell silent before the final event.
var errDropped = errors.New("the event stream ended before the deployment finished")

// watcher is one Watch: where the stream is, across connections.
type watcher struct {
	c     *Client
	id    string
	fn    func(api.Event) error
	last  string        // the last event id received (Last-Event-ID)
	seq   uint64        // the highest Seq delivered
	delay time.Duration // the reconnection delay ("retry:")
	// opened says the last stream was answered 200; progress that it
	// delivered an event.
	opened, progress bool
}

// stream reads one connection. It returns nil after the final event.
func (w *watcher) stream(ctx context.Context, op string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var silent atomic.Bool
	idle := time.AfterFunc(w.c.idle, func() { silent.Store(true); cancel() })
	defer idle.Stop()

	r := get(op, path(api.PathDeploymentWatch, "id", w.id))
	r.accept = "text/event-stream"
	r.header = http.Header{"Cache-Control": {"no-cache"}}
	if w.last != "" {
		r.header.Set("Last-Event-ID", w.last)
	}
	resp, err := w.c.send(ctx, r)
	if err != nil {
		if silent.Load() {
			return fmt.Errorf("%s: no answer in %v: %w", op, w.c.idle, errDropped)
		}
		return err
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return &protocolError{fmt.Errorf("%s: the controller answered Content-Type %q, want text/event-stream", op, resp.Header.Get("Content-Type"))}
	}
	w.opened = true
	body := &activity{r: resp.Body, onRead: func() { idle.Reset(w.c.idle) }}
	sr := newSSEReader(body)
	for {
		ev, err := sr.next()
		if err != nil {
			switch {
			case silent.Load():
				return fmt.Errorf("%s: silent for %v: %w", op, w.c.idle, errDropped)
			case ctx.Err() != nil:
				return fmt.Errorf("%s: %w", op, context.Cause(ctx))
			case errors.Is(err, io.EOF):
				return fmt.Errorf("%s: %w", op, errDropped)
			case errors.Is(err, errTooLarge):
				return &protocolError{fmt.Errorf("%s: %w", op, err)}
			}
			return onfailure.E(onfailure.Connectivity, op, fmt.Errorf("the event stream from %s broke: %w", w.c.base, err))
		}
		if ev.retry > 0 {
			w.delay = ev.retry
		}
		if ev.id != nil {
			w.last = *ev.id
		}
		if !ev.dispatch {
			continue
		}
		if ev.event != api.EventDevice && ev.event != api.EventDeployment && ev.event != "message" {
			continue // a kind this client does not know
		}
		var e api.Event
		if err := json.Unmarshal([]byte(ev.data), &e); err != nil {
			return &protocolError{fmt.Errorf("%s: event %s: %w", op, w.last, err)}
		}
		if e.Kind != api.EventDevice && e.Kind != api.EventDeployment {
			continue
		}
		if e.Seq != 0 && e.Seq <= w.seq {
			continue // already delivered before a reconnect
		}
		w.seq = max(w.seq, e.Seq)
		w.progress = true
		if err := w.fn(e); err != nil {
			return &fnError{err}
		}
		if e.Kind == api.EventDeployment && e.Deployment != nil && FinalStatus(e.Deployment.Status) {
			return nil
		}
	}
}

// activity calls onRead after each read that returned bytes.
type activity struct {
	r      io.Reader
	onRead func()
}

func (a *activity) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.onRead()
	}
	return n, err
}

// sseEvent is what one blank-line-terminated block of the stream said.
type sseEvent struct {
	dispatch bool    // the block had data: an event to deliver
	event    string  // "event:" ("message" when absent)
	data     string  // "data:" lines joined by "\n"
	id       *string // "id:", when the block set it
	retry    time.Duration
}

var errTooLarge = fmt.Errorf("an event over %d bytes", maxEvent)

// sseReader reads the text/event-stream format (the HTML living
// standard's "event stream interpretation"): lines end in CRLF, LF or CR;
// a line starting with ':' is a comment; "field: value" (one space after
// the colon is dropped) for the fields event, data, id and retry; a blank
// line ends the block. A block cut off by the end of the stream is
// dropped.
type sseReader struct {
	r      *bufio.Reader
	max    int  // bytes of one block, its line ends counted
	skipLF bool // the last line ended in CR: a LF right after it is part of that end
}

func newSSEReader(r io.Reader) *sseReader { return &sseReader{r: bufio.NewReader(r), max: maxEvent} }

// next returns the next block that dispatches an event or changes the id
// or retry.
func (s *sseReader) next() (sseEvent, error) {
	var (
		ev      sseEvent
		data    strings.Builder
		hasData bool
		size    int
	)
	for {
		line, err := s.line(s.max - size)
		if err != nil {
			return sseEvent{}, err
		}
		size += len(line) + 1
		if line == "" {
			if hasData {
				ev.dispatch, ev.data = true, data.String()
				if ev.event == "" {
					ev.event = "message"
				}
				return ev, nil
			}
			if ev.id != nil || ev.retry > 0 {
				return ev, nil
			}
			ev = sseEvent{}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		switch field {
		case "event":
			ev.event = value
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "id":
			if !strings.ContainsRune(value, 0) {
				ev.id = &value
			}
		case "retry":
			if ms, err := strconv.ParseUint(value, 10, 31); err == nil && strings.Trim(value, "0123456789") == "" {
				ev.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

// line reads one line without its terminator (CRLF, LF or CR), at most
// limit bytes long.
func (s *sseReader) line(limit int) (string, error) {
	var b []byte
	for {
		if _, err := s.r.Peek(1); err != nil {
			return "", err
		}
		chunk, _ := s.r.Peek(s.r.Buffered())
		if s.skipLF {
			s.skipLF = false
			if chunk[0] == '\n' {
				_, _ = s.r.Discard(1)
				continue
			}
		}
		i := bytes.IndexAny(chunk, "\r\n")
		if i < 0 {
			i = len(chunk)
		}
		if len(b)+i > limit {
			return "", errTooLarge
		}
		b = append(b, chunk[:i]...)
		if i == len(chunk) {
			_, _ = s.r.Discard(i)
			continue
		}
		s.skipLF = chunk[i] == '\r'
		_, _ = s.r.Discard(i + 1)
		return string(b), nil
	}
}
