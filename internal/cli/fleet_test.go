package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/client"
	"github.com/edgeflow/edgeflow/transport"
)

// now is the clock of the output tests; canned times are before it.
var now = time.Date(2030, 1, 2, 12, 0, 0, 0, time.UTC)

// fake stands in for the controller: canned resources, scripted event
// streams, and a record of what it was sent.
type fake struct {
	t   *testing.T
	mu  sync.Mutex
	srv *httptest.Server

	devices     []api.Device
	deployments map[string]*api.Deployment // by id, with devices
	events      map[string][]api.Event     // each deployment's stream
	hold        map[string]bool            // the stream stays open after its events
	logs        map[string][]api.Log       // by "id/device"

	// created is the id POST /v1/deployments answers with; createErr,
	// when set, is its error answer instead.
	created   string
	createErr *api.Error

	uploads [][]byte
	creates []api.CreateDeployment
	cancels []api.Cancel
	watches []string // each watch's Last-Event-ID

	// The rollout requests (fleet_rollout_test.go): what was sent, and
	// canned answers.
	interventions []api.Intervention
	promotes      []api.Promote
	retries       []api.Retry
	marks         []api.MarkFailed
	guides        []api.Guide // to one device
	guided        []string    // "id/device" of each guide
	groupGuides   []api.Guide // to a group
	answerErr     *api.Error  // when set, the rollout requests answer it
	answerStatus  int         // with this status
}

func newFake(t *testing.T) *fake {
	f := &fake{t: t, deployments: map[string]*api.Deployment{}, events: map[string][]api.Event{},
		hold: map[string]bool{}, logs: map[string][]api.Log{}, created: "d-new"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathDevices, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		reply(w, 200, api.DeviceList{Devices: f.devices})
	})
	mux.HandleFunc("GET "+api.PathDevice, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, d := range f.devices {
			if d.ID == r.PathValue("id") {
				reply(w, 200, d)
				return
			}
		}
		replyErr(w, 404, api.CodeNotFound, "no device "+r.PathValue("id"))
	})
	mux.HandleFunc("POST "+api.PathBundles, func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.uploads = append(f.uploads, data)
		f.mu.Unlock()
		sum := sha256.Sum256(data)
		reply(w, 201, api.Bundle{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), Flow: "app", Version: 7, Created: now})
	})
	mux.HandleFunc("POST "+api.PathDeployments, func(w http.ResponseWriter, r *http.Request) {
		var c api.CreateDeployment
		json.NewDecoder(r.Body).Decode(&c)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.creates = append(f.creates, c)
		if f.createErr != nil {
			reply(w, 400, f.createErr)
			return
		}
		n := len(c.Devices)
		d := &api.Deployment{ID: f.created, Bundle: api.Bundle{SHA256: c.Bundle, Flow: "app", Version: 7}, Vars: c.Vars,
			Status: api.DeploymentRunning, Created: now, Counts: map[string]int{api.DevicePending: n}}
		if _, ok := f.deployments[d.ID]; !ok {
			f.deployments[d.ID] = d
		}
		reply(w, 201, d)
	})
	mux.HandleFunc("GET "+api.PathDeployments, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var l api.DeploymentList
		for _, id := range []string{"d-2", "d-1"} {
			if d, ok := f.deployments[id]; ok {
				c := *d
				c.Devices = nil
				l.Deployments = append(l.Deployments, c)
			}
		}
		reply(w, 200, l)
	})
	mux.HandleFunc("GET "+api.PathDeployment, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		d, ok := f.deployments[r.PathValue("id")]
		if !ok {
			replyErr(w, 404, api.CodeNotFound, "no deployment "+r.PathValue("id"))
			return
		}
		reply(w, 200, d)
	})
	mux.HandleFunc("GET "+api.PathDeviceLogs, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		var out []api.Log
		for _, l := range f.logs[r.PathValue("id")+"/"+r.PathValue("device")] {
			if s := r.URL.Query().Get("step"); s == "" || s == l.Step {
				out = append(out, l)
			}
		}
		reply(w, 200, api.LogList{Logs: out})
	})
	mux.HandleFunc("POST "+api.PathCancel, func(w http.ResponseWriter, r *http.Request) {
		var c api.Cancel
		json.NewDecoder(r.Body).Decode(&c)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.cancels = append(f.cancels, c)
		d, ok := f.deployments[r.PathValue("id")]
		if !ok {
			replyErr(w, 404, api.CodeNotFound, "no deployment "+r.PathValue("id"))
			return
		}
		if d.Status != api.DeploymentRunning {
			replyErr(w, 409, api.CodeConflict, "deployment "+d.ID+" has finished")
			return
		}
		out := *d
		out.Devices = nil
		out.Cancel = &api.Cancellation{By: c.By, Note: c.Note, Time: now}
		reply(w, 200, out)
	})
	mux.HandleFunc("GET "+api.PathDeploymentWatch, f.watch)
	f.rolloutRoutes(mux)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func replyErr(w http.ResponseWriter, status int, code, msg string) {
	reply(w, status, api.Error{Error: api.ErrorBody{Code: code, Message: msg}})
}

