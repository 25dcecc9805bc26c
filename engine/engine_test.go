package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// fake is a step runner, undoer and command runner for engine tests: the
// narrow interfaces the engine declares. A step's behaviour comes from its
// script text: "ok", "fail KIND", "fail KIND until N" (fails attempts < N),
// "after STEP ..." (waits until STEP has started, then does the rest),
// "block" (runs until its context ends), "out NAME=VALUE", "slow" (sleeps
// 50ms, then ok).
type fake struct {
	mu    sync.Mutex
	calls []string
}

func (f *fake) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fake) Run(ctx context.Context, s *flow.Step, env *steps.Env) error {
	text := ""
	switch {
	case s.Script != nil:
		text = s.Script.Run
	case s.Verify != nil:
		text = s.Verify.Command
	case s.File != nil:
		if err := env.SaveUndo([]byte(`"undo-` + s.Name + `"`)); err != nil {
			return err
		}
		text = "ok"
		if c := s.File.Entries[0].Content; c != nil {
			text = *c
		}
	}
	expanded, err := env.Expand(text)
	if err != nil {
		return err
	}
	f.record(fmt.Sprintf("run:%s#%d", s.Name, env.Attempt))
	return f.behave(ctx, expanded, env)
}

// started reports whether step name has started.
func (f *fake) started(name string) bool {
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "run:"+name+"#") {
			return true
		}
	}
	return false
}

func (f *fake) behave(ctx context.Context, text string, env *steps.Env) error {
	fields := strings.Fields(text)
	if len(fields) > 2 && fields[0] == "after" {
		// "after NAME ...": wait until step NAME has started.
		for !f.started(fields[1]) {
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(time.Millisecond):
			}
		}
		fields = fields[2:]
	}
	switch {
	case len(fields) == 0 || fields[0] == "ok":
		return nil
	case fields[0] == "slow":
		select {
		case <-time.After(50 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return fmt.Errorf("slow: %w", context.Cause(ctx))
		}
	case fields[0] == "block":
		<-ctx.Done()
		return fmt.Errorf("blocked: %w", context.Cause(ctx))
	case fields[0] == "out":
		k, v, _ := strings.Cut(fields[1], "=")
		env.Outputs[k] = v
		return nil
	case fields[0] == "echo":
		env.Outputs["said"] = strings.Join(fields[1:], " ")
		return nil
	case fields[0] == "fail":
		if len(fields) == 4 && fields[2] == "until" {
			var n int
			fmt.Sscan(fields[3], &n)
			if env.Attempt >= n {
				return nil
			}
		}
		return onfailure.Errorf(onfailure.Kind(fields[1]), "%s failed on attempt %d", env.Step, env.Attempt)
	}
	return fmt.Errorf("fake: unknown behaviour %q", text)
}

func (f *fake) Undo(_ context.Context, s *flow.Step, _ *steps.Env, undo []byte) error {
	f.record("undo:" + s.Name + ":" + strings.Trim(string(undo), `"`))
	return nil
}

func (f *fake) Finish(_ context.Context, s *flow.Step, _ *steps.Env, undo []byte) error {
	f.record("finish:" + s.Name)
	return nil
}

func (f *fake) RunScript(ctx context.Context, sc *flow.Script, env *steps.Env) error {
	f.record("script:" + env.Step)
	return f.behave(ctx, sc.Run, env)
}

func (f *fake) RunCommand(ctx context.Context, text string, env *steps.Env) error {
	f.record("command:" + text)
	if strings.HasPrefix(text, "fail") {
		return onfailure.Errorf(onfailure.Unknown, "command %q failed", text)
	}
	return nil
}

// memStore is a Store keeping the last record in memory, checking that
// every write is a complete JSON record.
type memStore struct {
	mu     sync.Mutex
	writes int
	last   Record
	logs   map[string][]byte
}

func (m *memStore) SaveExecution(id string, rec []byte, unfinished bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.writes++
	// A fresh record per write: decoding into m.last would keep map
	// entries (pauses) that the new write no longer has.
	var r Record
	if err := json.Unmarshal(rec, &r); err != nil {
		return err
	}
	m.last = r
	return nil
}

func (m *memStore) SaveLog(id, step string, attempt int, log []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.logs == nil {
		m.logs = map[string][]byte{}
	}
	m.logs[fmt.Sprintf("%s/%d", step, attempt)] = log
	return nil
}

