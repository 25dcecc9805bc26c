package onfailure

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
