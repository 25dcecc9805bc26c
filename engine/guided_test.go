package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// guidedHarness is a harness whose engine has guided failure g and
// records the pause and resume events it reports.
type guidedHarness struct {
	*harness
	pauses chan Event

	mu      sync.Mutex
	resumes []Event
}

func newGuided(t *testing.T, g *GuidedFailure, opts Options) *guidedHarness {
	gh := &guidedHarness{pauses: make(chan Event, 16)}
	opts.GuidedFailure = g
	opts.Observe = func(ev Event) {
		switch ev.Type {
		case EventPause:
			gh.pauses <- ev
		case EventResume:
			gh.mu.Lock()
			gh.resumes = append(gh.resumes, ev)
			gh.mu.Unlock()
		}
	}
	gh.harness = newHarness(t, opts)
	return gh
}

// start runs doc in the background; the result arrives on the channel.
func (gh *guidedHarness) start(doc string) <-chan *Result {
	gh.t.Helper()
	f := parse(gh.t.(*testing.T), doc)
	done := make(chan *Result, 1)
	go func() {
		res, err := gh.eng.Run(context.Background(), f)
		if err != nil {
			gh.t.Errorf("run: %v", err)
		}
		done <- res
	}()
	return done
}

// next waits for the flow to pause (the pause event) or to end (its
// result).
func (gh *guidedHarness) next(done <-chan *Result) (*Event, *Result) {
	gh.t.Helper()
	select {
	case ev := <-gh.pauses:
		return &ev, nil
	case res := <-done:
		return nil, res
	case <-time.After(10 * time.Second):
		gh.t.Fatal("the flow neither paused nor ended within 10s")
	}
	return nil, nil
}

var hour = &GuidedFailure{Timeout: time.Hour}

