package rollback

import (
	"reflect"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
)

func stepWith(name string, actions ...flow.RollbackAction) *flow.Step {
	return &flow.Step{Name: name, OnFailure: actions}
}

func cmd(trigger flow.Trigger) flow.RollbackAction {
	return flow.RollbackAction{Action: flow.ActionCommand, Command: "x", Trigger: trigger}
}

func keys(items []Item) []string {
	out := []string{}
	for _, it := range items {
		out = append(out, it.Key())
	}
	return out
}

func TestPlanOrder(t *testing.T) {
	a := stepWith("a", cmd(flow.AnyStep), cmd(flow.ThisStep))
	b := stepWith("b", flow.RollbackAction{Action: flow.ActionRevertFiles, Trigger: flow.AnyStep})
	c := stepWith("c", cmd(""))
	failed := stepWith("f", cmd(flow.ThisStep), cmd(flow.AnyStep))
	started := []Started{{a, 1}, {b, 2}, {c, 3}, {failed, 4}}
	got := keys(Plan(failed, started, nil))
	// The failed step's own actions in written order, then earlier steps'
	// anyStep actions, latest start first; thisStep actions of others never.
	want := []string{"f#0", "f#1", "b#0", "a#0"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestPlanAtMostOnce(t *testing.T) {
	a := stepWith("a", cmd(flow.AnyStep))
	f := stepWith("f", cmd(flow.ThisStep))
	done := map[string]bool{"a#0": true}
	got := keys(Plan(f, []Started{{a, 1}, {f, 2}}, func(k string) bool { return done[k] }))
	if !reflect.DeepEqual(got, []string{"f#0"}) {
		t.Fatalf("got %v", got)
	}
}

func TestPlanGroupFailure(t *testing.T) {
	a := stepWith("a", cmd(flow.AnyStep), cmd(flow.ThisStep))
	b := stepWith("b", cmd(flow.AnyStep))
	got := keys(Plan(nil, []Started{{b, 5}, {a, 2}}, nil))
	if !reflect.DeepEqual(got, []string{"b#0", "a#0"}) {
		t.Fatalf("got %v", got)
	}
}

func TestPlanParallelSiblingsLatestFirst(t *testing.T) {
	// Siblings that started after the failed one (cancelled, Aborted) are
	// covered too, latest start first.
	f := stepWith("f")
	s1 := stepWith("s1", cmd(flow.AnyStep))
	s2 := stepWith("s2", cmd(flow.AnyStep))
	got := keys(Plan(f, []Started{{f, 1}, {s1, 2}, {s2, 3}}, nil))
	if !reflect.DeepEqual(got, []string{"s2#0", "s1#0"}) {
		t.Fatalf("got %v", got)
	}
}
