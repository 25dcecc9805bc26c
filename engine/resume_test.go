package engine

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
)

// interruptAt runs doc until cond holds on the running result, then stops
// the agent's context, as a shutdown would; it returns the journaled
// record, which a restarted agent would read.
func interruptAt(t *testing.T, h *harness, f *flow.Flow, cond func(*Result) bool) *Record {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, "interrupt point", func() bool { cur := h.eng.Current(); return cur != nil && cond(cur) })
		cancel()
	}()
	if _, err := h.eng.Run(ctx, f); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	h.store.mu.Lock()
	defer h.store.mu.Unlock()
	rec := h.store.last
	return &rec
}

func stepStatus(res *Result, name string) Status {
	for _, s := range res.Steps {
		if s.Name == name {
			return s.Status
		}
	}
	return ""
}

func parse(t *testing.T, doc string) *flow.Flow {
	t.Helper()
	f, err := flow.Parse("t.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestResumeRunningStepFailsWithAgentRestart(t *testing.T) {
	cases := []struct {
		name   string
		strat  string
		status Status
		steps  string
	}{
		{"retry re-runs it", "[{errors: [AgentRestart], action: Retry, retry: {count: 1}}]", Succeeded, "a=Succeeded b=Succeeded/2 c=Succeeded"},
		{"no strategy aborts", "[]", Failed, "a=Succeeded b=Failed c=Skipped"},
		{"ignore goes on", "[{errors: [AgentRestart], action: Ignore}]", Succeeded, "a=Succeeded b=Ignored c=Succeeded"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			// b blocks on its first attempt and passes on its second.
			f := parse(t, head+`steps:
  - {name: a, script: {run: ok}}
  - {name: b, script: {run: "fail Unknown until 2"}, failureStrategies: `+c.strat+`}
  - {name: c, script: {run: ok}}
`)
			f.Steps[1].Step.Script.Run = "block"
			rec := interruptAt(t, h, f, func(r *Result) bool { return stepStatus(r, "b") == Running })
			if s := rec.Steps[1].Status; s != Running {
				t.Fatalf("journal says %s for the interrupted step, want Running", s)
			}
			f.Steps[1].Step.Script.Run = "ok" // the step would now pass
			res, err := h.eng.Resume(context.Background(), f, rec)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != c.status || summary(res) != c.steps {
				t.Fatalf("got %s %s, want %s %s", res.Status, summary(res), c.status, c.steps)
			}
			if h.store.last.Resumes != 1 {
				t.Errorf("resumes = %d", h.store.last.Resumes)
			}
			if c.status == Failed && res.Steps[1].Error.Type != onfailure.AgentRestart {
				t.Errorf("error %+v, want AgentRestart", res.Steps[1].Error)
			}
			// a ran once, before the restart; it is not run again.
			runsOfA := 0
			for _, call := range h.fake.Calls() {
				if strings.HasPrefix(call, "run:a#") {
					runsOfA++
				}
			}
			if runsOfA != 1 {
				t.Errorf("a ran %d times, want 1: %v", runsOfA, h.fake.Calls())
			}
		})
	}
}