func (f *fake) watch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	f.mu.Lock()
	f.watches = append(f.watches, r.Header.Get("Last-Event-ID"))
	evs, ok := f.events[id]
	hold := f.hold[id]
	f.mu.Unlock()
	if !ok {
		replyErr(w, 404, api.CodeNotFound, "no deployment "+id)
		return
	}
	after, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	w.Header().Set("Content-Type", "text/event-stream")
	fmt.Fprint(w, "retry: 1\n\n")
	for _, e := range evs {
		if e.Seq > after {
			data, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Kind, data)
		}
	}
	w.(http.Flusher).Flush()
	if hold {
		<-r.Context().Done()
	}
}

// fleet returns a Fleet of the fake with the test clock, writing to the
// buffers.
func (f *fake) fleet(t *testing.T, format Format, out, errb *bytes.Buffer) *Fleet {
	c, err := client.New(f.srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Fleet{Client: c, Out: out, Err: errb, Format: format, Now: func() time.Time { return now }}
}

// run runs the edgeflow command line against the fake and returns the
// exit code, stdout and stderr.
func (f *fake) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runFleet(t, append(args, "--controller", f.srv.URL)...)
}

func runFleet(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	root := &cobra.Command{Use: "edgeflow"}
	root.SetOut(&out)
	root.SetErr(&errb)
	root.AddCommand(FleetCommands(&out, &errb)...)
	code := Run(root, args, &errb)
	return code, out.String(), errb.String()
}

// fields splits a table's output into rows of fields, so assertions do not
// depend on column widths.
func fields(out string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

// hasRow reports whether some row of out starts with want's fields.
func hasRow(out string, want ...string) bool {
	for _, r := range fields(out) {
		if len(r) >= len(want) && reflect.DeepEqual(r[:len(want)], want) {
			return true
		}
	}
	return false
}

// decodeYAML reads YAML output into v through its JSON form, so v's JSON
// tags must match the YAML keys.
func decodeYAML(t *testing.T, data string, v any) {
	t.Helper()
	var doc any
	if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
		t.Fatalf("yaml: %v\n%s", err, data)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("yaml as json: %v\n%s", err, data)
	}
}

func devicesFixture() []api.Device {
	return []api.Device{
		{ID: "edge-2", Status: transport.Offline, Agent: "1.1.0", LastSeen: now.Add(-3 * 24 * time.Hour)},
		{ID: "edge-1", Status: transport.Online, Agent: "1.2.0", Protocol: []int{1},
			Labels:       map[string]string{"tier": "edge", "site": "a", "yes": "no"},
			Capabilities: &transport.Capabilities{Docker: true, Compose: transport.ComposeV2},
			Execution:    &transport.Current{Deployment: "d-1", Execution: "x-1", Flow: "web", Status: transport.StatusRunning},
			LastSeen:     now.Add(-5 * time.Second)},
	}
}

