package main

// Process-level tests: the real edgeflow-agent binary (agentBin, built by
// TestMain) runs as separate processes against real state dirs, real
// scripts and the real control socket, the way an operator uses it on a
// device: one `apply` in the background, `status`, `guide` and
// `mark-failed` from other processes.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// deadline bounds every wait for a condition. It is a safety net against a
// hang, not a performance assertion: most conditions are met in well under
// a second, but a resumed compose update waits for containers, and a CI
// machine running the whole suite (and the end-to-end fleet) is slow.
const deadline = 90 * time.Second

// procResult is spec 11's result, as `apply --output json` and `status
// --output json` print it.
type procResult struct {
	Execution string `json:"execution"`
	Flow      string `json:"flow"`
	Status    string `json:"status"`
	Steps     []struct {
		Name     string     `json:"name"`
		Group    string     `json:"group"`
		Status   string     `json:"status"`
		Attempts int        `json:"attempts"`
		Marked   bool       `json:"marked"`
		Error    *procError `json:"error"`
	} `json:"steps"`
	Actions []struct {
		Step    string `json:"step"`
		Action  string `json:"action"`
		Trigger string `json:"trigger"`
		Status  string `json:"status"`
	} `json:"actions"`
	Guidance []struct {
		Step   string `json:"step"`
		Action string `json:"action"`
		By     string `json:"by"`
		At     string `json:"at"`
		Note   string `json:"note"`
	} `json:"guidance"`
}

type procError struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// step returns the named step of the result, failing the test if it is
// missing.
func (r *procResult) step(t *testing.T, name string) (status string, attempts int, marked bool, perr *procError) {
	t.Helper()
	for _, s := range r.Steps {
		if s.Name == name {
			return s.Status, s.Attempts, s.Marked, s.Error
		}
	}
	t.Fatalf("result has no step %q: %+v", name, r.Steps)
	return
}

func decodeResult(t *testing.T, what, out string) *procResult {
	t.Helper()
	var r procResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%s: not one JSON result: %v\n%s", what, err, out)
	}
	return &r
}

// agentRun is a finished edgeflow-agent process.
type agentRun struct {
	stdout, stderr string
	code           int
}

// runAgent runs edgeflow-agent to its end.
func runAgent(t *testing.T, args ...string) agentRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, agentBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("edgeflow-agent %s did not end within %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), deadline, stdout.String(), stderr.String())
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("edgeflow-agent %s: %v", strings.Join(args, " "), err)
	}
	return agentRun{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// bgApply is an `apply` running in the background.
type bgApply struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

// startApply starts `apply FLOW --state-dir STATE --output json` plus
// extra arguments. The test's cleanup stops it if the test did not wait for
// it: SIGTERM (the agent stops its scripts), then SIGKILL.
func startApply(t *testing.T, flowFile, stateDir string, extra ...string) *bgApply {
	t.Helper()
	args := append([]string{"apply", flowFile, "--state-dir", stateDir, "--output", "json",
		"--device-id", "dev-1", "--kill-grace", "300ms"}, extra...)
	a := &bgApply{cmd: exec.Command(agentBin, args...), done: make(chan struct{})}
	a.cmd.Stdout, a.cmd.Stderr = &a.stdout, &a.stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		select {
		case <-a.done:
			return
		default:
		}
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(deadline):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
	})
	return a
}

