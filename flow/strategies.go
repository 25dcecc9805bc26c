package flow

import (
	"fmt"
	"reflect"

	"github.com/edgeflow/edgeflow/onfailure"
	"go.yaml.in/yaml/v3"
)

// ParseStrategies decodes a list of failure strategies given at deploy
// time (a strategies file, a named set, a dispatch's failureStrategies):
// YAML or JSON, each entry as a flow-level failureStrategies entry of the
// flow document (spec 5). It checks them as flow-level strategies with the
// flow's own validation, except RollbackFlow's need for rollbackOnFailure,
// which depends on the flow and is checked when they are given to one
// (CheckGiven). An invalid or empty list returns Problems.
func ParseStrategies(file string, data []byte) ([]onfailure.Strategy, error) {
	d := &decoder{file: file, keys: map[any]map[string]Pos{}}
	doc, _ := d.document(data)
	if doc == nil {
		return nil, d.probs
	}
	var list []Strategy
	if doc.Kind != yaml.SequenceNode {
		d.problem(posOf(doc), "expected a list of failure strategies, got %s", kindName(doc))
		return nil, d.probs
	}
	d.decode(doc, reflect.ValueOf(&list).Elem())
	if len(list) == 0 {
		d.problem(posOf(doc), "the list of failure strategies is empty")
	}
	v := &validator{d: d}
	v.strategies("failure strategies", list, false)
	if err := d.sorted(); err != nil {
		return nil, err
	}
	out := make([]onfailure.Strategy, len(list))
	for i, s := range list {
		out[i] = s.Strategy
	}
	return out, nil
}

// CheckGiven says what is wrong with giving f the flow-level strategies
// list at deploy time (nil: nothing). A flow that says `failureStrategies:
// input` needs a non-empty list, which must pass the checks a written
// flow-level list passes (spec 5: errors, actions, retry, manual,
// RollbackFlow needing rollbackOnFailure); a flow that does not say it
// takes none, so that an author's written strategies are never replaced.
func CheckGiven(f *Flow, list []onfailure.Strategy) []string {
	switch {
	case !f.StrategiesInput && len(list) > 0:
		return []string{fmt.Sprintf("failure strategies were given, but flow %q does not take them at deploy time (its flow-level failureStrategies are not %q); refusing to replace what the flow says", f.Name, StrategiesInput)}
	case !f.StrategiesInput:
		return nil
	case len(list) == 0:
		return []string{fmt.Sprintf("flow %q takes its flow-level failure strategies at deploy time (failureStrategies: %s at %s:%d:%d), but none were given", f.Name, StrategiesInput, f.File, f.StrategiesInputPos.Line, f.StrategiesInputPos.Col)}
	}
	d := &decoder{file: f.File, keys: map[any]map[string]Pos{}}
	v := &validator{d: d, f: f}
	for i, s := range list {
		v.strategies(fmt.Sprintf("given failure strategy %d", i+1), []Strategy{{Strategy: s}}, false)
	}
	var probs []string
	for _, p := range d.probs {
		probs = append(probs, p.Msg)
	}
	return probs
}

// WithStrategies returns f with list as its flow-level strategies when f
// takes them at deploy time (a copy; f is unchanged), else f. Check the
// list with CheckGiven first.
func (f *Flow) WithStrategies(list []onfailure.Strategy) *Flow {
	if !f.StrategiesInput || len(list) == 0 {
		return f
	}
	c := *f
	c.FailureStrategies = make([]Strategy, len(list))
	for i, s := range list {
		c.FailureStrategies[i] = Strategy{Pos: f.StrategiesInputPos, Strategy: s}
	}
	return &c
}
