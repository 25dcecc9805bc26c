package onfailure

import (
	"fmt"
	"time"
)

// Action is what happens after a failure (spec 5) or what an operator's
// guidance asks for (spec 7).
type Action string

// The actions of spec 5 and, for guidance, Exclude of spec 7.
const (
	Ignore             Action = "Ignore"
	MarkAsSuccess      Action = "MarkAsSuccess"
	MarkAsFailure      Action = "MarkAsFailure"
	Retry              Action = "Retry"
	RetryGroup         Action = "RetryGroup"
	ManualIntervention Action = "ManualIntervention"
	Abort              Action = "Abort"
	RollbackGroup      Action = "RollbackGroup"
	RollbackFlow       Action = "RollbackFlow"
	Exclude            Action = "Exclude"
)

// Actions lists the actions a strategy may name.
var Actions = []Action{
	Ignore, MarkAsSuccess, MarkAsFailure, Retry, RetryGroup,
	ManualIntervention, Abort, RollbackGroup, RollbackFlow,
}

// Valid reports whether a is an action a strategy may name.
func (a Action) Valid() bool {
	for _, v := range Actions {
		if a == v {
			return true
		}
	}
	return false
}

// GuidanceActions are the answers an operator may give a paused step
// (spec 7).
var GuidanceActions = []Action{Retry, Ignore, MarkAsSuccess, MarkAsFailure, Abort, RollbackGroup, RollbackFlow, Exclude}

// Guidance reports whether a is one of GuidanceActions.
func (a Action) Guidance() bool {
	for _, v := range GuidanceActions {
		if a == v {
			return true
		}
	}
	return false
}

// GroupOnly reports whether a is valid only inside a step group.
func (a Action) GroupOnly() bool { return a == RetryGroup || a == RollbackGroup }

// StopsScope reports whether a ends the enclosing scope, so that running
// parallel siblings are cancelled (spec 3).
func (a Action) StopsScope() bool {
	switch a {
	case Abort, RollbackFlow, RollbackGroup, Exclude:
		return true
	}
	return false
}

// RetryPolicy is a strategy's retry: keys (spec 5).
type RetryPolicy struct {
	// Count is how many times the step (or group) is run again.
	Count int `yaml:"count" json:"count"`
	// Intervals are the waits before each new attempt; the last repeats.
	Intervals []time.Duration `yaml:"intervals" json:"intervals,omitempty"`
	// OnExhausted applies when every attempt failed; empty means Abort.
	OnExhausted Action `yaml:"onExhausted" json:"onExhausted,omitempty"`
}

// Interval returns the wait before retry number n (1-based).
func (p *RetryPolicy) Interval(n int) time.Duration {
	if p == nil || len(p.Intervals) == 0 || n < 1 {
		return 0
	}
	if n > len(p.Intervals) {
		n = len(p.Intervals)
	}
	return p.Intervals[n-1]
}

// ManualPolicy is a strategy's manual: keys (spec 5).
type ManualPolicy struct {
	Timeout   time.Duration `yaml:"timeout" json:"timeout"`
	OnTimeout Action        `yaml:"onTimeout" json:"onTimeout"`
}

// Strategy is one failure strategy: which error kinds it matches and what
// it does.
type Strategy struct {
	Errors []Kind        `yaml:"errors" json:"errors"`
	Action Action        `yaml:"action" json:"action"`
	Retry  *RetryPolicy  `yaml:"retry" json:"retry,omitempty"`
	Manual *ManualPolicy `yaml:"manual" json:"manual,omitempty"`
}

// Matches reports whether s applies to an error of kind k.
func (s *Strategy) Matches(k Kind) bool {
	for _, e := range s.Errors {
		if e == k || e == AllErrors {
			return true
		}
	}
	return false
}

// Level is one list of strategies and where it was declared.
type Level struct {
	Scope      Scope
	Strategies []Strategy
}

// Scope names where a strategy list was declared.
type Scope string

// The scopes a strategy list can have, searched in this order.
const (
	ScopeStep  Scope = "step"
	ScopeGroup Scope = "group"
	ScopeFlow  Scope = "flow"
	// ScopeDefault is the decision when no strategy matched: Abort.
	ScopeDefault Scope = "default"
)

// Decision is the outcome of Decide.
type Decision struct {
	// Action is what to do now. For a Retry or RetryGroup whose attempts are
	// used up it is the policy's OnExhausted (Abort by default).
	Action Action
	// Scope is where the matching strategy was found.
	Scope Scope
	// Strategy is the matching strategy, nil when none matched.
	Strategy *Strategy
	// Wait is how long to wait before the next attempt (Retry, RetryGroup).
	Wait time.Duration
	// Exhausted is true when a Retry or RetryGroup strategy matched but its
	// attempts are used up, so Action came from OnExhausted.
	Exhausted bool
	// Manual is the pause's policy when Action is ManualIntervention: the
	// strategy's manual keys, or guided failure's (see GuidedFailure).
	Manual *ManualPolicy
	// Guided is set when guided failure turned a decision that would have
	// ended the flow into this pause.
	Guided bool
}

// Attempts counts the runs so far of what failed: the step's attempts, and
// the runs of its group (1 for the first run).
type Attempts struct {
	Step  int
	Group int
}

