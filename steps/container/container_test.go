package container_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/internal/dockertest"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/container"
	"github.com/edgeflow/edgeflow/steps/containers"
)

// Test images: with and without a health check, healthy, unhealthy and
// crashing.
var (
	v1HC        = dockertest.Variant{Version: "v1", HealthCheck: true}
	v2HC        = dockertest.Variant{Version: "v2", HealthCheck: true}
	v2Unhealthy = dockertest.Variant{Version: "v2", Mode: "unhealthy", HealthCheck: true}
	v2Crash     = dockertest.Variant{Version: "v2", Mode: "crash"}
	v1Plain     = dockertest.Variant{Version: "v1"}
	v2Plain     = dockertest.Variant{Version: "v2"}
)

// testEnv is a step environment whose SaveUndo keeps what it is given.
type testEnv struct {
	*steps.Env
	mu    sync.Mutex
	saved [][]byte
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	te := &testEnv{Env: &steps.Env{
		Execution: "0d3e5a7c9f1b4e2a",
		Flow:      "update",
		Step:      "app",
		Attempt:   1,
		Root:      t.TempDir(),
		WorkDir:   t.TempDir(),
		Log:       steps.NewLogBuffer(0),
	}}
	te.SaveUndo = func(data []byte) error {
		te.mu.Lock()
		defer te.mu.Unlock()
		te.saved = append(te.saved, append([]byte(nil), data...))
		return nil
	}
	return te
}

// undo returns the undo data journaled last, or nil.
func (te *testEnv) undo() []byte {
	te.mu.Lock()
	defer te.mu.Unlock()
	if len(te.saved) == 0 {
		return nil
	}
	return te.saved[len(te.saved)-1]
}

// retry returns the environment of the next attempt, or of the same step
// after an agent restart: Undo set to what was journaled.
func (te *testEnv) retry(t *testing.T) *testEnv {
	t.Helper()
	next := &testEnv{Env: &steps.Env{}}
	*next.Env = *te.Env
	next.Attempt++
	next.Undo = te.undo()
	if next.Undo == nil {
		t.Fatal("no undo data was journaled")
	}
	next.Log = steps.NewLogBuffer(0)
	next.SaveUndo = func(data []byte) error {
		t.Errorf("a later attempt journaled undo data again: %s", data)
		return nil
	}
	return next
}

func step(name, image string) *flow.Step {
	return &flow.Step{Name: "app", Container: &flow.Container{Name: name, Image: image, WaitHealthy: 60 * time.Second}}
}

// runner returns a Runner on the real engine with a short poll and settle.
func runner(t *testing.T) *container.Runner {
	t.Helper()
	return &container.Runner{
		Engine: dockertest.Engine(t),
		Grace:  2 * time.Second,
		Health: containers.Options{Interval: 200 * time.Millisecond, Settle: 600 * time.Millisecond},
	}
}

