package onfailure

import "time"

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
