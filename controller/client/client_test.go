package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/client"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func apiErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.Error{Error: api.ErrorBody{Code: code, Message: msg}})
}

// serve starts a controller stand-in with the handler h and returns a
// client of it with token "tok".
func serve(t *testing.T, h http.Handler) (*client.Client, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := client.New(srv.URL+"/", "tok", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func TestNewRefusesBadURLs(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:8080", "ftp://x", "http://", "http://h/?a=b", "::"} {
		if _, err := client.New(u, "", nil); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
	if _, err := client.New("http://h", "a\nb", nil); err == nil {
		t.Error("a token with a line break was accepted")
	}
	c, err := client.New("https://ctl.example/edgeflow/", "", nil)
	if err != nil || c.BaseURL() != "https://ctl.example/edgeflow" {
		t.Fatalf("%v %v", c, err)
	}
}

func TestResources(t *testing.T) {
	devs := api.DeviceList{Devices: []api.Device{{ID: "edge-1", Status: transport.Online, Agent: "1.0", Labels: map[string]string{"site": "a"}, LastSeen: t0,
		Execution: &transport.Current{Deployment: "d-1", Execution: "x", Flow: "web", Status: transport.StatusRunning}}}}
	dep := api.Deployment{ID: "d/1", Bundle: api.Bundle{SHA256: "ab", Flow: "web", Version: 3}, Status: api.DeploymentRunning, Created: t0,
		Counts: map[string]int{"Running": 1}, Devices: []api.DeviceRun{{Device: "edge-1", Status: "Running", Dispatch: "m1", Updated: t0}}}
	logs := api.LogList{Logs: []api.Log{{Step: "health", Attempt: 2, Status: "Failed", Log: "503\n", Truncated: true}}}
	var (
		mu       sync.Mutex
		uploaded []byte
		uploadCT string
		uploadCL int64
		created  api.CreateDeployment
		cancel   api.Cancel
		paths    []string
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathDevices, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, devs) })
	mux.HandleFunc("GET "+api.PathDevice, func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "edge-1" {
			apiErr(w, 404, api.CodeNotFound, "no device "+r.PathValue("id"))
			return
		}
		writeJSON(w, 200, devs.Devices[0])
	})
	mux.HandleFunc("POST "+api.PathBundles, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		uploaded, _ = io.ReadAll(r.Body)
		uploadCT, uploadCL = r.Header.Get("Content-Type"), r.ContentLength
		writeJSON(w, 201, api.Bundle{SHA256: "ab", Size: int64(len(uploaded)), Flow: "web", Version: 3})
	})
	mux.HandleFunc("GET "+api.PathBundles, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.BundleList{Bundles: []api.Bundle{{SHA256: "ab"}}})
	})
	mux.HandleFunc("POST "+api.PathDeployments, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewDecoder(r.Body).Decode(&created)
		if created.Bundle == "" {
			apiErr(w, 400, api.CodeInvalid, "bundle: required")
			return
		}
		writeJSON(w, 201, dep)
	})
	mux.HandleFunc("GET "+api.PathDeployments, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.DeploymentList{Deployments: []api.Deployment{dep}})
	})
	mux.HandleFunc("GET "+api.PathDeployment, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, dep)
	})
	mux.HandleFunc("GET "+api.PathDeviceLogs, func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("device") != "edge 1" || r.URL.Query().Get("step") != "health" {
			apiErr(w, 400, api.CodeInvalid, "unexpected "+r.URL.String())
			return
		}
		writeJSON(w, 200, logs)
	})
	mux.HandleFunc("POST "+api.PathCancel, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewDecoder(r.Body).Decode(&cancel)
		if r.PathValue("id") == "done" {
			apiErr(w, 409, api.CodeConflict, "deployment done has finished")
			return
		}
		if r.PathValue("id") == "empty" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		d := dep
		d.Status = api.DeploymentCancelled
		writeJSON(w, 200, d)
	})
	auth := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.EscapedPath())
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer tok" {
			apiErr(w, 401, "unauthorized", "bad token")
			return
		}
		mux.ServeHTTP(w, r)
	})
	c, _ := serve(t, auth)
	ctx := context.Background()

	gotDevs, err := c.Devices(ctx)
	if err != nil || !reflect.DeepEqual(gotDevs, devs.Devices) {
		t.Fatalf("Devices: %+v %v", gotDevs, err)
	}
	d, err := c.Device(ctx, "edge-1")
	if err != nil || d.Execution.Flow != "web" {
		t.Fatalf("Device: %+v %v", d, err)
	}
	_, err = c.Device(ctx, "nope")
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != api.CodeNotFound || ae.Message != "no device nope" {
		t.Fatalf("Device(nope): %v", err)
	}
	if !strings.Contains(err.Error(), "get device nope: controller answered 404 Not Found (not_found): no device nope") {
		t.Fatalf("message: %v", err)
	}

	b, err := c.UploadBundle(ctx, bytes.NewReader([]byte("bundle bytes")))
	if err != nil || b.SHA256 != "ab" || string(uploaded) != "bundle bytes" || uploadCT != client.BundleContentType || uploadCL != 12 {
		t.Fatalf("UploadBundle: %+v %v, server got %q %q %d", b, err, uploaded, uploadCT, uploadCL)
	}
	bs, err := c.Bundles(ctx)
	if err != nil || len(bs) != 1 {
		t.Fatalf("Bundles: %v %v", bs, err)
	}

	want := api.CreateDeployment{Bundle: "ab", Devices: []string{"edge-1"}, Vars: map[string]string{"v": "1"}}
	got, err := c.CreateDeployment(ctx, want)
	if err != nil || got.ID != "d/1" || !reflect.DeepEqual(created, want) {
		t.Fatalf("CreateDeployment: %+v %v; server got %+v", got, err, created)
	}
	_, err = c.CreateDeployment(ctx, api.CreateDeployment{})
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != api.CodeInvalid {
		t.Fatalf("CreateDeployment without bundle: %v", err)
	}
	ds, err := c.Deployments(ctx)
	if err != nil || len(ds) != 1 || ds[0].Counts["Running"] != 1 {
		t.Fatalf("Deployments: %v %v", ds, err)
	}
	one, err := c.Deployment(ctx, "d/1")
	if err != nil || len(one.Devices) != 1 {
		t.Fatalf("Deployment: %+v %v", one, err)
	}
	ls, err := c.Logs(ctx, "d/1", "edge 1", "health")
	if err != nil || !reflect.DeepEqual(ls, logs.Logs) {
		t.Fatalf("Logs: %+v %v", ls, err)
	}
	cd, err := c.Cancel(ctx, "d/1", api.Cancel{By: "ops", Note: "bad release"})
	if err != nil || cd.Status != api.DeploymentCancelled || cancel.Note != "bad release" || cancel.By != "ops" {
		t.Fatalf("Cancel: %+v %v (server got %+v)", cd, err, cancel)
	}
	if cd, err := c.Cancel(ctx, "empty", api.Cancel{}); err != nil || cd != nil {
		t.Fatalf("Cancel answered 204: %+v %v", cd, err)
	}
	_, err = c.Cancel(ctx, "done", api.Cancel{})
	if !errors.As(err, &ae) || ae.Status != 409 {
		t.Fatalf("Cancel of a finished deployment: %v", err)
	}
	// Ids are path-escaped: one path element each.
	for _, p := range []string{"/v1/deployments/d%2F1", "/v1/deployments/d%2F1/devices/edge%201/logs"} {
		found := false
		for _, q := range paths {
			found = found || q == p
		}
		if !found {
			t.Errorf("no request for %s in %v", p, paths)
		}
	}

	bad, _ := client.New(c.BaseURL(), "wrong", nil)
	_, err = bad.Devices(ctx)
	if onfailure.KindOf(err) != onfailure.Authentication || !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("wrong token: kind %s, %v", onfailure.KindOf(err), err)
	}
}