func TestDevicesOutput(t *testing.T) {
	f := newFake(t)
	f.devices = devicesFixture()
	var out, errb bytes.Buffer

	if err := f.fleet(t, FormatTable, &out, &errb).Devices(t.Context()); err != nil {
		t.Fatal(err)
	}
	rows := fields(out.String())
	if want := []string{"ID", "STATUS", "AGENT", "LABELS", "RUNNING", "LAST", "SEEN"}; !reflect.DeepEqual(rows[0], want) {
		t.Fatalf("header %v", rows[0])
	}
	// Sorted by id; labels k=v sorted; the running deployment/flow; age.
	if want := []string{"edge-1", "online", "1.2.0", "site=a,tier=edge,yes=no", "d-1/web", "5s", "ago"}; !reflect.DeepEqual(rows[1], want) {
		t.Fatalf("row 1 %v\n%s", rows[1], out.String())
	}
	if want := []string{"edge-2", "offline", "1.1.0", "-", "-", "3d", "ago"}; !reflect.DeepEqual(rows[2], want) {
		t.Fatalf("row 2 %v", rows[2])
	}

	for _, format := range []Format{FormatJSON, FormatYAML} {
		out.Reset()
		if err := f.fleet(t, format, &out, &errb).Devices(t.Context()); err != nil {
			t.Fatal(err)
		}
		var got api.DeviceList
		if format == FormatJSON {
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
		} else {
			decodeYAML(t, out.String(), &got)
			// The API's key names, in the API's order; "no" stays a string.
			for _, want := range []string{"devices:\n  - id: edge-2\n    status: offline\n", "lastSeen: ", `"yes": "no"`} {
				if !strings.Contains(out.String(), want) {
					t.Fatalf("yaml lacks %q:\n%s", want, out.String())
				}
			}
		}
		if !reflect.DeepEqual(got.Devices, f.devices) {
			t.Fatalf("%s: got %+v\nwant %+v", format, got.Devices, f.devices)
		}
	}

	out.Reset()
	if err := f.fleet(t, FormatTable, &out, &errb).Device(t.Context(), "edge-2"); err != nil || !hasRow(out.String(), "edge-2", "offline") {
		t.Fatalf("device: %v\n%s", err, out.String())
	}
	if code, _, errs := f.run(t, "devices", "nope"); code != ExitFailed || !strings.Contains(errs, "no device nope") {
		t.Fatalf("unknown device: %d %q", code, errs)
	}
	f.devices = nil
	if code, out, errs := f.run(t, "devices", "-o", "json"); code != 0 || strings.TrimSpace(out) != "{\n  \"devices\": []\n}" {
		t.Fatalf("no devices, json: %d %q %q", code, out, errs)
	}
}

// deploymentsFixture: d-1 finished Failed on three devices, d-2 running.
func deploymentsFixture() map[string]*api.Deployment {
	fin := now.Add(-time.Minute)
	bundle := api.Bundle{SHA256: strings.Repeat("ab", 32), Size: 1024, Flow: "web", Version: 1767225600, KeyID: "3f2a9c0d11e4b7a8", Created: now.Add(-time.Hour)}
	health := &transport.ErrorInfo{Type: "Verification", Message: "GET http://127.0.0.1/health: 503 Service Unavailable; " + strings.Repeat("x", 80)}
	return map[string]*api.Deployment{
		"d-1": {ID: "d-1", Bundle: bundle, Vars: map[string]string{"region": "eu"}, Status: api.DeploymentFailed,
			Created: now.Add(-10 * time.Minute), Finished: &fin,
			Counts: map[string]int{"Succeeded": 1, "Failed": 1, "Rejected": 1},
			Devices: []api.DeviceRun{
				{Device: "edge-1", Status: "Succeeded", Dispatch: "m1", Execution: "x1", Updated: fin,
					Steps: []api.StepRun{{Name: "config", Status: "Succeeded", Attempt: 1}, {Name: "health", Status: "Succeeded", Attempt: 1}}},
				{Device: "edge-3", Status: "Failed", Dispatch: "m3", Execution: "x3", Updated: fin,
					Error: &transport.ErrorInfo{Type: "Verification", Message: "step health failed"},
					Steps: []api.StepRun{{Name: "config", Status: "Succeeded", Attempt: 1}, {Name: "health", Status: "Failed", Attempt: 2, Error: health}},
					RollbackActions: []api.RollbackActionRun{{Step: "config", Action: "restore-backup", Status: "Failed",
						Error: &transport.ErrorInfo{Type: "Integrity", Message: "backup missing"}}}},
				{Device: "edge-4", Status: "Rejected", Dispatch: "m4", Updated: fin,
					Error: &transport.ErrorInfo{Type: "Integrity", Message: "bundle signed by unknown key 3f2a9c0d11e4b7a8"}},
			}},
		"d-2": {ID: "d-2", Bundle: bundle, Status: api.DeploymentRunning, Created: now.Add(-2 * time.Minute),
			Counts: map[string]int{"Succeeded": 3, "Running": 1, "Pending": 1},
			Devices: []api.DeviceRun{{Device: "edge-9", Status: "Running", Dispatch: "m9", Updated: now.Add(-time.Second),
				Steps: []api.StepRun{{Name: "config", Status: "Succeeded", Attempt: 1}, {Name: "pull", Status: "Running", Attempt: 1}}}}},
	}
}

