package flow

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

func mustParse(t *testing.T, doc string) *Flow {
	t.Helper()
	f, err := Parse("flow.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return f
}

func TestSpecExampleDecodes(t *testing.T) {
	data, err := os.ReadFile("../testdata/flows/spec-example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse("spec-example.yaml", data)
	if err != nil {
		t.Fatalf("the spec's own example must be valid: %v", err)
	}
	if f.Name != "web-2.3.0" || f.Timeout != 30*time.Minute || !f.RollbackOnFailure {
		t.Errorf("header: got name %q timeout %v rollbackOnFailure %v", f.Name, f.Timeout, f.RollbackOnFailure)
	}
	if got := len(f.Steps); got != 3 {
		t.Fatalf("steps: got %d entries, want 3", got)
	}
	cfg := f.Steps[0].Step
	if cfg.Type() != TypeFile || len(cfg.File.Entries) != 2 || *cfg.File.Entries[1].Content != "LEVEL=info\n" {
		t.Errorf("config step decoded wrong: %+v", cfg)
	}
	if cfg.OnFailure[0].Action != ActionRevertFiles || cfg.OnFailure[0].Trigger != AnyStep {
		t.Errorf("config onFailure: %+v", cfg.OnFailure)
	}
	g := f.Steps[1].Group
	if g == nil || g.Name != "services" || g.Parallel || len(g.Steps) != 2 || len(g.Steps[1].Parallel) != 2 {
		t.Fatalf("services group decoded wrong: %+v", g)
	}
	st := g.FailureStrategies[0]
	if st.Action != onfailure.Retry || st.Retry.Count != 2 || st.Retry.Intervals[1] != 30*time.Second || st.Retry.OnExhausted != onfailure.RollbackGroup {
		t.Errorf("group strategy: %+v %+v", st, st.Retry)
	}
	if mig := g.Steps[0].Step; mig.Script.ErrorTypes["75"] != onfailure.Connectivity || mig.Script.Timeout != 2*time.Minute {
		t.Errorf("migrate: %+v", mig.Script)
	}
	smoke := f.Steps[2].Step
	if smoke.Verify.HTTP.ExpectStatus != 200 || smoke.FailureStrategies[0].Manual.OnTimeout != onfailure.RollbackFlow {
		t.Errorf("smoke: %+v", smoke.Verify)
	}
}

func TestJSONFlow(t *testing.T) {
	f := mustParse(t, `{"version": 1, "name": "j", "steps": [{"name": "a", "script": {"run": "true"}}]}`)
	if f.Steps[0].Step.Script.Run != "true" {
		t.Fatalf("got %+v", f.Steps[0].Step)
	}
	_, err := Parse("flow.json", []byte("{\n  \"version\": 1,\n  \"name\": \"j\",\n  \"stepz\": []\n}"))
	if err == nil || !strings.Contains(err.Error(), `flow.json:4:3: unknown key "stepz" (did you mean "steps"?)`) {
		t.Fatalf("JSON errors need line and column: %v", err)
	}
}

func TestSingleFileEntryMapping(t *testing.T) {
	f := mustParse(t, "version: 1\nname: x\nsteps:\n  - name: a\n    file: {content: hi, dest: /tmp/x}\n")
	if n := len(f.Steps[0].Step.File.Entries); n != 1 {
		t.Fatalf("a file mapping is one entry, got %d", n)
	}
}

// TestInvalidReportsEverythingAtOnce checks that every problem is found in
// one pass, each with its line and column.
func TestInvalidReportsEverythingAtOnce(t *testing.T) {
	doc := `version: 1
name: demo
timeot: 5m
steps:
  - name: a
    script: { run: "echo ${{ steps.b.outputs.x }}", timeout: 5 }
  - name: b
    script: { run: echo }
  - name: a
    verify: { tcp: { address: "nope" } }
    onFailure: [ { action: revertFiles } ]
`
	_, err := Parse("f.yaml", []byte(doc))
	want := []string{
		`f.yaml:3:1: unknown key "timeot" (did you mean "timeout"?)`,
		`f.yaml:6:20: step "a": ${{ steps.b.outputs.x }}: step "b" does not finish before this step starts`,
		`f.yaml:6:62: bad duration "5" (give a unit: 30s, 5m, 1h)`,
		`f.yaml:9:5: step name "a" is already used at line 5`,
		`f.yaml:10:31: step "a": tcp address "nope" must be host:port`,
		`f.yaml:11:28: step "a": revertFiles is only valid on a file step`,
	}
	if err == nil {
		t.Fatal("invalid flow accepted")
	}
	got := err.Error()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in:\n%s", w, got)
		}
	}
	if n := len(strings.Split(got, "\n")); n != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", n, len(want), got)
	}
}