// TestGuidedFailureDecisions: which failures guided failure pauses (and
// which step or group), and which it leaves to their strategies.
func TestGuidedFailureDecisions(t *testing.T) {
	cases := []struct {
		name   string
		doc    string
		pause  string // the step (or group) that pauses; "" for none
		group  bool   // the pause is a group's
		guided bool   // the pause is guided failure's
		answer onfailure.Action
		status Status
		steps  string
		groups string
	}{
		{
			name: "no strategy pauses", pause: "a", guided: true, answer: onfailure.Abort,
			doc:    head + "steps:\n  - {name: a, script: {run: fail Unknown}}\n  - {name: b, script: {run: ok}}\n",
			status: Failed, steps: "a=Failed b=Skipped",
		},
		{
			name: "explicit Abort pauses", pause: "a", guided: true, answer: onfailure.Ignore,
			doc:    head + "failureStrategies: [{errors: [AllErrors], action: Abort}]\nsteps:\n  - {name: a, script: {run: fail Verification}}\n  - {name: b, script: {run: ok}}\n",
			status: Succeeded, steps: "a=Ignored b=Succeeded",
		},
		{
			name: "Retry exhausted into Abort pauses", pause: "a", guided: true, answer: onfailure.MarkAsSuccess,
			doc: head + `steps:
  - {name: a, script: {run: fail Timeout}, failureStrategies: [{errors: [Timeout], action: Retry, retry: {count: 2, intervals: [1ms]}}]}
  - {name: b, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Succeeded/3 b=Succeeded",
		},
		{
			name: "Retry exhausted into Ignore goes on",
			doc: head + `steps:
  - {name: a, script: {run: fail Timeout}, failureStrategies: [{errors: [Timeout], action: Retry, retry: {count: 1, onExhausted: Ignore}}]}
`,
			status: Succeeded, steps: "a=Ignored/2",
		},
		{
			name:   "Ignore goes on",
			doc:    head + "steps:\n  - {name: a, script: {run: fail Unknown}, failureStrategies: [{errors: [AllErrors], action: Ignore}]}\n",
			status: Succeeded, steps: "a=Ignored",
		},
		{
			name: "MarkAsFailure goes on",
			doc: head + `steps:
  - {name: a, script: {run: fail Unknown}, failureStrategies: [{errors: [AllErrors], action: MarkAsFailure}]}
  - {name: b, when: onFailure, script: {run: ok}}
`,
			status: Failed, steps: "a=Failed b=Succeeded",
		},
		{
			name: "RollbackFlow rolls back",
			doc: head + `rollbackOnFailure: true
failureStrategies: [{errors: [AllErrors], action: RollbackFlow}]
rollback: [{name: r, script: {run: ok}}]
steps: [{name: a, script: {run: fail Unknown}}]
`,
			status: RolledBack, steps: "a=Failed",
		},
		{
			name: "a rollback step's failure does not pause",
			doc: head + `rollbackOnFailure: true
failureStrategies: [{errors: [AllErrors], action: RollbackFlow}]
rollback: [{name: r, script: {run: fail Unknown}}]
steps: [{name: a, script: {run: fail Unknown}}]
`,
			status: RollbackFailed, steps: "a=Failed",
		},
		{
			name: "ManualIntervention keeps its own policy", pause: "a", guided: false, answer: onfailure.Abort,
			doc: head + `steps:
  - {name: a, script: {run: fail Unknown}, failureStrategies: [{errors: [AllErrors], action: ManualIntervention, manual: {timeout: 2h, onTimeout: Ignore}}]}
`,
			status: Failed, steps: "a=Failed",
		},
		{
			name: "RollbackGroup: the group's own failure pauses the group", pause: "g", group: true, guided: true, answer: onfailure.Ignore,
			doc: head + `steps:
  - group:
      name: g
      failureStrategies: [{errors: [AllErrors], action: RollbackGroup}]
      rollback: [{name: gr, script: {run: ok}}]
      steps: [{name: a, script: {run: fail Timeout}}]
  - {name: b, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Failed b=Succeeded", groups: "g=RolledBack",
		},
		{
			name: "RetryGroup exhausted: the group pauses, not its step", pause: "g", group: true, guided: true, answer: onfailure.Abort,
			doc: head + `steps:
  - group:
      name: g
      failureStrategies: [{errors: [AllErrors], action: RetryGroup, retry: {count: 1}}]
      steps: [{name: a, script: {run: fail Unknown}}]
  - {name: b, script: {run: ok}}
`,
			status: Failed, steps: "a=Failed/2 b=Skipped", groups: "g=Failed",
		},
		{
			name: "RetryGroup exhausted into an explicit Abort pauses the step", pause: "a", guided: true, answer: onfailure.Ignore,
			doc: head + `steps:
  - group:
      name: g
      failureStrategies: [{errors: [AllErrors], action: RetryGroup, retry: {count: 1, onExhausted: Abort}}]
      steps: [{name: a, script: {run: fail Unknown}}]
  - {name: b, script: {run: ok}}
`,
			status: Succeeded, steps: "a=Ignored/2 b=Succeeded", groups: "g=Succeeded",
		},
		{
			name: "out of time: no pause",
			doc: head + `timeout: 30ms
steps:
  - {name: a, script: {run: block}}
`,
			status: Failed, steps: "a=Failed",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			gh := newGuided(t, hour, Options{})
			done := gh.start(c.doc)
			ev, res := gh.next(done)
			if c.pause == "" {
				if ev != nil {
					t.Fatalf("paused %+v, want no pause", *ev)
				}
			} else {
				if ev == nil {
					t.Fatalf("ended %s %s without the pause of %s", res.Status, summary(res), c.pause)
				}
				name := ev.Step
				if c.group {
					name = ev.Group
				}
				if name != c.pause || ev.Guided != c.guided || ev.Until.IsZero() || ev.Error == nil {
					t.Fatalf("pause event %+v, want %s guided %v with a deadline and the error", *ev, c.pause, c.guided)
				}
				cur := gh.eng.Current()
				if cur.Status != Paused || len(cur.Pauses) != 1 || cur.Pauses[0].Step != c.pause || cur.Pauses[0].Guided != c.guided || !cur.Pauses[0].Until.Equal(ev.Until) {
					t.Fatalf("while paused: status %s, pauses %+v", cur.Status, cur.Pauses)
				}
				if err := gh.eng.Guide(Guidance{Action: c.answer, By: "alice"}); err != nil {
					t.Fatal(err)
				}
				if ev, res = gh.next(done); ev != nil {
					t.Fatalf("paused again after %s: %+v", c.answer, *ev)
				}
				if len(res.Guidance) != 1 || res.Guidance[0].Action != c.answer || res.Guidance[0].Guided != c.guided || res.Guidance[0].Step != c.pause {
					t.Errorf("guidance %+v, want %s on %s guided %v", res.Guidance, c.answer, c.pause, c.guided)
				}
			}
			if res.Status != c.status || summary(res) != c.steps {
				t.Errorf("got %s %s, want %s %s", res.Status, summary(res), c.status, c.steps)
			}
			if c.groups != "" && groups(res) != c.groups {
				t.Errorf("groups %s, want %s", groups(res), c.groups)
			}
			if len(res.Pauses) != 0 || len(gh.store.last.Pauses) != 0 || len(gh.store.last.GuidedPauses) != 0 {
				t.Errorf("an ended flow has no pauses: %+v %v %v", res.Pauses, gh.store.last.Pauses, gh.store.last.GuidedPauses)
			}
		})
	}
}

