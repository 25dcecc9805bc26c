package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash suite kills a real agent with SIGKILL at every journal write
// (the crashtest build kills itself right after the N-th write is synced),
// and at random moments, then runs `resume` and checks the end state: every
// file exactly old or exactly new as the outcome demands, no rollback
// action run twice, the result reported.

var (
	crashBinOnce sync.Once
	crashBin     string
	crashBinErr  error
)

func crashAgent(t *testing.T) string {
	t.Helper()
	crashBinOnce.Do(func() {
		crashBin = filepath.Join(filepath.Dir(agentBin), "edgeflow-agent-crashtest")
		out, err := exec.Command("go", "build", "-tags", "crashtest", "-o", crashBin, ".").CombinedOutput()
		if err != nil {
			crashBinErr = fmt.Errorf("build crashtest agent: %v\n%s", err, out)
		}
	})
	if crashBinErr != nil {
		t.Fatal(crashBinErr)
	}
	return crashBin
}

// crashFlow is a flow for the crash suite and what must hold at its end.
type crashFlow struct {
	name   string
	doc    string // @TMP@ is the case's directory
	status string // the flow's end status, crash or not
	// files: path (under @TMP@) → content, or "" for must not exist.
	files map[string]string
	// once: log files (under @TMP@) whose every line must appear at most
	// once, except lines of steps that the crash caught running.
	once []string
}

var crashFlows = []crashFlow{
	{
		name: "files-script-verify-retry",
		doc: `version: 1
name: crash-retry
failureStrategies: [{errors: [AgentRestart], action: Retry, retry: {count: 20}}]
steps:
  - name: config
    file:
      - {content: "new-a\n", dest: "@TMP@/etc/a.conf", mode: "0600"}
      - {content: "new-b\n", dest: "@TMP@/etc/sub/b.conf"}
  - name: flaky
    script:
      run: 'echo flaky >> "@TMP@/steps.log"; if [ ! -f "@TMP@/flaky.marker" ]; then touch "@TMP@/flaky.marker"; exit 75; fi'
      errorTypes: {"75": Connectivity}
    failureStrategies: [{errors: [Connectivity], action: Retry, retry: {count: 2, intervals: [10ms]}}]
  - name: health
    verify: {command: 'grep -q new-b "@TMP@/etc/sub/b.conf"', interval: 20ms, timeout: 2s}
  - name: after
    script: {run: 'echo after >> "@TMP@/steps.log"'}
`,
		status: "Succeeded",
		files:  map[string]string{"etc/a.conf": "new-a\n", "etc/sub/b.conf": "new-b\n"},
	},
	{
		name: "rollback-flow",
		doc: `version: 1
name: crash-rollback
rollbackOnFailure: true
failureStrategies:
  - {errors: [AgentRestart], action: Retry, retry: {count: 20}}
  - {errors: [AllErrors], action: RollbackFlow}
rollback:
  - name: r1
    script: {run: 'echo r1 >> "@TMP@/rollback.log"'}
    failureStrategies: [{errors: [AgentRestart], action: Retry, retry: {count: 20}}]
  - name: r2
    script: {run: 'echo r2 >> "@TMP@/rollback.log"'}
    failureStrategies: [{errors: [AgentRestart], action: Retry, retry: {count: 20}}]
steps:
  - name: config
    file:
      - {content: "new-a\n", dest: "@TMP@/etc/a.conf"}
      - {content: "new-b\n", dest: "@TMP@/etc/new/b.conf"}
    onFailure: [{action: revertFiles, trigger: anyStep}]
  - name: migrate
    script: {run: 'echo migrate >> "@TMP@/steps.log"'}
  - name: health
    verify: {command: 'false', interval: 20ms, timeout: 100ms}
`,
		status: "RolledBack",
		files:  map[string]string{"etc/a.conf": "old-a\n", "etc/new/b.conf": ""},
		once:   []string{"rollback.log"},
	},
	{
		name: "mark-as-failure",
		doc: `version: 1
name: crash-mark
failureStrategies: [{errors: [AgentRestart], action: Retry, retry: {count: 20}}]
steps:
  - name: config
    file: [{content: "new-a\n", dest: "@TMP@/etc/a.conf"}]
    onFailure: [{action: revertFiles, trigger: anyStep}]
  - name: broken
    script: {run: 'exit 3'}
    failureStrategies: [{errors: [Unknown], action: MarkAsFailure}]
  - name: report
    when: onFailure
    script: {run: 'echo report >> "@TMP@/steps.log"'}
  - name: skipped
    script: {run: 'echo skipped >> "@TMP@/steps.log"'}
`,
		status: "Failed",
		files:  map[string]string{"etc/a.conf": "old-a\n"},
	},
}