type harness struct {
	t     testing.TB
	fake  *fake
	store *memStore
	eng   *Engine
}

func newHarness(t testing.TB, opts Options) *harness {
	h := &harness{t: t, fake: &fake{}, store: &memStore{}}
	opts.DeviceID = "dev-1"
	opts.StateDir = t.TempDir()
	opts.Runners = map[string]steps.Runner{flow.TypeScript: h.fake, flow.TypeVerify: h.fake, flow.TypeFile: h.fake}
	opts.Commands = h.fake
	opts.Store = h.store
	h.eng = New(opts)
	return h
}

func (h *harness) run(doc string) *Result {
	h.t.Helper()
	f, err := flow.Parse("test.yaml", []byte(doc))
	if err != nil {
		h.t.Fatalf("parse: %v", err)
	}
	res, err := h.eng.Run(context.Background(), f)
	if err != nil {
		h.t.Fatalf("run: %v", err)
	}
	return res
}

// summary renders step statuses as "name=Status/attempts" for comparison.
func summary(res *Result) string {
	var parts []string
	for _, s := range res.Steps {
		p := fmt.Sprintf("%s=%s", s.Name, s.Status)
		if s.Attempts > 1 {
			p += fmt.Sprintf("/%d", s.Attempts)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

func actions(res *Result) string {
	var parts []string
	for _, a := range res.Actions {
		parts = append(parts, fmt.Sprintf("%s.%s=%s", a.Step, a.Action, a.Status))
	}
	return strings.Join(parts, " ")
}

func groups(res *Result) string {
	var parts []string
	for _, g := range res.Groups {
		parts = append(parts, g.Name+"="+string(g.Status))
	}
	return strings.Join(parts, " ")
}

const head = "version: 1\nname: t\n"

// TestScenarios lists, per flow, the expected step chain, rollback actions
// and flow status (spec 3-6).
func TestScenarios(t *testing.T) {
	cases := []struct {
		name    string
		doc     string
		status  Status
		steps   string
		groups  string
		actions string
		calls   []string
	}{
		{
			name:   "sequence succeeds",
			doc:    head + "steps:\n  - {name: a, script: {run: ok}}\n  - {name: b, script: {run: ok}}\n",
			status: Succeeded, steps: "a=Succeeded b=Succeeded",
			calls: []string{"run:a#1", "run:b#1"},
		},
		{
			name: "no strategy aborts, runs onFailure actions, skips the rest even when: always",
			doc: head + `steps:
  - {name: a, file: [{content: ok, dest: /x}], onFailure: [{action: revertFiles, trigger: anyStep}]}
  - {name: b, script: {run: fail Unknown}, onFailure: [{action: command, command: cleanup-b}]}
  - {name: c, when: always, script: {run: ok}}
`,
			status: Failed, steps: "a=Succeeded b=Failed c=Skipped",
			actions: "b.command=Succeeded a.revertFiles=Succeeded",
			calls:   []string{"run:a#1", "run:b#1", "command:cleanup-b", "undo:a:undo-a", "finish:a"},
		},
		{
			name: "retry counts attempts and succeeds",
			doc: head + `steps:
  - name: a
    script: {run: fail Connectivity until 3}
    failureStrategies: [{errors: [Connectivity], action: Retry, retry: {count: 3, intervals: [1ms]}}]
`,
			status: Succeeded, steps: "a=Succeeded/3",
			calls: []string{"run:a#1", "run:a#2", "run:a#3"},
		},
		{
			name: "retry exhausted applies onExhausted",
			doc: head + `steps:
  - name: a
    script: {run: fail Timeout}
    failureStrategies: [{errors: [Timeout], action: Retry, retry: {count: 2, onExhausted: Ignore}}]
  - {name: b, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Ignored/3 b=Succeeded",
		},
		{
			name: "same-level conflict: first match wins (Connectivity ignored)",
			doc: head + `steps:
  - name: a
    script: {run: fail Connectivity}
    failureStrategies:
      - {errors: [Verification, Authentication], action: Abort}
      - {errors: [Verification, Connectivity], action: Ignore}
  - {name: b, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Ignored b=Succeeded",
		},
		{
			name: "same-level conflict: first match wins (Verification aborts)",
			doc: head + `steps:
  - name: a
    script: {run: fail Verification}
    failureStrategies:
      - {errors: [Verification, Authentication], action: Abort}
      - {errors: [Verification, Connectivity], action: Ignore}
  - {name: b, script: {run: ok}}
`,
			status: Failed, steps: "a=Failed b=Skipped",
		},
		{
			name: "step strategy beats flow strategy",
			doc: head + `failureStrategies: [{errors: [AllErrors], action: Abort}]
steps:
  - {name: a, script: {run: fail Timeout}, failureStrategies: [{errors: [Timeout], action: MarkAsSuccess}]}
  - {name: b, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Succeeded b=Succeeded",
		},
		{
			name: "MarkAsFailure continues, when decides",
			doc: head + `steps:
  - {name: a, script: {run: ok}, onFailure: [{action: command, command: undo-a, trigger: anyStep}]}
  - {name: b, script: {run: fail Unknown}, failureStrategies: [{errors: [AllErrors], action: MarkAsFailure}]}
  - {name: c, script: {run: ok}}
  - {name: d, when: onFailure, script: {run: ok}}
  - {name: e, when: always, script: {run: ok}}
`,
			status: Failed, steps: "a=Succeeded b=Failed c=Skipped d=Succeeded e=Succeeded",
			actions: "a.command=Succeeded",
		},
		{
			name: "RollbackFlow: failed step's actions, earlier anyStep latest first, then rollback steps",
			doc: head + `rollbackOnFailure: true
failureStrategies: [{errors: [AllErrors], action: RollbackFlow}]
rollback:
  - {name: r1, script: {run: ok}}
  - {name: r2, script: {run: ok}}
steps:
  - {name: a, file: [{content: ok, dest: /a}], onFailure: [{action: revertFiles, trigger: anyStep}]}
  - {name: b, script: {run: ok}, onFailure: [{action: command, command: undo-b, trigger: anyStep}, {action: command, command: only-if-b-fails}]}
  - {name: c, script: {run: fail Verification}, onFailure: [{action: command, command: undo-c}]}
  - {name: d, when: onFailure, script: {run: ok}}
`,
			status: RolledBack, steps: "a=Succeeded b=Succeeded c=Failed d=Skipped",
			actions: "c.command=Succeeded b.command=Succeeded a.revertFiles=Succeeded r1.rollbackStep=Succeeded r2.rollbackStep=Succeeded",
			calls:   []string{"run:a#1", "run:b#1", "run:c#1", "command:undo-c", "command:undo-b", "undo:a:undo-a", "run:r1#1", "run:r2#1", "finish:a"},
		},
		{
			name: "failing rollback step stops the rest except when: always",
			doc: head + `rollbackOnFailure: true
failureStrategies: [{errors: [AllErrors], action: RollbackFlow}]
rollback:
  - {name: r1, script: {run: fail Unknown}}
  - {name: r2, script: {run: ok}}
  - {name: r3, when: always, script: {run: ok}}
steps:
  - {name: a, script: {run: fail Unknown}}
`,
			status: RollbackFailed, steps: "a=Failed",
			actions: "r1.rollbackStep=Failed r2.rollbackStep=Skipped r3.rollbackStep=Succeeded",
		},
		{
			name: "ignored later failure does not trigger anyStep actions",
			doc: head + `steps:
  - {name: a, script: {run: ok}, onFailure: [{action: command, command: undo-a, trigger: anyStep}]}
  - {name: b, script: {run: fail Unknown}, failureStrategies: [{errors: [AllErrors], action: Ignore}]}
`,
			status: Succeeded, steps: "a=Succeeded b=Ignored",
		},
		{
			name: "parallel block: a stopping failure aborts running siblings; plan covers them",
			doc: head + `steps:
  - parallel:
      - {name: a, script: {run: block}, onFailure: [{action: command, command: undo-a, trigger: anyStep}]}
      - {name: b, script: {run: after a fail Unknown}}
  - {name: c, script: {run: ok}}
`,
			status: Failed, steps: "a=Aborted b=Failed c=Skipped",
			actions: "a.command=Succeeded",
		},
		{
			name: "parallel block: a non-stopping failure lets siblings finish",
			doc: head + `steps:
  - parallel:
      - {name: a, script: {run: slow}}
      - {name: b, script: {run: fail Unknown}, failureStrategies: [{errors: [AllErrors], action: Ignore}]}
  - {name: c, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Succeeded b=Ignored c=Succeeded",
		},
		{
			name: "serial group and parallel group",
			doc: head + `steps:
  - group:
      name: g1
      steps: [{name: a, script: {run: ok}}, {name: b, script: {run: ok}}]
  - group:
      name: g2
      parallel: true
      steps: [{name: c, script: {run: slow}}, {name: d, script: {run: slow}}]
`,
			status: Succeeded, steps: "a=Succeeded b=Succeeded c=Succeeded d=Succeeded", groups: "g1=Succeeded g2=Succeeded",
		},
		{
			name: "group when and step when override",
			doc: head + `steps:
  - {name: a, script: {run: fail Unknown}, failureStrategies: [{errors: [AllErrors], action: MarkAsFailure}]}
  - group:
      name: cleanup
      when: onFailure
      steps: [{name: b, script: {run: ok}}, {name: c, when: onSuccess, script: {run: ok}}]
  - group:
      name: normal
      steps: [{name: d, script: {run: ok}}]
`,
			status: Failed, steps: "a=Failed b=Succeeded c=Skipped d=Skipped", groups: "cleanup=Succeeded normal=Skipped",
		},
		{
			name: "RollbackGroup then the flow's strategies decide the group's failure",
			doc: head + `failureStrategies: [{errors: [AllErrors], action: Ignore}]
steps:
  - {name: a, script: {run: ok}, onFailure: [{action: command, command: undo-a, trigger: anyStep}]}
  - group:
      name: g
      failureStrategies: [{errors: [AllErrors], action: RollbackGroup}]
      rollback: [{name: gr, script: {run: ok}}]
      steps:
        - {name: b, script: {run: ok}, onFailure: [{action: command, command: undo-b, trigger: anyStep}]}
        - {name: c, script: {run: fail Timeout}}
  - {name: d, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Succeeded b=Succeeded c=Failed d=Succeeded", groups: "g=RolledBack",
			actions: "b.command=Succeeded gr.rollbackStep=Succeeded",
		},
		{
			name: "RetryGroup re-runs the group from its first entry",
			doc: head + `steps:
  - group:
      name: g
      failureStrategies: [{errors: [AllErrors], action: RetryGroup, retry: {count: 2}}]
      steps:
        - {name: a, script: {run: ok}}
        - {name: b, script: {run: fail Unknown until 3}}
`,
			status: Succeeded, steps: "a=Succeeded/3 b=Succeeded/3", groups: "g=Succeeded",
			calls: []string{"run:a#1", "run:b#1", "run:a#2", "run:b#2", "run:a#3", "run:b#3"},
		},
		{
			name: "RetryGroup exhausted: the group's failure goes to the flow's list",
			doc: head + `failureStrategies: [{errors: [Unknown], action: Ignore}]
steps:
  - group:
      name: g
      failureStrategies: [{errors: [AllErrors], action: RetryGroup, retry: {count: 1}}]
      steps: [{name: a, script: {run: fail Unknown}}]
  - {name: b, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Failed/2 b=Succeeded", groups: "g=Ignored",
		},
		{
			name: "outputs and variables flow between steps",
			doc: head + `vars: {GREETING: hello}
steps:
  - {name: a, script: {run: out v=42}}
  - {name: b, script: {run: "echo ${{ vars.GREETING }} ${{ steps.a.outputs.v }} ${{ device.id }}"}}
`,
			status: Succeeded, steps: "a=Succeeded b=Succeeded",
		},
		{
			name: "step timeout is a Timeout failure",
			doc: head + `steps:
  - {name: a, timeout: 20ms, script: {run: block}, failureStrategies: [{errors: [Timeout], action: Ignore}]}
`,
			status: Succeeded, steps: "a=Ignored",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			res := h.run(c.doc)
			if res.Status != c.status {
				t.Errorf("status %s, want %s", res.Status, c.status)
			}
			if got := summary(res); got != c.steps {
				t.Errorf("steps\n got  %s\n want %s", got, c.steps)
			}
			if got := actions(res); got != c.actions {
				t.Errorf("actions\n got  %s\n want %s", got, c.actions)
			}
			if c.groups != "" {
				if got := groups(res); got != c.groups {
					t.Errorf("groups\n got  %s\n want %s", got, c.groups)
				}
			}
			if c.calls != nil && !reflect.DeepEqual(h.fake.Calls(), c.calls) {
				t.Errorf("calls\n got  %v\n want %v", h.fake.Calls(), c.calls)
			}
			if h.store.last.Status != c.status || h.store.last.EndedAt == nil {
				t.Errorf("journal's last record: status %s ended %v", h.store.last.Status, h.store.last.EndedAt)
			}
		})
	}
}

func TestOutputsExpanded(t *testing.T) {
	h := newHarness(t, Options{Vars: map[string]string{"GREETING": "hi"}})
	h.run(head + `vars: {GREETING: hello}
steps:
  - {name: a, script: {run: out v=42}}
  - {name: b, script: {run: "echo ${{ vars.GREETING }} ${{ steps.a.outputs.v }} ${{ device.id }}"}}
`)
	var said string
	for _, s := range h.store.last.Steps {
		if s.Name == "b" {
			said = s.Outputs["said"]
		}
	}
	if said != "hi 42 dev-1" {
		t.Fatalf("expanded %q, want %q", said, "hi 42 dev-1")
	}
}

func TestFlowTimeout(t *testing.T) {
	h := newHarness(t, Options{})
	res := h.run(head + `timeout: 30ms
failureStrategies: [{errors: [AllErrors], action: Retry, retry: {count: 5}}]
steps:
  - {name: a, script: {run: block}}
  - {name: b, when: always, script: {run: ok}}
`)
	if res.Status != Failed || summary(res) != "a=Failed b=Skipped" {
		t.Fatalf("got %s %s", res.Status, summary(res))
	}
	if res.Steps[0].Error.Type != onfailure.Timeout || res.Error == nil || !strings.Contains(res.Error.Message, "flow timed out") {
		t.Fatalf("flow timeout must be a Timeout and say so: %+v %+v", res.Steps[0].Error, res.Error)
	}
}

func TestPreflight(t *testing.T) {
	h := newHarness(t, Options{Vars: map[string]string{"NOPE": "1"}})
	f, err := flow.Parse("t.yaml", []byte(head+`steps:
  - {name: a, script: {run: "echo ${{ device.labels.site }}"}}
  - {name: b, compose: {project: web, file: web.yml}}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.eng.Run(context.Background(), f)
	var pe *PreflightError
	if !errors.As(err, &pe) {
		t.Fatalf("want PreflightError, got %v", err)
	}
	for _, want := range []string{`variable "NOPE" is not declared`, `no label "site"`, "compose steps are not supported"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
	if len(h.fake.Calls()) != 0 || h.store.writes != 0 {
		t.Fatal("nothing may run or be journaled when preflight fails")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestManualInterventionGuidance(t *testing.T) {
	for _, c := range []struct {
		action onfailure.Action
		status Status
		steps  string
	}{
		{onfailure.Retry, Succeeded, "a=Succeeded/2 b=Succeeded"},
		{onfailure.Ignore, Succeeded, "a=Ignored b=Succeeded"},
		{onfailure.Abort, Failed, "a=Failed b=Skipped"},
		{onfailure.Exclude, Failed, "a=Failed b=Skipped"},
	} {
		t.Run(string(c.action), func(t *testing.T) {
			h := newHarness(t, Options{})
			f, _ := flow.Parse("t.yaml", []byte(head+`steps:
  - name: a
    script: {run: fail Verification until 2}
    failureStrategies: [{errors: [Verification], action: ManualIntervention, manual: {timeout: 1h, onTimeout: Abort}}]
  - {name: b, script: {run: ok}}
`))
			done := make(chan *Result)
			go func() {
				res, err := h.eng.Run(context.Background(), f)
				if err != nil {
					t.Error(err)
				}
				done <- res
			}()
			waitFor(t, "pause", func() bool {
				cur := h.eng.Current()
				return cur != nil && cur.Status == Paused
			})
			if err := h.eng.Guide(Guidance{Action: "Dance", By: "op"}); err == nil {
				t.Error("an unknown guidance action must be refused")
			}
			if err := h.eng.Guide(Guidance{Action: c.action, By: "alice", Note: "checked"}); err != nil {
				t.Fatal(err)
			}
			res := <-done
			if res.Status != c.status || summary(res) != c.steps {
				t.Fatalf("got %s %s", res.Status, summary(res))
			}
			if len(res.Guidance) != 1 || res.Guidance[0].By != "alice" || res.Guidance[0].Action != c.action || res.Guidance[0].Note != "checked" {
				t.Fatalf("guidance must be recorded with who and what: %+v", res.Guidance)
			}
		})
	}
}

func TestManualInterventionTimeout(t *testing.T) {
	h := newHarness(t, Options{})
	res := h.run(head + `steps:
  - name: a
    script: {run: fail Verification}
    failureStrategies: [{errors: [Verification], action: ManualIntervention, manual: {timeout: 10ms, onTimeout: MarkAsSuccess}}]
`)
	if res.Status != Succeeded || !res.Steps[0].Marked || len(res.Guidance) != 1 || res.Guidance[0].By != "agent" {
		t.Fatalf("got %s %+v %+v", res.Status, res.Steps, res.Guidance)
	}
}

func TestMarkFailed(t *testing.T) {
	h := newHarness(t, Options{})
	f, _ := flow.Parse("t.yaml", []byte(head+`steps:
  - name: a
    script: {run: block}
    failureStrategies: [{errors: [UserMarkedFailure], action: MarkAsFailure}]
  - {name: b, when: onFailure, script: {run: ok}}
`))
	done := make(chan *Result)
	go func() {
		res, _ := h.eng.Run(context.Background(), f)
		done <- res
	}()
	waitFor(t, "step a running", func() bool {
		cur := h.eng.Current()
		return cur != nil && cur.Steps[0].Status == Running
	})
	if err := h.eng.MarkFailed("", "bob", "stuck"); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if summary(res) != "a=Failed b=Succeeded" || res.Steps[0].Error.Type != onfailure.UserMarkedFailure {
		t.Fatalf("got %s %+v", summary(res), res.Steps[0].Error)
	}
	if len(res.Guidance) != 1 || res.Guidance[0].By != "bob" {
		t.Fatalf("mark must be recorded: %+v", res.Guidance)
	}
}

func TestInterruptedLeavesExecutionRunning(t *testing.T) {
	h := newHarness(t, Options{})
	f, _ := flow.Parse("t.yaml", []byte(head+"steps:\n  - {name: a, script: {run: block}}\n"))
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, "running", func() bool { cur := h.eng.Current(); return cur != nil && cur.Steps[0].Status == Running })
		cancel()
	}()
	_, err := h.eng.Run(ctx, f)
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("got %v", err)
	}
	if h.store.last.Status != Running {
		t.Fatalf("an interrupted execution stays Running in the journal, got %s", h.store.last.Status)
	}
}

func TestJournaledBeforeStepActs(t *testing.T) {
	h := newHarness(t, Options{})
	var seen []Status
	h.eng.opts.Observe = func(ev Event) {
		if ev.Type == EventStep && ev.Status == Running {
			h.store.mu.Lock()
			for _, s := range h.store.last.Steps {
				if s.Name == ev.Step {
					seen = append(seen, s.Status)
				}
			}
			h.store.mu.Unlock()
		}
	}
	h.run(head + "steps:\n  - {name: a, script: {run: ok}}\n  - {name: b, script: {run: ok}}\n")
	if !reflect.DeepEqual(seen, []Status{Running, Running}) {
		t.Fatalf("the journal must say Running before a step acts, saw %v", seen)
	}
}

// TestReject: a refused bundle is journaled as a finished execution, Failed
// with the refusal's kind and message, with no step run.
func TestReject(t *testing.T) {
	h := newHarness(t, Options{})
	cause := onfailure.Errorf(onfailure.Integrity, "bundle web.tar: signature does not verify")
	res, err := h.eng.Reject("web", cause)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != Failed || res.Flow != "web" || res.Error == nil || res.Error.Type != onfailure.Integrity ||
		!strings.Contains(res.Error.Message, "signature does not verify") || len(res.Steps) != 0 {
		t.Fatalf("result %+v", res)
	}
	if h.store.writes != 1 || h.store.last.ID != res.Execution || h.store.last.Status != Failed || h.store.last.EndedAt == nil {
		t.Fatalf("journal: %d writes, last %+v", h.store.writes, h.store.last)
	}
	if len(h.fake.Calls()) != 0 {
		t.Fatal("a step ran")
	}
}
