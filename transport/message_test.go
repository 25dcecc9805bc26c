package transport_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

const device = "edge-1"

// bodies returns a filled-in body of every message type, named for the
// subtests.
func bodies() map[string]transport.Body {
	until := time.Date(2025, 6, 1, 11, 0, 0, 0, time.UTC)
	verr := &transport.ErrorInfo{Type: onfailure.Verification, Message: "health: status 503"}
	return map[string]transport.Body{
		"dispatch":              &transport.Dispatch{Deployment: "dep-1", URL: "https://ctl.example/bundles/b1", SHA256: strings.Repeat("ab", 32), Size: 1024, Vars: map[string]string{"version": "2.0"}},
		"dispatch-minimal":      &transport.Dispatch{Deployment: "dep-1", URL: "http://10.0.0.1:8080/b", SHA256: strings.Repeat("0", 64), Size: 1},
		"dispatch-guided":       &transport.Dispatch{Deployment: "dep-1", URL: "https://ctl.example/bundles/b1", SHA256: strings.Repeat("ab", 32), Size: 1024, GuidedFailure: &transport.GuidedFailure{TimeoutSeconds: 1800, OnTimeout: onfailure.RollbackFlow}},
		"dispatch-guided-abort": &transport.Dispatch{Deployment: "dep-1", URL: "https://ctl.example/bundles/b1", SHA256: strings.Repeat("ab", 32), Size: 1024, GuidedFailure: &transport.GuidedFailure{TimeoutSeconds: transport.MaxGuidedTimeoutSeconds}},
		"dispatch-strategies": &transport.Dispatch{Deployment: "dep-1", URL: "https://ctl.example/bundles/b1", SHA256: strings.Repeat("ab", 32), Size: 1024, FailureStrategies: []transport.Strategy{
			{Errors: []onfailure.Kind{onfailure.Connectivity, onfailure.Timeout}, Action: onfailure.Retry, Retry: &transport.StrategyRetry{Count: 2, Intervals: []string{"10s", "1m0s"}, OnExhausted: onfailure.RollbackFlow}},
			{Errors: []onfailure.Kind{onfailure.Verification}, Action: onfailure.ManualIntervention, Manual: &transport.StrategyManual{Timeout: "1h0m0s", OnTimeout: onfailure.Abort}},
			{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Abort},
		}},
		"cancel":                &transport.Cancel{Deployment: "dep-1", By: "alice", Note: "stop"},
		"guide":                 &transport.Guide{Deployment: "dep-1", Step: "migrate", Action: onfailure.Retry, By: "alice"},
		"guide-only-paused":     &transport.Guide{Deployment: "dep-1", Action: onfailure.Exclude},
		"mark-failed":           &transport.MarkFailed{Deployment: "dep-1"},
		"rollback":              &transport.Rollback{Deployment: "dep-1", By: "controller", Note: "abort threshold reached"},
		"rollback-minimal":      &transport.Rollback{Deployment: "dep-1"},
		"rolled-back":           &transport.RolledBack{Deployment: "dep-1", Execution: "ex-1", Status: transport.StatusRolledBack},
		"rolled-back-failed":    &transport.RolledBack{Deployment: "dep-1", Execution: "ex-1", Status: transport.StatusRollbackFailed, Error: verr},
		"rolled-back-refused":   &transport.RolledBack{Deployment: "dep-1", Status: transport.StatusFailed, Error: &transport.ErrorInfo{Type: onfailure.Unknown, Message: "not the device's last execution"}},
		"accepted":              &transport.Accepted{Deployment: "dep-1", Dispatch: "m-1", Execution: "ex-1", Flow: "web"},
		"rejected":              &transport.Rejected{Deployment: "dep-1", Dispatch: "m-1", Error: &transport.ErrorInfo{Type: onfailure.Integrity, Message: "bad signature"}},
		"queued":                &transport.Queued{Deployment: "dep-2", Dispatch: "m-2", Position: 2},
		"step-started":          &transport.StepStarted{Deployment: "dep-1", Execution: "ex-1", Step: "s", Group: "g", Attempt: 1},
		"step-started-rollback": &transport.StepStarted{Deployment: "dep-1", Execution: "ex-1", Step: "undo", Rollback: "flow", Attempt: 2},
		"step-finished":         &transport.StepFinished{Deployment: "dep-1", Execution: "ex-1", Step: "health", Attempt: 3, Status: transport.StatusFailed, Error: verr, DurationMS: 1500, Log: strings.Repeat("x", transport.MaxLogTail), LogTruncated: true},
		"step-finished-skipped": &transport.StepFinished{Deployment: "dep-1", Execution: "ex-1", Step: "later", Status: transport.StatusSkipped},
		"step-finished-marked":  &transport.StepFinished{Deployment: "dep-1", Execution: "ex-1", Step: "s", Attempt: 1, Status: transport.StatusSucceeded, Marked: true, Error: verr},
		"rollback-action":       &transport.RollbackAction{Deployment: "dep-1", Execution: "ex-1", Step: "cfg", Action: "revertFiles", Trigger: "anyStep", Status: transport.StatusRollbackFailed, Error: verr},
		"paused":                &transport.Paused{Deployment: "dep-1", Execution: "ex-1", Step: "migrate", Error: verr, Until: &until},
		"paused-group":          &transport.Paused{Deployment: "dep-1", Execution: "ex-1", Group: "app"},
		"resumed":               &transport.Resumed{Deployment: "dep-1", Execution: "ex-1", Step: "migrate", Action: onfailure.Abort, By: "timeout"},
		"flow-finished":         &transport.FlowFinished{Deployment: "dep-1", Execution: "ex-1", Flow: "web", Status: transport.StatusRolledBack, Error: verr, DurationMS: 42},
		"ack":                   &transport.Ack{Seq: 17},
		"presence":              &transport.Presence{Status: transport.Online, Agent: "0.7.0", Protocol: []int{1}, Labels: map[string]string{"site": "b"}, Capabilities: &transport.Capabilities{Docker: true, Compose: transport.ComposeV1, Steps: []string{"file", "script"}, Commands: []string{transport.CommandRollback}}, Execution: &transport.Current{Deployment: "dep-1", Execution: "ex-1", Flow: "web", Status: transport.StatusPaused}},
		"presence-offline":      &transport.Presence{Status: transport.Offline},
	}
}

