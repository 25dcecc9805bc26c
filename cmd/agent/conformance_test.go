package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// agentBin is the edgeflow-agent binary the tests run as a real process.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgeflow-agent-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "edgeflow-agent")
	build := exec.Command("go", "build", "-o", agentBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build edgeflow-agent:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// conformanceCase is testdata/conformance/NAME/case.json. Every string in
// it, in args and in the flow document may use @TMP@ for the case's
// temporary directory.
type conformanceCase struct {
	// Doc says what rule of the spec the case proves.
	Doc string `json:"doc"`
	// Args are extra arguments to apply (--var, --label, --allow-path).
	Args []string `json:"args"`
	// Setup files to create before the run: path → content.
	Setup map[string]string `json:"setup"`
	// Exit is the expected exit status of apply.
	Exit int `json:"exit"`
	// Result is matched against apply's JSON output: every key given must
	// match (a "message" matches as a substring); arrays match in length
	// and order. Keys not given are not checked.
	Result json.RawMessage `json:"result"`
	// Files after the run: path → content, or null for "must not exist".
	Files map[string]*string `json:"files"`
}

func TestConformance(t *testing.T) {
	dirs, err := filepath.Glob("../../testdata/conformance/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no conformance cases: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			t.Parallel()
			runCase(t, dir)
		})
	}
}

func runCase(t *testing.T, dir string) {
	raw, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	sub := func(s string) string { return strings.ReplaceAll(s, "@TMP@", tmp) }
	var c conformanceCase
	if err := json.Unmarshal([]byte(sub(string(raw))), &c); err != nil {
		t.Fatalf("case.json: %v", err)
	}
	flowDir := filepath.Join(tmp, "flow")
	flowFile := copyCase(t, dir, flowDir, sub)
	for p, content := range c.Setup {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := append([]string{"apply", flowFile, "--state-dir", filepath.Join(tmp, "state"),
		"--output", "json", "--device-id", "dev-1", "--kill-grace", "200ms"}, c.Args...)
	cmd := exec.Command(agentBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != c.Exit {
		t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, c.Exit, stdout.String(), stderr.String())
	}
	var got any
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var want any
	if err := json.Unmarshal(c.Result, &want); err != nil {
		t.Fatalf("case result: %v", err)
	}
	for _, d := range match("result", want, got) {
		t.Error(d)
	}
	if t.Failed() {
		t.Logf("output: %s\nstderr: %s", stdout.String(), stderr.String())
	}
	paths := make([]string, 0, len(c.Files))
	for p := range c.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		want := c.Files[p]
		data, err := os.ReadFile(p)
		switch {
		case want == nil && err == nil:
			t.Errorf("%s exists, want it absent", p)
		case want == nil && !errors.Is(err, os.ErrNotExist):
			t.Errorf("%s: %v", p, err)
		case want != nil && err != nil:
			t.Errorf("%s: %v, want %q", p, err, *want)
		case want != nil && string(data) != *want:
			t.Errorf("%s = %q, want %q", p, data, *want)
		}
	}
}

// copyCase copies a case's files (all but case.json) to dst with @TMP@
// substituted, and returns the flow document's path.
func copyCase(t *testing.T, src, dst string, sub func(string) string) string {
	t.Helper()
	var flowFile string
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if rel == "case.json" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel == "flow.yaml" || rel == "flow.json" {
			flowFile = target
		}
		return os.WriteFile(target, []byte(sub(string(data))), info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	if flowFile == "" {
		t.Fatalf("%s has no flow.yaml or flow.json", src)
	}
	return flowFile
}

// match compares want (a subset) with got and lists the differences.
func match(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %v, want an object", path, got)}
		}
		var diffs []string
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			gv, present := g[k]
			if !present {
				if w[k] == nil {
					continue
				}
				diffs = append(diffs, fmt.Sprintf("%s.%s: missing, want %v", path, k, w[k]))
				continue
			}
			if k == "message" {
				ws, _ := w[k].(string)
				gs, _ := gv.(string)
				if !strings.Contains(gs, ws) {
					diffs = append(diffs, fmt.Sprintf("%s.message: %q does not contain %q", path, gs, ws))
				}
				continue
			}
			diffs = append(diffs, match(path+"."+k, w[k], gv)...)
		}
		return diffs
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			gj, _ := json.Marshal(got)
			return []string{fmt.Sprintf("%s: got %s, want %d entries", path, gj, len(w))}
		}
		var diffs []string
		for i := range w {
			diffs = append(diffs, match(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return diffs
	}
	if !reflect.DeepEqual(want, got) {
		return []string{fmt.Sprintf("%s: got %v, want %v", path, got, want)}
	}
	return nil
}
