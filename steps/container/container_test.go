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

// runner returns a Runner on the real engine with a short poll. The
// settle stays at 2s: the crash-looping test app lives about 300 ms, but a
// loaded CI machine can take longer than that to run it to its exit, and a
// shorter settle would take it for stable before its first restart.
func runner(t *testing.T) *container.Runner {
	t.Helper()
	return &container.Runner{
		Engine: dockertest.Engine(t),
		Grace:  2 * time.Second,
		Health: containers.Options{Interval: 200 * time.Millisecond, Settle: 2 * time.Second},
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

// fixture is one test's update of a container on the real engine: the
// container called name, which the test started on image v1, and the step
// s that updates it to image v2, run by r in env.
type fixture struct {
	r      *container.Runner
	ctx    context.Context
	p      string // the test's name prefix
	name   string // p + "app"
	prevID string // the container the test started under name
	v1, v2 string
	env    *testEnv
	s      *flow.Step
}

// newFixture starts the container on the image of from, with docker run
// flags, for a step that updates it to the image of to.
func newFixture(t *testing.T, from, to dockertest.Variant, flags ...string) *fixture {
	t.Helper()
	r := runner(t)
	return runApp(t, r, dockertest.Image(t, from), dockertest.Image(t, to), flags...)
}

// runApp is newFixture with the runner and the images given.
func runApp(t *testing.T, r *container.Runner, v1, v2 string, flags ...string) *fixture {
	t.Helper()
	p := dockertest.Prefix(t)
	f := &fixture{r: r, ctx: bg(t), p: p, name: p + "app", v1: v1, v2: v2}
	f.prevID = dockertest.Run(t, f.name, v1, flags...)
	f.env = newEnv(t)
	f.s = step(f.name, v2)
	return f
}

// update runs the step and wants it to succeed: the container under the
// name serves v2, and the previous one waits, exited, under the aside
// name, which update returns.
func (f *fixture) update(t *testing.T) string {
	t.Helper()
	if err := f.r.Run(f.ctx, f.s, f.env.Env); err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, f.env.Log)
	}
	serves(t, f.name, f.v2, "v2")
	aside := f.name + ".edgeflow-prev-0d3e5a7c"
	if st := dockertest.Docker(t, "inspect", "--format", "{{.Id}} {{.State.Status}}", aside); st != f.prevID+" exited" {
		t.Fatalf("aside container: %q, want the previous one, exited", st)
	}
	return aside
}

// runFails runs the step and wants it to fail with Verification, the error
// saying each of words.
func (f *fixture) runFails(t *testing.T, words ...string) {
	t.Helper()
	err := f.r.Run(f.ctx, f.s, f.env.Env)
	if k := onfailure.KindOf(err); k != onfailure.Verification {
		t.Fatalf("run: kind %s, want Verification: %v", k, err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("run error %q does not say %q", err, w)
		}
	}
}

// undo runs Undo with the undo data journaled last and wants it to succeed.
func (f *fixture) undo(t *testing.T) {
	t.Helper()
	if err := f.r.Undo(f.ctx, f.s, f.env.Env, f.env.undo()); err != nil {
		t.Fatalf("undo: %v", err)
	}
}

// finish runs Finish with the undo data journaled last and wants it to
// succeed.
func (f *fixture) finish(t *testing.T) {
	t.Helper()
	if err := f.r.Finish(f.ctx, f.s, f.env.Env, f.env.undo()); err != nil {
		t.Fatalf("finish: %v", err)
	}
}

// assertRestored checks that the previous container is back under the
// name, serving v1.
func (f *fixture) assertRestored(t *testing.T) {
	t.Helper()
	if id := dockertest.Docker(t, "inspect", "--format", "{{.Id}}", f.name); id != f.prevID {
		t.Fatalf("%s is %s, want the previous container %s", f.name, id, f.prevID)
	}
	serves(t, f.name, f.v1, "v1")
}

// assertOnly checks that the container under the name is the only one
// under the test's prefix.
func (f *fixture) assertOnly(t *testing.T) {
	t.Helper()
	if got := containersUnder(t, f.p); !slices.Equal(got, []string{f.name}) {
		t.Fatalf("containers %v, want only %s", got, f.name)
	}
}