type crashRun struct {
	t   *testing.T
	cf  crashFlow
	dir string
}

func newCrashRun(t *testing.T, cf crashFlow) *crashRun {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/a.conf"), []byte("old-a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	doc := strings.ReplaceAll(cf.doc, "@TMP@", dir)
	if err := os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return &crashRun{t: t, cf: cf, dir: dir}
}

func (c *crashRun) cmd(bin string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// apply starts apply with env and returns the command, not waited for.
func (c *crashRun) apply(env ...string) *exec.Cmd {
	return c.cmd(crashAgent(c.t), env, "apply", filepath.Join(c.dir, "flow.yaml"),
		"--state-dir", filepath.Join(c.dir, "state"), "--output", "json", "--kill-grace", "100ms",
		"--allow-path", c.dir)
}

// result runs a command that prints a result and decodes it.
func (c *crashRun) result(args ...string) (map[string]any, string) {
	cmd := c.cmd(agentBin, nil, append(args, "--state-dir", filepath.Join(c.dir, "state"), "--output", "json")...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	_ = cmd.Run()
	if out.Len() == 0 {
		return nil, errb.String()
	}
	var res map[string]any
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		c.t.Fatalf("%v: bad JSON %v: %s", args, err, out.String())
	}
	return res, errb.String()
}

// recover runs resume (or, when the crash came after the end, status) and
// checks the end state. atCrash is the journal's view right after the kill.
func (c *crashRun) recover(point string) {
	t := c.t
	atCrash, _ := c.result("status")
	res, stderr := c.result("resume")
	if res == nil {
		if !strings.Contains(stderr, "nothing to resume") {
			t.Fatalf("%s: resume printed no result: %s", point, stderr)
		}
		res, _ = c.result("status")
	}
	if res == nil {
		// Killed before the execution's first journal write: nothing may
		// have changed (write-ahead), and there is nothing to resume.
		if data, err := os.ReadFile(filepath.Join(c.dir, "etc/a.conf")); string(data) != "old-a\n" {
			t.Fatalf("%s: no execution was journaled, yet a.conf is %q (%v)", point, data, err)
		}
		return
	}
	if got := res["status"]; got != c.cf.status {
		t.Fatalf("%s: end status %v, want %s\nresult: %v\nat crash: %v", point, got, c.cf.status, res, atCrash)
	}
	for rel, want := range c.cf.files {
		data, err := os.ReadFile(filepath.Join(c.dir, rel))
		switch {
		case want == "" && !errors.Is(err, os.ErrNotExist):
			t.Errorf("%s: %s must not exist (err %v, content %q)", point, rel, err, data)
		case want != "" && string(data) != want:
			t.Errorf("%s: %s = %q (%v), want exactly %q", point, rel, data, err, want)
		}
	}
	c.checkOnce(point, atCrash, res)
	c.checkActions(point, res)
}

// checkOnce: a line in a "once" log appears once, or twice only for a
// rollback step the crash caught running (it failed with AgentRestart and
// its Retry ran it again, as its strategy says).
func (c *crashRun) checkOnce(point string, atCrash, res map[string]any) {
	running := map[string]bool{}
	if atCrash != nil {
		acts, _ := atCrash["actions"].([]any)
		for _, a := range acts {
			m := a.(map[string]any)
			if m["status"] == "Running" {
				running[m["step"].(string)] = true
			}
		}
	}
	for _, log := range c.cf.once {
		data, _ := os.ReadFile(filepath.Join(c.dir, log))
		count := map[string]int{}
		for _, l := range strings.Fields(string(data)) {
			count[l]++
		}
		for l, n := range count {
			if n > 1 && !(n == 2 && running[l]) {
				c.t.Errorf("%s: %s ran %d times (running at crash: %v)", point, l, n, running[l])
			}
		}
	}
}

// checkActions: every rollback action appears once in the result, and
// none is left Running.
func (c *crashRun) checkActions(point string, res map[string]any) {
	acts, _ := res["actions"].([]any)
	seen := map[string]bool{}
	for _, a := range acts {
		m := a.(map[string]any)
		key := fmt.Sprint(m["step"], "/", m["action"])
		if seen[key] {
			c.t.Errorf("%s: action %s listed twice: %v", point, key, acts)
		}
		seen[key] = true
		if m["status"] == "Running" {
			c.t.Errorf("%s: action %s still Running after resume", point, key)
		}
	}
}

func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// TestCrashMatrix kills the agent right after every journal write of
// each flow and checks recovery.
func TestCrashMatrix(t *testing.T) {
	for _, cf := range crashFlows {
		t.Run(cf.name, func(t *testing.T) {
			t.Parallel()
			// Count the writes of an uninterrupted run.
			c := newCrashRun(t, cf)
			countFile := filepath.Join(c.dir, "writes")
			if err := c.apply("EDGEFLOW_CRASH_COUNT=" + countFile).Run(); err != nil && !isExit1(err) {
				t.Fatalf("uninterrupted run: %v", err)
			}
			writes := journalWrites(t, countFile, 5)
			c.recover("uninterrupted")
			for n := 1; n <= writes; n++ {
				c := newCrashRun(t, cf)
				err := c.apply(fmt.Sprintf("EDGEFLOW_CRASH_AT=%d", n)).Run()
				if !killedBySIGKILL(err) {
					t.Fatalf("write %d: the agent was not killed: %v", n, err)
				}
				c.recover(fmt.Sprintf("killed after journal write %d of %d", n, writes))
			}
		})
	}
}

// journalWrites reads the count of journal writes a crashtest agent run
// with EDGEFLOW_CRASH_COUNT=countFile made, and fails t below atLeast.
func journalWrites(t *testing.T, countFile string, atLeast int) int {
	t.Helper()
	data, err := os.ReadFile(countFile)
	if err != nil {
		t.Fatal(err)
	}
	writes, err := strconv.Atoi(string(data))
	if err != nil || writes < atLeast {
		t.Fatalf("journal writes %q (%v), want at least %d", data, err, atLeast)
	}
	return writes
}

func isExit1(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == 1
}

// TestCrashRandom kills the agent at random moments (not only at journal
// writes: in the middle of a file install, a script, a probe) and checks
// recovery. EDGEFLOW_CRASH_POINTS sets how many (default 1000; 100 with
// -short).
func TestCrashRandom(t *testing.T) {
	points := 1000
	if testing.Short() {
		points = 100
	}
	if s := os.Getenv("EDGEFLOW_CRASH_POINTS"); s != "" {
		points, _ = strconv.Atoi(s)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("EDGEFLOW_CRASH_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (EDGEFLOW_CRASH_SEED to repeat), %d points", seed, points)
	// How long an uninterrupted run of each flow takes, to spread the
	// kill points over it.
	span := make([]time.Duration, len(crashFlows))
	for i, cf := range crashFlows {
		c := newCrashRun(t, cf)
		start := time.Now()
		_ = c.apply().Run()
		span[i] = time.Since(start)
	}
	const workers = 4
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for p := w; p < points; p += workers {
				i := rng.IntN(len(crashFlows))
				delay := time.Duration(rng.Int64N(int64(span[i]) + 1))
				c := newCrashRun(t, crashFlows[i])
				cmd := c.apply()
				if err := cmd.Start(); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(delay)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				_ = cmd.Wait()
				c.recover(fmt.Sprintf("point %d: %s killed after %v", p, crashFlows[i].name, delay))
				if t.Failed() {
					return
				}
			}
		}(w)
	}
	wg.Wait()
}

