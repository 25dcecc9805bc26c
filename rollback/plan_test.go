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

func TestUndo(t *testing.T) {
	a := stepWith("a", cmd(flow.AnyStep), cmd(flow.ThisStep))
	b := stepWith("b", flow.RollbackAction{Action: flow.ActionRevertFiles, Trigger: flow.AnyStep}, cmd(flow.AnyStep))
	c := stepWith("c", cmd(""))
	d := stepWith("d")
	for _, tc := range []struct {
		name    string
		started []Started
		done    []string
		want    []string
	}{
		{"nothing started", nil, nil, []string{}},
		{"anyStep only, latest start first, in written order", []Started{{a, 1}, {b, 2}, {c, 3}}, nil, []string{"b#0", "b#1", "a#0"}},
		{"thisStep actions never", []Started{{c, 1}, {d, 2}}, nil, []string{}},
		{"start order, not document order", []Started{{b, 7}, {a, 9}}, nil, []string{"a#0", "b#0", "b#1"}},
		{"done actions are not run again", []Started{{a, 1}, {b, 2}}, []string{"b#0", "a#0"}, []string{"b#1"}},
		{"all done", []Started{{a, 1}}, []string{"a#0"}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := map[string]bool{}
			for _, k := range tc.done {
				done[k] = true
			}
			got := keys(Undo(tc.started, func(k string) bool { return done[k] }))
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
