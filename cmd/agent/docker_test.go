package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/internal/dockertest"
)

// The Docker tests run the real agent binary against the real engine: a
// compose update killed with SIGKILL in the middle and resumed, and the
// same update killed right after each of its journal writes.

// composeCase is a compose project on the real engine, driven by flows.
type composeCase struct {
	t       *testing.T
	dir     string // flows, compose files, the state dir
	project string
	v1, v2  string // image refs
}

func newComposeCase(t *testing.T) *composeCase {
	t.Helper()
	dockertest.Engine(t)
	c := &composeCase{
		t:       t,
		dir:     t.TempDir(),
		project: dockertest.Prefix(t) + "web",
		v1:      dockertest.Image(t, dockertest.Variant{Version: "v1", HealthCheck: true}),
		v2:      dockertest.Image(t, dockertest.Variant{Version: "v2", Mode: "unhealthy", HealthCheck: true}),
	}
	t.Cleanup(func() {
		// Whatever state a kill left, take the project down.
		cmd := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+c.project)
		out, _ := cmd.Output()
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			_ = exec.Command("docker", append([]string{"rm", "-f", "-v"}, ids...)...).Run()
		}
		_ = exec.Command("docker", "network", "rm", c.project+"_default").Run()
	})
	return c
}

// composeFile is a one-service project running image. startPeriod, when
// set, keeps the health check "starting" that long, so that the step is
// still waiting when the test kills the agent.
func (c *composeCase) composeFile(name, image, startPeriod string) {
	hc := ""
	if startPeriod != "" {
		hc = fmt.Sprintf(`
    healthcheck:
      test: ["CMD", "/app", "-check"]
      interval: 1s
      retries: 2
      start_period: %s`, startPeriod)
	}
	doc := fmt.Sprintf(`version: "2.4"
services:
  app:
    image: %s
    restart: "no"%s
`, image, hc)
	writeFile(c.t, filepath.Join(c.dir, "flow", name), doc) // beside the flow
}

// flow writes a flow updating the project to file, with revertComposeFile
// on failure, and returns its path.
func (c *composeCase) flow(name, file, wait string) string {
	return writeFlow(c.t, c.dir, fmt.Sprintf(`version: 1
name: %s
steps:
  - name: web
    compose: { project: %s, file: %s, waitHealthy: %s }
    onFailure: [ { action: revertComposeFile } ]
`, name, c.project, file, wait))
}

func (c *composeCase) stateDir() string { return filepath.Join(c.dir, "state") }

func (c *composeCase) composeDir() []string {
	return []string{"--compose-dir", filepath.Join(c.dir, "projects")}
}

func (c *composeCase) args(flowFile string) []string {
	return append([]string{"apply", flowFile, "--state-dir", c.stateDir(), "--output", "json",
		"--device-id", "dev-1", "--kill-grace", "2s"}, c.composeDir()...)
}