func (a *bgApply) exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// wait waits for apply to end and returns its exit code and JSON result.
func (a *bgApply) wait(t *testing.T) (int, *procResult, string) {
	t.Helper()
	select {
	case <-a.done:
	case <-time.After(deadline):
		_ = a.cmd.Process.Kill()
		<-a.done
		t.Fatalf("apply did not end within %s\nstdout: %s\nstderr: %s", deadline, a.stdout.String(), a.stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(a.err, &ee) {
		code = ee.ExitCode()
	} else if a.err != nil {
		t.Fatal(a.err)
	}
	out := a.stdout.String()
	return code, decodeResult(t, "apply", out), out
}

// waitStatus polls `status --state-dir STATE --output json` until cond
// holds. It asks only once the control socket exists: before that, status
// would open the journal itself and could hold it while apply starts.
func waitStatus(t *testing.T, a *bgApply, stateDir, what string, cond func(*procResult) bool) *procResult {
	t.Helper()
	sock := filepath.Join(stateDir, "control.sock")
	var last string
	for end := time.Now().Add(deadline); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if a.exited() {
			t.Fatalf("waiting for %s: apply ended (%v)\nstdout: %s\nstderr: %s", what, a.err, a.stdout.String(), a.stderr.String())
		}
		if _, err := os.Stat(sock); err != nil {
			last = "no control socket yet"
			continue
		}
		r := runAgent(t, "status", "--state-dir", stateDir, "--output", "json")
		if r.code != 0 {
			last = fmt.Sprintf("exit %d: %s", r.code, r.stderr)
			continue
		}
		last = r.stdout
		res := decodeResult(t, "status", r.stdout)
		if cond(res) {
			return res
		}
	}
	t.Fatalf("waiting for %s: gave up after %s; last status: %s", what, deadline, last)
	return nil
}

func stepIs(name, status string) func(*procResult) bool {
	return func(r *procResult) bool {
		for _, s := range r.Steps {
			if s.Name == name {
				return s.Status == status
			}
		}
		return false
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeFlow writes a flow document with @TMP@ replaced by tmp.
func writeFlow(t *testing.T, tmp, text string) string {
	t.Helper()
	p := filepath.Join(tmp, "flow", "flow.yaml")
	writeFile(t, p, strings.ReplaceAll(text, "@TMP@", tmp))
	return p
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// readPID reads a pid file a script wrote, waiting until it is complete.
func readPID(t *testing.T, p string) int {
	t.Helper()
	for end := time.Now().Add(deadline); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		data, err := os.ReadFile(p)
		if err == nil && strings.HasSuffix(string(data), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil || pid <= 0 {
				t.Fatalf("%s: %q is not a pid", p, data)
			}
			return pid
		}
	}
	t.Fatalf("%s was not written within %s", p, deadline)
	return 0
}

// procStat returns the state and process group of a process from
// /proc/PID/stat; ok is false when the process does not exist.
func procStat(pid int) (state byte, pgrp int, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 3 {
		return 0, 0, false
	}
	pgrp, err = strconv.Atoi(f[2])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], pgrp, true
}

// alive reports whether pid runs: it exists and is neither a zombie nor
// dead (an orphan reparented to a PID 1 that does not reap stays a zombie;
// it no longer runs).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	state, _, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// liveGroup lists the running (non-zombie) members of process group pgid.
func liveGroup(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, pgrp, ok := procStat(pid); ok && pgrp == pgid && state != 'Z' && state != 'X' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitGone waits until none of pids runs and no member of group pgid (if
// not 0) runs. The agent has already ended when this is called; the poll
// only absorbs the kernel finishing a SIGKILL.
func waitGone(t *testing.T, pgid int, pids ...int) {
	t.Helper()
	var left []int
	for end := time.Now().Add(deadline); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		left = left[:0]
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if pgid != 0 {
			left = append(left, liveGroup(pgid)...)
		}
		if len(left) == 0 {
			return
		}
	}
	t.Errorf("processes still running after the agent ended: %v", left)
}

// killGroupOnCleanup makes sure a script's process group does not outlive
// a failed test. It only signals the group the test's own script created.
func killGroupOnCleanup(t *testing.T, pgid *int) {
	t.Cleanup(func() {
		if *pgid > 0 && len(liveGroup(*pgid)) > 0 {
			_ = syscall.Kill(-*pgid, syscall.SIGKILL)
		}
	})
}

// checkGuidance checks that the result's guidance list holds exactly one
// entry: action on step, given by the local root user with note, at a time
// between from and to.
func checkGuidance(t *testing.T, res *procResult, step, action, note string, from, to time.Time) {
	t.Helper()
	if len(res.Guidance) != 1 {
		t.Fatalf("guidance = %+v, want exactly one entry", res.Guidance)
	}
	g := res.Guidance[0]
	if g.Step != step || g.Action != action || g.Note != note {
		t.Errorf("guidance = %+v, want step %q action %q note %q", g, step, action, note)
	}
	if g.By == "" || !strings.Contains(g.By, "root") {
		t.Errorf("guidance by = %q, want the local user (root)", g.By)
	}
	at, err := time.Parse(time.RFC3339Nano, g.At)
	if err != nil {
		t.Fatalf("guidance at = %q: %v", g.At, err)
	}
	if at.Before(from.Add(-time.Second)) || at.After(to.Add(time.Second)) {
		t.Errorf("guidance at = %s, want between %s and %s", at, from, to)
	}
}

// checkStatusAfter checks that `status` with no agent running returns the
// same result apply printed.
func checkStatusAfter(t *testing.T, stateDir, applyOut string) {
	t.Helper()
	r := runAgent(t, "status", "--state-dir", stateDir, "--output", "json")
	if r.code != 0 {
		t.Fatalf("status after the run: exit %d: %s", r.code, r.stderr)
	}
	var want, got any
	if err := json.Unmarshal([]byte(applyOut), &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("status: %v\n%s", err, r.stdout)
	}
	if !reflect.DeepEqual(want, got) {
		t.Errorf("status after the run differs from apply's result\napply:  %s\nstatus: %s", applyOut, r.stdout)
	}
}

// guidedFlow: config installs app.conf (revertFiles, anyStep); check fails
// with Verification on its first attempt only (it leaves a marker) and asks
// for manual intervention; after runs on success, on-failure on failure;
// the flow's rollback step leaves rollback.ran.
const guidedFlow = `version: 1
name: guided
rollbackOnFailure: @ROF@
rollback:
  - name: restore
    script: { run: 'touch @TMP@/rollback.ran' }
steps:
  - name: config
    file:
      - { content: "new\n", dest: "@TMP@/etc/app.conf" }
    onFailure: [ { action: revertFiles, trigger: anyStep } ]
  - name: check
    script:
      run: 'if [ -f @TMP@/marker ]; then exit 0; fi; touch @TMP@/marker; echo unhealthy; exit 3'
      errorTypes: { "3": Verification }
    failureStrategies:
      - { errors: [Verification], action: ManualIntervention, manual: { timeout: 1h, onTimeout: Abort } }
  - name: after
    script: { run: 'touch @TMP@/after.ran' }
  - name: on-failure
    when: onFailure
    script: { run: 'touch @TMP@/onfailure.ran' }
`

// startPaused starts the guided flow and waits until its check step is
// paused for guidance.
func startPaused(t *testing.T, rollbackOnFailure bool) (tmp, state string, a *bgApply, start time.Time) {
	t.Helper()
	tmp = t.TempDir()
	state = filepath.Join(tmp, "state")
	writeFile(t, filepath.Join(tmp, "etc", "app.conf"), "old\n")
	f := writeFlow(t, tmp, strings.ReplaceAll(guidedFlow, "@ROF@", strconv.FormatBool(rollbackOnFailure)))
	start = time.Now()
	a = startApply(t, f, state)
	res := waitStatus(t, a, state, "the flow to pause", func(r *procResult) bool { return r.Status == "Paused" })
	if st, att, _, perr := res.step(t, "check"); st != "Paused" || att != 1 || perr == nil || perr.Type != "Verification" {
		t.Fatalf("while paused: check is %s, attempts %d, error %+v; want Paused, 1, Verification", st, att, perr)
	}
	if st, _, _, _ := res.step(t, "config"); st != "Succeeded" {
		t.Errorf("while paused: config is %s, want Succeeded", st)
	}
	if st, _, _, _ := res.step(t, "after"); st != "Pending" {
		t.Errorf("while paused: after is %s, want Pending", st)
	}
	if len(res.Guidance) != 0 {
		t.Errorf("while paused: guidance = %+v, want none", res.Guidance)
	}
	return tmp, state, a, start
}

// Spec 7: a step paused for manual intervention takes guidance from the
// local CLI over the control socket; each action ends the step and the
// flow as spec 5 says, and the guidance is recorded with who and when.
func TestProcessGuide(t *testing.T) {
	type stepWant struct{ name, status string }
	cases := []struct {
		action   string
		exit     int
		status   string
		check    string
		attempts int
		marked   bool
		steps    []stepWant
		conf     string   // app.conf after the run
		actions  []string // "step action" of the result's actions, in order
		ran      []string // marker files that must exist
		notRan   []string // marker files that must not
	}{
		{action: "Retry", exit: 0, status: "Succeeded", check: "Succeeded", attempts: 2,
			steps: []stepWant{{"after", "Succeeded"}, {"on-failure", "Skipped"}},
			conf:  "new\n", ran: []string{"after.ran"}, notRan: []string{"onfailure.ran", "rollback.ran"}},
		{action: "Ignore", exit: 0, status: "Succeeded", check: "Ignored", attempts: 1,
			steps: []stepWant{{"after", "Succeeded"}, {"on-failure", "Skipped"}},
			conf:  "new\n", ran: []string{"after.ran"}, notRan: []string{"onfailure.ran", "rollback.ran"}},
		{action: "MarkAsSuccess", exit: 0, status: "Succeeded", check: "Succeeded", attempts: 1, marked: true,
			steps: []stepWant{{"after", "Succeeded"}, {"on-failure", "Skipped"}},
			conf:  "new\n", ran: []string{"after.ran"}, notRan: []string{"onfailure.ran", "rollback.ran"}},
		{action: "MarkAsFailure", exit: 1, status: "Failed", check: "Failed", attempts: 1,
			steps: []stepWant{{"after", "Skipped"}, {"on-failure", "Succeeded"}},
			conf:  "old\n", actions: []string{"config revertFiles"},
			ran: []string{"onfailure.ran"}, notRan: []string{"after.ran", "rollback.ran"}},
		{action: "Abort", exit: 1, status: "Failed", check: "Failed", attempts: 1,
			steps: []stepWant{{"after", "Skipped"}, {"on-failure", "Skipped"}},
			conf:  "old\n", actions: []string{"config revertFiles"},
			notRan: []string{"after.ran", "onfailure.ran", "rollback.ran"}},
		{action: "RollbackFlow", exit: 1, status: "RolledBack", check: "Failed", attempts: 1,
			steps: []stepWant{{"after", "Skipped"}, {"on-failure", "Skipped"}},
			conf:  "old\n", actions: []string{"config revertFiles", "restore rollbackStep"},
			ran: []string{"rollback.ran"}, notRan: []string{"after.ran", "onfailure.ran"}},
		{action: "Exclude", exit: 1, status: "Failed", check: "Failed", attempts: 1,
			steps: []stepWant{{"after", "Skipped"}, {"on-failure", "Skipped"}},
			conf:  "old\n", actions: []string{"config revertFiles"},
			notRan: []string{"after.ran", "onfailure.ran", "rollback.ran"}},
	}
	for _, c := range cases {
		t.Run(c.action, func(t *testing.T) {
			t.Parallel()
			tmp, state, a, start := startPaused(t, true)
			note := "operator says " + c.action
			g := runAgent(t, "guide", "--state-dir", state, c.action, "--note", note)
			if g.code != 0 || !strings.Contains(g.stdout, "guidance "+c.action+" delivered") {
				t.Fatalf("guide %s: exit %d\nstdout: %s\nstderr: %s", c.action, g.code, g.stdout, g.stderr)
			}
			code, res, out := a.wait(t)
			end := time.Now()
			if code != c.exit || res.Status != c.status {
				t.Errorf("apply: exit %d, status %s; want %d, %s\n%s\nstderr: %s", code, res.Status, c.exit, c.status, out, a.stderr.String())
			}
			st, att, marked, perr := res.step(t, "check")
			if st != c.check || att != c.attempts || marked != c.marked {
				t.Errorf("check: %s, attempts %d, marked %v; want %s, %d, %v", st, att, marked, c.check, c.attempts, c.marked)
			}
			switch {
			case c.action == "Retry" && perr != nil:
				t.Errorf("check succeeded on retry but keeps error %+v", perr)
			case c.action != "Retry" && (perr == nil || perr.Type != "Verification" || !strings.Contains(perr.Message, "exit status 3")):
				t.Errorf("check error = %+v, want Verification with exit status 3", perr)
			}
			for _, w := range c.steps {
				if got, _, _, _ := res.step(t, w.name); got != w.status {
					t.Errorf("step %s: %s, want %s", w.name, got, w.status)
				}
			}
			var acts []string
			for _, x := range res.Actions {
				acts = append(acts, x.Step+" "+x.Action)
				if x.Status != "Succeeded" {
					t.Errorf("action %+v did not succeed", x)
				}
			}
			if !reflect.DeepEqual(acts, c.actions) {
				t.Errorf("actions = %q, want %q", acts, c.actions)
			}
			checkGuidance(t, res, "check", c.action, note, start, end)
			if data, err := os.ReadFile(filepath.Join(tmp, "etc", "app.conf")); err != nil || string(data) != c.conf {
				t.Errorf("app.conf = %q (%v), want %q", data, err, c.conf)
			}
			for _, m := range c.ran {
				if !exists(filepath.Join(tmp, m)) {
					t.Errorf("%s did not run", m)
				}
			}
			for _, m := range c.notRan {
				if exists(filepath.Join(tmp, m)) {
					t.Errorf("%s ran", m)
				}
			}
			checkStatusAfter(t, state, out)
		})
	}
}

// Guidance the agent cannot apply is refused with a clear message and
// changes nothing: the flow stays paused, nothing is recorded, and a valid
// guidance afterwards still works.
func TestProcessGuideRefused(t *testing.T) {
	t.Parallel()
	_, state, a, start := startPaused(t, false)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"Dance"}, `"Dance" is not a guidance action`},
		{[]string{"RollbackFlow"}, "rollbackOnFailure"},
		{[]string{"RollbackGroup"}, "not in a group"},
		{[]string{"Retry", "--step", "nope"}, `"nope" is not paused`},
	} {
		args := append([]string{"guide", "--state-dir", state, "--note", "x"}, c.args...)
		g := runAgent(t, args...)
		if g.code == 0 || !strings.Contains(g.stderr, c.want) {
			t.Errorf("guide %s: exit %d, stderr %q; want non-zero and %q", strings.Join(c.args, " "), g.code, g.stderr, c.want)
		}
	}
	res := waitStatus(t, a, state, "the flow to be paused still", func(r *procResult) bool { return true })
	if res.Status != "Paused" || len(res.Guidance) != 0 {
		t.Fatalf("after refused guidance: status %s, guidance %+v; want Paused and none", res.Status, res.Guidance)
	}
	if st, _, _, _ := res.step(t, "check"); st != "Paused" {
		t.Fatalf("after refused guidance: check is %s, want Paused", st)
	}
	if g := runAgent(t, "guide", "--state-dir", state, "--step", "check", "Abort", "--note", "enough"); g.code != 0 {
		t.Fatalf("guide Abort: exit %d: %s", g.code, g.stderr)
	}
	code, res, _ := a.wait(t)
	if code != 1 || res.Status != "Failed" {
		t.Errorf("apply: exit %d, status %s; want 1, Failed", code, res.Status)
	}
	checkGuidance(t, res, "check", "Abort", "enough", start, time.Now())
}

