package compose

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/containers"
)

// fakeEngine is a containers.Engine for the tests that must not reach the
// daemon: it records the calls and fails Ping from call pingFailsFrom on
// (0: never). Every other call fails, as none of these tests may get that
// far.
type fakeEngine struct {
	mu            sync.Mutex
	calls         []string
	pingFailsFrom int
	pings         int
}

var errDown = errors.New("connection refused")

func (f *fakeEngine) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeEngine) Ping(context.Context) error {
	f.record("Ping")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pings++
	if f.pingFailsFrom > 0 && f.pings >= f.pingFailsFrom {
		return errDown
	}
	return nil
}

var errUnexpected = errors.New("unexpected engine call")

func (f *fakeEngine) ImageID(_ context.Context, ref string) (string, error) {
	f.record("ImageID " + ref)
	return "", errUnexpected
}
func (f *fakeEngine) LoadImage(_ context.Context, path string) error {
	f.record("LoadImage " + path)
	return errUnexpected
}
func (f *fakeEngine) PullImage(_ context.Context, ref string) error {
	f.record("PullImage " + ref)
	return errUnexpected
}
func (f *fakeEngine) TagImage(_ context.Context, id, ref string) error {
	f.record("TagImage " + ref)
	return errUnexpected
}
func (f *fakeEngine) Inspect(_ context.Context, name string) (containers.Container, error) {
	f.record("Inspect " + name)
	return containers.Container{}, errUnexpected
}
func (f *fakeEngine) ProjectContainers(_ context.Context, project string) ([]containers.Container, error) {
	f.record("ProjectContainers " + project)
	return nil, errUnexpected
}
func (f *fakeEngine) Clone(context.Context, string, string, string) (string, error) {
	f.record("Clone")
	return "", errUnexpected
}
func (f *fakeEngine) Rename(context.Context, string, string) error {
	f.record("Rename")
	return errUnexpected
}
func (f *fakeEngine) Start(context.Context, string) error {
	f.record("Start")
	return errUnexpected
}
func (f *fakeEngine) Stop(context.Context, string, time.Duration) error {
	f.record("Stop")
	return errUnexpected
}
func (f *fakeEngine) Remove(context.Context, string) error {
	f.record("Remove")
	return errUnexpected
}
func (f *fakeEngine) SetRestartPolicy(context.Context, string, containers.RestartPolicy) error {
	return nil
}

// anyCLI returns the preferred Compose CLI present, skipping (or, with
// EDGEFLOW_REQUIRE_SERVICES=1, failing) the test when there is none.
func anyCLI(t *testing.T) CLI {
	t.Helper()
	c, err := Detect(context.Background())
	if err != nil {
		if os.Getenv("EDGEFLOW_REQUIRE_SERVICES") == "1" {
			t.Fatalf("EDGEFLOW_REQUIRE_SERVICES=1 but %v", err)
		}
		t.Skipf("NO COMPOSE CLI, SKIPPING %s: %v", t.Name(), err)
	}
	return c
}

// unitEnv is a step environment whose SaveUndo records what it is given.
type unitEnv struct {
	*steps.Env
	saved [][]byte
}