// encoded builds, sequences (events) and encodes a message with body.
func encoded(t *testing.T, body transport.Body, seq uint64) (*transport.Message, []byte) {
	t.Helper()
	m, err := transport.New(device, body)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type.Event() {
		m.Seq = seq
	}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return m, data
}

func TestEveryTypeRoundTrips(t *testing.T) {
	seen := map[transport.Type]bool{}
	var topics transport.Topics
	for name, body := range bodies() {
		t.Run(name, func(t *testing.T) {
			m, data := encoded(t, body, 5)
			seen[m.Type] = true
			if m.V != transport.Version || len(m.ID) != 32 || m.Device != device || m.Time.Location() != time.UTC {
				t.Errorf("New gave %+v", m)
			}
			topic, err := topics.Topic(device, m.Type.Channel())
			if err != nil {
				t.Fatal(err)
			}
			got, err := topics.Decode(topic, data)
			if err != nil {
				t.Fatalf("decode %s: %v", data, err)
			}
			if !got.Time.Equal(m.Time) {
				t.Errorf("time %v, want %v", got.Time, m.Time)
			}
			got.Time = m.Time
			if !reflect.DeepEqual(got, m) {
				t.Errorf("round trip:\n got %#v\nwant %#v", got, m)
			}
			if got.Type.Event() != (got.Seq == 5) {
				t.Errorf("seq %d on %s", got.Seq, got.Type)
			}
		})
	}
	for _, ty := range transport.Types {
		if !seen[ty] {
			t.Errorf("no example of %s", ty)
		}
	}
}

