package main

// Guided failure on the device (docs/failure-handling.md, "Guided
// failure"): `apply --guided-failure` and a dispatch's guidedFailure pause
// a failure that would abort the flow, as the real binary runs them.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// guidedFailureFlow: flaky fails (exit 3, kind Unknown) on its first
// attempt only, and no strategy says what to do: without guided failure
// the flow aborts.
const guidedFailureFlow = `version: 1
name: guided-failure
steps:
  - name: flaky
    script: { run: 'if [ -f @TMP@/marker ]; then echo fixed; exit 0; fi; touch @TMP@/marker; echo broken; exit 3' }
  - name: after
    script: { run: 'touch @TMP@/after.ran' }
`

// pauseView is what `status --output json` says of pauses and guidance
// beyond procResult.
type pauseView struct {
	Pauses []struct {
		Step   string    `json:"step"`
		Until  time.Time `json:"until"`
		Guided bool      `json:"guided"`
	} `json:"pauses"`
	Guidance []struct {
		Action string `json:"action"`
		By     string `json:"by"`
		Guided bool   `json:"guided"`
	} `json:"guidance"`
}

func decodePauses(t *testing.T, out string) *pauseView {
	t.Helper()
	var v pauseView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("not a JSON result: %v\n%s", err, out)
	}
	return &v
}

// guidedPause waits until flaky is paused by guided failure and returns
// the pause's deadline, as status reports it.
func guidedPause(t *testing.T, a *bgApply, state string) time.Time {
	t.Helper()
	res := waitStatus(t, a, state, "flaky to pause", func(r *procResult) bool { return r.Status == "Paused" })
	if st, att, _, perr := res.step(t, "flaky"); st != "Paused" || att != 1 || perr == nil || perr.Type != "Unknown" {
		t.Fatalf("while paused: flaky is %s, attempts %d, error %+v; want Paused, 1, Unknown", st, att, perr)
	}
	s := runAgent(t, "status", "--state-dir", state, "--output", "json")
	v := decodePauses(t, s.stdout)
	if len(v.Pauses) != 1 || v.Pauses[0].Step != "flaky" || !v.Pauses[0].Guided || v.Pauses[0].Until.IsZero() {
		t.Fatalf("status must show flaky's guided pause and its deadline: %s", s.stdout)
	}
	return v.Pauses[0].Until
}

// A failing flow applied with --guided-failure pauses instead of
// aborting; guide Retry runs the step again and the flow goes on.
func TestProcessGuidedFailure(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	f := writeFlow(t, tmp, guidedFailureFlow)
	start := time.Now()
	a := startApply(t, f, state, "--guided-failure", "1h")
	until := guidedPause(t, a, state)
	if until.Before(start.Add(time.Hour)) || until.After(time.Now().Add(time.Hour)) {
		t.Errorf("pause until %s, want an hour after the failure", until)
	}
	if exists(filepath.Join(tmp, "after.ran")) {
		t.Fatal("after ran while flaky was paused")
	}
	if g := runAgent(t, "guide", "--state-dir", state, "Retry", "--note", "fixed it"); g.code != 0 {
		t.Fatalf("guide Retry: exit %d: %s", g.code, g.stderr)
	}
	code, res, out := a.wait(t)
	if code != 0 || res.Status != "Succeeded" {
		t.Fatalf("apply: exit %d, status %s\n%s\nstderr: %s", code, res.Status, out, a.stderr.String())
	}
	if st, att, _, perr := res.step(t, "flaky"); st != "Succeeded" || att != 2 || perr != nil {
		t.Errorf("flaky: %s, attempts %d, error %+v; want Succeeded, 2, none", st, att, perr)
	}
	if !exists(filepath.Join(tmp, "after.ran")) {
		t.Error("after did not run")
	}
	checkGuidance(t, res, "flaky", "Retry", "fixed it", start, time.Now())
	if v := decodePauses(t, out); len(v.Pauses) != 0 || len(v.Guidance) != 1 || !v.Guidance[0].Guided {
		t.Errorf("result: pauses %+v, guidance %+v; want no pause left and the guidance marked guided", v.Pauses, v.Guidance)
	}
	checkStatusAfter(t, state, out)
}