func bg(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// imageIDs caches the ids of the test images, by reference.
var imageIDs sync.Map

func imageID(t *testing.T, ref string) string {
	t.Helper()
	if id, ok := imageIDs.Load(ref); ok {
		return id.(string)
	}
	id := dockertest.ImageID(t, ref)
	imageIDs.Store(ref, id)
	return id
}

// serves checks that the container called name runs, on image ref, and
// answers GET / with version.
func serves(t *testing.T, name, ref, version string) {
	t.Helper()
	state := strings.Fields(dockertest.Docker(t, "inspect", "--format",
		"{{.State.Status}} {{.Image}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name))
	if len(state) < 3 || state[0] != "running" || state[1] != imageID(t, ref) {
		t.Fatalf("container %s: %q, want running on %s with an address", name, state, imageID(t, ref))
	}
	if body := dockertest.HTTPGet(t, "http://"+state[2]+":8080/"); body != version+"\n" {
		t.Fatalf("container %s serves %q, want %q", name, body, version)
	}
}

// containersUnder lists the names of the containers under prefix.
func containersUnder(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	for _, n := range strings.Fields(dockertest.Docker(t, "ps", "-a", "--format", "{{.Names}}", "--filter", "name="+prefix)) {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// restartPolicy returns the restart policy of a container as the daemon
// keeps it: "NAME MAXRETRIES".
func restartPolicy(t *testing.T, nameOrID string) string {
	t.Helper()
	return dockertest.Docker(t, "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}", nameOrID)
}

func undoOf(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestUpdateHealthy updates v1 to v2, both with health checks: the new
// container serves v2 under the name with the user's settings kept
// (environment, published port, label, restart policy), the previous one
// waits stopped under the aside name with restart policy no, the undo data
// says so (and records its policy, unless-stopped), and Finish removes it
// (twice is fine).
func TestUpdateHealthy(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	v1, v2 := dockertest.Image(t, v1HC), dockertest.Image(t, v2HC)
	name := p + "app"
	prevID := dockertest.Run(t, name, v1, "-e", "USER_SETTING=kept", "-p", "127.0.0.1::8080",
		"--label", "user.label=kept", "--restart", "unless-stopped")
	env := newEnv(t)
	s := step(name, v2)

	if err := r.Run(ctx, s, env.Env); err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, env.Log)
	}
	serves(t, name, v2, "v2")
	aside := name + ".edgeflow-prev-0d3e5a7c"
	if got := containersUnder(t, p); !slices.Equal(got, []string{name, aside}) {
		t.Fatalf("containers %v, want %s and %s", got, name, aside)
	}
	if st := dockertest.Docker(t, "inspect", "--format", "{{.Id}} {{.State.Status}}", aside); st != prevID+" exited" {
		t.Fatalf("aside container: %q, want the previous one, exited", st)
	}

	got := dockertest.Docker(t, "inspect", "--format",
		`{{range .Config.Env}}{{.}} {{end}}|{{index .Config.Labels "user.label"}}|{{.HostConfig.RestartPolicy.Name}}`, name)
	parts := strings.Split(got, "|")
	if !slices.Contains(strings.Fields(parts[0]), "USER_SETTING=kept") || parts[1] != "kept" || parts[2] != "unless-stopped" {
		t.Fatalf("user settings lost: %q", got)
	}
	hostPort := dockertest.Docker(t, "port", name, "8080/tcp")
	if !strings.HasPrefix(hostPort, "127.0.0.1:") {
		t.Fatalf("published port: %q", hostPort)
	}
	if body := dockertest.HTTPGet(t, "http://"+strings.Fields(hostPort)[0]+"/"); body != "v2\n" {
		t.Fatalf("published port serves %q", body)
	}

	if got := restartPolicy(t, aside); got != "no 0" {
		t.Fatalf("aside container has restart policy %q, want no", got)
	}

	u := undoOf(t, env.undo())
	if rp, _ := u["restartPolicy"].(map[string]any); u["version"] != 1.0 || u["name"] != name || u["previousId"] != prevID ||
		u["previousImage"] != imageID(t, v1) || u["aside"] != aside || u["running"] != true || rp["name"] != "unless-stopped" {
		t.Fatalf("undo data %v", u)
	}
	for _, want := range []string{"renamed to " + aside, "stopped", "healthy"} {
		if !strings.Contains(env.Log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, env.Log)
		}
	}

	for range 2 {
		if err := r.Finish(ctx, s, env.Env, env.undo()); err != nil {
			t.Fatalf("finish: %v", err)
		}
	}
	if got := containersUnder(t, p); !slices.Equal(got, []string{name}) {
		t.Fatalf("after finish: containers %v, want only %s", got, name)
	}
	serves(t, name, v2, "v2")
}

// TestUnhealthyFailsThenUndo updates to an image whose health check fails:
// Run fails with Verification (not Timeout) long before the window; Undo
// brings v1 back under the name with no clone left, again is fine, and
// Finish then keeps it.
func TestUnhealthyFailsThenUndo(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	v1, v2 := dockertest.Image(t, v1HC), dockertest.Image(t, v2Unhealthy)
	name := p + "app"
	prevID := dockertest.Run(t, name, v1)
	env := newEnv(t)
	s := step(name, v2)
	s.Container.WaitHealthy = 5 * time.Minute

	err := r.Run(ctx, s, env.Env)
	if k := onfailure.KindOf(err); k != onfailure.Verification {
		t.Fatalf("run: kind %s, want Verification: %v", k, err)
	}
	if !strings.Contains(err.Error(), "unhealthy") || !strings.Contains(err.Error(), name) {
		t.Fatalf("run error %q does not say the container is unhealthy", err)
	}

	for range 2 {
		if err := r.Undo(ctx, s, env.Env, env.undo()); err != nil {
			t.Fatalf("undo: %v", err)
		}
	}
	serves(t, name, v1, "v1")
	if id := dockertest.Docker(t, "inspect", "--format", "{{.Id}}", name); id != prevID {
		t.Fatalf("%s is %s, want the previous container %s", name, id, prevID)
	}
	if err := r.Finish(ctx, s, env.Env, env.undo()); err != nil {
		t.Fatal(err)
	}
	if got := containersUnder(t, p); !slices.Equal(got, []string{name}) {
		t.Fatalf("containers %v, want only %s", got, name)
	}
}

// TestCrashLoopFails updates a container with restart policy always to an
// image that exits after 300ms: Run fails with Verification saying how
// often it restarted, within a window far longer than needed, and Undo
// restores v1.
func TestCrashLoopFails(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	v1, v2 := dockertest.Image(t, v1HC), dockertest.Image(t, v2Crash)
	name := p + "app"
	dockertest.Run(t, name, v1, "--restart", "always")
	env := newEnv(t)
	s := step(name, v2)
	s.Container.WaitHealthy = 5 * time.Minute

	err := r.Run(ctx, s, env.Env)
	if k := onfailure.KindOf(err); k != onfailure.Verification {
		t.Fatalf("run: kind %s, want Verification: %v", k, err)
	}
	if !strings.Contains(err.Error(), "restarted") || !strings.Contains(err.Error(), "crash loop") {
		t.Fatalf("run error %q does not report the restarts", err)
	}
	if err := r.Undo(ctx, s, env.Env, env.undo()); err != nil {
		t.Fatalf("undo: %v", err)
	}
	serves(t, name, v1, "v1")
	if got := containersUnder(t, p); !slices.Equal(got, []string{name}) {
		t.Fatalf("containers %v, want only %s", got, name)
	}
}

// TestImageArchive updates to an image given as a docker save archive in
// the flow's directory, under a reference the engine does not have until
// the step loads the archive.
func TestImageArchive(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	v1, v3 := dockertest.Image(t, v1HC), dockertest.Image(t, dockertest.Variant{Version: "v3", HealthCheck: true})
	ref := dockertest.UniqueRef("archived")
	dockertest.Tag(t, v3, ref)
	env := newEnv(t)
	if err := os.MkdirAll(filepath.Join(env.Root, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	dockertest.Save(t, ref, filepath.Join(env.Root, "images", "app.tar"))
	dockertest.RemoveImage(t, ref)
	if dockertest.ImageExists(ref) {
		t.Fatalf("%s is still there", ref)
	}

	name := p + "app"
	dockertest.Run(t, name, v1)
	s := step(name, ref)
	s.Container.ImageArchive = "images/app.tar"
	if err := r.Preflight(s, env.Root); err != nil {
		t.Fatalf("preflight: %v", err)
	}
	if err := r.Run(ctx, s, env.Env); err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, env.Log)
	}
	if id := dockertest.ImageID(t, ref); id != imageID(t, v3) {
		t.Fatalf("%s is %s after the load, want %s", ref, id, imageID(t, v3))
	}
	serves(t, name, v3, "v3")
	if !strings.Contains(env.Log.String(), "loading image archive images/app.tar") {
		t.Errorf("log does not mention the archive:\n%s", env.Log)
	}
}

// TestBadImageChangesNothing checks that an archive outside the flow's
// directory, an archive without the image, and an image that cannot be
// pulled fail before anything is journaled or changed.
func TestBadImageChangesNothing(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	v1, v2 := dockertest.Image(t, v1Plain), dockertest.Image(t, v2Plain)
	name := p + "app"
	prevID := dockertest.Run(t, name, v1)
	env := newEnv(t)
	dockertest.Save(t, v2, filepath.Join(env.Root, "v2.tar"))

	outside := step(name, v2)
	outside.Container.ImageArchive = "../../../../etc/passwd"
	wrong := step(name, "edgeflow-test/not-in-archive:1")
	wrong.Container.ImageArchive = "v2.tar"
	unpullable := step(name, "127.0.0.1:1/edgeflow/none:1")

	for _, c := range []struct {
		s    *flow.Step
		want string
	}{
		{outside, "imageArchive ../../../../etc/passwd"},
		{wrong, "has no image edgeflow-test/not-in-archive:1"},
		{unpullable, "pull 127.0.0.1:1/edgeflow/none:1"},
	} {
		err := r.Run(ctx, c.s, env.Env)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run: %v, want an error saying %q", err, c.want)
		}
		if !onfailure.KindOf(err).Valid() {
			t.Errorf("run: error without a kind: %v", err)
		}
	}
	if err := r.Preflight(outside, env.Root); err == nil {
		t.Error("preflight accepted an archive outside the flow's directory")
	}
	if env.undo() != nil {
		t.Fatalf("undo data journaled: %s", env.undo())
	}
	if got := containersUnder(t, p); !slices.Equal(got, []string{name}) {
		t.Fatalf("containers %v", got)
	}
	if st := dockertest.Docker(t, "inspect", "--format", "{{.Id}} {{.State.Status}}", name); st != prevID+" running" {
		t.Fatalf("container changed: %s", st)
	}
}

// TestMissingContainer checks that a name no container has fails with an
// error naming it, and journals nothing.
func TestMissingContainer(t *testing.T) {
	t.Parallel()
	r := runner(t)
	p := dockertest.Prefix(t)
	env := newEnv(t)
	err := r.Run(bg(t), step(p+"ghost", dockertest.Image(t, v2Plain)), env.Env)
	if err == nil || !strings.Contains(err.Error(), `no container named "`+p+`ghost"`) {
		t.Fatalf("run: %v", err)
	}
	if env.undo() != nil {
		t.Fatal("undo data journaled")
	}
}

// TestRetryAfterRestart runs the step again with the journaled undo data
// (a later attempt, or the same step after an agent restart) after a
// failed first attempt left its clone (crash looping) under the name and
// the previous container, created with restart policy always, aside with
// policy no: the clone is replaced, the previous container stays the
// recorded one, the new clone gets the recorded policy always (not the no
// it was cloned with), and Undo still restores the previous container,
// with policy always.
func TestRetryAfterRestart(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	v1, bad, good := dockertest.Image(t, v1HC), dockertest.Image(t, v2Crash), dockertest.Image(t, v2HC)
	name := p + "app"
	prevID := dockertest.Run(t, name, v1, "--restart", "always")
	env := newEnv(t)
	if err := r.Run(ctx, step(name, bad), env.Env); onfailure.KindOf(err) != onfailure.Verification {
		t.Fatalf("first attempt: %v", err)
	}
	badID := dockertest.Docker(t, "inspect", "--format", "{{.Id}}", name)
	if got := restartPolicy(t, prevID); got != "no 0" {
		t.Fatalf("after the first attempt the previous container has restart policy %q, want no", got)
	}

	next := env.retry(t)
	s := step(name, good)
	if err := r.Run(ctx, s, next.Env); err != nil {
		t.Fatalf("second attempt: %v\nlog:\n%s", err, next.Log)
	}
	serves(t, name, good, "v2")
	if !strings.Contains(next.Log.String(), "removing container "+name) {
		t.Errorf("log does not say the first attempt's clone was removed:\n%s", next.Log)
	}
	if _, err := r.Engine.Inspect(ctx, badID); !errors.Is(err, containers.ErrNotFound) {
		t.Fatalf("the first attempt's clone is still there: %v", err)
	}
	if got := restartPolicy(t, name); got != "always 0" {
		t.Fatalf("the second attempt's container has restart policy %q, want the recorded always", got)
	}
	if got := restartPolicy(t, prevID); got != "no 0" {
		t.Fatalf("the previous container has restart policy %q, want no", got)
	}
	if err := r.Undo(ctx, s, next.Env, next.Undo); err != nil {
		t.Fatal(err)
	}
	serves(t, name, v1, "v1")
	if id := dockertest.Docker(t, "inspect", "--format", "{{.Id}}", name); id != prevID {
		t.Fatalf("restored %s, want %s", id, prevID)
	}
	if got := restartPolicy(t, name); got != "always 0" {
		t.Fatalf("restored container has restart policy %q, want always", got)
	}
}

// TestRestartPolicyAside checks the previous container's restart policy:
// created with always (or on-failure:3), it waits aside after a successful
// Run with policy no, so that a daemon restart would not start it, while
// the new container has the old policy and the undo data records it; Undo
// brings it back under its name with its policy, twice is fine, and
// Finish keeps it. A container with policy no is never updated.
func TestRestartPolicyAside(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		flag, cli string
		undo      map[string]any
	}{
		{"always", "always 0", map[string]any{"name": "always"}},
		{"on-failure:3", "on-failure 3", map[string]any{"name": "on-failure", "maxRetries": 3.0}},
		{"no", "no 0", map[string]any{"name": "no"}},
	} {
		t.Run(c.flag, func(t *testing.T) {
			t.Parallel()
			r := runner(t)
			ctx := bg(t)
			p := dockertest.Prefix(t)
			v1, v2 := dockertest.Image(t, v1Plain), dockertest.Image(t, v2Plain)
			name := p + "app"
			prevID := dockertest.Run(t, name, v1, "--restart", c.flag)
			env := newEnv(t)
			s := step(name, v2)
			if err := r.Run(ctx, s, env.Env); err != nil {
				t.Fatalf("run: %v\nlog:\n%s", err, env.Log)
			}
			serves(t, name, v2, "v2")
			aside := name + ".edgeflow-prev-0d3e5a7c"
			if st := dockertest.Docker(t, "inspect", "--format", "{{.Id}} {{.State.Status}}", aside); st != prevID+" exited" {
				t.Fatalf("aside container: %q, want the previous one, exited", st)
			}
			if got := restartPolicy(t, aside); got != "no 0" {
				t.Fatalf("aside container has restart policy %q, want no", got)
			}
			if got := restartPolicy(t, name); got != c.cli {
				t.Fatalf("new container has restart policy %q, want %q", got, c.cli)
			}
			if got := undoOf(t, env.undo())["restartPolicy"]; !reflect.DeepEqual(got, c.undo) {
				t.Fatalf("journaled restart policy %v, want %v", got, c.undo)
			}
			parked := strings.Contains(env.Log.String(), "restart policy set to no")
			if parked == (c.flag == "no") {
				t.Errorf("log (policy %s):\n%s", c.flag, env.Log)
			}

			for range 2 {
				if err := r.Undo(ctx, s, env.Env, env.undo()); err != nil {
					t.Fatalf("undo: %v", err)
				}
			}
			if id := dockertest.Docker(t, "inspect", "--format", "{{.Id}}", name); id != prevID {
				t.Fatalf("%s is %s, want the previous container %s", name, id, prevID)
			}
			if got := restartPolicy(t, name); got != c.cli {
				t.Fatalf("restored container has restart policy %q, want %q", got, c.cli)
			}
			serves(t, name, v1, "v1")
			if err := r.Finish(ctx, s, env.Env, env.undo()); err != nil {
				t.Fatal(err)
			}
			if got := containersUnder(t, p); !slices.Equal(got, []string{name}) {
				t.Fatalf("containers %v, want only %s", got, name)
			}
		})
	}
}

// TestUndoDataWithoutPolicy runs the step again from undo data as an agent
// that did not record restart policies journaled it (no restartPolicy
// field), before it changed anything: the policy is unknown, so Run
// leaves the previous container's (always) alone, as that agent did, and
// so does Undo, which still restores the container.
func TestUndoDataWithoutPolicy(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	v1, v2 := dockertest.Image(t, v1Plain), dockertest.Image(t, v2Plain)
	name := p + "app"
	prevID := dockertest.Run(t, name, v1, "--restart", "always")
	aside := name + ".edgeflow-prev-0d3e5a7c"
	old := fmt.Sprintf(`{"version":1,"name":%q,"previousId":%q,"previousImage":%q,"running":true,"aside":%q}`,
		name, prevID, imageID(t, v1), aside)
	env := newEnv(t)
	env.saved = [][]byte{[]byte(old)}
	next := env.retry(t)
	s := step(name, v2)
	if err := r.Run(ctx, s, next.Env); err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, next.Log)
	}
	serves(t, name, v2, "v2")
	if got := restartPolicy(t, name); got != "always 0" {
		t.Fatalf("new container has restart policy %q, want always", got)
	}
	if got := restartPolicy(t, aside); got != "always 0" {
		t.Fatalf("aside container has restart policy %q, want always (left alone)", got)
	}
	if err := r.Undo(ctx, s, next.Env, next.Undo); err != nil {
		t.Fatal(err)
	}
	serves(t, name, v1, "v1")
	if got := restartPolicy(t, name); got != "always 0" {
		t.Fatalf("restored container has restart policy %q, want always", got)
	}
}

// TestStoppedPreviousStaysStopped checks a container that was not running
// before the step: Undo gives it its name back but does not start it.
func TestStoppedPreviousStaysStopped(t *testing.T) {
	t.Parallel()
	r := runner(t)
	ctx := bg(t)
	p := dockertest.Prefix(t)
	name := p + "app"
	dockertest.Docker(t, "create", "--name", name, dockertest.Image(t, v1Plain))
	env := newEnv(t)
	s := step(name, dockertest.Image(t, v2Crash))
	if err := r.Run(ctx, s, env.Env); onfailure.KindOf(err) != onfailure.Verification {
		t.Fatalf("run: %v", err)
	}
	if err := r.Undo(ctx, s, env.Env, env.undo()); err != nil {
		t.Fatal(err)
	}
	if st := dockertest.Docker(t, "inspect", "--format", "{{.State.Status}}", name); st != "created" {
		t.Fatalf("previous container is %s, want created (never started)", st)
	}
}