// TestGuidedFailureGuidance: every guidance of spec 7 applies to a guided
// pause as to a ManualIntervention's, and an Abort or MarkAsFailure given
// there is applied as it is: it does not pause again.
func TestGuidedFailureGuidance(t *testing.T) {
	doc := head + `rollbackOnFailure: true
rollback: [{name: r, script: {run: ok}}]
steps:
  - {name: a, script: {run: ok}, onFailure: [{action: command, command: undo-a, trigger: anyStep}]}
  - {name: b, script: {run: fail Verification until 2}}
  - {name: c, script: {run: ok}}
  - {name: d, when: onFailure, script: {run: ok}}
`
	for _, c := range []struct {
		action  onfailure.Action
		status  Status
		steps   string
		actions string
	}{
		{onfailure.Retry, Succeeded, "a=Succeeded b=Succeeded/2 c=Succeeded d=Skipped", ""},
		{onfailure.Ignore, Succeeded, "a=Succeeded b=Ignored c=Succeeded d=Skipped", ""},
		{onfailure.MarkAsSuccess, Succeeded, "a=Succeeded b=Succeeded c=Succeeded d=Skipped", ""},
		{onfailure.MarkAsFailure, Failed, "a=Succeeded b=Failed c=Skipped d=Succeeded", "a.command=Succeeded"},
		{onfailure.Abort, Failed, "a=Succeeded b=Failed c=Skipped d=Skipped", "a.command=Succeeded"},
		{onfailure.Exclude, Failed, "a=Succeeded b=Failed c=Skipped d=Skipped", "a.command=Succeeded"},
		{onfailure.RollbackFlow, RolledBack, "a=Succeeded b=Failed c=Skipped d=Skipped", "a.command=Succeeded r.rollbackStep=Succeeded"},
	} {
		t.Run(string(c.action), func(t *testing.T) {
			gh := newGuided(t, hour, Options{})
			done := gh.start(doc)
			ev, res := gh.next(done)
			if ev == nil || ev.Step != "b" || !ev.Guided {
				t.Fatalf("want a guided pause of b, got %+v %+v", ev, res)
			}
			if err := gh.eng.Guide(Guidance{Action: onfailure.RollbackGroup, By: "op"}); err == nil {
				t.Error("RollbackGroup outside a group must be refused")
			}
			if err := gh.eng.Guide(Guidance{Action: c.action, By: "alice", Note: "seen"}); err != nil {
				t.Fatal(err)
			}
			if ev, res = gh.next(done); ev != nil {
				t.Fatalf("paused again after %s: %+v", c.action, *ev)
			}
			if res.Status != c.status || summary(res) != c.steps || actions(res) != c.actions {
				t.Fatalf("got %s %s [%s], want %s %s [%s]", res.Status, summary(res), actions(res), c.status, c.steps, c.actions)
			}
			want := GuidanceResult{Step: "b", Action: c.action, By: "alice", Note: "seen", Guided: true}
			if len(res.Guidance) != 1 {
				t.Fatalf("guidance %+v", res.Guidance)
			}
			if g := res.Guidance[0]; g.At.IsZero() || g.Step != want.Step || g.Action != want.Action || g.By != want.By || g.Note != want.Note || !g.Guided {
				t.Errorf("guidance %+v, want %+v", g, want)
			}
			gh.mu.Lock()
			defer gh.mu.Unlock()
			if len(gh.resumes) != 1 || !gh.resumes[0].Guided || gh.resumes[0].Action != string(c.action) || gh.resumes[0].By != "alice" {
				t.Errorf("resume events %+v", gh.resumes)
			}
		})
	}
}