// TestTypesAndChannels pins which type travels where.
func TestTypesAndChannels(t *testing.T) {
	want := map[transport.Channel][]transport.Type{
		transport.ChannelCommands: {transport.TypeDispatch, transport.TypeCancel, transport.TypeGuide, transport.TypeMarkFailed, transport.TypeRollback},
		transport.ChannelEvents: {transport.TypeAccepted, transport.TypeRejected, transport.TypeQueued, transport.TypeStepStarted,
			transport.TypeStepFinished, transport.TypeRollbackAction, transport.TypePaused, transport.TypeResumed, transport.TypeFlowFinished, transport.TypeRolledBack},
		transport.ChannelAcks:     {transport.TypeAck},
		transport.ChannelPresence: {transport.TypePresence},
	}
	n := 0
	for c, types := range want {
		for _, ty := range types {
			n++
			if ty.Channel() != c || !ty.Valid() || ty.Event() != (c == transport.ChannelEvents) {
				t.Errorf("%s: channel %q event %v", ty, ty.Channel(), ty.Event())
			}
		}
	}
	if n != len(transport.Types) {
		t.Errorf("%d types pinned, Types has %d", n, len(transport.Types))
	}
}

// TestStatusesMatchEngine keeps the wire's statuses the engine's.
func TestStatusesMatchEngine(t *testing.T) {
	eng := []engine.Status{engine.Pending, engine.Running, engine.Paused, engine.Succeeded, engine.Failed,
		engine.Ignored, engine.Skipped, engine.Aborted, engine.RolledBack, engine.RollbackFailed}
	if len(eng) != len(transport.Statuses) {
		t.Fatalf("engine has %d statuses, transport %d", len(eng), len(transport.Statuses))
	}
	for i, s := range eng {
		ts := transport.Status(s)
		if transport.Statuses[i] != ts || ts.Done() != s.Done() {
			t.Errorf("status %s: transport %s, done %v vs %v", s, transport.Statuses[i], ts.Done(), s.Done())
		}
	}
	// ErrorInfo has the engine's JSON shape.
	a, _ := json.Marshal(engine.ErrorInfo{Type: onfailure.Timeout, Message: "m"})
	b, _ := json.Marshal(transport.ErrorInfo{Type: onfailure.Timeout, Message: "m"})
	if string(a) != string(b) {
		t.Errorf("ErrorInfo %s, engine %s", b, a)
	}
}

// valid is a message that decodes; tests mutate copies of it.
func valid() map[string]any {
	return map[string]any{
		"v": 1, "id": "m-1", "type": "step-started", "device": device, "time": "2025-06-01T10:00:00Z", "seq": 3,
		"body": map[string]any{"deployment": "dep-1", "execution": "ex-1", "step": "s", "attempt": 1},
	}
}

