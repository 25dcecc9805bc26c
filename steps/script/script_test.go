package script

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// grace keeps the stop tests short.
const grace = 200 * time.Millisecond

func newEnv(t *testing.T, vars map[string]string) *steps.Env {
	t.Helper()
	return &steps.Env{
		Execution: "exec-1",
		Flow:      "web-2.3.0",
		Step:      "migrate",
		Group:     "services",
		Attempt:   2,
		DeviceID:  "dev-42",
		Root:      t.TempDir(),
		WorkDir:   t.TempDir(),
		Log:       steps.NewLogBuffer(0),
		Expand: func(s string) (string, error) {
			return flow.Expand(s, func(r flow.Ref) (string, error) {
				if v, ok := vars[r.Name]; ok && r.Kind == flow.RefVar {
					return v, nil
				}
				return "", onfailure.Errorf(onfailure.Unknown, "%s is not set", r)
			})
		},
	}
}

func run(t *testing.T, sc *flow.Script, env *steps.Env) error {
	t.Helper()
	return runCtx(context.Background(), sc, env)
}

func runCtx(ctx context.Context, sc *flow.Script, env *steps.Env) error {
	r := &Runner{Grace: grace}
	return r.Run(ctx, &flow.Step{Name: env.Step, Script: sc}, env)
}

