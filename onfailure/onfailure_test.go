package onfailure

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestKindOf(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want Kind
	}{
		{"nil", nil, ""},
		{"typed", E(Integrity, "check", errors.New("mismatch")), Integrity},
		{"wrapped typed", fmt.Errorf("install: %w", E(Authorization, "open", nil)), Authorization},
		{"outermost wins", E(Timeout, "step", E(Connectivity, "dial", nil)), Timeout},
		{"joined", errors.Join(errors.New("x"), E(Verification, "probe", nil)), Verification},
		{"deadline", fmt.Errorf("wait: %w", context.DeadlineExceeded), Timeout},
		{"enospc", &fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, ResourceExhausted},
		{"emfile", syscall.EMFILE, ResourceExhausted},
		{"eacces", &fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, Authorization},
		{"refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), Connectivity},
		{"os deadline", os.ErrDeadlineExceeded, Timeout},
		{"plain", errors.New("boom"), Unknown},
		{"invalid kind falls through", &Error{Kind: "Bogus", Err: syscall.ENOSPC}, ResourceExhausted},
	}
	for _, c := range cases {
		if got := KindOf(c.err); got != c.want {
			t.Errorf("%s: KindOf(%v) = %q, want %q", c.name, c.err, got, c.want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	err := E(Integrity, "install /etc/a", errors.New("sha256 mismatch"))
	if err.Error() != "install /etc/a: sha256 mismatch" {
		t.Errorf("got %q", err)
	}
	if Wrap("x", nil) != nil {
		t.Error("Wrap(nil) must be nil")
	}
	if k := KindOf(Wrap("write", syscall.ENOSPC)); k != ResourceExhausted {
		t.Errorf("Wrap keeps the classified kind, got %q", k)
	}
}

func strat(action Action, kinds ...Kind) Strategy {
	return Strategy{Errors: kinds, Action: action}
}

func TestDecide(t *testing.T) {
	retry := Strategy{Errors: []Kind{Timeout}, Action: Retry,
		Retry: &RetryPolicy{Count: 3, Intervals: []time.Duration{time.Second, 5 * time.Second}, OnExhausted: RollbackFlow}}
	retryGroup := Strategy{Errors: []Kind{AllErrors}, Action: RetryGroup, Retry: &RetryPolicy{Count: 1}}
	step := func(s ...Strategy) Level { return Level{Scope: ScopeStep, Strategies: s} }
	group := func(s ...Strategy) Level { return Level{Scope: ScopeGroup, Strategies: s} }
	flow := func(s ...Strategy) Level { return Level{Scope: ScopeFlow, Strategies: s} }
	cases := []struct {
		name      string
		kind      Kind
		n         Attempts
		levels    []Level
		want      Action
		scope     Scope
		wait      time.Duration
		exhausted bool
	}{
		{"no strategy aborts", Unknown, Attempts{Step: 1}, []Level{step(), group(), flow()}, Abort, ScopeDefault, 0, false},
		{"no levels aborts", Unknown, Attempts{Step: 1}, nil, Abort, ScopeDefault, 0, false},
		// Spec 5's same-level conflict: first match within a list wins.
		{"same level: verification aborts", Verification, Attempts{Step: 1},
			[]Level{step(strat(Abort, Verification, Authentication), strat(Ignore, Verification, Connectivity))}, Abort, ScopeStep, 0, false},
		{"same level: connectivity ignored", Connectivity, Attempts{Step: 1},
			[]Level{step(strat(Abort, Verification, Authentication), strat(Ignore, Verification, Connectivity))}, Ignore, ScopeStep, 0, false},
		{"step beats flow", Timeout, Attempts{Step: 1},
			[]Level{step(strat(Ignore, Timeout)), group(), flow(strat(Abort, AllErrors))}, Ignore, ScopeStep, 0, false},
		{"group beats flow", Timeout, Attempts{Step: 1},
			[]Level{step(strat(Ignore, Verification)), group(strat(MarkAsSuccess, Timeout)), flow(strat(Abort, AllErrors))}, MarkAsSuccess, ScopeGroup, 0, false},
		{"flow when lower levels do not match", Timeout, Attempts{Step: 1},
			[]Level{step(strat(Ignore, Verification)), flow(strat(MarkAsFailure, AllErrors))}, MarkAsFailure, ScopeFlow, 0, false},
		{"AllErrors matches", AgentRestart, Attempts{Step: 1}, []Level{step(strat(Ignore, AllErrors))}, Ignore, ScopeStep, 0, false},
		{"retry first interval", Timeout, Attempts{Step: 1}, []Level{step(retry)}, Retry, ScopeStep, time.Second, false},
		{"retry second interval", Timeout, Attempts{Step: 2}, []Level{step(retry)}, Retry, ScopeStep, 5 * time.Second, false},
		{"retry last interval repeats", Timeout, Attempts{Step: 3}, []Level{step(retry)}, Retry, ScopeStep, 5 * time.Second, false},
		{"retry exhausted", Timeout, Attempts{Step: 4}, []Level{step(retry)}, RollbackFlow, ScopeStep, 0, true},
		{"retry exhausted default abort", Timeout, Attempts{Step: 2},
			[]Level{step(Strategy{Errors: []Kind{Timeout}, Action: Retry, Retry: &RetryPolicy{Count: 1}})}, Abort, ScopeStep, 0, true},
		{"retry group counts group runs", Unknown, Attempts{Step: 5, Group: 1}, []Level{group(retryGroup)}, RetryGroup, ScopeGroup, 0, false},
		{"retry group exhausted", Unknown, Attempts{Step: 1, Group: 2}, []Level{group(retryGroup)}, Abort, ScopeGroup, 0, true},
		{"manual", Verification, Attempts{Step: 1},
			[]Level{step(Strategy{Errors: []Kind{Verification}, Action: ManualIntervention, Manual: &ManualPolicy{Timeout: time.Hour, OnTimeout: Abort}})}, ManualIntervention, ScopeStep, 0, false},
	}
	for _, c := range cases {
		d := Decide(c.kind, c.n, c.levels...)
		if d.Action != c.want || d.Scope != c.scope || d.Wait != c.wait || d.Exhausted != c.exhausted {
			t.Errorf("%s: got %+v, want action %s scope %s wait %v exhausted %v", c.name, d, c.want, c.scope, c.wait, c.exhausted)
		}
	}
}

func TestActionProperties(t *testing.T) {
	for _, a := range []Action{Abort, RollbackFlow, RollbackGroup, Exclude} {
		if !a.StopsScope() {
			t.Errorf("%s must stop its scope", a)
		}
	}
	for _, a := range []Action{Ignore, MarkAsSuccess, MarkAsFailure, Retry} {
		if a.StopsScope() {
			t.Errorf("%s must not stop its scope", a)
		}
	}
	if !RetryGroup.GroupOnly() || !RollbackGroup.GroupOnly() || Abort.GroupOnly() {
		t.Error("GroupOnly wrong")
	}
	if Exclude.Valid() {
		t.Error("Exclude is guidance only, not a strategy action")
	}
}

// TestGuidedFailure: guided failure turns the decisions that end the flow
// into a pause with its policy, and leaves every other decision alone.
func TestGuidedFailure(t *testing.T) {
	g := &GuidedFailure{Timeout: 30 * time.Minute, OnTimeout: RollbackFlow}
	step := func(s ...Strategy) Level { return Level{Scope: ScopeStep, Strategies: s} }
	group := func(s ...Strategy) Level { return Level{Scope: ScopeGroup, Strategies: s} }
	flow := func(s ...Strategy) Level { return Level{Scope: ScopeFlow, Strategies: s} }
	retry := func(onExhausted Action) Strategy {
		return Strategy{Errors: []Kind{AllErrors}, Action: Retry, Retry: &RetryPolicy{Count: 1, OnExhausted: onExhausted}}
	}
	retryGroup := func(onExhausted Action) Strategy {
		return Strategy{Errors: []Kind{AllErrors}, Action: RetryGroup, Retry: &RetryPolicy{Count: 1, OnExhausted: onExhausted}}
	}
	manual := Strategy{Errors: []Kind{AllErrors}, Action: ManualIntervention, Manual: &ManualPolicy{Timeout: time.Hour, OnTimeout: Ignore}}
	inFlow := Failure{Kind: Unknown, RollbackOnFailure: true}
	cases := []struct {
		name   string
		g      *GuidedFailure
		kind   Kind
		n      Attempts
		levels []Level
		f      Failure
		want   Action // after Apply
		guided bool
		manual *ManualPolicy
	}{
		{"off: default abort stays", nil, Unknown, Attempts{Step: 1}, nil, inFlow, Abort, false, nil},
		{"no strategy pauses", g, Unknown, Attempts{Step: 1}, []Level{step(), flow()}, inFlow, ManualIntervention, true,
			&ManualPolicy{Timeout: 30 * time.Minute, OnTimeout: RollbackFlow}},
		{"explicit abort pauses", g, Verification, Attempts{Step: 1}, []Level{step(strat(Abort, Verification))}, inFlow, ManualIntervention, true,
			&ManualPolicy{Timeout: 30 * time.Minute, OnTimeout: RollbackFlow}},
		{"retry exhausted into abort pauses", g, Timeout, Attempts{Step: 2}, []Level{step(retry(""))}, inFlow, ManualIntervention, true,
			&ManualPolicy{Timeout: 30 * time.Minute, OnTimeout: RollbackFlow}},
		{"retry exhausted into explicit abort pauses", g, Timeout, Attempts{Step: 2}, []Level{step(retry(Abort))}, inFlow, ManualIntervention, true,
			&ManualPolicy{Timeout: 30 * time.Minute, OnTimeout: RollbackFlow}},
		{"retry group exhausted into abort pauses", g, Timeout, Attempts{Step: 1, Group: 2}, []Level{group(retryGroup(Abort))}, Failure{Kind: Timeout, InGroup: true, RollbackOnFailure: true},
			ManualIntervention, true, &ManualPolicy{Timeout: 30 * time.Minute, OnTimeout: RollbackFlow}},
		{"retry group exhausted without onExhausted goes to the flow's list", g, Timeout, Attempts{Step: 1, Group: 2}, []Level{group(retryGroup(""))}, Failure{Kind: Timeout, InGroup: true},
			Abort, false, nil},
		{"retry still to come", g, Timeout, Attempts{Step: 1}, []Level{step(retry(""))}, inFlow, Retry, false, nil},
		{"retry exhausted into ignore", g, Timeout, Attempts{Step: 2}, []Level{step(retry(Ignore))}, inFlow, Ignore, false, nil},
		{"ignore", g, Unknown, Attempts{Step: 1}, []Level{flow(strat(Ignore, AllErrors))}, inFlow, Ignore, false, nil},
		{"mark as success", g, Unknown, Attempts{Step: 1}, []Level{flow(strat(MarkAsSuccess, AllErrors))}, inFlow, MarkAsSuccess, false, nil},
		{"mark as failure goes on", g, Unknown, Attempts{Step: 1}, []Level{flow(strat(MarkAsFailure, AllErrors))}, inFlow, MarkAsFailure, false, nil},
		{"rollback flow undoes", g, Unknown, Attempts{Step: 1}, []Level{flow(strat(RollbackFlow, AllErrors))}, inFlow, RollbackFlow, false, nil},
		{"rollback group undoes", g, Unknown, Attempts{Step: 1}, []Level{group(strat(RollbackGroup, AllErrors))}, Failure{Kind: Unknown, InGroup: true}, RollbackGroup, false, nil},
		{"manual keeps its own policy", g, Unknown, Attempts{Step: 1}, []Level{step(manual)}, inFlow, ManualIntervention, false, manual.Manual},
		{"user marked failure aborts", g, UserMarkedFailure, Attempts{Step: 1}, nil, Failure{Kind: UserMarkedFailure, RollbackOnFailure: true}, Abort, false, nil},
		{"out of time aborts", g, Timeout, Attempts{Step: 1}, nil, Failure{Kind: Timeout, OutOfTime: true}, Abort, false, nil},
		{"onTimeout defaults to abort", &GuidedFailure{Timeout: time.Minute}, Unknown, Attempts{Step: 1}, nil, inFlow, ManualIntervention, true,
			&ManualPolicy{Timeout: time.Minute, OnTimeout: Abort}},
		{"rollback flow without rollbackOnFailure times out into abort", g, Unknown, Attempts{Step: 1}, nil, Failure{Kind: Unknown}, ManualIntervention, true,
			&ManualPolicy{Timeout: 30 * time.Minute, OnTimeout: Abort}},
		{"rollback group outside a group times out into abort", &GuidedFailure{Timeout: time.Minute, OnTimeout: RollbackGroup}, Unknown, Attempts{Step: 1}, nil, inFlow, ManualIntervention, true,
			&ManualPolicy{Timeout: time.Minute, OnTimeout: Abort}},
		{"rollback group inside a group", &GuidedFailure{Timeout: time.Minute, OnTimeout: RollbackGroup}, Unknown, Attempts{Step: 1}, nil, Failure{Kind: Unknown, InGroup: true}, ManualIntervention, true,
			&ManualPolicy{Timeout: time.Minute, OnTimeout: RollbackGroup}},
	}
	for _, c := range cases {
		d := c.g.Apply(Decide(c.kind, c.n, c.levels...), c.f)
		if d.Action != c.want || d.Guided != c.guided {
			t.Errorf("%s: got %s guided %v, want %s guided %v", c.name, d.Action, d.Guided, c.want, c.guided)
		}
		switch {
		case c.manual == nil && d.Manual != nil:
			t.Errorf("%s: manual %+v, want none", c.name, d.Manual)
		case c.manual != nil && (d.Manual == nil || *d.Manual != *c.manual):
			t.Errorf("%s: manual %+v, want %+v", c.name, d.Manual, c.manual)
		}
	}
}

func TestGuidedFailureCheck(t *testing.T) {
	for _, c := range []struct {
		g    GuidedFailure
		want string
	}{
		{GuidedFailure{Timeout: time.Second}, ""},
		{GuidedFailure{Timeout: time.Hour, OnTimeout: RollbackFlow}, ""},
		{GuidedFailure{Timeout: time.Hour, OnTimeout: Ignore}, ""},
		{GuidedFailure{}, "timeout 0s: want more than zero"},
		{GuidedFailure{Timeout: -time.Second, OnTimeout: Abort}, "timeout -1s"},
		{GuidedFailure{Timeout: time.Hour, OnTimeout: Retry}, `onTimeout "Retry"`},
		{GuidedFailure{Timeout: time.Hour, OnTimeout: RetryGroup}, `onTimeout "RetryGroup"`},
		{GuidedFailure{Timeout: time.Hour, OnTimeout: ManualIntervention}, `onTimeout "ManualIntervention"`},
		{GuidedFailure{Timeout: time.Hour, OnTimeout: Exclude}, `onTimeout "Exclude"`},
		{GuidedFailure{Timeout: time.Hour, OnTimeout: "Dance"}, `onTimeout "Dance"`},
	} {
		err := c.g.Check()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.g, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: got %v, want %q", c.g, err, c.want)
		}
	}
	// TimeoutActions are the strategy actions a pause may end in.
	for _, a := range Actions {
		want := a != Retry && a != RetryGroup && a != ManualIntervention
		if got := slices.Contains(TimeoutActions, a); got != want {
			t.Errorf("%s in TimeoutActions: %v, want %v", a, got, want)
		}
	}
}
