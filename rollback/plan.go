// Package rollback decides which rollback actions run after a failure and
// in which order (spec 6). It is pure: the engine gives it what has run and
// what is already done, and executes the plan it returns.
//
// The order, for a failure that resolves to Abort, MarkAsFailure,
// RollbackFlow, or RollbackGroup (limited by the caller to the group):
//
//  1. the failed step's own onFailure actions, in the order written
//     (thisStep and anyStep alike: both trigger on the step's own failure);
//  2. the anyStep actions of the other steps that started, latest start
//     first (in a parallel block this includes cancelled siblings);
//  3. then, by the engine, the flow's or group's rollback steps.
//
// Every action runs at most once per execution: done filters out those that
// already ran, so a later failure, or a restart, never runs one twice.
//
// Undo plans the undoing of an execution that ended Succeeded (a
// controller's rollback after the fact, docs/rollouts.md): what
// RollbackFlow would have run had the flow failed right after its last
// step. No step failed, so there are no own actions: the anyStep actions
// of the steps that started, latest start first; then, by the engine, the
// flow's rollback steps.
package rollback

import (
	"sort"
	"strconv"

	"github.com/edgeflow/edgeflow/flow"
)

// Started is a step that has started in this execution.
type Started struct {
	Step *flow.Step
	// Seq is the order in which steps started (higher is later).
	Seq int
}

// Item is one rollback action to run.
type Item struct {
	Step   *flow.Step
	Index  int // in Step.OnFailure
	Action flow.RollbackAction
	// Trigger is the action's trigger as resolved (thisStep when empty).
	Trigger flow.Trigger
}

// Key identifies an action within an execution, for "at most once".
func (it Item) Key() string { return Key(it.Step.Name, it.Index) }

// Key returns the identity of action index of step.
func Key(step string, index int) string {
	return step + "#" + strconv.Itoa(index)
}

// TriggerOf returns an action's trigger, thisStep by default.
func TriggerOf(a flow.RollbackAction) flow.Trigger {
	if a.Trigger == "" {
		return flow.ThisStep
	}
	return a.Trigger
}

// Plan returns the rollback actions for a failure of failed (nil when a
// group, not a step, failed), given the other steps that started and which
// actions are done already.
func Plan(failed *flow.Step, started []Started, done func(key string) bool) []Item {
	var items []Item
	add := func(s *flow.Step, onlyAnyStep bool) {
		for i, a := range s.OnFailure {
			t := TriggerOf(a)
			if onlyAnyStep && t != flow.AnyStep {
				continue
			}
			it := Item{Step: s, Index: i, Action: a, Trigger: t}
			if done != nil && done(it.Key()) {
				continue
			}
			items = append(items, it)
		}
	}
	if failed != nil {
		add(failed, false)
	}
	others := make([]Started, 0, len(started))
	for _, s := range started {
		if failed == nil || s.Step != failed {
			others = append(others, s)
		}
	}
	sort.SliceStable(others, func(i, j int) bool { return others[i].Seq > others[j].Seq })
	for _, s := range others {
		add(s.Step, true)
	}
	return items
}

// Undo returns the rollback actions that undo a finished execution in
// which started are the steps that started: their anyStep actions, latest
// start first, as for a failure right after the last step. thisStep
// actions never run (their step did not fail), and actions done already
// (a RollbackGroup the flow's strategies then ignored, or an undo a
// restart cut off) are filtered out by done.
func Undo(started []Started, done func(key string) bool) []Item {
	return Plan(nil, started, done)
}