func TestDecodeRefuses(t *testing.T) {
	var topics transport.Topics
	events, _ := topics.Topic(device, transport.ChannelEvents)
	cases := []struct {
		name  string
		topic string
		edit  func(m map[string]any)
		raw   string
		want  string
	}{
		{name: "newer version", edit: func(m map[string]any) { m["v"] = 2 }, want: "version 2: newer message version; this reader understands version 1"},
		{name: "version 0", edit: func(m map[string]any) { m["v"] = 0 }, want: "version 0: want 1"},
		{name: "no version", edit: func(m map[string]any) { delete(m, "v") }, want: "v: missing"},
		{name: "version as string", edit: func(m map[string]any) { m["v"] = "1" }, want: "v: got a JSON string, want an integer"},
		{name: "no id", edit: func(m map[string]any) { delete(m, "id") }, want: "id: missing"},
		{name: "empty id", edit: func(m map[string]any) { m["id"] = "" }, want: "id: missing"},
		{name: "long id", edit: func(m map[string]any) { m["id"] = strings.Repeat("i", 129) }, want: "id: 129 bytes, over the 128-byte limit"},
		{name: "unknown type", edit: func(m map[string]any) { m["type"] = "reboot" }, want: `unknown type "reboot"`},
		{name: "other device", edit: func(m map[string]any) { m["device"] = "edge-2" }, want: "message for device edge-2 on topic of device edge-1"},
		{name: "unsafe device", edit: func(m map[string]any) { m["device"] = "a/b" }, want: `device id "a/b": contains "/"`},
		{name: "wrong channel", topic: "edgeflow/v1/devices/edge-1/commands", want: "step-started message on the commands topic (it belongs on events)"},
		{name: "foreign topic", topic: "other/devices/edge-1/events", want: "is not under"},
		{name: "bad time", edit: func(m map[string]any) { m["time"] = "yesterday" }, want: `time "yesterday": want RFC 3339`},
		{name: "no time", edit: func(m map[string]any) { delete(m, "time") }, want: "time: missing"},
		{name: "event without seq", edit: func(m map[string]any) { delete(m, "seq") }, want: "seq: missing"},
		{name: "event seq 0", edit: func(m map[string]any) { m["seq"] = 0 }, want: "seq: missing"},
		{name: "negative seq", edit: func(m map[string]any) { m["seq"] = -1 }, want: "seq: got a JSON number -1, want an integer"},
		{name: "seq on a command", topic: "edgeflow/v1/devices/edge-1/commands", edit: func(m map[string]any) {
			m["type"] = "cancel"
			m["body"] = map[string]any{"deployment": "d"}
		}, want: "seq: only events carry a sequence number, not cancel"},
		{name: "no body", edit: func(m map[string]any) { delete(m, "body") }, want: "body: missing or not a JSON object"},
		{name: "body array", edit: func(m map[string]any) { m["body"] = []int{} }, want: "body: missing or not a JSON object"},
		{name: "missing field", edit: func(m map[string]any) { delete(m["body"].(map[string]any), "execution") }, want: "body.execution: missing"},
		{name: "attempt 0", edit: func(m map[string]any) { m["body"].(map[string]any)["attempt"] = 0 }, want: "body.attempt 0: want 1 or more"},
		{name: "field type", edit: func(m map[string]any) { m["body"].(map[string]any)["attempt"] = "1" }, want: "body: attempt: got a JSON string, want an integer"},
		{name: "miscased field", edit: func(m map[string]any) { m["body"].(map[string]any)["Step"] = "s" }, want: `body: field "Step" must be spelled "step"`},
		{name: "miscased envelope", edit: func(m map[string]any) { m["ID"] = m["id"]; delete(m, "id") }, want: "id: missing"},
		{name: "not json", raw: "{", want: "not a JSON object"},
		{name: "null", raw: "null", want: "not a JSON object: null"},
		{name: "array", raw: "[1]", want: "not a JSON object"},
		{name: "too big", raw: `{"v":1,"pad":"` + strings.Repeat("x", transport.MaxMessageSize) + `"}`, want: "over the 65536-byte cap"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.raw)
			if tc.raw == "" {
				m := valid()
				if tc.edit != nil {
					tc.edit(m)
				}
				data, _ = json.Marshal(m)
			}
			topic := tc.topic
			if topic == "" {
				topic = events
			}
			_, err := topics.Decode(topic, data)
			var de *transport.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("err = %v (%T), want a *DecodeError", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to contain %q", err, tc.want)
			}
			if tc.name == "newer version" && !errors.Is(err, transport.ErrNewerVersion) {
				t.Errorf("err %v does not wrap ErrNewerVersion", err)
			}
		})
	}
}

// TestDecodeErrorNamesTheMessage: a refused event still tells its id and
// seq, so a controller can acknowledge it and log what it dropped.
func TestDecodeErrorNamesTheMessage(t *testing.T) {
	m := valid()
	m["body"].(map[string]any)["attempt"] = -4
	data, _ := json.Marshal(m)
	_, err := transport.DecodeMessage(data)
	var de *transport.DecodeError
	if !errors.As(err, &de) || de.ID != "m-1" || de.Seq != 3 || de.Type != transport.TypeStepStarted || de.Device != device {
		t.Fatalf("err = %#v", err)
	}
	if want := "message step-started m-1: body.attempt -4: want 1 or more"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	m := valid()
	m["trace"] = "abc"
	m["body"].(map[string]any)["release"] = 7
	data, _ := json.Marshal(m)
	got, err := transport.DecodeMessage(data)
	if err != nil {
		t.Fatal(err)
	}
	if b := got.Body.(*transport.StepStarted); b.Step != "s" || b.Attempt != 1 {
		t.Errorf("body %+v", b)
	}
}

