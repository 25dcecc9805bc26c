package engine

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
)

// inputFlow takes its flow-level strategies at deploy time; step a fails
// with Connectivity on its first attempt only.
const inputFlow = head + `failureStrategies: input
steps:
  - {name: a, script: {run: fail Connectivity until 2}}
  - {name: b, script: {run: ok}}
`

var retryOnce = []onfailure.Strategy{{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Retry, Retry: &onfailure.RetryPolicy{Count: 1}}}

// TestFlowStrategiesFillInput: strategies given at deploy time decide as
// the flow's own list would.
func TestFlowStrategiesFillInput(t *testing.T) {
	h := newHarness(t, Options{FlowStrategies: retryOnce})
	res := h.run(inputFlow)
	if res.Status != Succeeded || summary(res) != "a=Succeeded/2 b=Succeeded" {
		t.Fatalf("got %s %s", res.Status, summary(res))
	}
	// A step's own list still comes first.
	h = newHarness(t, Options{FlowStrategies: retryOnce})
	res = h.run(head + `failureStrategies: input
steps:
  - {name: a, script: {run: fail Connectivity until 2}, failureStrategies: [{errors: [Connectivity], action: Ignore}]}
`)
	if res.Status != Succeeded || summary(res) != "a=Ignored" {
		t.Fatalf("step list first: got %s %s", res.Status, summary(res))
	}
}

// TestFlowStrategiesRefused: a flow that asks and gets none, strategies
// for a flow that did not ask, and strategies that break the rules, are
// refused before anything runs.
func TestFlowStrategiesRefused(t *testing.T) {
	cases := []struct {
		name  string
		doc   string
		given []onfailure.Strategy
		want  string
	}{
		{"none given", inputFlow, nil, `flow "t" takes its flow-level failure strategies at deploy time (failureStrategies: input at t.yaml:3:20), but none were given`},
		{"not asked", head + "steps: [{name: a, script: {run: ok}}]\n", retryOnce, `failure strategies were given, but flow "t" does not take them at deploy time`},
		{"written list not replaced", head + "failureStrategies: [{errors: [AllErrors], action: Ignore}]\nsteps: [{name: a, script: {run: ok}}]\n", retryOnce, "does not take them at deploy time"},
		{"rollbackFlow without flag", inputFlow, []onfailure.Strategy{{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.RollbackFlow}}, "given failure strategy 1: RollbackFlow needs rollbackOnFailure: true on the flow"},
		{"retry without count", inputFlow, []onfailure.Strategy{{Errors: []onfailure.Kind{onfailure.Timeout}, Action: onfailure.Retry}}, "given failure strategy 1: Retry needs retry: with count of at least 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, Options{FlowStrategies: c.given})
			f, err := flow.Parse("t.yaml", []byte(c.doc))
			if err != nil {
				t.Fatal(err)
			}
			_, err = h.eng.Run(context.Background(), f)
			var pe *PreflightError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want a PreflightError with %q, got %v", c.want, err)
			}
			if calls := h.fake.Calls(); len(calls) != 0 || h.store.writes != 0 {
				t.Errorf("something ran or was journaled: %v, %d writes", calls, h.store.writes)
			}
		})
	}
}