func TestDeploymentsOutput(t *testing.T) {
	f := newFake(t)
	f.deployments = deploymentsFixture()
	var out, errb bytes.Buffer
	if err := f.fleet(t, FormatTable, &out, &errb).Deployments(t.Context()); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !hasRow(s, "ID", "FLOW", "VERSION", "STATUS", "DEVICES", "CREATED") ||
		!hasRow(s, "d-2", "web", "1767225600", "Running", "3/5", "succeeded,", "1", "running,", "1", "pending", "2m", "ago") ||
		!hasRow(s, "d-1", "web", "1767225600", "Failed", "1/3", "succeeded,", "1", "failed,", "1", "rejected", "10m", "ago") {
		t.Fatalf("table:\n%s", s)
	}
	for _, format := range []Format{FormatJSON, FormatYAML} {
		out.Reset()
		if err := f.fleet(t, format, &out, &errb).Deployments(t.Context()); err != nil {
			t.Fatal(err)
		}
		var got api.DeploymentList
		if format == FormatJSON {
			json.Unmarshal(out.Bytes(), &got)
		} else {
			decodeYAML(t, out.String(), &got)
		}
		if len(got.Deployments) != 2 || got.Deployments[0].ID != "d-2" || got.Deployments[1].Counts["Rejected"] != 1 ||
			!got.Deployments[1].Finished.Equal(*f.deployments["d-1"].Finished) {
			t.Fatalf("%s: %+v", format, got)
		}
	}
}

func TestDeploymentShow(t *testing.T) {
	f := newFake(t)
	f.deployments = deploymentsFixture()
	var out, errb bytes.Buffer
	if err := f.fleet(t, FormatTable, &out, &errb).ShowDeployment(t.Context(), "d-1"); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range [][]string{
		{"deployment:", "d-1"},
		{"flow:", "web", "version", "1767225600", "(bundle", "abababababab,", "signed", "by", "key", "3f2a9c0d11e4b7a8)"},
		{"status:", "Failed"},
		{"devices:", "1/3", "succeeded,", "1", "failed,", "1", "rejected"},
		{"vars:", "region=eu"},
		{"DEVICE", "STATUS", "STEP", "ERROR", "UPDATED"},
		{"edge-1", "Succeeded", "-", "-", "1m", "ago"},
		{"edge-3", "Failed", "health", "Verification:", "GET"},
		{"edge-4", "Rejected", "-", "Integrity:", "bundle"},
	} {
		if !hasRow(s, want...) {
			t.Errorf("no row %q in\n%s", want, s)
		}
	}
	// The ERROR column is cut; the failing steps below say it all.
	if !strings.Contains(s, "GET http://127.0.0.1/health: 503 Service Unav…  1m ago") {
		t.Errorf("error column not truncated:\n%s", s)
	}
	for _, want := range []string{
		"failing steps:\n",
		"  edge-3: step health failed on attempt 2 (Verification): GET http://127.0.0.1/health: 503 Service Unavailable; " + strings.Repeat("x", 80) + "\n",
		"  edge-3: rollback action restore-backup for step config failed (Integrity): backup missing\n",
		"  edge-4: Rejected (Integrity): bundle signed by unknown key 3f2a9c0d11e4b7a8\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("lacks %q:\n%s", want, s)
		}
	}

	out.Reset()
	if err := f.fleet(t, FormatTable, &out, &errb).ShowDeployment(t.Context(), "d-2"); err != nil || !hasRow(out.String(), "edge-9", "Running", "pull", "-", "1s", "ago") {
		t.Fatalf("running: %v\n%s", err, out.String())
	}

	for _, format := range []Format{FormatJSON, FormatYAML} {
		out.Reset()
		if err := f.fleet(t, format, &out, &errb).ShowDeployment(t.Context(), "d-1"); err != nil {
			t.Fatal(err)
		}
		var got api.Deployment
		if format == FormatJSON {
			json.Unmarshal(out.Bytes(), &got)
		} else {
			decodeYAML(t, out.String(), &got)
		}
		want := f.deployments["d-1"]
		if got.ID != want.ID || !reflect.DeepEqual(got.Devices, want.Devices) {
			t.Fatalf("%s:\n%+v\nwant\n%+v", format, got.Devices, want.Devices)
		}
	}
	if code, _, errs := f.run(t, "deployment", "show", "d-9"); code != ExitFailed || !strings.Contains(errs, "404") || !strings.Contains(errs, "no deployment d-9") {
		t.Fatalf("unknown: %d %q", code, errs)
	}
	if code, _, _ := f.run(t, "deployment"); code != ExitInvalid {
		t.Fatalf("deployment without show: %d", code)
	}
}