// The guided failure apply was given is journaled with the execution: an
// agent killed while paused and resumed pauses again until the same
// deadline, and takes guidance.
func TestProcessGuidedFailureResume(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	f := writeFlow(t, tmp, guidedFailureFlow)
	a := startApply(t, f, state, "--guided-failure", "1h:MarkAsSuccess")
	until := guidedPause(t, a, state)
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
	// The killed agent's socket is stale; remove it so that waitStatus
	// asks only the resumed agent.
	if err := os.Remove(filepath.Join(state, "control.sock")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}

	r := &bgApply{cmd: exec.Command(agentBin, "resume", "--state-dir", state, "--output", "json"), done: make(chan struct{})}
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		if !r.exited() {
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	if again := guidedPause(t, r, state); !again.Equal(until) {
		t.Errorf("after the restart the pause lasts until %s, want the journaled %s", again, until)
	}
	if g := runAgent(t, "guide", "--state-dir", state, "Ignore"); g.code != 0 {
		t.Fatalf("guide Ignore: exit %d: %s", g.code, g.stderr)
	}
	code, res, out := r.wait(t)
	if code != 0 || res.Status != "Succeeded" {
		t.Fatalf("resume: exit %d, status %s\n%s\nstderr: %s", code, res.Status, out, r.stderr.String())
	}
	if st, _, _, _ := res.step(t, "flaky"); st != "Ignored" {
		t.Errorf("flaky: %s, want Ignored", st)
	}
	if v := decodePauses(t, out); len(v.Guidance) != 1 || v.Guidance[0].Action != "Ignore" || !v.Guidance[0].Guided {
		t.Errorf("guidance %+v, want one Ignore marked guided", v.Guidance)
	}
}

// A bad --guided-failure is bad usage: exit 2, a clear message, nothing
// runs.
func TestProcessGuidedFailureFlag(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	f := writeFlow(t, tmp, guidedFailureFlow)
	for _, c := range []struct{ value, want string }{
		{"soon", `--guided-failure "soon": want TIMEOUT[:ONTIMEOUT]`},
		{"0s", "timeout 0s: want more than zero"},
		{"30m:Retry", `onTimeout "Retry": want one of`},
		{"30m:Exclude", `onTimeout "Exclude"`},
		{"30m:ManualIntervention", `onTimeout "ManualIntervention"`},
	} {
		r := runAgent(t, "apply", f, "--state-dir", filepath.Join(tmp, "state"), "--device-id", "dev-1", "--guided-failure", c.value)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("--guided-failure %s: exit %d, stderr %q; want 2 and %q", c.value, r.code, r.stderr, c.want)
		}
	}
	if exists(filepath.Join(tmp, "marker")) {
		t.Error("a step ran")
	}
}

// dispatchGuided publishes a dispatch with a guidedFailure body field, as
// docs/protocol.md shows it.
func (b *backend) dispatchGuided(id, deployment, url, sha string, size int64, guided string) {
	b.publish("commands", fmt.Sprintf(`{
  "v": 1, "id": %q, "type": "dispatch", "device": %q, "time": %q,
  "body": {"deployment": %q, "url": %q, "sha256": %q, "size": %d, "guidedFailure": %s}
}`, id, interopDevice, time.Now().UTC().Format(time.RFC3339), deployment, url, sha, size, guided))
}

// guidedDaemonFlow: migrate fails (exit 3, kind Unknown) and has no
// strategy; after must not run unless migrate's failure is answered.
const guidedDaemonFlow = `version: 1
name: guided
steps:
  - name: migrate
    script: { run: "echo migrating; exit 3" }
  - name: after
    script: { run: "echo after" }
`