// guide, mark-failed and status with no agent running say so and fail.
func TestProcessNothingRunning(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	check := func(when string) {
		t.Helper()
		for _, args := range [][]string{
			{"guide", "--state-dir", state, "Retry"},
			{"mark-failed", "--state-dir", state},
		} {
			r := runAgent(t, args...)
			if r.code == 0 || !strings.Contains(r.stderr, "no flow is running") {
				t.Errorf("%s: %s: exit %d, stderr %q; want non-zero and \"no flow is running\"", when, args[0], r.code, r.stderr)
			}
		}
	}
	check("state dir never used")
	f := writeFlow(t, tmp, "version: 1\nname: quick\nsteps:\n  - name: a\n    script: { run: 'true' }\n")
	if r := runAgent(t, "apply", f, "--state-dir", state); r.code != 0 {
		t.Fatalf("apply: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	if exists(filepath.Join(state, "control.sock")) {
		t.Errorf("apply left its control socket behind")
	}
	check("after a run")
}

// Spec 7: mark-failed stops the running step's process (it is gone after
// the run), the failure is UserMarkedFailure, the step's strategy decides
// (MarkAsFailure: the flow goes on, onFailure steps run), and the mark is
// recorded with who gave it.
func TestProcessMarkFailed(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	f := writeFlow(t, tmp, `version: 1
name: stuck
steps:
  - name: hang
    script: { run: 'echo $$ > @TMP@/hang.pid; exec sleep 300' }
    failureStrategies: [ { errors: [UserMarkedFailure], action: MarkAsFailure } ]
  - name: next
    script: { run: 'touch @TMP@/next.ran' }
  - name: report
    when: onFailure
    script: { run: 'touch @TMP@/report.ran' }
`)
	start := time.Now()
	a := startApply(t, f, state)
	waitStatus(t, a, state, "hang to run", stepIs("hang", "Running"))
	pid := readPID(t, filepath.Join(tmp, "hang.pid"))
	pgid := pid
	killGroupOnCleanup(t, &pgid)
	if !alive(pid) {
		t.Fatalf("the script's sleep (pid %d) is not running", pid)
	}

	// Guidance is for paused steps only.
	if g := runAgent(t, "guide", "--state-dir", state, "Retry"); g.code == 0 || !strings.Contains(g.stderr, "nothing is paused") {
		t.Errorf("guide while running: exit %d, stderr %q; want non-zero and \"nothing is paused\"", g.code, g.stderr)
	}
	if m := runAgent(t, "mark-failed", "--state-dir", state, "--step", "nope"); m.code == 0 || !strings.Contains(m.stderr, `"nope" is not running`) {
		t.Errorf("mark-failed --step nope: exit %d, stderr %q; want non-zero and \"nope\" is not running", m.code, m.stderr)
	}

	m := runAgent(t, "mark-failed", "--state-dir", state, "--note", "stuck")
	if m.code != 0 || !strings.Contains(m.stdout, "marked as failed") {
		t.Fatalf("mark-failed: exit %d\nstdout: %s\nstderr: %s", m.code, m.stdout, m.stderr)
	}
	code, res, out := a.wait(t)
	if code != 1 || res.Status != "Failed" {
		t.Errorf("apply: exit %d, status %s; want 1, Failed\n%s", code, res.Status, out)
	}
	st, att, _, perr := res.step(t, "hang")
	if st != "Failed" || att != 1 || perr == nil || perr.Type != "UserMarkedFailure" || !strings.Contains(perr.Message, "root") {
		t.Errorf("hang: %s, attempts %d, error %+v; want Failed, 1, UserMarkedFailure naming root", st, att, perr)
	}
	if st, _, _, _ := res.step(t, "next"); st != "Skipped" {
		t.Errorf("next: %s, want Skipped", st)
	}
	if st, _, _, _ := res.step(t, "report"); st != "Succeeded" || !exists(filepath.Join(tmp, "report.ran")) {
		t.Errorf("report: %s, want Succeeded (the onFailure step runs after MarkAsFailure)", st)
	}
	checkGuidance(t, res, "hang", "MarkFailed", "stuck", start, time.Now())
	waitGone(t, pgid, pid)
	checkStatusAfter(t, state, out)
}

// Spec 2: a step timeout stops the script's whole process group; a child
// that ignores SIGTERM is killed after --kill-grace.
func TestProcessTimeoutKillsGroup(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	f := writeFlow(t, tmp, `version: 1
name: stubborn
steps:
  - name: spawn
    timeout: 500ms
    script:
      run: |
        echo $$ > @TMP@/shell.pid
        sh -c 'trap "" TERM; echo $$ > @TMP@/child.pid; while :; do sleep 1; done' &
        wait
`)
	a := startApply(t, f, state)
	code, res, out := a.wait(t)
	shell := readPID(t, filepath.Join(tmp, "shell.pid"))
	pgid := shell
	killGroupOnCleanup(t, &pgid)
	child := readPID(t, filepath.Join(tmp, "child.pid"))
	if code != 1 || res.Status != "Failed" {
		t.Errorf("apply: exit %d, status %s; want 1, Failed\n%s", code, res.Status, out)
	}
	st, _, _, perr := res.step(t, "spawn")
	if st != "Failed" || perr == nil || perr.Type != "Timeout" || !strings.Contains(perr.Message, "timed out") {
		t.Errorf("spawn: %s, error %+v; want Failed with a Timeout", st, perr)
	}
	if _, pg, ok := procStat(child); ok && pg != shell {
		t.Errorf("child %d is in process group %d, not the script's %d", child, pg, shell)
	}
	waitGone(t, pgid, shell, child)
}

// A state dir serves one agent: a second apply on it is refused, names the
// agent that holds it, runs nothing, and leaves the first agent reachable.
func TestProcessStateDirInUse(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	f := writeFlow(t, tmp, `version: 1
name: holder
steps:
  - name: hang
    script: { run: 'echo $$ > @TMP@/hang.pid; exec sleep 300' }
`)
	other := filepath.Join(tmp, "other", "flow.yaml")
	writeFile(t, other, strings.ReplaceAll("version: 1\nname: second\nsteps:\n  - name: b\n    script: { run: 'touch @TMP@/second.ran' }\n", "@TMP@", tmp))

	a := startApply(t, f, state)
	waitStatus(t, a, state, "hang to run", stepIs("hang", "Running"))
	pid := readPID(t, filepath.Join(tmp, "hang.pid"))
	pgid := pid
	killGroupOnCleanup(t, &pgid)

	want := fmt.Sprintf("in use by pid %d", a.cmd.Process.Pid)
	for _, output := range []string{"text", "json"} {
		r := runAgent(t, "apply", other, "--state-dir", state, "--output", output)
		if r.code == 0 || !strings.Contains(r.stderr, "state dir") || !strings.Contains(r.stderr, want) {
			t.Errorf("second apply (--output %s): exit %d, stderr %q; want non-zero and \"state dir … %s\"", output, r.code, r.stderr, want)
		}
	}
	if exists(filepath.Join(tmp, "second.ran")) {
		t.Errorf("the second apply ran its flow")
	}
	// The refused agent left the first one's control socket alone.
	waitStatus(t, a, state, "the first agent to answer", stepIs("hang", "Running"))
	if m := runAgent(t, "mark-failed", "--state-dir", state); m.code != 0 {
		t.Fatalf("mark-failed: exit %d: %s", m.code, m.stderr)
	}
	code, res, _ := a.wait(t)
	if st, _, _, perr := res.step(t, "hang"); code != 1 || st != "Failed" || perr == nil || perr.Type != "UserMarkedFailure" {
		t.Errorf("first apply: exit %d, hang %s %+v; want 1, Failed with UserMarkedFailure", code, st, perr)
	}
	waitGone(t, pgid, pid)
}

// apply's text output: a line per step with its status and time, the
// error with its type, the flow's result; exit 1 for a failed flow.
// status, with no agent running, prints the last execution's result.
func TestProcessTextOutput(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	f := writeFlow(t, tmp, `version: 1
name: text-out
steps:
  - name: first
    script: { run: 'echo hello' }
  - name: broken
    script: { run: 'echo "disk on fire"; exit 3' }
  - name: later
    script: { run: 'true' }
`)
	r := runAgent(t, "apply", f, "--state-dir", state, "--device-id", "dev-1")
	if r.code != 1 {
		t.Errorf("apply: exit %d, want 1", r.code)
	}
	for _, re := range []string{
		`(?m)^flow text-out \(execution \S+\)$`,
		`(?m)^\s+Succeeded\s+first\s+(\d+ms|[\d.]+s)\s*$`,
		`(?m)^\s+Failed\s+broken\s+(\d+ms|[\d.]+s)\s+Unknown: exit status 3: disk on fire\s*$`,
		`(?m)^\s+Skipped\s+later\s+-\s*$`,
		`(?m)^result: Failed$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("apply's output does not match %s", re)
		}
	}
	if !strings.Contains(r.stderr, "broken: Failed") {
		t.Errorf("apply's progress on stderr does not report broken failing")
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}

	// status with no agent: the last execution, as text and as JSON.
	s := runAgent(t, "status", "--state-dir", state)
	if s.code != 0 || s.stdout != r.stdout {
		t.Errorf("status (text) after the run: exit %d\n%s\nwant apply's output:\n%s\nstderr: %s", s.code, s.stdout, r.stdout, s.stderr)
	}
	sj := runAgent(t, "status", "--state-dir", state, "--output", "json")
	if sj.code != 0 {
		t.Fatalf("status --output json: exit %d: %s", sj.code, sj.stderr)
	}
	res := decodeResult(t, "status", sj.stdout)
	if res.Flow != "text-out" || res.Status != "Failed" || len(res.Steps) != 3 {
		t.Fatalf("status: %s", sj.stdout)
	}
	if st, _, _, perr := res.step(t, "broken"); st != "Failed" || perr == nil || perr.Type != "Unknown" {
		t.Errorf("status: broken %s %+v, want Failed with Unknown", st, perr)
	}

	// A state dir that never ran anything has no status.
	e := runAgent(t, "status", "--state-dir", filepath.Join(tmp, "empty"))
	if e.code == 0 || !strings.Contains(e.stderr, "no executions") {
		t.Errorf("status of an unused state dir: exit %d, stderr %q", e.code, e.stderr)
	}
}

// validate: a valid flow says so (exit 0); an invalid one lists every
// problem as FILE:LINE:COL: message on stderr (exit 2).
func TestProcessValidate(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	good := filepath.Join(tmp, "good.yaml")
	writeFile(t, good, "version: 1\nname: good\nsteps:\n  - name: a\n    script: { run: 'true' }\n")
	r := runAgent(t, "validate", good)
	if r.code != 0 || !strings.Contains(r.stdout, "valid") {
		t.Errorf("validate good: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}

	bad := filepath.Join(tmp, "bad.yaml")
	writeFile(t, bad, `version: 1
name: bad
timeot: 5m
steps:
  - name: a
    script: { run: 'true' }
    onFailure: [ { action: revertFiles } ]
`)
	want := []*regexp.Regexp{
		regexp.MustCompile(`^` + regexp.QuoteMeta(bad) + `:3:1: unknown key "timeot" \(did you mean "timeout"\?\)$`),
		regexp.MustCompile(`^` + regexp.QuoteMeta(bad) + `:7:\d+: step "a": revertFiles is only valid on a file step$`),
	}
	state := filepath.Join(tmp, "state")
	for _, args := range [][]string{{"validate", bad}, {"apply", bad, "--state-dir", state}} {
		r := runAgent(t, args...)
		if r.code != 2 {
			t.Errorf("%s bad: exit %d, want 2", args[0], r.code)
		}
		lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
		for _, re := range want {
			found := false
			for _, l := range lines {
				found = found || re.MatchString(l)
			}
			if !found {
				t.Errorf("%s bad: no stderr line matches %s", args[0], re)
			}
		}
		if t.Failed() {
			t.Logf("%s bad: stdout:\n%s\nstderr:\n%s", args[0], r.stdout, r.stderr)
		}
	}
	if exists(state) {
		t.Errorf("apply of an invalid flow created its state dir")
	}
}