func TestBodyChecks(t *testing.T) {
	hex := strings.Repeat("a", 64)
	for _, tc := range []struct {
		body transport.Body
		want string
	}{
		{&transport.Dispatch{URL: "https://x/b", SHA256: hex, Size: 1}, "deployment: missing"},
		{&transport.Dispatch{Deployment: "d", URL: "file:///b", SHA256: hex, Size: 1}, "want an absolute http or https URL"},
		{&transport.Dispatch{Deployment: "d", URL: "/b", SHA256: hex, Size: 1}, "want an absolute http or https URL"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: strings.ToUpper(hex), Size: 1}, "want 64 lowercase hex digits"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex}, "size 0: want a positive number of bytes"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, Vars: map[string]string{"": "v"}}, "vars key: missing"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, GuidedFailure: &transport.GuidedFailure{}}, "guidedFailure.timeoutSeconds 0: want 1 to 31622400"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, GuidedFailure: &transport.GuidedFailure{TimeoutSeconds: transport.MaxGuidedTimeoutSeconds + 1}}, "guidedFailure.timeoutSeconds 31622401"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, GuidedFailure: &transport.GuidedFailure{TimeoutSeconds: 60, OnTimeout: onfailure.Retry}}, `guidedFailure.onTimeout "Retry": want one of`},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, GuidedFailure: &transport.GuidedFailure{TimeoutSeconds: 60, OnTimeout: onfailure.ManualIntervention}}, `guidedFailure.onTimeout "ManualIntervention"`},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, GuidedFailure: &transport.GuidedFailure{TimeoutSeconds: 60, OnTimeout: onfailure.Exclude}}, `guidedFailure.onTimeout "Exclude"`},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, FailureStrategies: []transport.Strategy{}}, "failureStrategies: 0 strategies: want 1 to 64"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, FailureStrategies: []transport.Strategy{{Action: onfailure.Abort}}}, "failureStrategies[0].errors: want 1 to 11 error types"},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, FailureStrategies: []transport.Strategy{{Errors: []onfailure.Kind{"Oops"}, Action: onfailure.Abort}}}, `failureStrategies[0].errors: "Oops" is not an error type`},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, FailureStrategies: []transport.Strategy{{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Exclude}}}, `failureStrategies[0].action "Exclude": want one of`},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, FailureStrategies: []transport.Strategy{{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Retry, Retry: &transport.StrategyRetry{Count: 1, Intervals: []string{"5"}}}}}, `failureStrategies[0].retry.intervals[0]: "5": want a duration`},
		{&transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: hex, Size: 1, FailureStrategies: []transport.Strategy{{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.ManualIntervention, Manual: &transport.StrategyManual{Timeout: "-1h", OnTimeout: onfailure.Abort}}}}, `failureStrategies[0].manual.timeout: "-1h" is negative`},
		{&transport.Guide{Deployment: "d", Action: onfailure.ManualIntervention}, `action "ManualIntervention": want one of`},
		{&transport.Rejected{Deployment: "d", Dispatch: "m"}, "error: missing"},
		{&transport.Rejected{Deployment: "d", Dispatch: "m", Error: &transport.ErrorInfo{Type: "Oops"}}, `error.type: unknown error kind "Oops"`},
		{&transport.Queued{Deployment: "d", Dispatch: "m"}, "position 0: want 1 or more"},
		{&transport.StepFinished{Deployment: "d", Execution: "e", Step: "s", Status: transport.StatusRunning}, `status "Running": want a final status`},
		{&transport.StepFinished{Deployment: "d", Execution: "e", Step: "s", Status: "Done"}, `status "Done": unknown status`},
		{&transport.StepFinished{Deployment: "d", Execution: "e", Step: "s", Status: transport.StatusFailed, Log: strings.Repeat("x", transport.MaxLogTail+1)}, "log: 8193 bytes, over the 8192-byte limit"},
		{&transport.StepFinished{Deployment: "d", Execution: "e", Step: "s", Status: transport.StatusFailed, Log: "\xff"}, "log: not valid UTF-8"},
		{&transport.Paused{Deployment: "d", Execution: "e"}, "step and group: missing"},
		{&transport.Resumed{Deployment: "d", Execution: "e", Step: "s", Action: "Reboot"}, `action "Reboot": unknown action`},
		{&transport.FlowFinished{Deployment: "d", Execution: "e", Flow: "f", Status: transport.StatusSucceeded, DurationMS: -1}, "durationMs -1"},
		{&transport.Ack{}, "seq 0: want 1 or more"},
		{&transport.Presence{Status: "maybe"}, `status "maybe": want "online" or "offline"`},
		{&transport.Presence{Status: transport.Online, Capabilities: &transport.Capabilities{Compose: "v3"}}, `capabilities.compose "v3"`},
		{&transport.Presence{Status: transport.Online, Execution: &transport.Current{Deployment: "d", Execution: "e", Flow: "f"}}, `execution.status "": unknown status`},
	} {
		_, err := transport.New(device, tc.body)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%T) = %v, want %q", tc.body, err, tc.want)
		}
	}
	if _, err := transport.New("a+b", &transport.Ack{Seq: 1}); err == nil {
		t.Error("New accepted an unsafe device id")
	}
	if _, err := transport.New(device, nil); err == nil {
		t.Error("New accepted no body")
	}
	if _, err := transport.New(device, (*transport.Ack)(nil)); err == nil {
		t.Error("New accepted a nil body")
	}
}

