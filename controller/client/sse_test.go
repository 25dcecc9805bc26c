package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
)

func TestSSEReader(t *testing.T) {
	in := ": comment\n" +
		"retry: 250\n\n" +
		"id: 1\r\nevent: device\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n" +
		"data:no space\rid\r\r" + // CR line ends; "id" with no colon empties the id
		"event: x\ndata\n\n" + // "data" with no colon: an empty data line
		"id: a\x00b\ndata: nul id ignored\n\n" +
		"retry: 1x\ndata: bad retry ignored\n\n" +
		"id: 9\n\n" + // an id alone changes the id
		"data: cut off at the end"
	r := newSSEReader(strings.NewReader(in))
	type got struct {
		dispatch    bool
		event, data string
		id          string
		retry       time.Duration
	}
	var all []got
	for {
		ev, err := r.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		g := got{dispatch: ev.dispatch, event: ev.event, data: ev.data, retry: ev.retry, id: "<none>"}
		if ev.id != nil {
			g.id = *ev.id
		}
		all = append(all, g)
	}
	want := []got{
		{retry: 250 * time.Millisecond, id: "<none>"},
		{dispatch: true, event: "device", data: "{\"a\":\n1}", id: "1"},
		{dispatch: true, event: "message", data: "no space", id: ""},
		{dispatch: true, event: "x", data: "", id: "<none>"},
		{dispatch: true, event: "message", data: "nul id ignored", id: "<none>"},
		{dispatch: true, event: "message", data: "bad retry ignored", id: "<none>"},
		{id: "9"},
	}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Fatalf("got\n%v\nwant\n%v", all, want)
	}
}

func TestSSEReaderBoundsAnEvent(t *testing.T) {
	r := newSSEReader(strings.NewReader("data: 1\n" + strings.Repeat("x", 100)))
	r.max = 100
	if _, err := r.next(); !errors.Is(err, errTooLarge) {
		t.Fatal(err)
	}
	r = newSSEReader(strings.NewReader(strings.Repeat("data: 1\n", 12) + "\n"))
	r.max = 100
	if ev, err := r.next(); err != nil || len(ev.data) != 23 {
		t.Fatal(ev, err)
	}
}

// A stream that stays open but says nothing (a half-open connection) is
// dropped after the idle limit and reopened with Last-Event-ID.
func TestWatchReconnectsASilentStream(t *testing.T) {
	var (
		mu   sync.Mutex
		last []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		last = append(last, r.Header.Get("Last-Event-ID"))
		n := len(last)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		if n == 1 {
			fmt.Fprint(w, "retry: 1\nid: 7\nevent: device\ndata: {\"seq\":7,\"kind\":\"device\"}\n\n")
			w.(http.Flusher).Flush()
			<-r.Context().Done() // silent until the client gives up
			return
		}
		fmt.Fprint(w, "id: 8\nevent: deployment\ndata: {\"seq\":8,\"kind\":\"deployment\",\"deployment\":{\"status\":\"Succeeded\"}}\n\n")
	}))
	defer srv.Close()
	c, err := New(srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.idle = 100 * time.Millisecond
	var seqs []uint64
	err = c.Watch(context.Background(), "d-1", "", func(e api.Event) error {
		seqs = append(seqs, e.Seq)
		return nil
	})
	if err != nil || fmt.Sprint(seqs) != "[7 8]" || fmt.Sprint(last) != "[ 7]" {
		t.Fatalf("%v %v %q", err, seqs, last)
	}
}

func TestBackoff(t *testing.T) {
	for f, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		got := backoff(100*time.Millisecond, time.Second, f)
		if got > want || got < want*4/5 {
			t.Errorf("failures %d: %v, want %v less up to 20%%", f, got, want)
		}
	}
}