// wantPolicy checks that container nameOrID, called what in the failure,
// has restart policy want, as restartPolicy gives it.
func wantPolicy(t *testing.T, what, nameOrID, want string) {
	t.Helper()
	if got := restartPolicy(t, nameOrID); got != want {
		t.Fatalf("%s has restart policy %q, want %q", what, got, want)
	}
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
	f := newFixture(t, v1HC, v2HC, "-e", "USER_SETTING=kept", "-p", "127.0.0.1::8080",
		"--label", "user.label=kept", "--restart", "unless-stopped")
	aside := f.update(t)
	if got := containersUnder(t, f.p); !slices.Equal(got, []string{f.name, aside}) {
		t.Fatalf("containers %v, want %s and %s", got, f.name, aside)
	}

	got := dockertest.Docker(t, "inspect", "--format",
		`{{range .Config.Env}}{{.}} {{end}}|{{index .Config.Labels "user.label"}}|{{.HostConfig.RestartPolicy.Name}}`, f.name)
	parts := strings.Split(got, "|")
	if !slices.Contains(strings.Fields(parts[0]), "USER_SETTING=kept") || parts[1] != "kept" || parts[2] != "unless-stopped" {
		t.Fatalf("user settings lost: %q", got)
	}
	hostPort := dockertest.Docker(t, "port", f.name, "8080/tcp")
	if !strings.HasPrefix(hostPort, "127.0.0.1:") {
		t.Fatalf("published port: %q", hostPort)
	}
	if body := dockertest.HTTPGet(t, "http://"+strings.Fields(hostPort)[0]+"/"); body != "v2\n" {
		t.Fatalf("published port serves %q", body)
	}

	wantPolicy(t, "aside container", aside, "no 0")

	u := undoOf(t, f.env.undo())
	if rp, _ := u["restartPolicy"].(map[string]any); u["version"] != 1.0 || u["name"] != f.name || u["previousId"] != f.prevID ||
		u["previousImage"] != imageID(t, f.v1) || u["aside"] != aside || u["running"] != true || rp["name"] != "unless-stopped" {
		t.Fatalf("undo data %v", u)
	}
	for _, want := range []string{"renamed to " + aside, "stopped", "healthy"} {
		if !strings.Contains(f.env.Log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, f.env.Log)
		}
	}

	for range 2 {
		f.finish(t)
	}
	f.assertOnly(t)
	serves(t, f.name, f.v2, "v2")
}

// TestUnhealthyFailsThenUndo updates to an image whose health check fails:
// Run fails with Verification (not Timeout) long before the window; Undo
// brings v1 back under the name with no clone left, again is fine, and
// Finish then keeps it.
func TestUnhealthyFailsThenUndo(t *testing.T) {
	t.Parallel()
	f := newFixture(t, v1HC, v2Unhealthy)
	f.s.Container.WaitHealthy = 5 * time.Minute
	f.runFails(t, "unhealthy", f.name)

	for range 2 {
		f.undo(t)
	}
	f.assertRestored(t)
	f.finish(t)
	f.assertOnly(t)
}