func TestErrorAnswerThatIsNotJSON(t *testing.T) {
	c, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>bad gateway</html>\nmore", http.StatusBadGateway)
	}))
	_, err := c.Devices(context.Background())
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != "" || ae.Message != "<html>bad gateway</html>" {
		t.Fatalf("%#v", err)
	}
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	c, _ := client.New("http://"+addr, "", nil)
	_, err = c.Deployments(context.Background())
	if onfailure.KindOf(err) != onfailure.Connectivity {
		t.Fatalf("kind %s: %v", onfailure.KindOf(err), err)
	}
	if !strings.Contains(err.Error(), "cannot reach the controller at http://"+addr) || !strings.HasPrefix(err.Error(), "list deployments: ") {
		t.Fatalf("message: %v", err)
	}
	err = c.Watch(context.Background(), "d-1", "", func(api.Event) error { return nil })
	if onfailure.KindOf(err) != onfailure.Connectivity {
		t.Fatalf("Watch of an unreachable controller: kind %s: %v", onfailure.KindOf(err), err)
	}
}

func TestContextEndIsNotConnectivity(t *testing.T) {
	block := make(chan struct{})
	c, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer close(block)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Devices(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || onfailure.KindOf(err) == onfailure.Connectivity {
		t.Fatalf("%v (kind %s)", err, onfailure.KindOf(err))
	}
}

// sse is a scripted event stream: each request gets the events after its
// Last-Event-ID, and then what its attempt's behaviour says.
type sse struct {
	t      *testing.T
	events []api.Event
	mu     sync.Mutex
	// lastIDs records each request's Last-Event-ID header.
	lastIDs []string
	// plan says, per attempt (0-based), how many events to send before
	// "drop" (close the connection mid-stream, no final chunk), "end"
	// (end the response cleanly), "503" (answer an error) or "all".
	plan []step
}

type step struct {
	n    int
	then string
}

func (s *sse) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	attempt := len(s.lastIDs)
	s.lastIDs = append(s.lastIDs, r.Header.Get("Last-Event-ID"))
	s.mu.Unlock()
	if r.PathValue("id") != "d-1" {
		apiErr(w, 404, api.CodeNotFound, "no deployment "+r.PathValue("id"))
		return
	}
	if r.Header.Get("Accept") != "text/event-stream" {
		apiErr(w, 400, api.CodeInvalid, "accept")
		return
	}
	p := step{n: len(s.events), then: "all"}
	if attempt < len(s.plan) {
		p = s.plan[attempt]
	}
	if p.then == "503" {
		apiErr(w, 503, api.CodeInternal, "starting")
		return
	}
	after, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.WriteHeader(200)
	fmt.Fprint(w, ": hello\r\nretry: 1\r\n\r\n")
	sent := 0
	for _, e := range s.events {
		if e.Seq <= after {
			continue
		}
		if sent == p.n {
			break
		}
		data, _ := json.Marshal(e)
		fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Kind, data)
		sent++
	}
	w.(http.Flusher).Flush()
	if p.then == "drop" {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			s.t.Error(err)
			return
		}
		conn.Close()
	}
}