// runFlow writes doc (with @TMP@) to a new directory and applies it with
// the plain agent; it returns the directory and apply's error.
func runFlow(t *testing.T, doc string, extra ...string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	doc = strings.ReplaceAll(doc, "@TMP@", dir)
	if err := os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"apply", filepath.Join(dir, "flow.yaml"), "--state-dir", filepath.Join(dir, "state"), "--output", "json"}, extra...)
	return dir, exec.Command(agentBin, args...).Run()
}

// resumeJSON runs resume until it prints a result (each resume may be
// killed again by the flow itself), at most n times.
func resumeJSON(t *testing.T, dir string, n int) map[string]any {
	t.Helper()
	for i := 0; i < n; i++ {
		cmd := exec.Command(agentBin, "resume", "--state-dir", filepath.Join(dir, "state"), "--output", "json")
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		if killedBySIGKILL(err) {
			continue
		}
		var res map[string]any
		if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
			t.Fatalf("resume: %v / %v: %s", err, jerr, out.String())
		}
		return res
	}
	t.Fatalf("resume never finished in %d tries", n)
	return nil
}

func stepsOf(res map[string]any) string {
	var parts []string
	for _, s := range res["steps"].([]any) {
		m := s.(map[string]any)
		parts = append(parts, fmt.Sprintf("%s=%s", m["name"], m["status"]))
	}
	return strings.Join(parts, " ")
}