func TestResumeLoopGuard(t *testing.T) {
	h := newHarness(t, Options{MaxRestarts: 2})
	f := parse(t, head+`steps:
  - {name: a, script: {run: block}, failureStrategies: [{errors: [AgentRestart], action: Retry, retry: {count: 10, onExhausted: Ignore}}]}
`)
	rec := interruptAt(t, h, f, func(r *Result) bool { return stepStatus(r, "a") == Running })
	rec.Steps[0].Restarts = 2 // two restarts already interrupted it
	res, err := h.eng.Resume(context.Background(), f, rec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != Succeeded || res.Steps[0].Status != Ignored || !strings.Contains(res.Steps[0].Error.Message, "loop guard") {
		t.Fatalf("the loop guard must stop retrying and apply onExhausted: %s %+v", res.Status, res.Steps[0])
	}
}

func TestResumePausedKeepsWaiting(t *testing.T) {
	h := newHarness(t, Options{})
	f := parse(t, head+`steps:
  - name: a
    script: {run: fail Verification until 2}
    failureStrategies: [{errors: [Verification], action: ManualIntervention, manual: {timeout: 1h, onTimeout: Abort}}]
`)
	rec := interruptAt(t, h, f, func(r *Result) bool { return r.Status == Paused })
	deadline := rec.Pauses["a"]
	if deadline.IsZero() || rec.Steps[0].Status != Paused {
		t.Fatalf("a paused step and its deadline must be journaled: %+v %v", rec.Steps[0], rec.Pauses)
	}
	done := make(chan *Result)
	go func() {
		res, err := h.eng.Resume(context.Background(), f, rec)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	waitFor(t, "paused again", func() bool { cur := h.eng.Current(); return cur != nil && cur.Status == Paused })
	h.store.mu.Lock()
	kept := h.store.last.Pauses["a"].Equal(deadline)
	h.store.mu.Unlock()
	if !kept {
		t.Error("the guidance deadline must survive the restart")
	}
	if err := h.eng.Guide(Guidance{Action: onfailure.Retry, By: "op"}); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.Status != Succeeded || summary(res) != "a=Succeeded/2" {
		t.Fatalf("got %s %s", res.Status, summary(res))
	}
}

func TestResumeRollbackNoActionTwice(t *testing.T) {
	h := newHarness(t, Options{})
	f := parse(t, head+`rollbackOnFailure: true
failureStrategies: [{errors: [AllErrors], action: RollbackFlow}]
rollback:
  - {name: r1, script: {run: ok}}
  - {name: r2, script: {run: block}, failureStrategies: [{errors: [AgentRestart], action: Retry, retry: {count: 1}}]}
  - {name: r3, script: {run: ok}}
steps:
  - {name: a, file: [{content: ok, dest: /a}], onFailure: [{action: revertFiles, trigger: anyStep}]}
  - {name: b, script: {run: ok}, onFailure: [{action: command, command: undo-b, trigger: anyStep}]}
  - {name: c, script: {run: fail Verification}}
`)
	rec := interruptAt(t, h, f, func(r *Result) bool {
		for _, a := range r.Actions {
			if a.Step == "r2" && a.Status == Running {
				return true
			}
		}
		return false
	})
	if rec.Stop == nil || rec.Stop.Action != onfailure.RollbackFlow || len(rec.Pending) != 1 {
		t.Fatalf("the journal must say the flow was rolling back: stop %+v pending %+v", rec.Stop, rec.Pending)
	}
	f.Rollback[1].Script.Run = "ok"
	res, err := h.eng.Resume(context.Background(), f, rec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != RolledBack {
		t.Fatalf("status %s, actions %s", res.Status, actions(res))
	}
	if got := actions(res); got != "b.command=Succeeded a.revertFiles=Succeeded r1.rollbackStep=Succeeded r2.rollbackStep=Succeeded r3.rollbackStep=Succeeded" {
		t.Fatalf("actions %s", got)
	}
	count := map[string]int{}
	for _, c := range h.fake.Calls() {
		count[c]++
	}
	if count["command:undo-b"] != 1 || count["undo:a:undo-a"] != 1 || count["run:r1#1"] != 1 {
		t.Fatalf("an action ran twice: %v", h.fake.Calls())
	}
	if count["run:r2#2"] != 1 {
		t.Fatalf("the interrupted rollback step must be retried once (AgentRestart → Retry): %v", h.fake.Calls())
	}
}

func TestResumeInterruptedCommandIsNotRunAgain(t *testing.T) {
	h := newHarness(t, Options{})
	f := parse(t, head+`steps:
  - {name: a, script: {run: ok}, onFailure: [{action: script, script: {run: block}, trigger: anyStep}]}
  - {name: b, script: {run: fail Unknown}, onFailure: [{action: command, command: undo-b}]}
`)
	rec := interruptAt(t, h, f, func(r *Result) bool {
		return len(r.Actions) == 2 && r.Actions[1].Status == Running
	})
	res, err := h.eng.Resume(context.Background(), f, rec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != Failed || len(res.Actions) != 2 || res.Actions[1].Status != Failed || res.Actions[1].Error.Type != onfailure.AgentRestart {
		t.Fatalf("a cut-off script action ends Failed with AgentRestart and is not run again: %+v", res.Actions)
	}
	n := 0
	for _, c := range h.fake.Calls() {
		if c == "script:a" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("script action ran %d times: %v", n, h.fake.Calls())
	}
}

func TestResumeFinishedRefused(t *testing.T) {
	h := newHarness(t, Options{})
	f := parse(t, head+"steps: [{name: a, script: {run: ok}}]\n")
	h.run(head + "steps: [{name: a, script: {run: ok}}]\n")
	rec := h.store.last
	if _, err := h.eng.Resume(context.Background(), f, &rec); !errors.Is(err, ErrFinished) {
		t.Fatalf("got %v", err)
	}
}
