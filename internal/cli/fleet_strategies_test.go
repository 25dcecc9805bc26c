package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var retryOnce = []transport.Strategy{{Errors: []onfailure.Kind{onfailure.AllErrors}, Action: onfailure.Retry,
	Retry: &transport.StrategyRetry{Count: 1}}}

func TestDeployStrategies(t *testing.T) {
	flow, _ := flowDir(t)
	file := writeFile(t, "retry.yaml", "- errors: [AllErrors]\n  action: Retry\n  retry: {count: 1}\n")

	f := newFake(t)
	if code, out, errs := f.run(t, "deploy", flow, "--device", "edge-1", "--strategies", file); code != 0 || out != "d-new\n" {
		t.Fatalf("with a file: %d %q %q", code, out, errs)
	}
	var got []transport.Strategy
	if err := json.Unmarshal(f.creates[0].FailureStrategies, &got); err != nil || !reflect.DeepEqual(got, retryOnce) || f.creates[0].StrategySet != "" {
		t.Fatalf("sent %s %q (%v), want %+v inline", f.creates[0].FailureStrategies, f.creates[0].StrategySet, err, retryOnce)
	}

	if code, _, errs := f.run(t, "deploy", flow, "--device", "edge-1", "--strategies", "retry-once"); code != 0 {
		t.Fatalf("with a set: %d %q", code, errs)
	}
	if c := f.creates[1]; c.StrategySet != "retry-once" || c.FailureStrategies != nil {
		t.Fatalf("sent %+v, want the set's name", c)
	}

	// Bad input: nothing is uploaded.
	bad := writeFile(t, "bad.yaml", "- errors: [AllErrors]\n  action: Retry\n")
	code, _, errs := f.run(t, "deploy", flow, "--device", "edge-1", "--strategies", bad)
	if code != ExitInvalid || !strings.Contains(errs, bad+":2:11: ") {
		t.Fatalf("a bad file: %d %q", code, errs)
	}
	code, _, errs = f.run(t, "deploy", flow, "--device", "edge-1", "--strategies", "no/such.yaml")
	if code != ExitInvalid || !strings.Contains(errs, "--strategies no/such.yaml: no such file, and not a strategy set name") {
		t.Fatalf("neither a file nor a name: %d %q", code, errs)
	}
	if len(f.uploads) != 2 || len(f.creates) != 2 {
		t.Fatalf("bad input sent something: %d uploads, %d creates", len(f.uploads), len(f.creates))
	}
}

// setsFake is a controller that has strategy sets only.
type setsFake struct {
	mu   sync.Mutex
	sets map[string]api.StrategySet
	puts []string // the bodies put
	srv  *httptest.Server
}

func newSetsFake(t *testing.T) *setsFake {
	f := &setsFake{sets: map[string]api.StrategySet{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStrategySets, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		l := api.StrategySetList{StrategySets: []api.StrategySet{}}
		for _, n := range []string{"abort", "retry-once"} {
			if s, ok := f.sets[n]; ok {
				l.StrategySets = append(l.StrategySets, s)
			}
		}
		reply(w, 200, l)
	})
	mux.HandleFunc("GET "+api.PathStrategySet, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		s, ok := f.sets[r.PathValue("name")]
		if !ok {
			replyErr(w, 404, api.CodeNotFound, "strategy set "+r.PathValue("name")+" not found")
			return
		}
		reply(w, 200, s)
	})
	mux.HandleFunc("PUT "+api.PathStrategySet, func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.puts = append(f.puts, string(data))
		name := r.PathValue("name")
		_, exists := f.sets[name]
		s := api.StrategySet{Name: name, Strategies: retryOnce, Created: now.Add(-2 * 3600e9), Updated: now.Add(-3600e9)}
		f.sets[name] = s
		status := 201
		if exists {
			status = 200
		}
		reply(w, status, s)
	})
	mux.HandleFunc("DELETE "+api.PathStrategySet, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.sets[r.PathValue("name")]; !ok {
			replyErr(w, 404, api.CodeNotFound, "strategy set "+r.PathValue("name")+" not found")
			return
		}
		delete(f.sets, r.PathValue("name"))
		w.WriteHeader(204)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *setsFake) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runFleet(t, append(args, "--controller", f.srv.URL)...)
}