func TestEncodeRefuses(t *testing.T) {
	m, err := transport.New(device, &transport.Accepted{Deployment: "d", Dispatch: "m", Execution: "e", Flow: "f"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Encode(); err == nil || !strings.Contains(err.Error(), "seq: missing") {
		t.Errorf("event without seq: %v", err)
	}
	c, _ := transport.New(device, &transport.Cancel{Deployment: "d"})
	c.Seq = 1
	if _, err := c.Encode(); err == nil || !strings.Contains(err.Error(), "only events carry") {
		t.Errorf("command with seq: %v", err)
	}
	c.Seq, c.Type = 0, transport.TypeGuide
	if _, err := c.Encode(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("type/body mismatch: %v", err)
	}
	big := map[string]string{}
	for i := 0; i < 20; i++ {
		big[strings.Repeat("k", i+1)] = strings.Repeat("v", transport.MaxTextLen)
	}
	d, err := transport.New(device, &transport.Dispatch{Deployment: "d", URL: "https://x/b", SHA256: strings.Repeat("a", 64), Size: 1, Vars: big})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Encode(); err == nil || !strings.Contains(err.Error(), "over the 65536-byte cap") {
		t.Errorf("oversize: %v", err)
	}
}

func TestNewIDsAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := transport.NewID()
		if seen[id] || len(id) != 32 {
			t.Fatalf("id %q repeated or malformed", id)
		}
		seen[id] = true
	}
}

func TestDeploymentOf(t *testing.T) {
	for _, b := range []transport.Body{&transport.Ack{Seq: 1}, &transport.Presence{Status: transport.Online}} {
		if got := transport.DeploymentOf(b); got != "" {
			t.Errorf("DeploymentOf(%s) = %q, want none", b.Type(), got)
		}
	}
	for _, b := range []transport.Body{&transport.Dispatch{Deployment: "d"}, &transport.Guide{Deployment: "d"}, &transport.StepFinished{Deployment: "d"}, &transport.FlowFinished{Deployment: "d"}} {
		if got := transport.DeploymentOf(b); got != "d" {
			t.Errorf("DeploymentOf(%s) = %q, want d", b.Type(), got)
		}
	}
}