func TestExitCodes(t *testing.T) {
	types := map[string]onfailure.Kind{"75": onfailure.Connectivity, "3": onfailure.Verification}
	cases := []struct {
		name     string
		run      string
		kind     onfailure.Kind // "" for success
		code     int
		contains []string
	}{
		{name: "zero", run: "echo fine"},
		{
			name: "mapped", run: `echo starting; echo "cannot reach registry.example" >&2; exit 75`,
			kind: onfailure.Connectivity, code: 75,
			contains: []string{"exit status 75", "cannot reach registry.example"},
		},
		{
			name: "unmapped", run: `printf 'first\n  last words  \n\n\n'; exit 4`,
			kind: onfailure.Unknown, code: 4,
			contains: []string{"exit status 4: last words"},
		},
		{
			name: "mapped other", run: `exit 3`,
			kind: onfailure.Verification, code: 3, contains: []string{"exit status 3"},
		},
		{
			name: "killed by a signal", run: `kill -9 $$`,
			kind: onfailure.Unknown, code: 128 + 9, contains: []string{"exit status 137"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			err := run(t, &flow.Script{Run: c.run, ErrorTypes: types}, newEnv(t, nil))
			if c.kind == "" {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Run succeeded, want an error")
			}
			if k := onfailure.KindOf(err); k != c.kind {
				t.Errorf("kind %s, want %s (%v)", k, c.kind, err)
			}
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Code != c.code {
				t.Errorf("error %v: want an *ExitError with code %d", err, c.code)
			}
			for _, s := range c.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestLastLineIsClipped(t *testing.T) {
	env := newEnv(t, nil)
	err := run(t, &flow.Script{Run: `head -c 5000 /dev/zero | tr '\0' x; exit 1`}, env)
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("Run: %v, want an *ExitError", err)
	}
	if len(ee.LastLine) > 210 || !strings.HasPrefix(ee.LastLine, "xxxx") {
		t.Errorf("last line is %d bytes (%.20q...), want about 200 x", len(ee.LastLine), ee.LastLine)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("EDGEFLOW_TEST_INHERITED", "from the agent")
	env := newEnv(t, map[string]string{"WHO": "world", "CHANNEL": "stable"})
	sc := &flow.Script{
		Run: `for v in EDGEFLOW_OUTPUT EDGEFLOW_DEVICE_ID EDGEFLOW_EXECUTION EDGEFLOW_FLOW \
			EDGEFLOW_STEP EDGEFLOW_GROUP EDGEFLOW_ATTEMPT EDGEFLOW_TEST_INHERITED GREETING PLAIN; do
			eval "printf '%s=%s\n' $v \"\$$v\"" >> "$EDGEFLOW_OUTPUT"
		done
		echo "RUN=${{ vars.CHANNEL }}" >> "$EDGEFLOW_OUTPUT"`,
		Env: map[string]string{
			"GREETING":      "hello ${{ vars.WHO }}",
			"PLAIN":         "a b=c",
			"EDGEFLOW_STEP": "cannot override",
		},
	}
	if err := run(t, sc, env); err != nil {
		t.Fatalf("Run: %v\n%s", err, env.Log)
	}
	want := map[string]string{
		"EDGEFLOW_OUTPUT":         filepath.Join(env.WorkDir, "output-2"),
		"EDGEFLOW_DEVICE_ID":      "dev-42",
		"EDGEFLOW_EXECUTION":      "exec-1",
		"EDGEFLOW_FLOW":           "web-2.3.0",
		"EDGEFLOW_STEP":           "migrate",
		"EDGEFLOW_GROUP":          "services",
		"EDGEFLOW_ATTEMPT":        "2",
		"EDGEFLOW_TEST_INHERITED": "from the agent",
		"GREETING":                "hello world",
		"PLAIN":                   "a b=c",
		"RUN":                     "stable",
	}
	for k, v := range want {
		if got := env.Outputs[k]; got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestExpandError(t *testing.T) {
	for _, c := range []struct {
		name, key string
		sc        *flow.Script
	}{
		{"run", "expand run", &flow.Script{Run: "echo ${{ vars.MISSING }}"}},
		{"env", "expand env TOKEN", &flow.Script{Run: "true", Env: map[string]string{
			"OK": "fine", "TOKEN": "${{ vars.MISSING }}",
		}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			err := run(t, c.sc, env)
			if onfailure.KindOf(err) != onfailure.Unknown || err == nil || !strings.Contains(err.Error(), c.key) {
				t.Errorf("Run: %v (kind %s), want kind Unknown naming %q", err, onfailure.KindOf(err), c.key)
			}
		})
	}
}

func TestOutputs(t *testing.T) {
	env := newEnv(t, nil)
	env.Outputs = map[string]string{"EARLIER": "kept"}
	sc := &flow.Script{Run: `
		echo "VERSION=2.3.0" >> "$EDGEFLOW_OUTPUT"
		echo "" >> "$EDGEFLOW_OUTPUT"
		echo "_URL=http://x/?a=b&c=d  " >> "$EDGEFLOW_OUTPUT"
		echo "EMPTY=" >> "$EDGEFLOW_OUTPUT"
		echo "VERSION=2.3.1" >> "$EDGEFLOW_OUTPUT"
		printf 'LAST=no newline' >> "$EDGEFLOW_OUTPUT"`}
	if err := run(t, sc, env); err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := map[string]string{
		"EARLIER": "kept",
		"VERSION": "2.3.1",
		"_URL":    "http://x/?a=b&c=d  ",
		"EMPTY":   "",
		"LAST":    "no newline",
	}
	if fmt.Sprint(env.Outputs) != fmt.Sprint(want) {
		t.Errorf("outputs %q, want %q", env.Outputs, want)
	}

	// A nil map is created.
	env = newEnv(t, nil)
	if err := run(t, &flow.Script{Run: `echo A=1 > "$EDGEFLOW_OUTPUT"`}, env); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if env.Outputs["A"] != "1" {
		t.Errorf("outputs %q, want A=1", env.Outputs)
	}
}

func TestMalformedOutput(t *testing.T) {
	for _, c := range []struct{ name, line, want string }{
		{"no equals", "just words", "line 3"},
		{"bad name", "1ST=x", `line 3: output name "1ST"`},
		{"space in name", "MY VAR=x", "line 3"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			env.Outputs = map[string]string{}
			sc := &flow.Script{Run: fmt.Sprintf(`printf 'A=1\n\n%%s\nB=2\n' %q > "$EDGEFLOW_OUTPUT"`, c.line)}
			err := run(t, sc, env)
			if err == nil {
				t.Fatal("Run succeeded, want an error")
			}
			if k := onfailure.KindOf(err); k != onfailure.Unknown {
				t.Errorf("kind %s, want Unknown", k)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
			if len(env.Outputs) != 0 {
				t.Errorf("outputs %q set from a malformed file", env.Outputs)
			}
		})
	}
}

func TestOutputFileIsFresh(t *testing.T) {
	env := newEnv(t, nil)
	// A file left behind, and a symbolic link in place of the output file,
	// are replaced, not appended to or followed.
	victim := filepath.Join(env.Root, "victim")
	if err := os.WriteFile(victim, []byte("OLD=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(env.WorkDir, "output-2")); err != nil {
		t.Fatal(err)
	}
	if err := run(t, &flow.Script{Run: `echo NEW=1 >> "$EDGEFLOW_OUTPUT"`}, env); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, ok := env.Outputs["OLD"]; ok || env.Outputs["NEW"] != "1" {
		t.Errorf("outputs %q, want only NEW=1", env.Outputs)
	}
	if b, _ := os.ReadFile(victim); string(b) != "OLD=1\n" {
		t.Errorf("symlink target changed to %q", b)
	}
	// The next run starts empty again.
	env.Outputs = nil
	if err := run(t, &flow.Script{Run: `true`}, env); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(env.Outputs) != 0 {
		t.Errorf("outputs %q from an earlier run", env.Outputs)
	}
}

func TestLog(t *testing.T) {
	env := newEnv(t, nil)
	if err := run(t, &flow.Script{Run: `echo to stdout; echo to stderr >&2`}, env); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := env.Log.String(); got != "to stdout\nto stderr\n" {
		t.Errorf("log %q", got)
	}

	env.Log = nil // discarded
	if err := run(t, &flow.Script{Run: `echo nobody listens`}, env); err != nil {
		t.Fatalf("Run with no log: %v", err)
	}
}

func TestHugeLogIsCapped(t *testing.T) {
	const capBytes = 4096
	env := newEnv(t, nil)
	env.Log = steps.NewLogBuffer(capBytes)
	// About 1.7 MB of output.
	sc := &flow.Script{Run: `echo BEGIN; yes 'a line of output' | head -n 100000; echo END`}
	if err := run(t, sc, env); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := env.Log.String()
	if !strings.HasPrefix(got, "BEGIN\na line of output\n") || !strings.HasSuffix(got, "a line of output\nEND\n") {
		t.Errorf("log does not keep the head and the tail: %.40q ... %.40q", got, got[max(0, len(got)-40):])
	}
	if !strings.Contains(got, "bytes dropped") {
		t.Errorf("log has no dropped marker")
	}
	if len(got) > capBytes+100 {
		t.Errorf("log is %d bytes, cap %d", len(got), capBytes)
	}
}

func TestScriptTimeout(t *testing.T) {
	env := newEnv(t, nil)
	err := run(t, &flow.Script{Run: `sleep 30`, Timeout: 300 * time.Millisecond}, env)
	if k := onfailure.KindOf(err); k != onfailure.Timeout {
		t.Fatalf("kind %s, want Timeout (%v)", k, err)
	}
	if !strings.Contains(err.Error(), "script timed out after 300ms") {
		t.Errorf("error %q does not say the script timed out", err)
	}
}

// stubbornScript starts a child shell that ignores SIGTERM, which starts a
// sleep that ignores it too; it writes the pids of the script's shell, the
// child and the sleep to files in the root.
const stubbornScript = `
echo $$ > shell.tmp && mv shell.tmp shell.pid
sh -c 'trap "" TERM; sleep 300 & echo $! > sleep.tmp; mv sleep.tmp sleep.pid; wait' &
echo $! > child.tmp && mv child.tmp child.pid
wait
`

// pids reads the pid files stubbornScript writes, or returns false if they
// are not all there yet.
func pids(t *testing.T, root string) (map[string]int, bool) {
	t.Helper()
	out := map[string]int{}
	for _, name := range []string{"shell", "child", "sleep"} {
		b, err := os.ReadFile(filepath.Join(root, name+".pid"))
		if err != nil {
			return nil, false
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s.pid: %v", name, err)
		}
		out[name] = pid
	}
	return out, true
}

// gone reports whether the process no longer runs. A zombie counts as gone:
// an orphan is reparented to PID 1, which may not reap it here.
func gone(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	state, _, ok := parseStat(stat)
	return ok && (state == 'Z' || state == 'X')
}

// assertGone fails unless every process is gone, polling briefly so that a
// just-killed process can be reaped.
func assertGone(t *testing.T, procs map[string]int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for name, pid := range procs {
		for !gone(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !gone(pid) {
			t.Errorf("%s (pid %d) still runs after Run returned", name, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestTimeoutKillsStubbornChildren(t *testing.T) {
	env := newEnv(t, nil)
	err := run(t, &flow.Script{Run: stubbornScript, Timeout: time.Second}, env)
	if k := onfailure.KindOf(err); k != onfailure.Timeout {
		t.Errorf("kind %s, want Timeout (%v)", k, err)
	}
	procs, ok := pids(t, env.Root)
	if !ok {
		t.Fatalf("the script did not write its pid files before its timeout; log:\n%s", env.Log)
	}
	assertGone(t, procs)
}

func TestMarkAsFailedKillsStubbornChildren(t *testing.T) {
	env := newEnv(t, nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- runCtx(ctx, &flow.Script{Run: stubbornScript}, env) }()

	var procs map[string]int
	for procs == nil {
		select {
		case err := <-done:
			t.Fatalf("Run returned before it was stopped: %v\n%s", err, env.Log)
		case <-time.After(20 * time.Millisecond):
		}
		procs, _ = pids(t, env.Root)
	}
	cancel(onfailure.Errorf(onfailure.UserMarkedFailure, "marked as failed by operator"))
	err := <-done
	if k := onfailure.KindOf(err); k != onfailure.UserMarkedFailure {
		t.Errorf("kind %s, want UserMarkedFailure (%v)", k, err)
	}
	if err == nil || !strings.Contains(err.Error(), "marked as failed by operator") {
		t.Errorf("error %v does not carry the cause", err)
	}
	assertGone(t, procs)
}

func TestCancelledBeforeStart(t *testing.T) {
	env := newEnv(t, nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(onfailure.Errorf(onfailure.UserMarkedFailure, "marked"))
	err := runCtx(ctx, &flow.Script{Run: `touch started`}, env)
	if k := onfailure.KindOf(err); k != onfailure.UserMarkedFailure {
		t.Errorf("kind %s, want UserMarkedFailure (%v)", k, err)
	}
	if _, err := os.Stat(filepath.Join(env.Root, "started")); err == nil {
		t.Error("the script ran under a context that had ended")
	}
}

// A background process that keeps the output open does not keep Run
// waiting: Run returns (after Grace) with the shell's exit status.
func TestBackgroundChildHoldingOutput(t *testing.T) {
	for _, c := range []struct {
		name string
		exit int
	}{{"success", 0}, {"failure", 3}} {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			sc := &flow.Script{Run: fmt.Sprintf(`sleep 30 & echo $! > bg.pid; echo started; exit %d`, c.exit)}
			err := run(t, sc, env)
			if b, rerr := os.ReadFile(filepath.Join(env.Root, "bg.pid")); rerr == nil {
				if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
					t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
				}
			}
			if c.exit == 0 {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			} else {
				var ee *ExitError
				if !errors.As(err, &ee) || ee.Code != c.exit {
					t.Fatalf("Run: %v, want exit status %d", err, c.exit)
				}
			}
			if !strings.Contains(env.Log.String(), "started") {
				t.Errorf("log %q", env.Log)
			}
		})
	}
}

func TestWorkdir(t *testing.T) {
	env := newEnv(t, nil)
	root, err := filepath.EvalSymlinks(env.Root)
	if err != nil {
		t.Fatal(err)
	}
	env.Root = root
	if err := os.MkdirAll(filepath.Join(root, "sub", "deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A link that points out of the root resolves inside it.
	if err := os.Symlink("/", filepath.Join(root, "toslash")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../..", filepath.Join(root, "sub", "up")); err != nil {
		t.Fatal(err)
	}
	abs := t.TempDir()
	for _, c := range []struct{ workdir, want string }{
		{"", root},
		{"sub", filepath.Join(root, "sub")},
		{"sub/deeper/..", filepath.Join(root, "sub")},
		{"../..", root},
		{"sub/../../../sub", filepath.Join(root, "sub")},
		{"toslash", root},
		{"sub/up/sub", filepath.Join(root, "sub")},
		{abs, abs},
	} {
		t.Run(c.workdir, func(t *testing.T) {
			env.Outputs = nil
			err := run(t, &flow.Script{Run: `echo "PWD=$(pwd -P)" > "$EDGEFLOW_OUTPUT"`, Workdir: c.workdir}, env)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			got := env.Outputs["PWD"]
			want, _ := filepath.EvalSymlinks(c.want)
			if got != want {
				t.Errorf("pwd %q, want %q", got, want)
			}
			if c.workdir != abs && got != root && !strings.HasPrefix(got, root+"/") {
				t.Errorf("pwd %q is outside the root %q", got, root)
			}
		})
	}
}

func TestStartFailures(t *testing.T) {
	env := newEnv(t, nil)
	notExec := filepath.Join(env.Root, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		sc   *flow.Script
		kind onfailure.Kind
		path string
	}{
		{"missing shell", &flow.Script{Run: "true", Shell: "/nonexistent/sh -c"}, onfailure.Unknown, "/nonexistent/sh"},
		{"missing workdir", &flow.Script{Run: "true", Workdir: "nope"}, onfailure.Unknown, filepath.Join(env.Root, "nope")},
		{"missing absolute workdir", &flow.Script{Run: "true", Workdir: "/nonexistent/dir"}, onfailure.Unknown, "/nonexistent/dir"},
		{"shell not executable", &flow.Script{Run: "true", Shell: notExec}, onfailure.Authorization, notExec},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := run(t, c.sc, env)
			if err == nil {
				t.Fatal("Run succeeded, want an error")
			}
			if k := onfailure.KindOf(err); k != c.kind {
				t.Errorf("kind %s, want %s (%v)", k, c.kind, err)
			}
			if !strings.Contains(err.Error(), c.path) {
				t.Errorf("error %q does not name %s", err, c.path)
			}
		})
	}
}

func TestShell(t *testing.T) {
	env := newEnv(t, nil)
	sc := &flow.Script{Run: `echo "ARG0=$0" > "$EDGEFLOW_OUTPUT"`, Shell: "/bin/sh -e -c"}
	if err := run(t, sc, env); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if env.Outputs["ARG0"] != "/bin/sh" {
		t.Errorf("outputs %q", env.Outputs)
	}
}

func TestRunCommand(t *testing.T) {
	env := newEnv(t, map[string]string{"WHAT": "rolled back"})
	r := &Runner{Grace: grace}
	err := r.RunCommand(context.Background(), `echo "${{ vars.WHAT }} $EDGEFLOW_STEP" > note; echo "PWD=$(pwd -P)" > "$EDGEFLOW_OUTPUT"`, env)
	if err != nil {
		t.Fatalf("RunCommand: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(env.Root, "note"))
	if err != nil || string(b) != "rolled back migrate\n" {
		t.Errorf("note %q, %v", b, err)
	}
	root, _ := filepath.EvalSymlinks(env.Root)
	if env.Outputs["PWD"] != root {
		t.Errorf("ran in %q, want the root %q", env.Outputs["PWD"], root)
	}
	err = r.RunCommand(context.Background(), "exit 75", env)
	if k := onfailure.KindOf(err); k != onfailure.Unknown {
		t.Errorf("kind %s, want Unknown (%v)", k, err)
	}
}

func TestNotAScriptStep(t *testing.T) {
	err := (&Runner{}).Run(context.Background(), &flow.Step{Name: "x", Verify: &flow.Verify{}}, newEnv(t, nil))
	if onfailure.KindOf(err) != onfailure.Unknown {
		t.Errorf("Run: %v", err)
	}
}

func TestParseStat(t *testing.T) {
	for _, c := range []struct {
		stat  string
		state byte
		pgrp  int
		ok    bool
	}{
		{"123 (sh) S 1 123 123 0 -1", 'S', 123, true},
		{"77 (a) b (c) Z 1 70 70 0", 'Z', 70, true},
		{"77 (x)", 0, 0, false},
		{"garbage", 0, 0, false},
	} {
		state, pgrp, ok := parseStat([]byte(c.stat))
		if state != c.state || pgrp != c.pgrp || ok != c.ok {
			t.Errorf("parseStat(%q) = %c %d %v, want %c %d %v", c.stat, state, pgrp, ok, c.state, c.pgrp, c.ok)
		}
	}
}