// TestGuidedFailureTimeout: with no guidance the onTimeout action applies
// after the timeout, recorded as given by the agent; an onTimeout that
// cannot apply to the flow is an Abort, and the note says why.
func TestGuidedFailureTimeout(t *testing.T) {
	for _, c := range []struct {
		name    string
		g       GuidedFailure
		rof     bool
		status  Status
		steps   string
		applied onfailure.Action
		note    string
	}{
		{"default Abort", GuidedFailure{Timeout: 10 * time.Millisecond}, false, Failed, "a=Failed b=Skipped", onfailure.Abort, "no guidance within 10ms"},
		{"MarkAsSuccess", GuidedFailure{Timeout: 10 * time.Millisecond, OnTimeout: onfailure.MarkAsSuccess}, false, Succeeded, "a=Succeeded b=Succeeded", onfailure.MarkAsSuccess, "no guidance within 10ms"},
		{"RollbackFlow", GuidedFailure{Timeout: 10 * time.Millisecond, OnTimeout: onfailure.RollbackFlow}, true, RolledBack, "a=Failed b=Skipped", onfailure.RollbackFlow, "no guidance within 10ms"},
		{"RollbackFlow without rollbackOnFailure", GuidedFailure{Timeout: 10 * time.Millisecond, OnTimeout: onfailure.RollbackFlow}, false, Failed, "a=Failed b=Skipped", onfailure.Abort,
			"guided failure's onTimeout RollbackFlow cannot apply here, so Abort"},
	} {
		t.Run(c.name, func(t *testing.T) {
			gh := newGuided(t, &c.g, Options{})
			doc := head + "steps:\n  - {name: a, script: {run: fail Unknown}}\n  - {name: b, script: {run: ok}}\n"
			if c.rof {
				doc = head + "rollbackOnFailure: true\nsteps:\n  - {name: a, script: {run: fail Unknown}}\n  - {name: b, script: {run: ok}}\n"
			}
			res := gh.run(doc)
			if res.Status != c.status || summary(res) != c.steps {
				t.Fatalf("got %s %s, want %s %s", res.Status, summary(res), c.status, c.steps)
			}
			if len(res.Guidance) != 1 || res.Guidance[0].By != "agent" || res.Guidance[0].Action != c.applied || !res.Guidance[0].Guided ||
				!strings.Contains(res.Guidance[0].Note, c.note) {
				t.Fatalf("guidance %+v, want %s by agent, guided, noting %q", res.Guidance, c.applied, c.note)
			}
			if len(gh.pauses) != 1 {
				t.Errorf("%d pause events, want 1", len(gh.pauses))
			}
		})
	}
}

// TestGuidedFailureDeadline: the pause's deadline is the engine's clock
// plus the timeout, journaled with the pause and marked as guided.
func TestGuidedFailureDeadline(t *testing.T) {
	now := time.Now().Add(time.Minute).Truncate(time.Second)
	gh := newGuided(t, &GuidedFailure{Timeout: 30 * time.Minute, OnTimeout: onfailure.Ignore}, Options{Now: func() time.Time { return now }})
	done := gh.start(head + "steps:\n  - {name: a, script: {run: fail Integrity}}\n")
	ev, _ := gh.next(done)
	want := now.Add(30 * time.Minute)
	if ev == nil || !ev.Until.Equal(want) || ev.Error.Type != onfailure.Integrity {
		t.Fatalf("pause event %+v, want until %s and the Integrity error", ev, want)
	}
	gh.store.mu.Lock()
	rec := gh.store.last
	gh.store.mu.Unlock()
	if !rec.Pauses["a"].Equal(want) || !rec.GuidedPauses["a"] || rec.Status != Paused || rec.Steps[0].Status != Paused {
		t.Fatalf("journal: status %s, step %s, pauses %v, guided %v", rec.Status, rec.Steps[0].Status, rec.Pauses, rec.GuidedPauses)
	}
	if err := gh.eng.Guide(Guidance{Action: onfailure.Abort, By: "op"}); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.Status != Failed || res.Guidance[0].At != now {
		t.Fatalf("got %s, guidance %+v", res.Status, res.Guidance)
	}
}