// Decide returns what follows a failure of kind k. levels are searched in
// order (step, group, flow): the first level with a matching strategy
// decides, and within it the first matching strategy wins. A Retry counts
// against the step's attempts, a RetryGroup against the group's runs. With
// no match the action is Abort.
func Decide(k Kind, n Attempts, levels ...Level) Decision {
	for _, l := range levels {
		for i := range l.Strategies {
			s := &l.Strategies[i]
			if !s.Matches(k) {
				continue
			}
			d := Decision{Action: s.Action, Scope: l.Scope, Strategy: s}
			if s.Action == ManualIntervention {
				d.Manual = s.Manual
			}
			if s.Action == Retry || s.Action == RetryGroup {
				count, attempts := 0, n.Step
				if s.Action == RetryGroup {
					attempts = n.Group
				}
				if s.Retry != nil {
					count = s.Retry.Count
				}
				if attempts <= count {
					d.Wait = s.Retry.Interval(attempts)
					return d
				}
				d.Exhausted = true
				d.Action = Abort
				if s.Retry != nil && s.Retry.OnExhausted != "" {
					d.Action = s.Retry.OnExhausted
				}
			}
			return d
		}
	}
	return Decision{Action: Abort, Scope: ScopeDefault}
}

// GuidedFailure is guided failure (docs/failure-handling.md): a failure
// whose decision would end the flow pauses for guidance instead, as a
// ManualIntervention strategy with manual {timeout: Timeout, onTimeout:
// OnTimeout} would.
type GuidedFailure struct {
	// Timeout is how long a pause waits for guidance.
	Timeout time.Duration `json:"timeout"`
	// OnTimeout applies when no guidance came within Timeout; empty means
	// Abort.
	OnTimeout Action `json:"onTimeout,omitempty"`
}

// TimeoutActions are the actions that may follow a pause that timed out
// (manual.onTimeout, and guided failure's OnTimeout): every strategy
// action but Retry, RetryGroup and ManualIntervention.
var TimeoutActions = []Action{Ignore, MarkAsSuccess, MarkAsFailure, Abort, RollbackGroup, RollbackFlow}

// Check reports whether g can be used: a timeout of more than zero, and an
// OnTimeout (if set) that may follow a pause, as for manual.onTimeout.
func (g *GuidedFailure) Check() error {
	if g.Timeout <= 0 {
		return fmt.Errorf("guided failure: timeout %s: want more than zero", g.Timeout)
	}
	if g.OnTimeout == "" {
		return nil
	}
	for _, a := range TimeoutActions {
		if g.OnTimeout == a {
			return nil
		}
	}
	return fmt.Errorf("guided failure: onTimeout %q: want one of %v", g.OnTimeout, TimeoutActions)
}

// Failure is what guided failure needs to know of a failure besides its
// decision.
type Failure struct {
	Kind Kind
	// InGroup is set for a step inside a group (RollbackGroup can apply to
	// it); it is not set for a step outside one, nor for a group's own
	// failure.
	InGroup bool
	// RollbackOnFailure is the flow's rollbackOnFailure (RollbackFlow can
	// apply).
	RollbackOnFailure bool
	// OutOfTime is set once the flow's timeout has passed: nothing more
	// may run but a rollback, so nothing pauses.
	OutOfTime bool
}

// Apply returns d, the decision for failure f, with guided failure g
// applied (g nil: guided failure is off, d is returned as it is).
//
// A decision that would end the flow — Abort, whether a strategy names it,
// no strategy matched, or a Retry or RetryGroup ran out into an Abort
// onExhausted — becomes a ManualIntervention with g's policy and Guided
// set. Every other decision stays as it is: Ignore, MarkAsSuccess and
// MarkAsFailure go on, Retry and RetryGroup run again, RollbackGroup and
// RollbackFlow undo what ran, ManualIntervention has its own policy. Nor
// do these pause:
//   - a RetryGroup that ran out with no onExhausted of its own: the
//     group's failure goes to the flow's strategies, and guided failure
//     applies to what they decide;
//   - a UserMarkedFailure: an operator (or a controller's cancel) marked
//     the step failed, so someone has already answered;
//   - a failure once the flow is out of time.
//
// OnTimeout is Abort when g leaves it empty, and also where it cannot
// apply: RollbackGroup but for a step inside a group, RollbackFlow when
// the flow does not set rollbackOnFailure: true.
func (g *GuidedFailure) Apply(d Decision, f Failure) Decision {
	switch {
	case g == nil, d.Action != Abort, f.Kind == UserMarkedFailure, f.OutOfTime:
		return d
	case d.Exhausted && d.Strategy != nil && d.Strategy.Action == RetryGroup &&
		(d.Strategy.Retry == nil || d.Strategy.Retry.OnExhausted == ""):
		return d
	}
	onTimeout := g.OnTimeout
	switch {
	case onTimeout == "",
		onTimeout == RollbackGroup && !f.InGroup,
		onTimeout == RollbackFlow && !f.RollbackOnFailure:
		onTimeout = Abort
	}
	d.Action, d.Guided = ManualIntervention, true
	d.Manual = &ManualPolicy{Timeout: g.Timeout, OnTimeout: onTimeout}
	return d
}