func events() []api.Event {
	run := func(seq uint64, dev, status string) api.Event {
		return api.Event{Seq: seq, Kind: api.EventDevice, Time: t0, Run: &api.DeviceRun{Device: dev, Status: status, Updated: t0}}
	}
	dep := func(seq uint64, status string, counts map[string]int) api.Event {
		return api.Event{Seq: seq, Kind: api.EventDeployment, Time: t0, Deployment: &api.Deployment{ID: "d-1", Status: status, Counts: counts}}
	}
	return []api.Event{
		run(1, "edge-1", "Running"),
		run(2, "edge-2", "Running"),
		dep(3, api.DeploymentRunning, map[string]int{"Running": 2}),
		run(4, "edge-1", "Succeeded"),
		run(5, "edge-2", "Failed"),
		dep(6, api.DeploymentFailed, map[string]int{"Succeeded": 1, "Failed": 1}),
	}
}

func watchAll(t *testing.T, c *client.Client, id, last string) ([]uint64, error) {
	t.Helper()
	var seqs []uint64
	err := c.Watch(context.Background(), id, last, func(e api.Event) error {
		seqs = append(seqs, e.Seq)
		return nil
	})
	return seqs, err
}

func TestWatchResumesAfterADroppedConnection(t *testing.T) {
	s := &sse{t: t, events: events(), plan: []step{{2, "drop"}, {0, "503"}, {2, "end"}}}
	mux := http.NewServeMux()
	mux.Handle("GET "+api.PathDeploymentWatch, s)
	c, _ := serve(t, mux)
	seqs, err := watchAll(t, c, "d-1", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 2, 3, 4, 5, 6}; !reflect.DeepEqual(seqs, want) {
		t.Fatalf("events %v, want %v", seqs, want)
	}
	// Dropped after 2, a 503, ended cleanly after 4, then the rest.
	if want := []string{"", "2", "2", "4"}; !reflect.DeepEqual(s.lastIDs, want) {
		t.Fatalf("Last-Event-ID per request %q, want %q", s.lastIDs, want)
	}
}

func TestWatchFromALastEventID(t *testing.T) {
	s := &sse{t: t, events: events()}
	mux := http.NewServeMux()
	mux.Handle("GET "+api.PathDeploymentWatch, s)
	c, _ := serve(t, mux)
	seqs, err := watchAll(t, c, "d-1", "4")
	if err != nil || !reflect.DeepEqual(seqs, []uint64{5, 6}) || s.lastIDs[0] != "4" {
		t.Fatalf("%v %v %q", seqs, err, s.lastIDs)
	}
}

func TestWatchErrors(t *testing.T) {
	s := &sse{t: t, events: events()}
	mux := http.NewServeMux()
	mux.Handle("GET "+api.PathDeploymentWatch, s)
	c, _ := serve(t, mux)

	// An unknown deployment is not retried.
	_, err := watchAll(t, c, "nope", "")
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 404 || len(s.lastIDs) != 1 {
		t.Fatalf("%v after %d requests", err, len(s.lastIDs))
	}

	// The callback's error stops the watch and comes back as is.
	stop := errors.New("stop")
	n := 0
	err = c.Watch(context.Background(), "d-1", "", func(api.Event) error {
		if n++; n == 2 {
			return stop
		}
		return nil
	})
	if err != stop || n != 2 {
		t.Fatalf("%v after %d events", err, n)
	}

	// A cancelled context ends a watch whose stream stays open.
	s2 := &sse{t: t, events: events()[:2], plan: []step{{2, "drop"}}}
	mux2 := http.NewServeMux()
	mux2.Handle("GET "+api.PathDeploymentWatch, s2)
	c2, _ := serve(t, mux2)
	ctx, cancel := context.WithCancel(context.Background())
	err = c2.Watch(ctx, "d-1", "", func(e api.Event) error {
		if e.Seq == 2 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestWatchRefusesAnotherContentType(t *testing.T) {
	c, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.Event{})
	}))
	_, err := watchAll(t, c, "d-1", "")
	if err == nil || !strings.Contains(err.Error(), "want text/event-stream") {
		t.Fatal(err)
	}
}