// TestGuidedFailureMarkFailed: a step an operator marks as failed does not
// pause: someone has already answered.
func TestGuidedFailureMarkFailed(t *testing.T) {
	gh := newGuided(t, hour, Options{})
	done := gh.start(head + "steps:\n  - {name: a, script: {run: block}}\n  - {name: b, script: {run: ok}}\n")
	waitFor(t, "a running", func() bool { cur := gh.eng.Current(); return cur != nil && cur.Steps[0].Status == Running })
	if err := gh.eng.MarkFailed("a", "bob", "stuck"); err != nil {
		t.Fatal(err)
	}
	ev, res := gh.next(done)
	if ev != nil {
		t.Fatalf("paused: %+v", *ev)
	}
	if res.Status != Failed || summary(res) != "a=Failed b=Skipped" || res.Steps[0].Error.Type != onfailure.UserMarkedFailure {
		t.Fatalf("got %s %s %+v", res.Status, summary(res), res.Steps[0].Error)
	}
}

// TestGuidedFailureInvalid: an invalid guided failure is refused before
// anything runs.
func TestGuidedFailureInvalid(t *testing.T) {
	for _, g := range []GuidedFailure{{}, {Timeout: time.Hour, OnTimeout: onfailure.Retry}, {Timeout: time.Hour, OnTimeout: onfailure.Exclude}} {
		h := newHarness(t, Options{GuidedFailure: &g})
		f := parse(t, head+"steps: [{name: a, script: {run: ok}}]\n")
		_, err := h.eng.Run(context.Background(), f)
		var pe *PreflightError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), "guided failure") {
			t.Errorf("%+v: got %v, want a PreflightError about guided failure", g, err)
		}
		if len(h.fake.Calls()) != 0 || h.store.writes != 0 {
			t.Errorf("%+v: something ran", g)
		}
	}
}

// TestResumeGuidedPauseKeepsDeadline: a guided pause interrupted by an
// agent restart pauses again when the execution resumes with the same
// guided failure, until the journaled deadline, not a new one; guidance
// then applies.
func TestResumeGuidedPauseKeepsDeadline(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	gh := newGuided(t, &GuidedFailure{Timeout: time.Hour}, Options{Now: func() time.Time { return clock() }})
	f := parse(t, head+`steps:
  - {name: a, script: {run: fail Connectivity until 2}}
  - {name: b, script: {run: ok}}
`)
	rec := interruptAt(t, gh.harness, f, func(r *Result) bool { return r.Status == Paused })
	deadline := rec.Pauses["a"]
	if !deadline.Equal(now.Add(time.Hour)) || !rec.GuidedPauses["a"] || rec.Steps[0].Status != Paused {
		t.Fatalf("the guided pause and its deadline must be journaled: %+v %v %v", rec.Steps[0], rec.Pauses, rec.GuidedPauses)
	}
	if res := rec.Result(); len(res.Pauses) != 1 || !res.Pauses[0].Guided || !res.Pauses[0].Until.Equal(deadline) {
		t.Fatalf("status from the journal must show the guided pause: %+v", res.Pauses)
	}
	<-gh.pauses // the first pause's event
	// The agent starts again ten minutes later.
	later := now.Add(10 * time.Minute)
	clock = func() time.Time { return later }
	done := make(chan *Result, 1)
	go func() {
		res, err := gh.eng.Resume(context.Background(), f, rec)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	ev, res := gh.next(done)
	if ev == nil || ev.Step != "a" || !ev.Guided || !ev.Until.Equal(deadline) {
		t.Fatalf("after the restart: pause %+v, result %+v; want a guided pause of a until %s", ev, res, deadline)
	}
	if err := gh.eng.Guide(Guidance{Action: onfailure.Retry, By: "op"}); err != nil {
		t.Fatal(err)
	}
	res = <-done
	if res.Status != Succeeded || summary(res) != "a=Succeeded/2 b=Succeeded" || len(res.Guidance) != 1 || !res.Guidance[0].Guided {
		t.Fatalf("got %s %s %+v", res.Status, summary(res), res.Guidance)
	}
}