// TestDaemonGuidedFailure: a dispatch with guidedFailure pauses a step
// that has no strategy, the pause survives an agent restart with its
// deadline, and a guide Ignore lets the flow finish Succeeded.
func TestDaemonGuidedFailure(t *testing.T) {
	be, c := newInterop(t)
	url, sum, size := c.bundle("guided", guidedDaemonFlow, 1)
	c.start()
	be.waitOnline()

	be.dispatchGuided("dd1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-guided", url, sum, size, `{"timeoutSeconds": 600, "onTimeout": "Abort"}`)
	waitFor(t, "paused", func() bool { return be.event("dep-guided", "paused") != nil })
	p := be.event("dep-guided", "paused")
	e, _ := p["error"].(map[string]any)
	if p["step"] != "migrate" || p["until"] == nil || e["type"] != "Unknown" {
		t.Fatalf("paused = %v", p)
	}

	// The agent dies while the step is paused; started again, it pauses
	// the step again until the same deadline.
	c.kill()
	c.start()
	waitFor(t, "paused again after the restart", func() bool { return be.count("dep-guided", "paused") == 2 })
	var untils []time.Time
	for _, ev := range be.all("dep-guided", "paused") {
		u, err := time.Parse(time.RFC3339Nano, ev["until"].(string))
		if err != nil {
			t.Fatal(err)
		}
		untils = append(untils, u)
	}
	if !untils[0].Equal(untils[1]) {
		t.Errorf("the deadline moved across the restart: %s, then %s", untils[0], untils[1])
	}

	guide := `{"v":1,"id":"dd1c0e4a9b7d4c2e8f6a1b3c5d7e9f02","type":"guide","device":"` + interopDevice + `","time":"2025-06-01T10:05:00Z","body":{"deployment":"dep-guided","step":"migrate","action":"Ignore","by":"alice","note":"known"}}`
	be.publish("commands", guide)
	waitFor(t, "flow-finished", func() bool { return be.event("dep-guided", "flow-finished") != nil })
	want := []string{"accepted", "step-started migrate", "paused migrate", "paused migrate", "resumed migrate", "step-finished migrate Ignored",
		"step-started after", "step-finished after Succeeded", "flow-finished Succeeded"}
	if got := be.types("dep-guided"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q\nagent: %s", got, want, c.stderrText())
	}
	if r := be.event("dep-guided", "resumed"); r["action"] != "Ignore" || r["by"] != "alice" {
		t.Errorf("resumed = %v", r)
	}
	be.checkSeqs()
}

// TestDaemonGuidedFailureTimeout: with no guidance, the dispatch's
// onTimeout (Abort) applies after timeoutSeconds and the flow ends Failed.
func TestDaemonGuidedFailureTimeout(t *testing.T) {
	be, c := newInterop(t)
	url, sum, size := c.bundle("guided", guidedDaemonFlow, 1)
	c.start()
	be.waitOnline()

	be.dispatchGuided("ee1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-timeout", url, sum, size, `{"timeoutSeconds": 1, "onTimeout": "Abort"}`)
	waitFor(t, "flow-finished", func() bool { return be.event("dep-timeout", "flow-finished") != nil })
	want := []string{"accepted", "step-started migrate", "paused migrate", "resumed migrate", "step-finished migrate Failed", "flow-finished Failed"}
	if got := be.types("dep-timeout"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q\nagent: %s", got, want, c.stderrText())
	}
	if r := be.event("dep-timeout", "resumed"); r["action"] != "Abort" || r["by"] != "agent" {
		t.Errorf("resumed = %v, want Abort by agent", r)
	}
	if e, _ := be.event("dep-timeout", "flow-finished")["error"].(map[string]any); e["type"] != "Unknown" || !strings.Contains(fmt.Sprint(e["message"]), "migrate") {
		t.Errorf("flow-finished error = %v, want migrate's Unknown failure", e)
	}
	be.checkSeqs()
}

// all returns every recorded event of type typ for deployment, in order.
func (b *backend) all(deployment, typ string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, e := range b.events {
		body, _ := e["body"].(map[string]any)
		if e["type"] == typ && body["deployment"] == deployment {
			out = append(out, body)
		}
	}
	return out
}