// installV1 runs the flow that installs v1 and checks it serves.
func (c *composeCase) installV1() {
	c.t.Helper()
	c.composeFile("v1.yml", c.v1, "")
	r := runAgent(c.t, c.args(c.flow("install-v1", "v1.yml", "60s"))...)
	if r.code != 0 {
		c.t.Fatalf("installing v1: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	c.mustServe("v1", "after installing v1")
}

// serving returns what the project's app container answers on GET /, or
// "" when no single container of the project runs.
func (c *composeCase) serving() string {
	out, err := exec.Command("docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+c.project).Output()
	ids := strings.Fields(string(out))
	if err != nil || len(ids) != 1 {
		return ""
	}
	return strings.TrimSpace(dockertest.HTTPGet(c.t, dockertest.AppURL(c.t, ids[0], "/")))
}

func (c *composeCase) mustServe(version, when string) {
	c.t.Helper()
	if got := c.serving(); got != version {
		c.t.Fatalf("%s: the project serves %q, want %q", when, got, version)
	}
	data, err := os.ReadFile(filepath.Join(c.dir, "projects", c.project, "compose.yaml"))
	want, _ := os.ReadFile(filepath.Join(c.dir, "flow", version+".yml"))
	if err != nil || string(data) != string(want) {
		c.t.Fatalf("%s: the project file is not exactly %s.yml (%v):\n%s", when, version, err, data)
	}
}

// runsImage reports whether a container of the project runs image.
func (c *composeCase) runsImage(image string) bool {
	out, _ := exec.Command("docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+c.project).Output()
	for _, id := range strings.Fields(string(out)) {
		img, _ := exec.Command("docker", "inspect", "--format", "{{.Config.Image}}", id).Output()
		if strings.TrimSpace(string(img)) == image {
			return true
		}
	}
	return false
}

// TestComposeAgentRestart: the agent is killed with SIGKILL while the
// compose step waits for the new version's health; after resume the step
// has failed with AgentRestart, revertComposeFile brings v1 back, and the
// result says so.
func TestComposeAgentRestart(t *testing.T) {
	t.Parallel()
	c := newComposeCase(t)
	c.installV1()

	c.composeFile("v2.yml", c.v2, "5m")
	a := startApply(t, c.flow("update-v2", "v2.yml", "10m"), c.stateDir(), c.composeDir()...)
	for end := time.Now().Add(2 * time.Minute); !c.runsImage(c.v2); time.Sleep(200 * time.Millisecond) {
		if a.exited() || time.Now().After(end) {
			t.Fatalf("v2 never ran while the step waited (exited %v: %v)\n%s\n%s", a.exited(), a.err, a.stdout.String(), a.stderr.String())
		}
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done

	r := runAgent(t, "resume", "--state-dir", c.stateDir(), "--output", "json")
	res := decodeResult(t, "resume", r.stdout)
	status, _, _, perr := res.step(t, "web")
	if status != "Failed" || perr == nil || perr.Type != "AgentRestart" {
		t.Fatalf("step web: %s %+v, want Failed with AgentRestart\n%s", status, perr, r.stdout)
	}
	if len(res.Actions) != 1 || res.Actions[0].Action != "revertComposeFile" || res.Actions[0].Status != "Succeeded" {
		t.Fatalf("actions %+v, want revertComposeFile Succeeded", res.Actions)
	}
	if r.code != 1 || res.Status == "Succeeded" {
		t.Fatalf("resume: exit %d, status %s; want a failed flow, exit 1", r.code, res.Status)
	}
	c.mustServe("v1", "after resume")
}

// TestComposeCrashMatrix kills the agent right after each journal write of
// a compose update whose new version is unhealthy, resumes, and checks
// that v1 serves from exactly its old file at the end, with the one
// rollback action run once.
func TestComposeCrashMatrix(t *testing.T) {
	t.Parallel()
	c := newComposeCase(t)
	c.installV1()
	c.composeFile("v2.yml", c.v2, "")
	flowFile := c.flow("update-v2", "v2.yml", "60s")
	crash := func(env ...string) error {
		cmd := exec.Command(crashAgent(t), c.args(flowFile)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil && !killedBySIGKILL(err) && !isExit1(err) {
			t.Fatalf("apply: %v\n%s", err, out)
		}
		return err
	}
	countFile := filepath.Join(c.dir, "writes")
	if err := crash("EDGEFLOW_CRASH_COUNT=" + countFile); killedBySIGKILL(err) {
		t.Fatal("the uninterrupted run was killed")
	}
	c.mustServe("v1", "after the uninterrupted update failed")
	writes := journalWrites(t, countFile, 4)
	for n := 1; n <= writes; n++ {
		point := fmt.Sprintf("killed after journal write %d of %d", n, writes)
		if err := crash(fmt.Sprintf("EDGEFLOW_CRASH_AT=%d", n)); !killedBySIGKILL(err) {
			t.Fatalf("%s: the agent was not killed: %v", point, err)
		}
		r := runAgent(t, "resume", "--state-dir", c.stateDir(), "--output", "json")
		if r.code == 0 && strings.TrimSpace(r.stdout) == "" {
			r = runAgent(t, "status", "--state-dir", c.stateDir(), "--output", "json")
		}
		res := decodeResult(t, point, r.stdout)
		if res.Status == "Succeeded" {
			t.Fatalf("%s: an unhealthy update ended Succeeded", point)
		}
		ran := 0
		for _, a := range res.Actions {
			if a.Action == "revertComposeFile" {
				ran++
				if a.Status != "Succeeded" {
					t.Errorf("%s: revertComposeFile %s", point, a.Status)
				}
			}
		}
		if ran > 1 {
			t.Errorf("%s: revertComposeFile listed %d times", point, ran)
		}
		c.mustServe("v1", point)
	}
}
