package compose

// The tests in this file run against the real Docker engine and every
// Compose CLI present (see forEachCLI). They skip, loudly, without an
// engine, and fail without one when EDGEFLOW_REQUIRE_SERVICES=1.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/internal/dockertest"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/containers"
	"github.com/edgeflow/edgeflow/steps/script"
)

// testHealth polls often; the settle stays at 2s so that a loaded CI
// machine cannot take the crash-looping app for stable before its first
// restart.
var testHealth = containers.Options{Interval: 200 * time.Millisecond, Settle: 2 * time.Second}

var variants = sync.OnceValue(func() []CLI { return Variants(context.Background()) })

// forEachCLI runs f as a parallel subtest once per Compose CLI present,
// with a new rig for that CLI, after checking that the engine answers.
func forEachCLI(t *testing.T, f func(t *testing.T, g *rig)) {
	t.Helper()
	dockertest.Engine(t)
	vs := variants()
	if len(vs) == 0 {
		dockertest.Unavailable(t, errors.New("no Compose CLI (docker compose or docker-compose)"))
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			f(t, newRig(t, v))
		})
	}
}

// rig is one test's project: its runner, flow directory and port.
type rig struct {
	t       *testing.T
	cli     CLI
	eng     containers.Engine
	r       *Runner
	project string
	port    int
	root    string // the flow directory
}

func newRig(t *testing.T, cli CLI) *rig {
	t.Helper()
	eng := dockertest.Engine(t)
	g := &rig{
		t:       t,
		cli:     cli,
		eng:     eng,
		project: dockertest.Prefix(t) + "web",
		port:    freePort(t),
		root:    t.TempDir(),
	}
	g.r = &Runner{Engine: eng, Dir: t.TempDir(), Command: cli.Argv, Grace: 5 * time.Second, Health: testHealth}
	t.Cleanup(g.down)
	return g
}