func TestLogs(t *testing.T) {
	f := newFake(t)
	f.logs["d-1/edge-3"] = []api.Log{
		{Step: "config", Attempt: 1, Status: "Succeeded", Log: ""},
		{Step: "health", Attempt: 2, Status: "Failed", Log: "curl: 503\nretrying", Truncated: true},
		{Step: "restore", Rollback: "flow", Attempt: 1, Status: "Succeeded", Log: "restored\n"},
	}
	var out, errb bytes.Buffer
	if err := f.fleet(t, FormatTable, &out, &errb).Logs(t.Context(), "d-1", "edge-3", ""); err != nil {
		t.Fatal(err)
	}
	want := "==> step config, attempt 1: Succeeded <==\n(no output)\n\n" +
		"==> step health, attempt 2: Failed <==\n[… earlier output cut: the agent keeps the tail]\ncurl: 503\nretrying\n\n" +
		"==> rollback step restore, attempt 1: Succeeded <==\nrestored\n"
	if out.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", out.String(), want)
	}
	code, stdout, _ := f.run(t, "logs", "d-1", "--device", "edge-3", "--step", "health", "-o", "json")
	var l api.LogList
	if err := json.Unmarshal([]byte(stdout), &l); code != 0 || err != nil || len(l.Logs) != 1 || l.Logs[0].Log != "curl: 503\nretrying" || !l.Logs[0].Truncated {
		t.Fatalf("json: %d %v %+v", code, err, l)
	}
	code, stdout, _ = f.run(t, "logs", "d-1", "--device", "edge-3", "-o", "yaml")
	decodeYAML(t, stdout, &l)
	if code != 0 || len(l.Logs) != 3 || l.Logs[2].Rollback != "flow" {
		t.Fatalf("yaml: %d %+v\n%s", code, l, stdout)
	}
	if code, _, errs := f.run(t, "logs", "d-1"); code != ExitInvalid || !strings.Contains(errs, "--device") {
		t.Fatalf("no --device: %d %q", code, errs)
	}
	if code, _, errs := f.run(t, "logs", "d-1", "--device", "edge-1", "--step", "x"); code != 0 || !strings.Contains(errs, "step x has not") {
		t.Fatalf("no logs: %d %q", code, errs)
	}
}

func TestCancel(t *testing.T) {
	f := newFake(t)
	f.deployments = deploymentsFixture()
	code, out, errs := f.run(t, "cancel", "d-2", "--note", "bad release")
	if code != 0 || !strings.Contains(out, "cancel of deployment d-2 requested") || len(f.cancels) != 1 || f.cancels[0].Note != "bad release" {
		t.Fatalf("%d %q %q %+v", code, out, errs, f.cancels)
	}
	code, out, _ = f.run(t, "cancel", "d-2", "-o", "json")
	var d api.Deployment
	if err := json.Unmarshal([]byte(out), &d); code != 0 || err != nil || d.Cancel == nil {
		t.Fatalf("json: %d %v %+v", code, err, d)
	}
	if code, _, errs := f.run(t, "cancel", "d-1"); code != ExitFailed || !strings.Contains(errs, "409") || !strings.Contains(errs, "has finished") {
		t.Fatalf("finished: %d %q", code, errs)
	}
	if code, _, _ := f.run(t, "cancel"); code != ExitInvalid {
		t.Fatalf("no id: %d", code)
	}
}

func TestUsageAndConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	for _, cmd := range [][]string{{"devices"}, {"deployments"}, {"deployment", "show", "d-1"}, {"watch", "d-1"}, {"logs", "d-1", "--device", "e"}, {"cancel", "d-1"}} {
		code, _, errs := runFleet(t, append(cmd, "--controller", dead)...)
		if code != ExitFailed || !strings.Contains(errs, "cannot reach the controller at "+dead) || !strings.Contains(errs, "$EDGEFLOW_CONTROLLER") {
			t.Errorf("%v with no controller: %d %q", cmd, code, errs)
		}
	}
	// $EDGEFLOW_CONTROLLER is the default, --controller wins over it.
	t.Setenv(EnvController, dead)
	if code, _, errs := runFleet(t, "devices"); code != ExitFailed || !strings.Contains(errs, dead) {
		t.Errorf("env: %d %q", code, errs)
	}
	f := newFake(t)
	if code, _, errs := runFleet(t, "devices", "--controller", f.srv.URL); code != 0 {
		t.Errorf("--controller over env: %d %q", code, errs)
	}
	for _, args := range [][]string{
		{"devices", "-o", "xml"},
		{"devices", "--controller", "127.0.0.1:8080"},
		{"devices", "a", "b"},
		{"deployments", "extra"},
		{"watch"},
		{"watch", "d-1", "--timeout", "soon"},
		{"watch", "d-1", "--bogus"},
	} {
		if code, _, errs := runFleet(t, args...); code != ExitInvalid {
			t.Errorf("%v: %d %q, want %d", args, code, errs, ExitInvalid)
		}
	}
}

func TestToken(t *testing.T) {
	var got []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		replyErr(w, 401, "unauthorized", "bad token")
	}))
	defer srv.Close()
	t.Setenv(EnvToken, "from-env")
	code, _, errs := runFleet(t, "devices", "--controller", srv.URL)
	if code != ExitFailed || !strings.Contains(errs, "401") || !strings.Contains(errs, "--token or $EDGEFLOW_TOKEN") {
		t.Fatalf("%d %q", code, errs)
	}
	runFleet(t, "devices", "--controller", srv.URL, "--token", "from-flag")
	if want := []string{"Bearer from-env", "Bearer from-flag"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Authorization %q, want %q", got, want)
	}
}

func TestYAMLKeepsTypesAndOrder(t *testing.T) {
	var b bytes.Buffer
	v := map[string]any{"s": "123", "t": "2030-01-02T03:04:05Z", "b": "true", "n": 5, "e": []string{}, "m": "a\nb"}
	if err := FormatYAML.Encode(&b, v); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	decodeYAML(t, b.String(), &back)
	want := map[string]any{"s": "123", "t": "2030-01-02T03:04:05Z", "b": "true", "n": 5.0, "e": []any{}, "m": "a\nb"}
	if !reflect.DeepEqual(back, want) {
		t.Fatalf("%v\n%s", back, b.String())
	}
}

func TestAgeAndCounts(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s ago", 59 * time.Second: "59s ago", 61 * time.Minute: "1h ago", 47 * time.Hour: "47h ago", 72 * time.Hour: "3d ago", -time.Second: "just now",
	} {
		if got := age(now, now.Add(-d)); got != want {
			t.Errorf("age %v = %q, want %q", d, got, want)
		}
	}
	if got := age(now, time.Time{}); got != "never" {
		t.Errorf("zero time: %q", got)
	}
	got := countsText(map[string]int{"Succeeded": 3, "Failed": 1, "RolledBack": 1, "Weird": 2, "Pending": 0})
	if want := "3/7 succeeded, 1 failed, 1 rolled back, 2 weird"; got != want {
		t.Errorf("countsText %q, want %q", got, want)
	}
	if got := countsText(nil); got != "no devices" {
		t.Errorf("no counts: %q", got)
	}
}
