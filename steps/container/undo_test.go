package container

import (
	"context"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/containers"
)

// TestUndoDataRoundTrip checks the journaled format: what encode writes,
// decodeUndo reads back, with the field names of the package doc; and
// that data without restartPolicy (an older agent's) reads as a policy
// not recorded, while a recorded "no" is kept.
func TestUndoDataRoundTrip(t *testing.T) {
	base := undoData{Version: UndoVersion, Name: "api", PreviousID: "4f1c", PreviousImage: "sha256:9a0b", Running: true, Aside: "api.edgeflow-prev-0d3e5a7c"}
	const head = `{"version":1,"name":"api","previousId":"4f1c","previousImage":"sha256:9a0b","running":true,"aside":"api.edgeflow-prev-0d3e5a7c"`
	for _, c := range []struct {
		policy restartPolicy
		want   string
	}{
		{restartPolicy{Name: "on-failure", MaxRetries: 3}, head + `,"restartPolicy":{"name":"on-failure","maxRetries":3}}`},
		{restartPolicy{Name: "always"}, head + `,"restartPolicy":{"name":"always"}}`},
		{restartPolicy{Name: "no"}, head + `,"restartPolicy":{"name":"no"}}`},
		{restartPolicy{}, head + `}`},
	} {
		u := base
		u.RestartPolicy = c.policy
		data, err := u.encode()
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != c.want {
			t.Fatalf("encoded %s\nwant    %s", data, c.want)
		}
		back, err := decodeUndo(data)
		if err != nil || *back != u {
			t.Fatalf("decoded %+v, %v", back, err)
		}
		if back.RestartPolicy.known() != (c.policy.Name != "") || back.RestartPolicy.parked() != (c.policy.Name != "" && c.policy.Name != "no") {
			t.Errorf("%s: known %v, parked %v", data, back.RestartPolicy.known(), back.RestartPolicy.parked())
		}
	}
	if p := recordPolicy(containers.RestartPolicy{}); p != (restartPolicy{Name: "no"}) {
		t.Errorf("no policy records as %+v, want no", p)
	}
}

// TestDecodeUndoRefuses checks that data of another version, incomplete
// data and junk are refused with an error saying why.
func TestDecodeUndoRefuses(t *testing.T) {
	for _, c := range []struct{ data, want string }{
		{`{"version":2,"name":"a","previousId":"x","aside":"a.p"}`, "version 2"},
		{`{"version":1,"name":"a","aside":"a.p"}`, "incomplete"},
		{`{"version":1,"name":"a","previousId":"x","aside":"a"}`, "incomplete"},
		{`not json`, "undo data"},
	} {
		_, err := decodeUndo([]byte(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.data, err, c.want)
		}
	}
}

// TestAsideName checks the aside name: the first 8 letters and digits of
// the execution id after the container name.
func TestAsideName(t *testing.T) {
	for _, c := range []struct{ name, exec, want string }{
		{"api", "0d3e5a7c-1234-5678", "api.edgeflow-prev-0d3e5a7c"},
		{"api", "01HZ-XY", "api.edgeflow-prev-01HZXY"},
		{"web", "", "web.edgeflow-prev-0"},
		{"web", "é/..//", "web.edgeflow-prev-0"},
	} {
		if got := asideName(c.name, c.exec); got != c.want {
			t.Errorf("asideName(%q, %q) = %q, want %q", c.name, c.exec, got, c.want)
		}
	}
}

// TestRunNeedsWhatItNeeds checks the refusals that come before any engine
// call: not a container step, no journal, no engine.
func TestRunNeedsWhatItNeeds(t *testing.T) {
	ctx := context.Background()
	env := &steps.Env{SaveUndo: func([]byte) error { return nil }}
	s := &flow.Step{Name: "app", Container: &flow.Container{Name: "api", Image: "example/api:2"}}
	r := &Runner{}
	if err := r.Run(ctx, &flow.Step{Name: "x"}, env); err == nil {
		t.Error("ran a step that is not a container step")
	}
	if err := r.Run(ctx, s, &steps.Env{}); err == nil || !strings.Contains(err.Error(), "journal") {
		t.Errorf("no SaveUndo: %v", err)
	}
	if err := r.Run(ctx, s, env); err == nil || onfailure.KindOf(err) != onfailure.Unknown {
		t.Errorf("no engine: %v", err)
	}
	if err := r.Preflight(&flow.Step{Name: "app", Container: &flow.Container{Name: "api"}}, t.TempDir()); err == nil {
		t.Error("preflight accepted a step without image")
	}
	s.Container.ImageArchive = "images/missing.tar"
	if err := r.Preflight(s, t.TempDir()); err == nil || !strings.Contains(err.Error(), "images/missing.tar") {
		t.Errorf("preflight of a missing archive: %v", err)
	}
}