// TestCrashLoopFails updates a container with restart policy always to an
// image that exits after 300ms: Run fails with Verification saying how
// often it restarted, within a window far longer than needed, and Undo
// restores v1.
func TestCrashLoopFails(t *testing.T) {
	t.Parallel()
	f := newFixture(t, v1HC, v2Crash, "--restart", "always")
	f.s.Container.WaitHealthy = 5 * time.Minute
	f.runFails(t, "restarted", "crash loop")
	f.undo(t)
	serves(t, f.name, f.v1, "v1")
	f.assertOnly(t)
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
	f := newFixture(t, v1Plain, v2Plain)
	env := f.env
	dockertest.Save(t, f.v2, filepath.Join(env.Root, "v2.tar"))

	outside := step(f.name, f.v2)
	outside.Container.ImageArchive = "../../../../etc/passwd"
	wrong := step(f.name, "edgeflow-test/not-in-archive:1")
	wrong.Container.ImageArchive = "v2.tar"
	unpullable := step(f.name, "127.0.0.1:1/edgeflow/none:1")

	for _, c := range []struct {
		s    *flow.Step
		want string
	}{
		{outside, "imageArchive ../../../../etc/passwd"},
		{wrong, "has no image edgeflow-test/not-in-archive:1"},
		{unpullable, "pull 127.0.0.1:1/edgeflow/none:1"},
	} {
		err := f.r.Run(f.ctx, c.s, env.Env)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run: %v, want an error saying %q", err, c.want)
		}
		if !onfailure.KindOf(err).Valid() {
			t.Errorf("run: error without a kind: %v", err)
		}
	}
	if err := f.r.Preflight(outside, env.Root); err == nil {
		t.Error("preflight accepted an archive outside the flow's directory")
	}
	if env.undo() != nil {
		t.Fatalf("undo data journaled: %s", env.undo())
	}
	f.assertOnly(t)
	if st := dockertest.Docker(t, "inspect", "--format", "{{.Id}} {{.State.Status}}", f.name); st != f.prevID+" running" {
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
	f := newFixture(t, v1HC, v2HC, "--restart", "always")
	bad := dockertest.Image(t, v2Crash)
	if err := f.r.Run(f.ctx, step(f.name, bad), f.env.Env); onfailure.KindOf(err) != onfailure.Verification {
		t.Fatalf("first attempt: %v", err)
	}
	badID := dockertest.Docker(t, "inspect", "--format", "{{.Id}}", f.name)
	wantPolicy(t, "after the first attempt the previous container", f.prevID, "no 0")

	next := f.env.retry(t)
	if err := f.r.Run(f.ctx, f.s, next.Env); err != nil {
		t.Fatalf("second attempt: %v\nlog:\n%s", err, next.Log)
	}
	serves(t, f.name, f.v2, "v2")
	if !strings.Contains(next.Log.String(), "removing container "+f.name) {
		t.Errorf("log does not say the first attempt's clone was removed:\n%s", next.Log)
	}
	if _, err := f.r.Engine.Inspect(f.ctx, badID); !errors.Is(err, containers.ErrNotFound) {
		t.Fatalf("the first attempt's clone is still there: %v", err)
	}
	wantPolicy(t, "the second attempt's container", f.name, "always 0")
	wantPolicy(t, "the previous container", f.prevID, "no 0")
	if err := f.r.Undo(f.ctx, f.s, next.Env, next.Undo); err != nil {
		t.Fatal(err)
	}
	f.assertRestored(t)
	wantPolicy(t, "restored container", f.name, "always 0")
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
			f := newFixture(t, v1Plain, v2Plain, "--restart", c.flag)
			aside := f.update(t)
			wantPolicy(t, "aside container", aside, "no 0")
			wantPolicy(t, "new container", f.name, c.cli)
			if got := undoOf(t, f.env.undo())["restartPolicy"]; !reflect.DeepEqual(got, c.undo) {
				t.Fatalf("journaled restart policy %v, want %v", got, c.undo)
			}
			parked := strings.Contains(f.env.Log.String(), "restart policy set to no")
			if parked == (c.flag == "no") {
				t.Errorf("log (policy %s):\n%s", c.flag, f.env.Log)
			}

			for range 2 {
				f.undo(t)
			}
			f.assertRestored(t)
			wantPolicy(t, "restored container", f.name, c.cli)
			f.finish(t)
			f.assertOnly(t)
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
	f := newFixture(t, v1Plain, v2Plain, "--restart", "always")
	aside := f.name + ".edgeflow-prev-0d3e5a7c"
	old := fmt.Sprintf(`{"version":1,"name":%q,"previousId":%q,"previousImage":%q,"running":true,"aside":%q}`,
		f.name, f.prevID, imageID(t, f.v1), aside)
	f.env.saved = [][]byte{[]byte(old)}
	next := f.env.retry(t)
	if err := f.r.Run(f.ctx, f.s, next.Env); err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, next.Log)
	}
	serves(t, f.name, f.v2, "v2")
	wantPolicy(t, "new container", f.name, "always 0")
	wantPolicy(t, "aside container (left alone)", aside, "always 0")
	if err := f.r.Undo(f.ctx, f.s, next.Env, next.Undo); err != nil {
		t.Fatal(err)
	}
	serves(t, f.name, f.v1, "v1")
	wantPolicy(t, "restored container", f.name, "always 0")
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