func TestStrategySetCommands(t *testing.T) {
	f := newSetsFake(t)
	code, _, errs := f.run(t, "strategy-sets")
	if code != 0 || !strings.Contains(errs, "no strategy sets yet") {
		t.Fatalf("empty list: %d %q", code, errs)
	}

	// A bad file is refused here, with its line and column; nothing sent.
	bad := writeFile(t, "bad.yaml", "- errors: [Nope]\n  action: Abort\n")
	code, _, errs = f.run(t, "strategy-set", "put", "retry-once", bad)
	if code != ExitInvalid || !strings.Contains(errs, bad+":1:11: ") || len(f.puts) != 0 {
		t.Fatalf("put a bad file: %d %q %d puts", code, errs, len(f.puts))
	}
	code, _, errs = f.run(t, "strategy-set", "put", "Retry Once", bad)
	if code != ExitInvalid || !strings.Contains(errs, `name "Retry Once"`) {
		t.Fatalf("put a bad name: %d %q", code, errs)
	}

	text := "# retry once\n- errors: [AllErrors]\n  action: Retry\n  retry: {count: 1}\n"
	file := writeFile(t, "retry.yaml", text)
	code, out, errs := f.run(t, "strategy-set", "put", "retry-once", file)
	if code != 0 || out != "retry-once\n" || !strings.Contains(errs, "strategy set retry-once created: AllErrors: Retry 1") {
		t.Fatalf("put: %d %q %q", code, out, errs)
	}
	if len(f.puts) != 1 || f.puts[0] != text {
		t.Fatalf("sent %q, want the file as it is (so that the controller's line:col are the file's)", f.puts)
	}
	if _, _, errs = f.run(t, "strategy-set", "put", "retry-once", file); !strings.Contains(errs, "strategy set retry-once replaced") {
		t.Fatalf("put again: %q", errs)
	}

	code, out, _ = f.run(t, "strategy-sets")
	if code != 0 || !hasRow(out, "NAME", "STRATEGIES", "UPDATED") || !hasRow(out, "retry-once", "AllErrors:", "Retry", "1", "just", "now") {
		t.Fatalf("list: %d\n%s", code, out)
	}
	code, out, _ = f.run(t, "strategy-sets", "-o", "json")
	var l api.StrategySetList
	if err := json.Unmarshal([]byte(out), &l); code != 0 || err != nil || len(l.StrategySets) != 1 || !reflect.DeepEqual(l.StrategySets[0].Strategies, retryOnce) {
		t.Fatalf("list -o json: %d %v\n%s", code, err, out)
	}

	code, out, _ = f.run(t, "strategy-set", "show", "retry-once")
	if code != 0 || !hasRow(out, "strategy", "set:", "retry-once") || !hasRow(out, "1", "AllErrors", "Retry", "count", "1") {
		t.Fatalf("show: %d\n%s", code, out)
	}
	code, out, _ = f.run(t, "strategy-set", "show", "retry-once", "-o", "yaml")
	var s api.StrategySet
	decodeYAML(t, out, &s)
	if code != 0 || s.Name != "retry-once" || !reflect.DeepEqual(s.Strategies, retryOnce) {
		t.Fatalf("show -o yaml: %d\n%s", code, out)
	}

	code, _, errs = f.run(t, "strategy-set", "delete", "retry-once")
	if code != 0 || !strings.Contains(errs, "strategy set retry-once deleted") {
		t.Fatalf("delete: %d %q", code, errs)
	}
	code, _, errs = f.run(t, "strategy-set", "show", "retry-once")
	if code != 1 || !strings.Contains(errs, "strategy set retry-once not found") {
		t.Fatalf("show a deleted set: %d %q", code, errs)
	}
}

func TestShowDeploymentStrategies(t *testing.T) {
	f := newFake(t)
	f.deployments["d-1"] = &api.Deployment{ID: "d-1", Bundle: api.Bundle{Flow: "app", Version: 7}, Status: api.DeploymentRunning, Created: now,
		Counts: map[string]int{}, FailureStrategies: retryOnce, StrategySet: "retry-once"}
	code, out, errs := f.run(t, "deployment", "show", "d-1")
	if code != 0 || !strings.Contains(out, "failure strategies:  AllErrors: Retry 1 (copied from set retry-once)") {
		t.Fatalf("%d %q\n%s", code, errs, out)
	}
}