func newUnitEnv(t *testing.T) *unitEnv {
	t.Helper()
	ue := &unitEnv{}
	ue.Env = &steps.Env{
		Step:    "web",
		Root:    t.TempDir(),
		WorkDir: t.TempDir(),
		Log:     steps.NewLogBuffer(0),
		SaveUndo: func(b []byte) error {
			ue.saved = append(ue.saved, append([]byte(nil), b...))
			return nil
		},
	}
	return ue
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func composeStep(project, file string) *flow.Step {
	return &flow.Step{Name: "web", Compose: &flow.Compose{Project: project, File: file}}
}

func wantKind(t *testing.T, err error, k onfailure.Kind, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s", k)
	}
	if got := onfailure.KindOf(err); got != k {
		t.Errorf("kind %s, want %s (%v)", got, k, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}

// Bad input fails while staging, before any undo data is journaled and
// before the project directory exists, and the error says why.
func TestBadInputChangesNothing(t *testing.T) {
	cli := anyCLI(t)
	for _, c := range []struct {
		name  string
		file  string // the step's file key
		write map[string]string
		parts []string
	}{
		{
			name:  "yaml syntax",
			file:  "web.yml",
			write: map[string]string{"web.yml": "services:\n  web:\n    image: [1\n"},
			parts: []string{"compose file web.yml is invalid", "exit status"},
		},
		{
			name:  "unknown key",
			file:  "web.yml",
			write: map[string]string{"web.yml": "services:\n  web:\n    image: app:1\n    imagex: nope\n"},
			parts: []string{"compose file web.yml is invalid", "imagex"},
		},
		{
			name:  "service without image",
			file:  "web.yml",
			write: map[string]string{"web.yml": "services:\n  api:\n    image: app:1\n  web:\n    build: ROOT\n"},
			parts: []string{"service web has no image", "devices do not build"},
		},
		{
			name:  "missing file",
			file:  "nope.yml",
			parts: []string{"compose file nope.yml", "not found"},
		},
		{
			name:  "file outside root",
			file:  "../../../../etc/hostname",
			parts: []string{"compose file ../../../../etc/hostname", "not found"},
		},
		{
			name:  "image archive outside root",
			file:  "web.yml",
			write: map[string]string{"web.yml": "services:\n  web:\n    image: app:1\n"},
			parts: []string{"image archive ../../../etc/passwd", "not found"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			eng := &fakeEngine{}
			env := newUnitEnv(t)
			for name, content := range c.write {
				// A build context that exists, as v1 checks it.
				content = strings.ReplaceAll(content, "ROOT", env.Root)
				writeFile(t, filepath.Join(env.Root, name), content)
			}
			dir := t.TempDir()
			r := &Runner{Engine: eng, Dir: dir, Command: cli.Argv}
			s := composeStep("web", c.file)
			if c.name == "image archive outside root" {
				s.Compose.Images = []string{"../../../etc/passwd"}
			}
			err := r.Run(context.Background(), s, env.Env)
			wantKind(t, err, onfailure.Unknown, c.parts...)
			if len(env.saved) > 0 {
				t.Errorf("undo data journaled: %s", env.saved[0])
			}
			if _, err := os.Stat(filepath.Join(dir, "web")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("project directory touched: %v", err)
			}
			for _, call := range eng.calls {
				if call != "Ping" {
					t.Errorf("engine called: %s", call)
				}
			}
		})
	}
}

// A daemon that does not answer is Connectivity, found before anything
// else is done.
func TestDaemonDown(t *testing.T) {
	eng := &fakeEngine{pingFailsFrom: 1}
	env := newUnitEnv(t)
	writeFile(t, filepath.Join(env.Root, "web.yml"), "services:\n  web:\n    image: app:1\n")
	r := &Runner{Engine: eng, Dir: t.TempDir(), Command: []string{"/nonexistent/compose"}}
	err := r.Run(context.Background(), composeStep("web", "web.yml"), env.Env)
	wantKind(t, err, onfailure.Connectivity, "docker daemon")
	if len(eng.calls) != 1 {
		t.Errorf("engine calls %v, want only Ping", eng.calls)
	}

	err = r.Undo(context.Background(), composeStep("web", "web.yml"), env.Env,
		[]byte(`{"version":1,"project":"web","file":"/x/web/compose.yaml","existed":false}`))
	wantKind(t, err, onfailure.Connectivity, "docker daemon")
}

// A failing CLI command is classified by pinging the daemon again, never
// by its output: Connectivity when the daemon stopped answering.
func TestCLIFailureWithDaemonGone(t *testing.T) {
	cli := anyCLI(t)
	eng := &fakeEngine{pingFailsFrom: 2}
	env := newUnitEnv(t)
	writeFile(t, filepath.Join(env.Root, "web.yml"), "services:\n  web:\n    imagex: app:1\n")
	r := &Runner{Engine: eng, Dir: t.TempDir(), Command: cli.Argv}
	err := r.Run(context.Background(), composeStep("web", "web.yml"), env.Env)
	wantKind(t, err, onfailure.Connectivity, "exit status", "docker daemon")
}

// A Compose CLI that cannot start fails with an error naming it.
func TestMissingCLI(t *testing.T) {
	env := newUnitEnv(t)
	writeFile(t, filepath.Join(env.Root, "web.yml"), "services:\n  web:\n    image: app:1\n")
	r := &Runner{Engine: &fakeEngine{}, Dir: t.TempDir(), Command: []string{"/nonexistent/compose"}}
	err := r.Run(context.Background(), composeStep("web", "web.yml"), env.Env)
	wantKind(t, err, onfailure.Unknown, "/nonexistent/compose")
	if len(env.saved) > 0 {
		t.Error("undo data journaled")
	}
}

// Steps and runners that cannot work are refused with a clear error.
func TestRefusals(t *testing.T) {
	env := newUnitEnv(t)
	r := &Runner{Engine: &fakeEngine{}, Dir: t.TempDir()}
	wantKind(t, r.Run(context.Background(), &flow.Step{Name: "x"}, env.Env), onfailure.Unknown, "not a compose step")
	wantKind(t, r.Run(context.Background(), composeStep("../etc", "web.yml"), env.Env), onfailure.Unknown, "project")
	wantKind(t, r.Run(context.Background(), composeStep("web", "web.yml"), &steps.Env{}), onfailure.Unknown, "journal")
	wantKind(t, (&Runner{}).Run(context.Background(), composeStep("web", "web.yml"), env.Env), onfailure.Unknown, "no Docker engine")
}

// Undo refuses undo data it cannot trust, before touching anything.
func TestUndoDataRefused(t *testing.T) {
	eng := &fakeEngine{}
	r := &Runner{Engine: eng, Command: []string{"/nonexistent/compose"}}
	for _, data := range []string{
		``,
		`not json`,
		`{"version":2,"project":"web","file":"/x/web/compose.yaml","existed":false}`,
		`{"version":1,"project":"../web","file":"/x/web/compose.yaml","existed":false}`,
		`{"version":1,"project":"web","file":"x/web/compose.yaml","existed":false}`,
		`{"version":1,"project":"web","file":"/compose.yaml","existed":false}`,
		`{"version":1,"project":"web","file":"/x/web/compose.yaml","existed":true}`,
		`{"version":1,"project":"web","file":"/x/web/compose.yaml","existed":false,"backup":"b"}`,
		`{"version":1,"project":"web","file":"/x/web/compose.yaml","existed":true,"backup":"../b"}`,
		`{"version":1,"project":"web","file":"/x/web/compose.yaml","existed":true,"backup":"b","images":{"a:1":"abc"}}`,
	} {
		err := r.Undo(context.Background(), composeStep("web", "web.yml"), newUnitEnv(t).Env, []byte(data))
		wantKind(t, err, onfailure.Unknown, "undo data")
	}
	if len(eng.calls) > 0 {
		t.Errorf("engine called: %v", eng.calls)
	}
}

// Detect finds the CLIs in Known's order; Variants lists those present.
func TestDetect(t *testing.T) {
	cli := anyCLI(t)
	vs := Variants(context.Background())
	if len(vs) == 0 || vs[0].Name != cli.Name {
		t.Fatalf("Variants %v, Detect %v", vs, cli)
	}
	for _, v := range vs {
		if !present(context.Background(), v.Argv) {
			t.Errorf("%s listed but not present", v.Name)
		}
	}
	if present(context.Background(), []string{"/nonexistent/compose"}) {
		t.Error("a missing program is present")
	}
	if present(context.Background(), []string{"sh", "-c", "exit 1"}) {
		t.Error("a CLI whose version exits 1 is present")
	}
}

func TestTailLines(t *testing.T) {
	var tl tail
	_, _ = tl.Write([]byte("one\n\n  two  \nthree\n\n"))
	if got := tl.lines(2); got != "two / three" {
		t.Errorf("lines %q", got)
	}
	_, _ = tl.Write([]byte(strings.Repeat("x", 2*tailKeep)))
	if got := tl.lines(3); len(got) > 404 || !strings.HasPrefix(got, "...") {
		t.Errorf("long line not clipped: %d bytes", len(got))
	}
}

func TestParseConfig(t *testing.T) {
	svcs, err := parseConfig([]byte("services:\n  b:\n    image: x:1\n  a:\n    image: y:2\n  c:\n    image: x:1\nversion: '3'\nnetworks: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(svcs.names(), ","); got != "a,b,c" {
		t.Errorf("names %s", got)
	}
	if got := strings.Join(svcs.images(), ","); got != "x:1,y:2" {
		t.Errorf("images %s", got)
	}
	if svcs.needConfig() {
		t.Error("plain images need config")
	}
	// A service in a profile is not started by up, so not expected.
	svcs, err = parseConfig([]byte("services:\n  web:\n    image: a:1\n  debug:\n    image: b:1\n    profiles: [debug]\n"))
	if err != nil || strings.Join(svcs.names(), ",") != "web" {
		t.Errorf("services with profiles: %v %v", svcs, err)
	}
	for _, yml := range []string{
		"services:\n  a:\n    image: app:${TAG}\n",
		"services:\n  a:\n    image: app:$TAG\n",
		"services:\n  a:\n    extends: {file: base.yml, service: a}\n",
	} {
		svcs, err := parseConfig([]byte(yml))
		if err != nil || !svcs.needConfig() {
			t.Errorf("%q: needConfig false (%v)", yml, err)
		}
	}
}