// TestScriptKillsItsAgent: a script step kills its own agent (kill -9
// $PPID); after resume the outcome follows the step's AgentRestart
// strategy.
func TestScriptKillsItsAgent(t *testing.T) {
	cases := []struct {
		name, strategy, status, steps, message string
	}{
		{"ignore", "[{errors: [AgentRestart], action: Ignore}]", "Succeeded", "killer=Ignored after=Succeeded", "the agent stopped while the step was running"},
		{"no strategy aborts", "[]", "Failed", "killer=Failed after=Skipped", "the agent stopped while the step was running"},
		{"retry hits the loop guard", "[{errors: [AgentRestart], action: Retry, retry: {count: 10}}]", "Failed", "killer=Failed after=Skipped", "loop guard"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir, err := runFlow(t, `version: 1
name: killer
steps:
  - name: killer
    script: {run: 'echo run >> "@TMP@/killer.log"; kill -9 $PPID; sleep 5'}
    failureStrategies: `+c.strategy+`
  - name: after
    script: {run: 'touch "@TMP@/after"'}
`)
			if !killedBySIGKILL(err) {
				t.Fatalf("the step should have killed its agent: %v", err)
			}
			res := resumeJSON(t, dir, 6)
			if res["status"] != c.status || stepsOf(res) != c.steps {
				t.Fatalf("got %v %s, want %s %s", res["status"], stepsOf(res), c.status, c.steps)
			}
			killer := res["steps"].([]any)[0].(map[string]any)
			e := killer["error"].(map[string]any)
			if e["type"] != "AgentRestart" || !strings.Contains(e["message"].(string), c.message) {
				t.Fatalf("error %v, want AgentRestart with %q", e, c.message)
			}
		})
	}
}

// TestRebootStep: the reboot command "reboots" (changes the boot id and
// kills the agent, as a real reboot would); after the restart the step sees
// the new boot and succeeds, and the flow goes on.
func TestRebootStep(t *testing.T) {
	dir := t.TempDir()
	bootID := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(bootID, []byte("boot-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	doc := strings.ReplaceAll(`version: 1
name: reboot
steps:
  - {name: before, script: {run: 'echo before >> "@TMP@/log"'}}
  - {name: reboot, timeout: 1m, reboot: {}}
  - {name: after, script: {run: 'echo after >> "@TMP@/log"'}}
`, "@TMP@", dir)
	if err := os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	err := exec.Command(agentBin, "apply", filepath.Join(dir, "flow.yaml"), "--state-dir", filepath.Join(dir, "state"),
		"--boot-id-file", bootID, "--reboot-command", "echo boot-2 > "+bootID+"; kill -9 $PPID").Run()
	if !killedBySIGKILL(err) {
		t.Fatalf("the reboot should have stopped the agent: %v", err)
	}
	res := resumeJSON(t, dir, 1)
	if res["status"] != "Succeeded" || stepsOf(res) != "before=Succeeded reboot=Succeeded after=Succeeded" {
		t.Fatalf("got %v %s", res["status"], stepsOf(res))
	}
	if a := res["steps"].([]any)[1].(map[string]any)["attempts"]; a != 1.0 {
		t.Errorf("the reboot is one attempt, got %v", a)
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "log")); string(log) != "before\nafter\n" {
		t.Errorf("steps ran %q, want each once", log)
	}
}

// TestDamagedJournalRefused: a corrupt journal, or one from a newer agent,
// stops the agent with a message naming the file and what to do, and the
// file is left exactly as it was.
func TestDamagedJournalRefused(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"corrupt", "move it aside"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			state := filepath.Join(dir, "state")
			if err := os.MkdirAll(state, 0o700); err != nil {
				t.Fatal(err)
			}
			db := filepath.Join(state, "journal.db")
			garbage := bytes.Repeat([]byte("not a journal "), 4096)
			if err := os.WriteFile(db, garbage, 0o600); err != nil {
				t.Fatal(err)
			}
			flowFile := filepath.Join(dir, "flow.yaml")
			if err := os.WriteFile(flowFile, []byte("version: 1\nname: x\nsteps: [{name: a, script: {run: 'touch "+dir+"/ran'}}]\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{
				{"apply", flowFile, "--state-dir", state},
				{"resume", "--state-dir", state},
			} {
				cmd := exec.Command(agentBin, args...)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				err := cmd.Run()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("%s: want exit 1, got %v", args[0], err)
				}
				if !strings.Contains(stderr.String(), db) || !strings.Contains(stderr.String(), c.want) {
					t.Errorf("%s: the message must name %s and say what to do: %s", args[0], db, stderr.String())
				}
			}
			if data, _ := os.ReadFile(db); !bytes.Equal(data, garbage) {
				t.Fatal("the journal was modified")
			}
			if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
				t.Fatal("a step ran without a journal")
			}
		})
	}
}
