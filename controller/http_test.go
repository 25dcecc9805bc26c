package controller_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller"
	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/transport"
)

// wantError checks an error answer: status, JSON api.Error with code, and
// a message containing msg.
func wantError(t *testing.T, what string, resp *http.Response, body []byte, status int, code, msg string) {
	t.Helper()
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%s: %d %s %s, want %d", what, resp.StatusCode, resp.Header.Get("Content-Type"), body, status)
	}
	e := decodeJSON[api.Error](t, body)
	if e.Error.Code != code || !strings.Contains(e.Error.Message, msg) {
		t.Fatalf("%s: %+v, want code %s and a message with %q", what, e.Error, code, msg)
	}
}

func TestBundlesHTTP(t *testing.T) {
	e := newEnv(t, nil)
	data := testBundle(t)

	resp, body := e.do("POST", "/v1/bundles", strings.NewReader("this is not a bundle"))
	wantError(t, "upload garbage", resp, body, 400, api.CodeInvalid, "not a bundle: ")
	resp, body = e.do("POST", "/v1/bundles", http.NoBody)
	wantError(t, "upload nothing", resp, body, 400, api.CodeInvalid, "empty upload")

	resp, body = e.do("POST", "/v1/bundles", bytes.NewReader(data), "Content-Type", "application/octet-stream")
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", resp.StatusCode, body)
	}
	b := decodeJSON[api.Bundle](t, body)
	if len(b.SHA256) != 64 || b.Size != int64(len(data)) || b.Flow != "app" || b.Version != 3 || b.URL != e.srv.URL+"/v1/bundles/"+b.SHA256 || resp.Header.Get("Location") != "/v1/bundles/"+b.SHA256 {
		t.Fatalf("uploaded: %+v %v", b, resp.Header)
	}
	resp, body = e.do("POST", "/v1/bundles", bytes.NewReader(data))
	if again := decodeJSON[api.Bundle](t, body); resp.StatusCode != http.StatusOK || again != b {
		t.Fatalf("upload again: %d %+v, want 200 and %+v", resp.StatusCode, again, b)
	}
	resp, body = e.do("GET", "/v1/bundles", nil)
	if l := decodeJSON[api.BundleList](t, body); resp.StatusCode != 200 || len(l.Bundles) != 1 || l.Bundles[0] != b {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	files, _ := filepath.Glob(filepath.Join(e.data, "bundles", "*"))
	dot, _ := filepath.Glob(filepath.Join(e.data, "bundles", ".*"))
	if len(files) != 1 || filepath.Base(files[0]) != b.SHA256+".bundle" || len(dot) != 0 {
		t.Fatalf("bundle dir holds %v %v", files, dot)
	}

	// Download: whole, resumed with Range and If-Range, and refused.
	path := "/v1/bundles/" + b.SHA256
	resp, body = e.do("GET", path, nil)
	etag := `"` + b.SHA256 + `"`
	if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.Header.Get("ETag") != etag || resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("download: %d %v, %d bytes", resp.StatusCode, resp.Header, len(body))
	}
	resp, body = e.do("GET", path, nil, "Range", "bytes=1000-")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[1000:]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 1000-%d/%d", len(data)-1, len(data)) {
		t.Fatalf("range: %d %v, %d bytes", resp.StatusCode, resp.Header, len(body))
	}
	resp, body = e.do("GET", path, nil, "Range", "bytes=1000-", "If-Range", etag)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[1000:]) {
		t.Fatalf("range with the right If-Range: %d", resp.StatusCode)
	}
	resp, body = e.do("GET", path, nil, "Range", "bytes=1000-", "If-Range", `"other"`)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("range with another If-Range: %d, %d bytes; want the whole bundle", resp.StatusCode, len(body))
	}
	resp, body = e.do("GET", "/v1/bundles/"+strings.Repeat("0", 64), nil)
	wantError(t, "unknown bundle", resp, body, 404, api.CodeNotFound, "not found")
	resp, body = e.do("GET", "/v1/bundles/nope", nil)
	wantError(t, "bad sha256", resp, body, 400, api.CodeInvalid, "64 lowercase hex")
}

func TestUploadLimit(t *testing.T) {
	e := newEnv(t, func(o *controller.Options) { o.MaxBundleSize = 1000 })
	data := testBundle(t)
	resp, body := e.do("POST", "/v1/bundles", bytes.NewReader(data))
	wantError(t, "too large", resp, body, 413, api.CodeTooLarge, "1000-byte")
	// Without a Content-Length, the cap applies while reading.
	resp, body = e.do("POST", "/v1/bundles", io.MultiReader(bytes.NewReader(data)))
	wantError(t, "too large, chunked", resp, body, 413, api.CodeTooLarge, "1000-byte")
	if files, _ := os.ReadDir(filepath.Join(e.data, "bundles")); len(files) != 0 {
		t.Fatalf("a refused upload left %v", files)
	}
}