// down removes the project, its volumes included, whatever state the test
// left it in.
func (g *rig) down() {
	p := g.r.project(g.cli.Argv, g.project)
	file := p.file
	if _, err := os.Stat(file); err != nil {
		tmp, err := os.MkdirTemp("", "compose-cleanup-")
		if err != nil {
			g.t.Error(err)
			return
		}
		defer os.RemoveAll(tmp)
		p.file = filepath.Join(tmp, "empty.yaml")
		if err := os.WriteFile(p.file, []byte("version: \"3\"\nservices: {}\n"), 0o600); err != nil {
			g.t.Error(err)
			return
		}
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		g.t.Error(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if code, err := script.Exec(ctx, script.Command{Argv: p.argv("down", "-v", "--remove-orphans"), Output: &out}); err != nil || code != 0 {
		g.t.Logf("cleanup: compose down: %d %v: %s", code, err, out.String())
	}
}

// composeCLI runs a Compose subcommand on the installed project file.
func (g *rig) composeCLI(args ...string) {
	g.t.Helper()
	p := g.r.project(g.cli.Argv, g.project)
	var out bytes.Buffer
	code, err := script.Exec(context.Background(), script.Command{Argv: p.argv(args...), Output: &out})
	if err != nil || code != 0 {
		g.t.Fatalf("compose %v: %d %v: %s", args, code, err, out.String())
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// compose returns a compose file running image as service app on the
// rig's port, with a revision label (so files differ) and extra keys of
// the service.
func (g *rig) compose(image, rev string, extra ...string) string {
	s := fmt.Sprintf(`services:
  app:
    image: %s
    ports: ["127.0.0.1:%d:8080"]
    labels:
      edgeflow.test.rev: %q
`, image, g.port, rev)
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

// write writes a file into the flow directory.
func (g *rig) write(name, content string) {
	g.t.Helper()
	writeFile(g.t, filepath.Join(g.root, name), content)
}

// stepEnv is one step's environment, journaling into undo.
type stepEnv struct {
	*steps.Env
	mu   sync.Mutex
	undo []byte
}

func (se *stepEnv) saved() []byte {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.undo
}

func (g *rig) env() *stepEnv {
	se := &stepEnv{}
	se.Env = &steps.Env{
		Step:    "web",
		Root:    g.root,
		WorkDir: g.t.TempDir(),
		Log:     steps.NewLogBuffer(0),
	}
	se.SaveUndo = func(b []byte) error {
		se.mu.Lock()
		defer se.mu.Unlock()
		se.undo = append([]byte(nil), b...)
		return nil
	}
	return se
}

func (g *rig) step(file string, window time.Duration, images ...string) *flow.Step {
	return &flow.Step{Name: "web", Compose: &flow.Compose{Project: g.project, File: file, Images: images, WaitHealthy: window}}
}

// install runs a compose step with content as its file and wants it to
// succeed.
func (g *rig) install(name, content string) {
	g.t.Helper()
	g.write(name, content)
	env := g.env()
	if err := g.r.Run(context.Background(), g.step(name, 0), env.Env); err != nil {
		g.t.Fatalf("install %s: %v\n%s", name, err, env.Log)
	}
}

// serves wants GET / on the project's port to answer body.
func (g *rig) serves(want string) {
	g.t.Helper()
	if got := strings.TrimSpace(dockertest.HTTPGet(g.t, fmt.Sprintf("http://127.0.0.1:%d/", g.port))); got != want {
		g.t.Errorf("GET / answers %q, want %q", got, want)
	}
}

// projectFile returns the installed project file, or "" if there is none.
func (g *rig) projectFile() string {
	g.t.Helper()
	b, err := os.ReadFile(g.r.project(nil, g.project).file)
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		g.t.Fatal(err)
	}
	return string(b)
}

// containers returns the project's containers.
func (g *rig) containers() []containers.Container {
	g.t.Helper()
	cs, err := g.eng.ProjectContainers(context.Background(), g.project)
	if err != nil {
		g.t.Fatal(err)
	}
	return cs
}

// runsOnly wants the project to have exactly one container, running image
// id.
func (g *rig) runsOnly(id string) {
	g.t.Helper()
	cs := g.containers()
	if len(cs) != 1 || cs[0].Image != id || cs[0].Status != "running" {
		g.t.Errorf("project containers %+v, want one running %s", cs, id)
	}
}

// assertRestored wants v1 back, as it is after an Undo (when says which):
// GET / answers v1, the project runs one container, of image v1ID, and its
// file is v1File.
func (g *rig) assertRestored(v1ID, v1File, when string) {
	g.t.Helper()
	g.serves("v1")
	g.runsOnly(v1ID)
	if got := g.projectFile(); got != v1File {
		g.t.Errorf("project file %s:\n%s\nwant:\n%s", when, got, v1File)
	}
}

func decodeSaved(t *testing.T, data []byte) *undoData {
	t.Helper()
	u, err := decodeUndo(data)
	if err != nil {
		t.Fatalf("undo data %s: %v", data, err)
	}
	return u
}

var (
	v1Variant        = dockertest.Variant{Version: "v1", HealthCheck: true}
	v2Variant        = dockertest.Variant{Version: "v2", HealthCheck: true}
	unhealthyVariant = dockertest.Variant{Version: "v2", Mode: "unhealthy", HealthCheck: true}
	crashVariant     = dockertest.Variant{Version: "v2", Mode: "crash"}
)

// mutableTag tags v1 as a reference private to the test and writes an
// archive, into the flow directory, in which that reference is v2. The
// local reference stays at v1.
func (g *rig) mutableTag(v1, v2, archive string) string {
	g.t.Helper()
	ref := dockertest.UniqueRef("compose")
	dockertest.Tag(g.t, v2, ref)
	dockertest.Save(g.t, ref, filepath.Join(g.root, archive))
	dockertest.Docker(g.t, "tag", v1, ref)
	return ref
}

// The life of an update, on a project whose file uses a mutable tag:
//   - an invalid new file fails before anything changes: no undo data, the
//     same file, the same container, v1 served;
//   - the update, whose archive moves the tag to v2, serves v2 once
//     healthy, and journaled the v1 file and the v1 image id of the tag;
//   - Undo (a later step failed) tags the reference back to the v1 id,
//     puts the v1 file back and serves v1 again.
func TestUpdateThenUndo(t *testing.T) {
	t.Parallel()
	forEachCLI(t, func(t *testing.T, g *rig) {
		v1, v2 := dockertest.Image(t, v1Variant), dockertest.Image(t, v2Variant)
		v1ID, v2ID := dockertest.ImageID(t, v1), dockertest.ImageID(t, v2)
		ref := g.mutableTag(v1, v2, "v2.tar")
		v1File := g.compose(ref, "1")
		g.install("v1.yml", v1File)
		g.serves("v1")

		// An invalid file.
		before := g.containers()
		g.write("bad.yml", g.compose(ref, "2", "imagex: typo"))
		env := g.env()
		err := g.r.Run(context.Background(), g.step("bad.yml", 0, "v2.tar"), env.Env)
		wantKind(t, err, onfailure.Unknown, "compose file bad.yml is invalid", "imagex")
		if env.saved() != nil {
			t.Errorf("undo data journaled: %s", env.saved())
		}
		if got := g.projectFile(); got != v1File {
			t.Errorf("project file changed:\n%s", got)
		}
		after := g.containers()
		if len(after) != 1 || len(before) != 1 || after[0].ID != before[0].ID || !after[0].StartedAt.Equal(before[0].StartedAt) {
			t.Errorf("containers changed: %+v -> %+v", before, after)
		}
		if id := dockertest.ImageID(t, ref); id != v1ID {
			t.Errorf("%s moved to %s", ref, id)
		}

		// The update.
		v2File := g.compose(ref, "2")
		g.write("v2.yml", v2File)
		env = g.env()
		if err := g.r.Run(context.Background(), g.step("v2.yml", 0, "v2.tar"), env.Env); err != nil {
			t.Fatalf("Run: %v\n%s", err, env.Log)
		}
		g.serves("v2")
		g.runsOnly(v2ID)
		if id := dockertest.ImageID(t, ref); id != v2ID {
			t.Fatalf("after the update %s is %s, want v2 %s", ref, id, v2ID)
		}
		if got := g.projectFile(); got != v2File {
			t.Errorf("project file:\n%s\nwant:\n%s", got, v2File)
		}
		p := g.r.project(nil, g.project)
		if fi, err := os.Stat(p.dir); err != nil || fi.Mode().Perm() != DirMode {
			t.Errorf("project directory: %v %v", fi.Mode(), err)
		}
		if fi, err := os.Stat(p.file); err != nil || fi.Mode().Perm() != FileMode {
			t.Errorf("project file: %v %v", fi.Mode(), err)
		}
		u := decodeSaved(t, env.saved())
		if !u.Existed || u.Project != g.project || u.File != p.file || u.Images[ref] != v1ID {
			t.Errorf("undo data %+v, want the previous file and %s: %s", u, ref, v1ID)
		}
		if b, err := os.ReadFile(filepath.Join(env.WorkDir, u.Backup)); err != nil || string(b) != v1File {
			t.Errorf("backup %q (%v), want the v1 file", b, err)
		}

		// The undo.
		if err := g.r.Undo(context.Background(), g.step("v2.yml", 0), env.Env, env.saved()); err != nil {
			t.Fatalf("Undo: %v\n%s", err, env.Log)
		}
		if id := dockertest.ImageID(t, ref); id != v1ID {
			t.Errorf("after Undo %s is %s, want v1 %s", ref, id, v1ID)
		}
		g.assertRestored(v1ID, v1File, "after Undo")
	})
}

// A project that is down (its file installed, no containers) and whose
// file names its image through a variable from the project's .env: the
// undo data takes the image id from the file, read through config, before
// the update's archive moves the tag, so Undo tags it back.
func TestDownProjectUndoRetags(t *testing.T) {
	t.Parallel()
	forEachCLI(t, func(t *testing.T, g *rig) {
		v1, v2 := dockertest.Image(t, v1Variant), dockertest.Image(t, v2Variant)
		v1ID := dockertest.ImageID(t, v1)
		ref := g.mutableTag(v1, v2, "v2.tar")
		p := g.r.project(nil, g.project)
		writeFile(t, filepath.Join(p.dir, ".env"), "APP_IMAGE="+ref+"\n")
		v1File := g.compose("${APP_IMAGE}", "1")
		g.install("v1.yml", v1File)
		g.serves("v1")
		g.composeCLI("down")
		if cs := g.containers(); len(cs) != 0 {
			t.Fatalf("containers after down: %+v", cs)
		}

		g.write("v2.yml", g.compose("${APP_IMAGE}", "2"))
		env := g.env()
		if err := g.r.Run(context.Background(), g.step("v2.yml", 0, "v2.tar"), env.Env); err != nil {
			t.Fatalf("Run: %v\n%s", err, env.Log)
		}
		g.serves("v2")
		if u := decodeSaved(t, env.saved()); u.Images[ref] != v1ID {
			t.Errorf("undo images %v, want %s: %s", u.Images, ref, v1ID)
		}
		if err := g.r.Undo(context.Background(), g.step("v2.yml", 0), env.Env, env.saved()); err != nil {
			t.Fatalf("Undo: %v\n%s", err, env.Log)
		}
		g.assertRestored(v1ID, v1File, "after Undo")
	})
}

// An unhealthy v2 fails the step with Verification. A second attempt (or
// a run after an agent restart) keeps the undo data of the first, though
// the project file is the new one by then. Undo brings v1 back, and a
// second Undo (a rerun after a crash) finds nothing left to do.
func TestUnhealthyRetryThenUndo(t *testing.T) {
	t.Parallel()
	forEachCLI(t, func(t *testing.T, g *rig) {
		v1, bad := dockertest.Image(t, v1Variant), dockertest.Image(t, unhealthyVariant)
		v1File := g.compose(v1, "1")
		g.install("v1.yml", v1File)

		g.write("v2.yml", g.compose(bad, "2"))
		env := g.env()
		err := g.r.Run(context.Background(), g.step("v2.yml", time.Minute), env.Env)
		wantKind(t, err, onfailure.Verification, "unhealthy")
		first := env.saved()

		env.Undo, env.Attempt = first, 2
		err = g.r.Run(context.Background(), g.step("v2.yml", time.Minute), env.Env)
		wantKind(t, err, onfailure.Verification, "unhealthy")
		if !bytes.Equal(env.saved(), first) {
			t.Errorf("undo data rewritten:\n%s\nwant\n%s", env.saved(), first)
		}
		u := decodeSaved(t, first)
		if b, err := os.ReadFile(filepath.Join(env.WorkDir, u.Backup)); err != nil || string(b) != v1File {
			t.Errorf("backup %q (%v), want the v1 file", b, err)
		}

		for i := range 2 {
			if err := g.r.Undo(context.Background(), g.step("v2.yml", time.Minute), env.Env, first); err != nil {
				t.Fatalf("Undo %d: %v\n%s", i+1, err, env.Log)
			}
			g.assertRestored(dockertest.ImageID(t, v1), v1File, fmt.Sprintf("after Undo %d", i+1))
		}
	})
}

// A crash loop is found by its restarts long before a generous window
// ends: the kind is Verification, not Timeout. Undo recreates v1 over the
// restarting container.
func TestCrashLoop(t *testing.T) {
	t.Parallel()
	forEachCLI(t, func(t *testing.T, g *rig) {
		v1, crash := dockertest.Image(t, v1Variant), dockertest.Image(t, crashVariant)
		g.install("v1.yml", g.compose(v1, "1"))

		g.write("v2.yml", g.compose(crash, "2", "restart: always"))
		env := g.env()
		err := g.r.Run(context.Background(), g.step("v2.yml", 2*time.Minute), env.Env)
		wantKind(t, err, onfailure.Verification, "restarted", "crash loop")

		if err := g.r.Undo(context.Background(), g.step("v2.yml", time.Minute), env.Env, env.saved()); err != nil {
			t.Fatalf("Undo: %v\n%s", err, env.Log)
		}
		g.serves("v1")
	})
}

// A fresh install (no previous file) is undone by taking the project down
// and removing its file and directory; Undo again is harmless. Installed
// again and its file removed (by hand, or lost), the project is still
// undone: its containers are removed through the engine.
func TestFreshInstallUndo(t *testing.T) {
	t.Parallel()
	forEachCLI(t, func(t *testing.T, g *rig) {
		g.write("v1.yml", g.compose(dockertest.Image(t, v1Variant), "1"))
		p := g.r.project(nil, g.project)
		for _, fileLost := range []bool{false, true} {
			env := g.env()
			if err := g.r.Run(context.Background(), g.step("v1.yml", 0), env.Env); err != nil {
				t.Fatalf("Run: %v\n%s", err, env.Log)
			}
			g.serves("v1")
			if u := decodeSaved(t, env.saved()); u.Existed || u.Backup != "" || len(u.Images) > 0 {
				t.Errorf("undo data %+v says a project existed", u)
			}
			if fileLost {
				if err := os.Remove(p.file); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 2 {
				if err := g.r.Undo(context.Background(), g.step("v1.yml", 0), env.Env, env.saved()); err != nil {
					t.Fatalf("Undo %d (file lost: %v): %v\n%s", i+1, fileLost, err, env.Log)
				}
				if cs := g.containers(); len(cs) != 0 {
					t.Errorf("containers left (file lost: %v): %+v", fileLost, cs)
				}
				if _, err := os.Stat(p.dir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("project directory %s still there (%v)", p.dir, err)
				}
			}
		}
	})
}

// cutEngine is the real engine, with Run's context cancelled right after
// its Nth call returns: an agent that stopped at that point.
type cutEngine struct {
	containers.Engine
	n      int64
	calls  atomic.Int64
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	log    []string
}

var errCut = errors.New("cut: the agent stopped here")

func (c *cutEngine) count(call string) {
	c.mu.Lock()
	c.log = append(c.log, call)
	c.mu.Unlock()
	if c.calls.Add(1) == c.n {
		c.cancel(errCut)
	}
}

func (c *cutEngine) Ping(ctx context.Context) error {
	defer c.count("Ping")
	return c.Engine.Ping(ctx)
}
func (c *cutEngine) ImageID(ctx context.Context, ref string) (string, error) {
	defer c.count("ImageID")
	return c.Engine.ImageID(ctx, ref)
}
func (c *cutEngine) LoadImage(ctx context.Context, path string) error {
	defer c.count("LoadImage")
	return c.Engine.LoadImage(ctx, path)
}
func (c *cutEngine) PullImage(ctx context.Context, ref string) error {
	defer c.count("PullImage")
	return c.Engine.PullImage(ctx, ref)
}
func (c *cutEngine) TagImage(ctx context.Context, id, ref string) error {
	defer c.count("TagImage")
	return c.Engine.TagImage(ctx, id, ref)
}
func (c *cutEngine) Inspect(ctx context.Context, name string) (containers.Container, error) {
	defer c.count("Inspect")
	return c.Engine.Inspect(ctx, name)
}
func (c *cutEngine) ProjectContainers(ctx context.Context, project string) ([]containers.Container, error) {
	defer c.count("ProjectContainers")
	return c.Engine.ProjectContainers(ctx, project)
}
func (c *cutEngine) Clone(ctx context.Context, from, name, image string) (string, error) {
	defer c.count("Clone")
	return c.Engine.Clone(ctx, from, name, image)
}
func (c *cutEngine) Rename(ctx context.Context, id, name string) error {
	defer c.count("Rename")
	return c.Engine.Rename(ctx, id, name)
}
func (c *cutEngine) Start(ctx context.Context, id string) error {
	defer c.count("Start")
	return c.Engine.Start(ctx, id)
}
func (c *cutEngine) Stop(ctx context.Context, id string, grace time.Duration) error {
	defer c.count("Stop")
	return c.Engine.Stop(ctx, id, grace)
}
func (c *cutEngine) Remove(ctx context.Context, id string) error {
	defer c.count("Remove")
	return c.Engine.Remove(ctx, id)
}

// upWrapper writes a script that runs the CLI argv given to it, creating
// mark first when the subcommand is up, and returns the argv prefix that
// runs the CLI through it.
func upWrapper(t *testing.T, cli CLI, mark string) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "compose-wrapper")
	text := fmt.Sprintf("#!/bin/sh\ncase \" $* \" in *\" up \"*) : > %q ;; esac\nexec \"$@\"\n", mark)
	if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	return append([]string{path}, cli.Argv...)
}

// The crash matrix: an update from v1 to v2, whose archive moves the tag
// the project uses, is cut after every engine call of Run up to the first
// poll of the health wait, and during up (as soon as it starts, and once
// a v2 container runs). After every cut, Undo with a fresh context (the
// agent restarted, its journal intact) serves v1 again, from the original
// file and image. The cuts run one after another on one project, each
// starting from v1.
func TestCrashMatrix(t *testing.T) {
	t.Parallel()
	forEachCLI(t, func(t *testing.T, g *rig) {
		v1, v2 := dockertest.Image(t, v1Variant), dockertest.Image(t, v2Variant)
		m := &matrix{
			v1ID: dockertest.ImageID(t, v1),
			v2ID: dockertest.ImageID(t, v2),
			ref:  g.mutableTag(v1, v2, "v2.tar"),
		}
		m.v1File = g.compose(m.ref, "1")
		g.install("v1.yml", m.v1File)
		g.write("v2.yml", g.compose(m.ref, "2"))

		// A whole run, counting its engine calls, then its undo.
		counter := &cutEngine{Engine: g.eng, n: -1, cancel: func(error) {}}
		m.cut(t, g, func(r *Runner, _ context.CancelCauseFunc) func(context.Context) {
			r.Engine = counter
			return nil
		}, true)
		counter.mu.Lock()
		log := counter.log
		counter.mu.Unlock()
		t.Logf("engine calls of a run: %v", log)
		// The health wait's polls end the run; cut up to the first.
		firstPoll := len(log)
		for firstPoll > 1 && log[firstPoll-1] == "ProjectContainers" && log[firstPoll-2] == "ProjectContainers" {
			firstPoll--
		}

		for n := 1; n <= firstPoll; n++ {
			t.Run(fmt.Sprintf("after-%d-%s", n, log[n-1]), func(t *testing.T) {
				m.cut(t, g, func(r *Runner, cancel context.CancelCauseFunc) func(context.Context) {
					r.Engine = &cutEngine{Engine: g.eng, n: int64(n), cancel: cancel}
					return nil
				}, false)
			})
		}
		for _, v2Running := range []bool{false, true} {
			name := "during-up"
			if v2Running {
				name = "during-up-v2-running"
			}
			t.Run(name, func(t *testing.T) {
				mark := filepath.Join(t.TempDir(), "up-started")
				m.cut(t, g, func(r *Runner, cancel context.CancelCauseFunc) func(context.Context) {
					r.Command = upWrapper(t, g.cli, mark)
					return func(ctx context.Context) { watchUp(ctx, t, g, mark, m.v2ID, v2Running, cancel) }
				}, false)
			})
		}
	})
}

// matrix is what the cuts of TestCrashMatrix share.
type matrix struct {
	v1ID, v2ID, ref, v1File string
}

// cut runs the update from v1 to v2 with a runner set up by prepare, which
// may return a function to run beside Run until Run's context ends (it
// cancels that context); mayFinish says the update may succeed. Then, if
// undo data was journaled, it runs Undo with a fresh context, and checks
// that v1 is back.
func (m *matrix) cut(t *testing.T, base *rig, prepare func(*Runner, context.CancelCauseFunc) func(context.Context), mayFinish bool) {
	t.Helper()
	g := *base
	g.t = t
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	run := &Runner{Engine: g.eng, Dir: g.r.Dir, Command: g.r.Command, Grace: g.r.Grace, Health: g.r.Health}
	beside := prepare(run, cancel)
	env := g.env()
	done := make(chan error, 1)
	go func() { done <- run.Run(ctx, g.step("v2.yml", 0, "v2.tar"), env.Env) }()
	var wg sync.WaitGroup
	if beside != nil {
		wg.Go(func() { beside(ctx) })
	}
	err := <-done
	cancel(nil)
	wg.Wait()
	switch {
	case err == nil && !mayFinish:
		t.Errorf("Run finished before it was cut\n%s", env.Log)
	case err != nil && !errors.Is(err, errCut):
		t.Errorf("Run failed without the cut: %v\n%s", err, env.Log)
	}

	// The agent restarts: Undo with a fresh context, from the journal.
	if undo := env.saved(); undo != nil {
		again := g.env()
		again.WorkDir = env.WorkDir
		if err := g.r.Undo(context.Background(), g.step("v2.yml", 0), again.Env, undo); err != nil {
			t.Fatalf("Undo: %v\nrun log:\n%s\nundo log:\n%s", err, env.Log, again.Log)
		}
	} else if id := dockertest.ImageID(t, m.ref); id != m.v1ID {
		t.Errorf("nothing journaled, but %s moved to %s", m.ref, id)
	}
	g.serves("v1")
	g.runsOnly(m.v1ID)
	if id := dockertest.ImageID(t, m.ref); id != m.v1ID {
		t.Errorf("%s is %s, want v1 %s", m.ref, id, m.v1ID)
	}
	if got := g.projectFile(); got != m.v1File {
		t.Errorf("project file:\n%s\nwant:\n%s", got, m.v1File)
	}
}

// watchUp cancels Run once up has started (mark exists) and, with
// v2Running, once a container of the project runs v2; it gives up when
// ctx ends (Run then reports that it was not cut).
func watchUp(ctx context.Context, t *testing.T, g *rig, mark, v2ID string, v2Running bool, cancel context.CancelCauseFunc) {
	for ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		if _, err := os.Stat(mark); err != nil {
			continue
		}
		if v2Running {
			cs, err := g.eng.ProjectContainers(context.Background(), g.project)
			if err != nil {
				t.Errorf("watch up: %v", err)
				break
			}
			found := false
			for _, c := range cs {
				found = found || c.Image == v2ID
			}
			if !found {
				continue
			}
		}
		break
	}
	cancel(errCut)
}