func TestValidationRules(t *testing.T) {
	head := "version: 1\nname: x\n"
	cases := []struct {
		name, doc, want string
	}{
		{"no steps", head, "steps is required"},
		{"version", "version: 3\nname: x\nsteps: [{name: a, script: {run: x}}]\n", "unsupported version 3"},
		{"flow name", "version: 1\nname: Web\nsteps: [{name: a, script: {run: x}}]\n", `flow name "Web" must match`},
		{"no type", head + "steps: [{name: a}]\n", "no step type"},
		{"two types", head + "steps: [{name: a, script: {run: x}, reboot: {}}]\n", "has script and reboot"},
		{"nested group", head + "steps:\n  - group:\n      name: g\n      steps:\n        - group: {name: h, steps: [{name: a, script: {run: x}}]}\n", "a group cannot contain another group"},
		{"nested group in parallel", head + "steps:\n  - group:\n      name: g\n      steps:\n        - parallel:\n            - group: {name: h, steps: [{name: a, script: {run: x}}]}\n", "a group cannot contain another group"},
		{"parallel in parallel", head + "steps:\n  - parallel:\n      - parallel: [{name: a, script: {run: x}}]\n", "cannot contain another parallel"},
		{"group extra key", head + "steps:\n  - group: {name: g, steps: [{name: a, script: {run: x}}]}\n    when: always\n", "holds only the group key"},
		{"duplicate key", head + "steps: [{name: a, name: b, script: {run: x}}]\n", `duplicate key "name"`},
		{"rollback step name clash", head + "steps: [{name: a, script: {run: x}}]\nrollback: [{name: a, script: {run: y}}]\n", `step name "a" is already used`},
		{"group name clash", head + "steps:\n  - name: g\n    script: {run: x}\n  - group: {name: g, steps: [{name: b, script: {run: x}}]}\n", `group name "g" is already used`},
		{"bad when", head + "steps: [{name: a, when: maybe, script: {run: x}}]\n", "when must be onSuccess, onFailure or always"},
		{"negative duration", head + "timeout: -5s\nsteps: [{name: a, script: {run: x}}]\n", "negative"},
		{"relative dest", head + "steps: [{name: a, file: [{content: x, dest: etc/x}]}]\n", "must be an absolute path"},
		{"src escapes", head + "steps: [{name: a, file: [{src: ../../etc/shadow, dest: /x}]}]\n", "must be a relative path inside"},
		{"src and content", head + "steps: [{name: a, file: [{src: a, content: b, dest: /x}]}]\n", "src or content, not both"},
		{"bad mode", head + "steps: [{name: a, file: [{content: b, dest: /x, mode: rw}]}]\n", "must be octal"},
		{"bad sha", head + "steps: [{name: a, file: [{content: b, dest: /x, sha256: abc}]}]\n", "64 hex digits"},
		{"errorTypes code", head + "steps: [{name: a, script: {run: x, errorTypes: {\"0\": Timeout}}}]\n", "exit code from 1 to 255"},
		{"errorTypes kind", head + "steps: [{name: a, script: {run: x, errorTypes: {\"3\": Oops}}}]\n", `"Oops" is not an error type`},
		{"verify two probes", head + "steps: [{name: a, verify: {command: x, tcp: {address: \"a:1\"}}}]\n", "exactly one of http, tcp, command"},
		{"verify url", head + "steps: [{name: a, verify: {http: {url: \"localhost\"}}}]\n", "must be an http:// or https:// URL"},
		{"command action without text", head + "steps: [{name: a, script: {run: x}, onFailure: [{action: command}]}]\n", "needs command:"},
		{"unknown action", head + "steps: [{name: a, script: {run: x}, onFailure: [{action: reboot}]}]\n", `unknown onFailure action "reboot"`},
		{"bad trigger", head + "steps: [{name: a, script: {run: x}, onFailure: [{action: command, command: x, trigger: always}]}]\n", "trigger must be thisStep or anyStep"},
		{"compose action on script", head + "steps: [{name: a, script: {run: x}, onFailure: [{action: revertComposeFile}]}]\n", "revertComposeFile is only valid on a compose step"},
		{"unknown strategy error", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [Oops], action: Abort}]}]\n", `"Oops" is not an error type`},
		{"strategy without errors", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{action: Abort}]}]\n", "needs errors"},
		{"rollbackflow without flag", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: RollbackFlow}]}]\n", "RollbackFlow needs rollbackOnFailure: true"},
		{"rollbackflow onTimeout without flag", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: ManualIntervention, manual: {timeout: 1m, onTimeout: RollbackFlow}}]}]\n", "RollbackFlow needs rollbackOnFailure: true"},
		{"group action outside group", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: RollbackGroup}]}]\n", "RollbackGroup is only valid inside a group"},
		{"group action at flow level", head + "failureStrategies: [{errors: [AllErrors], action: RetryGroup, retry: {count: 1}}]\nsteps: [{name: a, script: {run: x}}]\n", "RetryGroup is only valid inside a group"},
		{"retry without count", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: Retry}]}]\n", "needs retry: with count"},
		{"onExhausted retry", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: Retry, retry: {count: 1, onExhausted: Retry}}]}]\n", "onExhausted cannot be Retry"},
		{"onTimeout manual", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: ManualIntervention, manual: {timeout: 1m, onTimeout: ManualIntervention}}]}]\n", "onTimeout cannot be ManualIntervention"},
		{"manual needs onTimeout", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: ManualIntervention, manual: {timeout: 1m}}]}]\n", "manual.onTimeout is required"},
		{"retry on wrong action", head + "steps: [{name: a, script: {run: x}, failureStrategies: [{errors: [AllErrors], action: Abort, retry: {count: 2}}]}]\n", "retry: is only used with Retry"},
		{"undeclared var", head + "steps: [{name: a, script: {run: \"echo ${{ vars.X }}\"}}]\n", "${{ vars.X }} is not declared under vars"},
		{"unknown expression", head + "steps: [{name: a, script: {run: \"echo ${{ env.HOME }}\"}}]\n", "unknown expression ${{ env.HOME }}"},
		{"missing step output", head + "steps: [{name: a, script: {run: \"echo ${{ steps.zz.outputs.x }}\"}}]\n", `there is no step "zz"`},
		{"own output", head + "steps: [{name: a, script: {run: \"echo ${{ steps.a.outputs.x }}\"}}]\n", "cannot read its own outputs"},
		{"later output", head + "steps:\n  - {name: a, script: {run: \"echo ${{ steps.b.outputs.x }}\"}}\n  - {name: b, script: {run: x}}\n", `step "b" does not finish before`},
		{"parallel output", head + "steps:\n  - parallel:\n      - {name: a, script: {run: \"echo ${{ steps.b.outputs.x }}\"}}\n      - {name: b, script: {run: x}}\n", `step "b" does not finish before`},
		{"parallel group output", head + "steps:\n  - group:\n      name: g\n      parallel: true\n      steps:\n        - {name: a, script: {run: \"echo ${{ steps.b.outputs.x }}\"}}\n        - {name: b, script: {run: x}}\n", `step "b" does not finish before`},
		{"output of non-script", head + "steps:\n  - {name: a, verify: {command: x}}\n  - {name: b, script: {run: \"echo ${{ steps.a.outputs.x }}\"}}\n", "is not a script step"},
		{"syntax", head + "steps: [\n", "syntax error"},
		{"two documents", head + "steps: [{name: a, script: {run: x}}]\n---\nname: y\n", "holds one document"},
		{"wrong shape", head + "steps: {name: a}\n", "expected a list"},
		{"strategies input on a step", head + "steps: [{name: a, script: {run: x}, failureStrategies: input}]\n", `f.yaml:3:56: step "a": failureStrategies: input is only allowed at the flow level`},
		{"strategies input on a group", head + "steps:\n  - group: {name: g, failureStrategies: input, steps: [{name: a, script: {run: x}}]}\n", `f.yaml:4:41: group "g": failureStrategies: input is only allowed at the flow level`},
		{"strategies other word", head + "failureStrategies: inputs\nsteps: [{name: a, script: {run: x}}]\n", `f.yaml:3:20: expected a list of failure strategies (or input, on the flow only), got "inputs"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(c.doc))
			if err == nil {
				t.Fatalf("accepted:\n%s", c.doc)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want %q in:\n%v", c.want, err)
			}
			if !IsInvalid(err) {
				t.Errorf("IsInvalid(%v) = false", err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "f.yaml:") {
					t.Errorf("problem without FILE:LINE:COL: %q", line)
				}
			}
		})
	}
}

func TestStrategiesInput(t *testing.T) {
	f := mustParse(t, "version: 1\nname: x\nrollbackOnFailure: false\nfailureStrategies: input\nsteps: [{name: a, script: {run: x}}]\n")
	if !f.StrategiesInput || f.StrategiesInputPos != (Pos{4, 20}) || f.FailureStrategies != nil {
		t.Fatalf("input: %v at %v, list %v", f.StrategiesInput, f.StrategiesInputPos, f.FailureStrategies)
	}
	if p := CheckGiven(f, nil); len(p) != 1 || !strings.Contains(p[0], `flow "x" takes its flow-level failure strategies at deploy time (failureStrategies: input at flow.yaml:4:20), but none were given`) {
		t.Errorf("none given: %q", p)
	}
	retry := onfailure.Strategy{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Retry, Retry: &onfailure.RetryPolicy{Count: 1}}
	if p := CheckGiven(f, []onfailure.Strategy{retry}); p != nil {
		t.Errorf("a valid list: %q", p)
	}
	bad := []onfailure.Strategy{
		retry,
		{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.RollbackFlow},
		{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Retry},
		{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.RollbackGroup},
	}
	p := CheckGiven(f, bad)
	want := []string{
		"given failure strategy 2: RollbackFlow needs rollbackOnFailure: true on the flow",
		"given failure strategy 3: Retry needs retry: with count of at least 1",
		"given failure strategy 4: RollbackGroup is only valid inside a group",
	}
	if strings.Join(p, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(p, "\n"), strings.Join(want, "\n"))
	}
	g := f.WithStrategies([]onfailure.Strategy{retry})
	if g == f || len(g.FailureStrategies) != 1 || g.FailureStrategies[0].Action != onfailure.Retry || f.FailureStrategies != nil {
		t.Errorf("WithStrategies: %+v (original %+v)", g.FailureStrategies, f.FailureStrategies)
	}

	written := mustParse(t, "version: 1\nname: x\nsteps: [{name: a, script: {run: x}}]\n")
	if p := CheckGiven(written, []onfailure.Strategy{retry}); len(p) != 1 || !strings.Contains(p[0], "does not take them at deploy time") {
		t.Errorf("unasked: %q", p)
	}
	if p := CheckGiven(written, nil); p != nil {
		t.Errorf("nothing given, nothing asked: %q", p)
	}
	if written.WithStrategies([]onfailure.Strategy{retry}) != written {
		t.Error("WithStrategies replaced a written list")
	}
}

func TestParseStrategies(t *testing.T) {
	list, err := ParseStrategies("s.yaml", []byte("- errors: [Timeout, Connectivity]\n  action: Retry\n  retry: {count: 2, intervals: [5s, 30s], onExhausted: RollbackFlow}\n- {errors: [AllErrors], action: ManualIntervention, manual: {timeout: 1h, onTimeout: Abort}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Retry.Intervals[1] != 30*time.Second || list[0].Retry.OnExhausted != onfailure.RollbackFlow || list[1].Manual.Timeout != time.Hour {
		t.Errorf("decoded: %+v", list)
	}
	js, err := ParseStrategies("s.json", []byte(`[{"errors":["AllErrors"],"action":"Retry","retry":{"count":1,"intervals":["1s"]}}]`))
	if err != nil || len(js) != 1 || js[0].Retry.Intervals[0] != time.Second {
		t.Errorf("JSON: %+v %v", js, err)
	}
	for _, c := range []struct{ doc, want string }{
		{"[]", "s.yaml:1:1: the list of failure strategies is empty"},
		{"input", `s.yaml:1:1: expected a list of failure strategies, got "input"`},
		{"- {errors: [AllErrors], action: Retry}", "s.yaml:1:33: failure strategies: Retry needs retry: with count of at least 1"},
		{"- {errors: [AllErrors], action: RetryGroup, retry: {count: 1}}", "RetryGroup is only valid inside a group"},
		{"- {errors: [AllErrors], action: Abort, colour: red}", `s.yaml:1:40: unknown key "colour"`},
		{"- {errors: [Oops], action: Abort}", `"Oops" is not an error type`},
		{"- [", "syntax error"},
	} {
		_, err := ParseStrategies("s.yaml", []byte(c.doc))
		if err == nil || !strings.Contains(err.Error(), c.want) || !IsInvalid(err) {
			t.Errorf("%q: want %q, got %v", c.doc, c.want, err)
		}
	}
}

func TestOutputOrderingAllowed(t *testing.T) {
	mustParse(t, `version: 1
name: x
vars: {A: "1"}
steps:
  - {name: a, script: {run: "echo x=1 >> $EDGEFLOW_OUTPUT"}}
  - group:
      name: g
      steps:
        - {name: b, script: {run: "echo ${{ steps.a.outputs.x }} ${{ vars.A }} ${{ device.id }} ${{ device.labels.site }}"}}
        - parallel:
            - {name: c, script: {run: "echo ${{ steps.b.outputs.y }}"}}
            - {name: d, file: [{content: "${{ steps.a.outputs.x }}", dest: /tmp/x}]}
      rollback:
        - {name: gr, script: {run: "echo ${{ steps.c.outputs.z }}"}}
rollback:
  - {name: r1, script: {run: "echo ${{ steps.b.outputs.y }}"}}
  - {name: r2, script: {run: "echo ${{ steps.r1.outputs.y }} ${{ steps.gr.outputs.q }}"}}
`)
}

func TestExpand(t *testing.T) {
	got, err := Expand("a ${{ vars.X }} b ${{device.id}} c", func(r Ref) (string, error) {
		return "<" + r.String() + ">", nil
	})
	if err != nil || got != "a <vars.X> b <device.id> c" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := Expand("${{ vars.X ", nil); err == nil {
		t.Fatal("unclosed expression accepted")
	}
}

func FuzzParse(f *testing.F) {
	for _, p := range []string{"../testdata/flows/spec-example.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"version":1,"name":"a","steps":[{"name":"s","script":{"run":"x"}}]}`))
	f.Add([]byte("version: 1\nname: x\nsteps:\n  - parallel: [{name: a, verify: {command: x}}]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fl, err := Parse("fuzz.yaml", data)
		if err == nil {
			if fl == nil || fl.Name == "" || len(fl.Steps) == 0 {
				t.Fatalf("valid flow with no name or steps: %q", data)
			}
			return
		}
		if !IsInvalid(err) {
			t.Fatalf("Parse error is not Problems: %v", err)
		}
	})
}