func TestDeploymentsHTTP(t *testing.T) {
	e := newEnv(t, nil)
	d := e.device("dev-1")
	d.presence(transport.Online, map[string]string{"site": "a"})
	eventually(t, "dev-1 known", func() bool { _, err := e.ctrl.Device(bg, "dev-1"); return err == nil })
	b := e.addBundle(testBundle(t))
	sha := b.SHA256

	refusals := []struct{ body, msg string }{
		{`{"bundle":"` + sha + `","devices":["dev-1"],"selector":{"site":"a"}}`, "exactly one of devices"},
		{`{"bundle":"` + sha + `"}`, "exactly one of devices"},
		{`{"bundle":"` + sha + `","devices":[]}`, "exactly one of devices"},
		{`{"bundle":"abc","devices":["dev-1"]}`, "64 lowercase hex"},
		{`{"bundle":"` + strings.Repeat("0", 64) + `","devices":["dev-1"]}`, "is not uploaded"},
		{`{"bundle":"` + sha + `","devices":["dev-1","a/b"]}`, `devices[1]: device id "a/b"`},
		{`{"bundle":"` + sha + `","devices":["x","x"]}`, "listed twice"},
		{`{"bundle":"` + sha + `","selector":{"site":"z"}}`, "selector site=z matches no known device (1 known)"},
		{`{"bundle":"` + sha + `","device":["dev-1"]}`, `unknown field "device"`},
		{`{"bundle":"` + sha + `","devices":["dev-1"],"vars":{"` + strings.Repeat("k", 300) + `":"v"}}`, "over the 256-byte limit"},
		{`{"bundle":"` + sha + `","devices":["dev-1"],"vars":{"k":"` + strings.Repeat("v", 5000) + `"}}`, `vars["k"]: 5000 bytes`},
		{`{"bundle":"` + sha + `","devices":["dev-1"],"vars":` + bigVars() + `}`, "65536-byte cap"},
		{`not json`, "body: "},
		{``, "empty body"},
	}
	for _, r := range refusals {
		resp, body := e.do("POST", "/v1/deployments", strings.NewReader(r.body))
		wantError(t, "create "+r.body[:min(len(r.body), 60)], resp, body, 400, api.CodeInvalid, r.msg)
	}
	if ds, _ := e.ctrl.Deployments(bg); len(ds) != 0 {
		t.Fatalf("a refused request created %d deployments", len(ds))
	}

	resp, body := e.do("POST", "/v1/deployments", strings.NewReader(`{"bundle":"`+sha+`","selector":{"site":"a"},"vars":{"v":"1"}}`))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	dep := decodeJSON[api.Deployment](t, body)
	if resp.Header.Get("Location") != "/v1/deployments/"+dep.ID || len(dep.Devices) != 1 || dep.Devices[0].Device != "dev-1" || dep.Bundle.SHA256 != sha {
		t.Fatalf("created: %+v", dep)
	}
	resp, body = e.do("GET", "/v1/deployments", nil)
	if l := decodeJSON[api.DeploymentList](t, body); resp.StatusCode != 200 || len(l.Deployments) != 1 || l.Deployments[0].ID != dep.ID || l.Deployments[0].Devices != nil {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v1/deployments/"+dep.ID, nil)
	if got := decodeJSON[api.Deployment](t, body); resp.StatusCode != 200 || len(got.Devices) != 1 || got.Vars["v"] != "1" {
		t.Fatalf("get: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v1/deployments/dep-nope", nil)
	wantError(t, "unknown deployment", resp, body, 404, api.CodeNotFound, "dep-nope")
	resp, body = e.do("POST", "/v1/deployments/dep-nope/cancel", nil)
	wantError(t, "cancel an unknown deployment", resp, body, 404, api.CodeNotFound, "dep-nope")

	// Logs, from the step-finished events.
	id := dep.Devices[0].Dispatch
	d.event(1, accepted(dep.ID, id))
	d.event(2, stepFinished(dep.ID, "a", transport.StatusSucceeded, "log of a\n"))
	d.event(3, stepFinished(dep.ID, "b", transport.StatusFailed, "log of b\n"))
	d.waitAck(3)
	logs := "/v1/deployments/" + dep.ID + "/devices/dev-1/logs"
	resp, body = e.do("GET", logs, nil)
	if l := decodeJSON[api.LogList](t, body); resp.StatusCode != 200 || len(l.Logs) != 2 || l.Logs[1].Log != "log of b\n" || l.Logs[1].Status != "Failed" {
		t.Fatalf("logs: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", logs+"?step=a", nil)
	if l := decodeJSON[api.LogList](t, body); resp.StatusCode != 200 || len(l.Logs) != 1 || l.Logs[0].Step != "a" {
		t.Fatalf("logs of a: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v1/deployments/"+dep.ID+"/devices/dev-2/logs", nil)
	wantError(t, "logs of a device not in it", resp, body, 404, api.CodeNotFound, "not in deployment")

	// Cancel: the answer is the deployment; a final one is a conflict.
	resp, body = e.do("POST", "/v1/deployments/"+dep.ID+"/cancel", strings.NewReader(`{"by":"bob","note":"stop"}`))
	if got := decodeJSON[api.Deployment](t, body); resp.StatusCode != 200 || got.Cancel == nil || got.Cancel.By != "bob" {
		t.Fatalf("cancel: %d %s", resp.StatusCode, body)
	}
	d.event(4, flowFinished(dep.ID, transport.StatusFailed))
	e.waitDeployment(dep.ID, api.DeploymentCancelled)
	resp, body = e.do("POST", "/v1/deployments/"+dep.ID+"/cancel", nil)
	wantError(t, "cancel a final deployment", resp, body, 409, api.CodeConflict, "already ended: Cancelled")

	// Devices, health and what is not there.
	resp, body = e.do("GET", "/v1/devices", nil)
	if l := decodeJSON[api.DeviceList](t, body); resp.StatusCode != 200 || len(l.Devices) != 1 || l.Devices[0].Labels["site"] != "a" {
		t.Fatalf("devices: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v1/devices/dev-1", nil)
	if got := decodeJSON[api.Device](t, body); resp.StatusCode != 200 || got.ID != "dev-1" {
		t.Fatalf("device: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v1/devices/dev-9", nil)
	wantError(t, "unknown device", resp, body, 404, api.CodeNotFound, "dev-9")
	resp, body = e.do("GET", "/v1/health", nil)
	if h := decodeJSON[api.Health](t, body); resp.StatusCode != 200 || h.Status != "ok" || h.MQTT != "connected" {
		t.Fatalf("health: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v1/nothing", nil)
	wantError(t, "unknown path", resp, body, 404, api.CodeNotFound, "no such resource")
	resp, body = e.do("DELETE", "/v1/devices", nil)
	wantError(t, "unknown method", resp, body, 404, api.CodeNotFound, "no such resource")
}

// bigVars is a vars object whose dispatch is over the message size cap.
func bigVars() string {
	vars := map[string]string{}
	for i := range 20 {
		vars[fmt.Sprintf("k%d", i)] = strings.Repeat("v", 4000)
	}
	data, _ := json.Marshal(vars)
	return string(data)
}

func TestToken(t *testing.T) {
	e := newEnv(t, func(o *controller.Options) { o.Token = "s3cret" })
	resp, body := e.do("GET", "/v1/devices", nil)
	wantError(t, "no token", resp, body, 401, api.CodeUnauthorized, "API token")
	if resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatal("401 without WWW-Authenticate")
	}
	resp, body = e.do("GET", "/v1/devices", nil, "Authorization", "Bearer wrong")
	wantError(t, "wrong token", resp, body, 401, api.CodeUnauthorized, "API token")
	resp, body = e.do("POST", "/v1/bundles", bytes.NewReader(testBundle(t)))
	wantError(t, "upload without a token", resp, body, 401, api.CodeUnauthorized, "API token")

	auth := []string{"Authorization", "Bearer s3cret"}
	if resp, body := e.do("GET", "/v1/devices", nil, auth...); resp.StatusCode != 200 {
		t.Fatalf("with the token: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("POST", "/v1/bundles", bytes.NewReader(testBundle(t)), auth...)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload with the token: %d %s", resp.StatusCode, body)
	}
	b := decodeJSON[api.Bundle](t, body)
	// Agents download without the token; health is open.
	if resp, _ := e.do("GET", "/v1/bundles/"+b.SHA256, nil); resp.StatusCode != 200 {
		t.Fatalf("download without the token: %d", resp.StatusCode)
	}
	if resp, _ := e.do("GET", "/v1/health", nil); resp.StatusCode != 200 {
		t.Fatalf("health without the token: %d", resp.StatusCode)
	}
}

// sseEvent is one server-sent event, or a comment.
type sseEvent struct {
	id, event, data, comment string
}

// stream opens an SSE stream and returns its events as they come; the
// channel is closed when the stream ends.
func (e *env) stream(path string, header ...string) (<-chan sseEvent, func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(bg)
	req, err := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		body, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("stream %s: %d %s %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	ch := make(chan sseEvent, 1000)
	go func() {
		defer close(ch)
		br := bufio.NewReader(resp.Body)
		var ev sseEvent
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			field, value, _ := strings.Cut(line, ": ")
			switch {
			case line == "":
				ch <- ev
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				ev.comment = line
			case field == "id":
				ev.id = value
			case field == "event":
				ev.event = value
			case field == "data":
				ev.data = value
			}
		}
	}()
	stop := func() { cancel(); resp.Body.Close() }
	e.t.Cleanup(stop)
	return ch, stop
}

// next returns the next event of the stream that is not a comment.
func next(t *testing.T, ch <-chan sseEvent) api.Event {
	t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("the stream ended")
			}
			if ev.comment != "" {
				continue
			}
			got := decodeJSON[api.Event](t, []byte(ev.data))
			if ev.id != fmt.Sprint(got.Seq) || ev.event != got.Kind {
				t.Fatalf("event fields id %q event %q for %s", ev.id, ev.event, ev.data)
			}
			return got
		case <-timeout:
			t.Fatal("timed out waiting for an event")
		}
	}
}

// ends waits for the stream to end, failing on any event but comments.
func ends(t *testing.T, ch <-chan sseEvent) {
	t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			if ev.comment == "" {
				t.Fatalf("an event after the final one: %+v", ev)
			}
		case <-timeout:
			t.Fatal("timed out waiting for the stream to end")
		}
	}
}

func TestWatch(t *testing.T) {
	e := newEnv(t, func(o *controller.Options) { o.Heartbeat = 20 * time.Millisecond })
	d := e.device("dev-1")
	b := e.addBundle(testBundle(t))
	dep := e.mustCreate(api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-1"}})
	path := "/v1/deployments/" + dep.ID + "/events"
	ch, stop := e.stream(path)
	if ev := next(t, ch); ev.Seq != 1 || ev.Kind != api.EventDeployment || ev.Deployment.Status != api.DeploymentRunning || ev.Deployment.Counts[api.DevicePending] != 1 {
		t.Fatalf("first event: %+v", ev)
	}
	// A heartbeat comment keeps the idle stream alive.
	timeout := time.After(deadline)
	for heartbeat := false; !heartbeat; {
		select {
		case ev := <-ch:
			heartbeat = ev.comment == ": heartbeat"
		case <-timeout:
			t.Fatal("no heartbeat")
		}
	}

	d.event(1, accepted(dep.ID, dep.Devices[0].Dispatch))
	ev := next(t, ch)
	if ev.Seq != 2 || ev.Kind != api.EventDevice || ev.Run.Status != "Running" || ev.Run.Device != "dev-1" {
		t.Fatalf("device event: %+v", ev)
	}
	if m, err := transport.DecodeMessage(ev.Message); err != nil || m.Type != transport.TypeAccepted || m.Seq != 1 {
		t.Fatalf("the event's agent message: %v %v", m, err)
	}
	if ev := next(t, ch); ev.Seq != 3 || ev.Kind != api.EventDeployment || ev.Deployment.Counts["Running"] != 1 || ev.Deployment.Devices != nil {
		t.Fatalf("deployment event: %+v", ev)
	}
	stop()

	// Missed while away: two device events.
	d.event(2, stepStarted(dep.ID, "s"))
	d.event(3, stepFinished(dep.ID, "s", transport.StatusSucceeded, ""))
	d.waitAck(3)
	ch, _ = e.stream(path, "Last-Event-ID", "3")
	for _, want := range []uint64{4, 5} {
		if ev := next(t, ch); ev.Seq != want || ev.Kind != api.EventDevice {
			t.Fatalf("after reconnecting: %+v, want device event %d", ev, want)
		}
	}
	d.event(4, flowFinished(dep.ID, transport.StatusSucceeded))
	if ev := next(t, ch); ev.Seq != 6 || ev.Run.Status != "Succeeded" {
		t.Fatalf("event 6: %+v", ev)
	}
	if ev := next(t, ch); ev.Seq != 7 || ev.Kind != api.EventDeployment || ev.Deployment.Status != api.DeploymentSucceeded {
		t.Fatalf("final event: %+v", ev)
	}
	ends(t, ch)

	// A final deployment: what is left after ?since=, then the end.
	ch, _ = e.stream(path + "?since=5")
	if a, b := next(t, ch), next(t, ch); a.Seq != 6 || b.Seq != 7 {
		t.Fatalf("since 5: %d %d", a.Seq, b.Seq)
	}
	ends(t, ch)
	ch, _ = e.stream(path, "Last-Event-ID", "7")
	ends(t, ch)

	resp, body := e.do("GET", path, nil, "Last-Event-ID", "x")
	wantError(t, "bad Last-Event-ID", resp, body, 400, api.CodeInvalid, "Last-Event-ID")
	resp, body = e.do("GET", "/v1/deployments/dep-nope/events", nil)
	wantError(t, "watch an unknown deployment", resp, body, 404, api.CodeNotFound, "dep-nope")
}
