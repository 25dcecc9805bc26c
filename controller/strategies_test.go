package controller_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

const retryOnceYAML = `# retry once, then the flow's rollback
- errors: [AllErrors]
  action: Retry
  retry: {count: 1, intervals: [1s]}
`

var retryOnce = []transport.Strategy{{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Retry,
	Retry: &transport.StrategyRetry{Count: 1, Intervals: []string{"1s"}}}}

func TestStrategySetsHTTP(t *testing.T) {
	e := newEnv(t, nil)

	resp, body := e.do("GET", "/v1/strategy-sets", nil)
	if l := decodeJSON[api.StrategySetList](t, body); resp.StatusCode != 200 || l.StrategySets == nil || len(l.StrategySets) != 0 {
		t.Fatalf("empty list: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("PUT", "/v1/strategy-sets/retry-once", strings.NewReader(retryOnceYAML), "Content-Type", "application/yaml")
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Location") != "/v1/strategy-sets/retry-once" {
		t.Fatalf("put: %d %s", resp.StatusCode, body)
	}
	set := decodeJSON[api.StrategySet](t, body)
	if set.Name != "retry-once" || !reflect.DeepEqual(set.Strategies, retryOnce) || set.Created.IsZero() || !set.Updated.Equal(set.Created) {
		t.Fatalf("put: %+v", set)
	}

	// Invalid: line and column, and nothing stored.
	bad := "- errors: [AllErrors]\n  action: Retry\n- {errors: [Nope], action: Abort}\n"
	resp, body = e.do("PUT", "/v1/strategy-sets/bad", strings.NewReader(bad))
	wantError(t, "put an invalid set", resp, body, 400, api.CodeInvalid, "bad:2:11: ")
	wantError(t, "put an invalid set", resp, body, 400, api.CodeInvalid, "bad:3:12: ")
	resp, body = e.do("GET", "/v1/strategy-sets/bad", nil)
	wantError(t, "get a refused set", resp, body, 404, api.CodeNotFound, "strategy set bad not found")
	resp, body = e.do("PUT", "/v1/strategy-sets/Bad%20Name", strings.NewReader(retryOnceYAML))
	wantError(t, "put a bad name", resp, body, 400, api.CodeInvalid, `strategy set name "Bad Name"`)
	resp, body = e.do("PUT", "/v1/strategy-sets/empty", strings.NewReader("[]"))
	wantError(t, "put an empty list", resp, body, 400, api.CodeInvalid, "empty:1:1: the list of failure strategies is empty")
	resp, body = e.do("PUT", "/v1/strategy-sets/empty", http.NoBody)
	wantError(t, "put nothing", resp, body, 400, api.CodeInvalid, "empty body")

	// JSON replaces it, keeping Created.
	resp, body = e.do("PUT", "/v1/strategy-sets/retry-once", strings.NewReader(`[{"errors": ["Connectivity"], "action": "Retry", "retry": {"count": 2}}]`))
	again := decodeJSON[api.StrategySet](t, body)
	if resp.StatusCode != 200 || !again.Created.Equal(set.Created) || len(again.Strategies) != 1 || again.Strategies[0].Retry.Count != 2 {
		t.Fatalf("replace: %d %s", resp.StatusCode, body)
	}
	e.do("PUT", "/v1/strategy-sets/abort", strings.NewReader("[{errors: [AllErrors], action: Abort}]"))
	resp, body = e.do("GET", "/v1/strategy-sets", nil)
	if l := decodeJSON[api.StrategySetList](t, body); resp.StatusCode != 200 || len(l.StrategySets) != 2 || l.StrategySets[0].Name != "abort" || l.StrategySets[1].Name != "retry-once" {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v1/strategy-sets/retry-once", nil)
	if got := decodeJSON[api.StrategySet](t, body); resp.StatusCode != 200 || !reflect.DeepEqual(got, again) {
		t.Fatalf("get: %d %s", resp.StatusCode, body)
	}

	// Kept across a restart (a bucket of the store).
	e.restart()
	resp, _ = e.do("DELETE", "/v1/strategy-sets/abort", nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	resp, body = e.do("DELETE", "/v1/strategy-sets/abort", nil)
	wantError(t, "delete again", resp, body, 404, api.CodeNotFound, "strategy set abort not found")
	resp, body = e.do("GET", "/v1/strategy-sets", nil)
	if l := decodeJSON[api.StrategySetList](t, body); resp.StatusCode != 200 || len(l.StrategySets) != 1 || l.StrategySets[0].Name != "retry-once" {
		t.Fatalf("list after delete: %s", body)
	}
}

// TestDeployStrategies: a deployment takes a set (copied: a later change
// or delete of the set does not change it) or an inline list, not both;
// every dispatch carries them (schema-valid: the fake device validates
// every message it receives), and a retry copies them.
func TestDeployStrategies(t *testing.T) {
	e := newEnv(t, nil)
	devs := e.fleet(2, nil)
	b := e.addBundle(testBundle(t))
	if _, _, err := e.ctrl.PutStrategySet(bg, "retry-once", []byte(retryOnceYAML)); err != nil {
		t.Fatal(err)
	}

	both := api.CreateDeployment{Bundle: b.SHA256, Devices: ids(devs), StrategySet: "retry-once", FailureStrategies: json.RawMessage(`[{"errors":["AllErrors"],"action":"Abort"}]`)}
	_, code, body := postJSON[api.Deployment](e, "/v1/deployments", both)
	if code != 400 || !strings.Contains(string(body), "at most one of failureStrategies") {
		t.Fatalf("both: %d %s", code, body)
	}
	_, code, body = postJSON[api.Deployment](e, "/v1/deployments", api.CreateDeployment{Bundle: b.SHA256, Devices: ids(devs), StrategySet: "nope"})
	if code != 400 || !strings.Contains(string(body), "strategy set nope does not exist") {
		t.Fatalf("unknown set: %d %s", code, body)
	}
	// Inline, with a problem: its line and column in the value.
	resp, body := e.do("POST", "/v1/deployments", strings.NewReader(`{"bundle": "`+b.SHA256+`", "devices": ["dev-1"], "failureStrategies": [
  {"errors": ["AllErrors"], "action": "Retry"}
]}`))
	wantError(t, "inline invalid", resp, body, 400, api.CodeInvalid, "failureStrategies:2:39: failure strategies: Retry needs retry")

	// A set.
	dep, code, body := postJSON[api.Deployment](e, "/v1/deployments", api.CreateDeployment{Bundle: b.SHA256, Devices: ids(devs), StrategySet: "retry-once"})
	if code != http.StatusCreated || dep.StrategySet != "retry-once" || !reflect.DeepEqual(dep.FailureStrategies, retryOnce) {
		t.Fatalf("create with a set: %d %s", code, body)
	}
	for _, d := range devs {
		got := d.dispatch(dep.ID).Body.(*transport.Dispatch).FailureStrategies
		if !reflect.DeepEqual(got, retryOnce) {
			t.Fatalf("dispatch to %s carries %+v, want %+v", d.id, got, retryOnce)
		}
	}
	// The set changes, then goes: the deployment keeps its copy.
	if _, _, err := e.ctrl.PutStrategySet(bg, "retry-once", []byte("[{errors: [AllErrors], action: Abort}]")); err != nil {
		t.Fatal(err)
	}
	if err := e.ctrl.DeleteStrategySet(bg, "retry-once"); err != nil {
		t.Fatal(err)
	}
	if got := e.deployment(dep.ID); !reflect.DeepEqual(got.FailureStrategies, retryOnce) || got.StrategySet != "retry-once" {
		t.Fatalf("after the set changed: %+v", got.FailureStrategies)
	}
	devs[0].send(accepted(dep.ID, devs[0].dispatch(dep.ID).ID))
	devs[0].send(flowFinished(dep.ID, transport.StatusSucceeded))
	m := devs[1].dispatch(dep.ID)
	devs[1].send(&transport.Rejected{Deployment: dep.ID, Dispatch: m.ID, Error: &transport.ErrorInfo{Type: onfailure.Integrity, Message: "no"}})
	e.waitDeployment(dep.ID, api.DeploymentFailed)

	// A retry copies them, though the set is gone.
	retry, err := e.ctrl.Retry(bg, dep.ID, api.Retry{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(retry.FailureStrategies, retryOnce) || retry.StrategySet != "retry-once" {
		t.Fatalf("retry: %+v %q", retry.FailureStrategies, retry.StrategySet)
	}
	got := devs[1].waitCommands(transport.TypeDispatch, retry.ID, 1)[0].Body.(*transport.Dispatch).FailureStrategies
	if !reflect.DeepEqual(got, retryOnce) {
		t.Fatalf("retry's dispatch carries %+v", got)
	}

	// Inline (JSON as in the flow document), sent again after a restart
	// with the same strategies.
	inline := `[{"errors": ["Connectivity", "Timeout"], "action": "Retry", "retry": {"count": 2, "intervals": ["10s", "1m"]}},
	 {"errors": ["AllErrors"], "action": "Abort"}]`
	dep2, code, body := postJSON[api.Deployment](e, "/v1/deployments", api.CreateDeployment{Bundle: b.SHA256, Devices: []string{"dev-9"}, FailureStrategies: json.RawMessage(inline)})
	if code != http.StatusCreated || dep2.StrategySet != "" || len(dep2.FailureStrategies) != 2 || dep2.FailureStrategies[0].Retry.Intervals[1] != "1m0s" {
		t.Fatalf("create inline: %d %s", code, body)
	}
	resp, body = e.do("GET", "/v1/deployments/"+dep2.ID, nil)
	if !bytes.Contains(body, []byte(`"failureStrategies"`)) || resp.StatusCode != 200 {
		t.Fatalf("GET shows no strategies: %s", body)
	}
	e.restart()
	d9 := e.device("dev-9")
	d9.presence(transport.Online, nil)
	if got := d9.dispatch(dep2.ID).Body.(*transport.Dispatch).FailureStrategies; !reflect.DeepEqual(got, dep2.FailureStrategies) {
		t.Fatalf("dispatch after restart: %+v", got)
	}
	// Without any: none in the dispatch.
	dep3 := e.create(devs[:1], nil, nil)
	if got := devs[0].dispatch(dep3.ID).Body.(*transport.Dispatch).FailureStrategies; got != nil || dep3.FailureStrategies != nil {
		t.Fatalf("without strategies: %+v", got)
	}
}
