package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// testEnv is a step environment whose SaveUndo keeps every call and
// optionally runs a hook first.
type testEnv struct {
	*steps.Env
	saved [][]byte
	hook  func(data []byte)
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	te := &testEnv{Env: &steps.Env{
		Step:    "config",
		Attempt: 1,
		Root:    t.TempDir(),
		WorkDir: t.TempDir(),
		Log:     steps.NewLogBuffer(0),
		Expand: func(s string) (string, error) {
			return strings.ReplaceAll(s, "${{ vars.LEVEL }}", "info"), nil
		},
	}}
	te.SaveUndo = func(data []byte) error {
		if te.hook != nil {
			te.hook(data)
		}
		te.saved = append(te.saved, append([]byte(nil), data...))
		return nil
	}
	return te
}

// retry returns the environment of the next attempt: same directories,
// Undo set to what the last SaveUndo journaled.
func (te *testEnv) retry(t *testing.T) *testEnv {
	t.Helper()
	if len(te.saved) == 0 {
		t.Fatal("no undo data was saved")
	}
	next := &testEnv{Env: &steps.Env{}}
	*next.Env = *te.Env
	next.Attempt++
	next.Undo = te.saved[len(te.saved)-1]
	next.SaveUndo = func(data []byte) error {
		if next.hook != nil {
			next.hook(data)
		}
		next.saved = append(next.saved, append([]byte(nil), data...))
		return nil
	}
	return next
}

func fileStep(entries ...flow.FileEntry) *flow.Step {
	return &flow.Step{Name: "config", File: &flow.FileStep{Entries: entries}}
}

func str(s string) *string { return &s }

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fileAttrs is a file's mode bits (07777), uid and gid.
type fileAttrs struct {
	mode     uint32
	uid, gid int
}

func attrsOf(t *testing.T, path string) fileAttrs {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fileAttrs{st.Mode & 0o7777, int(st.Uid), int(st.Gid)}
}

func chown(t *testing.T, path string, uid, gid int) {
	t.Helper()
	if err := os.Lchown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// listDir returns the names in dir, sorted.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func noTemps(t *testing.T, dir string) {
	t.Helper()
	for _, n := range listDir(t, dir) {
		if strings.Contains(n, tempInfix) {
			t.Errorf("temporary file %s left in %s", n, dir)
		}
	}
}

// wantKind fails unless err has kind k and its message contains every part.
func wantKind(t *testing.T, err error, k onfailure.Kind, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want a %s error, got nil", k)
	}
	if got := onfailure.KindOf(err); got != k {
		t.Errorf("kind = %s, want %s (error: %v)", got, k, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func lookupID(t *testing.T, name string) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Skipf("SKIP: no user %q on this machine: %v", name, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

func decode(t *testing.T, data []byte) *undoData {
	t.Helper()
	u, err := decodeUndo(data)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestInstallNewFiles(t *testing.T) {
	nobodyUID, _ := lookupID(t, "nobody")
	old := syscall.Umask(0o077) // modes must not depend on the agent's umask
	defer syscall.Umask(old)

	env := newEnv(t)
	dir := t.TempDir()
	write(t, filepath.Join(env.Root, "files", "app.conf"), "port=8080\n", 0o600)
	entries := []flow.FileEntry{
		{Src: "files/app.conf", Dest: filepath.Join(dir, "etc", "app", "app.conf"), Mode: "0640", Owner: "65534:65534"},
		{Content: str("LEVEL=${{ vars.LEVEL }}\n"), Dest: filepath.Join(dir, "env"), Owner: "nobody"},
		{Content: str("#!/bin/sh\n"), Dest: filepath.Join(dir, "tool"), Mode: "4755", Owner: "nobody:root"},
		{Content: str("x"), Dest: filepath.Join(dir, "plain")},
	}
	if err := (&Runner{}).Run(context.Background(), fileStep(entries...), env.Env); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, content string
		attrs         fileAttrs
	}{
		{entries[0].Dest, "port=8080\n", fileAttrs{0o640, 65534, 65534}},
		// "user" alone changes the user; the group stays the agent's.
		{entries[1].Dest, "LEVEL=info\n", fileAttrs{0o644, nobodyUID, os.Getgid()}},
		// chown comes before chmod, so setuid survives.
		{entries[2].Dest, "#!/bin/sh\n", fileAttrs{0o4755, nobodyUID, 0}},
		{entries[3].Dest, "x", fileAttrs{DefaultMode, os.Getuid(), os.Getgid()}},
	}
	for _, c := range cases {
		if got := read(t, c.path); got != c.content {
			t.Errorf("%s: content %q, want %q", c.path, got, c.content)
		}
		if got := attrsOf(t, c.path); got != c.attrs {
			t.Errorf("%s: attrs %o %d:%d, want %o %d:%d", c.path, got.mode, got.uid, got.gid, c.attrs.mode, c.attrs.uid, c.attrs.gid)
		}
	}
	for _, d := range []string{filepath.Join(dir, "etc"), filepath.Join(dir, "etc", "app")} {
		if m := attrsOf(t, d).mode; m != DirMode {
			t.Errorf("created directory %s has mode %o, want %o", d, m, DirMode)
		}
	}
	noTemps(t, dir)
	noTemps(t, filepath.Join(dir, "etc", "app"))

	u := decode(t, env.saved[0])
	if len(env.saved) != 1 || len(u.Files) != 4 {
		t.Fatalf("want one SaveUndo with 4 records, got %d calls: %s", len(env.saved), env.saved)
	}
	for _, f := range u.Files {
		if f.Existed || f.Previous != nil {
			t.Errorf("record %+v: the file did not exist", f)
		}
	}
	wantDirs := []string{filepath.Join(dir, "etc"), filepath.Join(dir, "etc", "app")}
	if strings.Join(u.Dirs, ",") != strings.Join(wantDirs, ",") {
		t.Errorf("recorded dirs %v, want %v", u.Dirs, wantDirs)
	}
}

func TestReplaceKeepsModeAndOwner(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	keep, userOnly := filepath.Join(dir, "keep"), filepath.Join(dir, "user-only")
	write(t, keep, "old", 0o4710)
	chown(t, keep, 65534, 1)
	if err := os.Chmod(keep, 0o4710|os.ModeSetuid); err != nil { // chown cleared setuid
		t.Fatal(err)
	}
	write(t, userOnly, "old", 0o600)
	chown(t, userOnly, 1, 1)
	err := (&Runner{}).Run(context.Background(), fileStep(
		flow.FileEntry{Content: str("new"), Dest: keep},
		flow.FileEntry{Content: str("new"), Dest: userOnly, Owner: "root", Mode: "0644"},
	), env.Env)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := attrsOf(t, keep), (fileAttrs{0o4710, 65534, 1}); got != want || read(t, keep) != "new" {
		t.Errorf("keep: %q %+v, want \"new\" %+v", read(t, keep), got, want)
	}
	if got, want := attrsOf(t, userOnly), (fileAttrs{0o644, 0, 1}); got != want {
		t.Errorf("user-only: %+v, want %+v", got, want)
	}
}

func TestSHA256(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	first, dest := filepath.Join(dir, "first"), filepath.Join(dir, "app.conf")
	write(t, first, "first old", 0o644)
	write(t, dest, "old content\n", 0o644)
	write(t, filepath.Join(env.Root, "app.conf"), "new content\n", 0o644)
	wrong := digest([]byte("something else"))
	actual := digest([]byte("new content\n"))

	// The first entry is fine; the second's digest is wrong. Nothing is
	// written, not even the first entry, and nothing is journaled.
	err := (&Runner{}).Run(context.Background(), fileStep(
		flow.FileEntry{Content: str("first new"), Dest: first, SHA256: digest([]byte("first new"))},
		flow.FileEntry{Src: "app.conf", Dest: dest, SHA256: wrong},
	), env.Env)
	wantKind(t, err, onfailure.Integrity, dest, "app.conf", "expected "+wrong, "actual "+actual)
	if read(t, dest) != "old content\n" || read(t, first) != "first old" {
		t.Error("a dest changed although a digest did not match")
	}
	if len(env.saved) != 0 {
		t.Error("undo data journaled although nothing was to change")
	}
	noTemps(t, dir)

	// An inline content's digest is checked after expansion; upper-case
	// hex is fine.
	err = (&Runner{}).Run(context.Background(), fileStep(
		flow.FileEntry{Content: str("LEVEL=${{ vars.LEVEL }}"), Dest: dest, SHA256: strings.ToUpper(digest([]byte("LEVEL=info")))},
	), env.Env)
	if err != nil || read(t, dest) != "LEVEL=info" {
		t.Fatalf("matching digest: %v, content %q", err, read(t, dest))
	}
}

// TestSHA256CheckedWhileCopying changes src after the first check (in
// SaveUndo, which runs between the checks and the writes): the copy's own
// digest catches it before the rename.
func TestSHA256CheckedWhileCopying(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	dest := filepath.Join(dir, "app.conf")
	write(t, dest, "old", 0o644)
	src := filepath.Join(env.Root, "app.conf")
	write(t, src, "good", 0o644)
	env.hook = func([]byte) { write(t, src, "evil", 0o644) }
	err := (&Runner{}).Run(context.Background(), fileStep(
		flow.FileEntry{Src: "app.conf", Dest: dest, SHA256: digest([]byte("good"))},
	), env.Env)
	wantKind(t, err, onfailure.Integrity, "actual "+digest([]byte("evil")))
	if read(t, dest) != "old" {
		t.Errorf("dest changed to %q", read(t, dest))
	}
	noTemps(t, dir)
}

func TestAllowPaths(t *testing.T) {
	base := t.TempDir()
	allowed, outside := filepath.Join(base, "allowed"), filepath.Join(base, "outside")
	write(t, filepath.Join(outside, "target"), "outside", 0o644)
	write(t, filepath.Join(allowed, "real", "cfg"), "inside", 0o644)
	links := map[string]string{
		"out-dir":       outside,                          // an ancestor leading out
		"out-file":      filepath.Join(outside, "target"), // the dest itself leading out
		"out-dangling":  filepath.Join(outside, "new"),    // a dangling link leading out
		"out-relative":  "../outside/target",
		"in-relative":   "real",
		"in-absolute":   filepath.Join(allowed, "real"),
		"in-file":       "real/cfg",
		"in-to-outside": "out-dir", // a link to a link that leads out
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(allowed, name)); err != nil {
			t.Fatal(err)
		}
	}
	// A link outside the allowed paths that leads into them: the dest as
	// written must be allowed too.
	if err := os.MkdirAll(filepath.Join(base, "elsewhere"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(allowed, "real"), filepath.Join(base, "elsewhere", "into-allowed")); err != nil {
		t.Fatal(err)
	}
	r := &Runner{AllowPaths: []string{allowed + "/", filepath.Join(base, "other")}}

	refused := []string{
		filepath.Join(outside, "x"),
		allowed + "/../outside/x",
		allowed, // the allowed directory itself is not below it
		filepath.Join(allowed, "out-dir", "x"),
		filepath.Join(allowed, "out-dir", "new", "deep", "x"),
		filepath.Join(allowed, "out-file"),
		filepath.Join(allowed, "out-dangling"),
		filepath.Join(allowed, "out-relative"),
		filepath.Join(allowed, "in-to-outside", "x"),
		filepath.Join(base, "elsewhere", "into-allowed", "x"),
	}
	for _, dest := range refused {
		t.Run("refuse "+strings.TrimPrefix(dest, base), func(t *testing.T) {
			env := newEnv(t)
			s := fileStep(flow.FileEntry{Content: str("evil"), Dest: dest})
			wantKind(t, r.Preflight(s, env.Root), onfailure.Authorization, dest, allowed, filepath.Join(base, "other"))
			err := r.Run(context.Background(), s, env.Env)
			wantKind(t, err, onfailure.Authorization, dest, allowed)
			if len(env.saved) != 0 {
				t.Error("undo data journaled for a refused dest")
			}
			if got := listDir(t, outside); strings.Join(got, ",") != "target" {
				t.Errorf("outside now holds %v", got)
			}
			if read(t, filepath.Join(outside, "target")) != "outside" {
				t.Error("outside target changed")
			}
			if got := listDir(t, filepath.Join(allowed, "real")); strings.Join(got, ",") != "cfg" {
				t.Errorf("allowed/real now holds %v", got)
			}
		})
	}

	ok := []struct{ dest, written string }{
		{filepath.Join(allowed, "in-relative", "x"), filepath.Join(allowed, "real", "x")},
		{filepath.Join(allowed, "in-absolute", "y"), filepath.Join(allowed, "real", "y")},
		{filepath.Join(allowed, "in-file"), filepath.Join(allowed, "real", "cfg")},
		{allowed + "/sub/../z", filepath.Join(allowed, "z")},
	}
	for _, c := range ok {
		env := newEnv(t)
		s := fileStep(flow.FileEntry{Content: str("fine"), Dest: c.dest})
		if err := r.Preflight(s, env.Root); err != nil {
			t.Errorf("Preflight %s: %v", c.dest, err)
		}
		if err := r.Run(context.Background(), s, env.Env); err != nil {
			t.Errorf("Run %s: %v", c.dest, err)
			continue
		}
		if read(t, c.written) != "fine" {
			t.Errorf("%s: not written at %s", c.dest, c.written)
		}
		if u := decode(t, env.saved[0]); u.Files[0].Path != c.written || u.Files[0].Dest != filepath.Clean(c.dest) {
			t.Errorf("%s: recorded %+v", c.dest, u.Files[0])
		}
	}
	if fi, err := os.Lstat(filepath.Join(allowed, "in-file")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Error("a dest that is a symbolic link must stay one")
	}
}

func TestNoAllowPathsFollowsDestLink(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "target"), "old", 0o600)
	if err := os.Symlink("target", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	err := (&Runner{}).Run(context.Background(), fileStep(flow.FileEntry{Content: str("new"), Dest: filepath.Join(dir, "link")}), env.Env)
	if err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "target")) != "new" || attrsOf(t, filepath.Join(dir, "target")).mode != 0o600 {
		t.Error("the link's target was not replaced keeping its mode")
	}
	if target, err := os.Readlink(filepath.Join(dir, "link")); err != nil || target != "target" {
		t.Errorf("link changed: %q %v", target, err)
	}
	if err := (&Runner{}).Undo(context.Background(), nil, env.Env, env.saved[0]); err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "link")) != "old" {
		t.Error("undo did not restore the link's target")
	}
}

func TestBadDest(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "afile"), "x", 0o644)
	for _, c := range []struct{ dest, msg string }{
		{"etc/app.conf", "not an absolute path"},
		{filepath.Join(dir, "adir"), "not a regular file"},
		{filepath.Join(dir, "afile", "sub", "x"), "is not a directory"},
	} {
		env := newEnv(t)
		err := (&Runner{}).Run(context.Background(), fileStep(flow.FileEntry{Content: str("x"), Dest: c.dest}), env.Env)
		wantKind(t, err, onfailure.Unknown, c.dest, c.msg)
		if len(env.saved) != 0 {
			t.Errorf("%s: undo data journaled", c.dest)
		}
	}
	if read(t, filepath.Join(dir, "afile")) != "x" {
		t.Error("afile changed")
	}
}

func TestSrcStaysInsideRoot(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "bundle")
	write(t, filepath.Join(base, "secret"), "outside secret", 0o644)
	write(t, filepath.Join(root, "files", "a"), "a", 0o644)
	if err := os.Symlink(filepath.Join(base, "secret"), filepath.Join(root, "files", "abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../secret", filepath.Join(root, "files", "rel-link")); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "out")
	for _, src := range []string{"../secret", "files/../../secret", "/../secret", "files/abs-link", "files/rel-link"} {
		env := newEnv(t)
		env.Root = root
		s := fileStep(flow.FileEntry{Src: src, Dest: dest})
		wantKind(t, (&Runner{}).Preflight(s, root), onfailure.Unknown, src, "src not found")
		err := (&Runner{}).Run(context.Background(), s, env.Env)
		wantKind(t, err, onfailure.Unknown, dest, src)
		if exists(dest) {
			t.Fatalf("src %s: dest written: %q", src, read(t, dest))
		}
	}
	// With a file of that name inside the root, "../secret" reads it.
	write(t, filepath.Join(root, "secret"), "inside", 0o644)
	env := newEnv(t)
	env.Root = root
	if err := (&Runner{}).Run(context.Background(), fileStep(flow.FileEntry{Src: "../secret", Dest: dest}), env.Env); err != nil {
		t.Fatal(err)
	}
	if got := read(t, dest); got != "inside" {
		t.Errorf("got %q, want the root's own file", got)
	}
}

func TestPreflightReportsEveryProblem(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "ok"), "x", 0o644)
	s := fileStep(
		flow.FileEntry{Src: "ok", Dest: "/etc/a", Mode: "0999"},
		flow.FileEntry{Src: "ok", Dest: "/etc/b", Owner: "a:b:c"},
		flow.FileEntry{Src: "ok", Dest: "/etc/c", SHA256: "abc"},
		flow.FileEntry{Src: "missing", Dest: "/etc/d"},
		flow.FileEntry{Src: "ok", Content: str("x"), Dest: "/etc/e"},
		flow.FileEntry{Dest: "/etc/f"},
		flow.FileEntry{Src: "ok", Dest: "/etc/g", Mode: "0644", Owner: "no-such-user-yet:1"},
	)
	err := (&Runner{}).Preflight(s, root)
	for _, want := range []string{
		`dest /etc/a (src ok): mode "0999"`,
		`dest /etc/b (src ok): owner "a:b:c"`,
		`dest /etc/c (src ok): sha256 "abc"`,
		`dest /etc/d (src missing): src not found`,
		"dest /etc/e (src ok): both src and content",
		"dest /etc/f: neither src nor content",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Preflight error %v\n  does not contain %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "/etc/g") {
		t.Errorf("owner names are looked up by Run, not Preflight: %v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Error("Preflight's error must be one line")
	}
	// The engine may refuse with a relative allowed path.
	wantKind(t, (&Runner{AllowPaths: []string{"etc"}}).Preflight(s, root), onfailure.Unknown, `allowed path "etc"`)

	env := newEnv(t)
	err = (&Runner{}).Run(context.Background(), fileStep(flow.FileEntry{Content: str("x"), Dest: filepath.Join(t.TempDir(), "x"), Owner: "no-such-user-yet"}), env.Env)
	wantKind(t, err, onfailure.Unknown, "no-such-user-yet")
}

// TestSaveUndoBeforeChange checks, from inside SaveUndo, that nothing has
// changed yet and that the backup is already there.
func TestSaveUndoBeforeChange(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	old, fresh := filepath.Join(dir, "old"), filepath.Join(dir, "new", "sub", "fresh")
	write(t, old, "old content", 0o644)
	called := false
	env.hook = func(data []byte) {
		called = true
		if got := read(t, old); got != "old content" {
			t.Errorf("SaveUndo: dest already changed to %q", got)
		}
		if exists(filepath.Join(dir, "new")) {
			t.Error("SaveUndo: directory already created")
		}
		noTemps(t, dir)
		u := decode(t, data)
		if got := read(t, filepath.Join(env.WorkDir, u.Files[0].Previous.Backup)); got != "old content" {
			t.Errorf("SaveUndo: backup holds %q", got)
		}
	}
	err := (&Runner{}).Run(context.Background(), fileStep(
		flow.FileEntry{Content: str("new content"), Dest: old},
		flow.FileEntry{Content: str("fresh"), Dest: fresh},
	), env.Env)
	if err != nil || !called {
		t.Fatalf("Run: %v, SaveUndo called: %v", err, called)
	}
	if read(t, old) != "new content" || read(t, fresh) != "fresh" {
		t.Error("not installed")
	}
}

func TestUndo(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	old := filepath.Join(dir, "etc", "app.conf")
	fresh := filepath.Join(dir, "etc", "new", "deep", "env")
	write(t, old, "old content", 0o640)
	chown(t, old, 65534, 1)
	r := &Runner{}
	err := r.Run(context.Background(), fileStep(
		flow.FileEntry{Content: str("new content"), Dest: old, Mode: "0600", Owner: "0:0"},
		flow.FileEntry{Content: str("fresh"), Dest: fresh},
	), env.Env)
	if err != nil {
		t.Fatal(err)
	}
	if got := attrsOf(t, old); read(t, old) != "new content" || got != (fileAttrs{0o600, 0, 0}) {
		t.Fatalf("install: %q %+v", read(t, old), got)
	}

	// The journaled format, as the package doc gives it.
	var raw map[string]any
	if err := json.Unmarshal(env.saved[0], &raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"version": float64(1),
		"files": []any{
			map[string]any{"dest": old, "path": old, "existed": true,
				"previous": map[string]any{"backup": "backups/0", "mode": "0640", "uid": float64(65534), "gid": float64(1)}},
			map[string]any{"dest": fresh, "path": fresh, "existed": false},
		},
		"dirs": []any{filepath.Join(dir, "etc", "new"), filepath.Join(dir, "etc", "new", "deep")},
	}
	if a, b := mustJSON(t, raw), mustJSON(t, want); a != b {
		t.Errorf("undo data\n got %s\nwant %s", a, b)
	}

	for i := 1; i <= 2; i++ { // a second Undo (after an agent restart) is harmless
		if err := r.Undo(context.Background(), nil, env.Env, env.saved[0]); err != nil {
			t.Fatalf("Undo %d: %v", i, err)
		}
		if got := attrsOf(t, old); read(t, old) != "old content" || got != (fileAttrs{0o640, 65534, 1}) {
			t.Errorf("Undo %d: old file is %q %+v", i, read(t, old), got)
		}
		if exists(filepath.Join(dir, "etc", "new")) {
			t.Errorf("Undo %d: created directories are still there", i)
		}
		if got := listDir(t, filepath.Join(dir, "etc")); strings.Join(got, ",") != "app.conf" {
			t.Errorf("Undo %d: etc holds %v", i, got)
		}
	}
	if !exists(filepath.Join(env.WorkDir, "backups", "0")) {
		t.Error("Undo must leave the backups to the engine")
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestUndoKeepsDirectoriesWithOtherFiles(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	fresh := filepath.Join(dir, "new", "file")
	r := &Runner{}
	if err := r.Run(context.Background(), fileStep(flow.FileEntry{Content: str("x"), Dest: fresh}), env.Env); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "new", "someone-elses"), "keep", 0o644)
	if err := r.Undo(context.Background(), nil, env.Env, env.saved[0]); err != nil {
		t.Fatal(err)
	}
	if exists(fresh) || read(t, filepath.Join(dir, "new", "someone-elses")) != "keep" {
		t.Error("Undo must remove its file and keep the directory holding another")
	}
}

// TestRetry: the first attempt installs entry 1 and fails on entry 2; the
// second attempt starts from the first's undo data, so entry 1's record
// still holds the content from before the first attempt.
func TestRetry(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	one, two := filepath.Join(dir, "one"), filepath.Join(dir, "sub", "two")
	write(t, one, "original", 0o640)
	r := &Runner{}
	s := fileStep(
		flow.FileEntry{Content: str("version 2"), Dest: one},
		flow.FileEntry{Content: str("two"), Dest: two},
	)
	// Between the checks and the writes, something puts a file where
	// entry 2's directory goes: entry 1 is written, entry 2 fails.
	env.hook = func([]byte) { write(t, filepath.Join(dir, "sub"), "in the way", 0o644) }
	err := r.Run(context.Background(), s, env.Env)
	if err == nil || read(t, one) != "version 2" {
		t.Fatalf("first attempt: %v, one = %q", err, read(t, one))
	}
	if !strings.Contains(err.Error(), "dest "+two) {
		t.Errorf("error %q does not name %s", err, two)
	}

	if err := os.Remove(filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	env2 := env.retry(t)
	if err := r.Run(context.Background(), s, env2.Env); err != nil {
		t.Fatal(err)
	}
	u := decode(t, env2.saved[0])
	if len(u.Files) != 2 || !u.Files[0].Existed || u.Files[1].Existed {
		t.Fatalf("records %+v", u.Files)
	}
	if got := read(t, filepath.Join(env.WorkDir, u.Files[0].Previous.Backup)); got != "original" {
		t.Errorf("backup after the retry holds %q, want the original", got)
	}
	if err := r.Undo(context.Background(), nil, env2.Env, env2.saved[0]); err != nil {
		t.Fatal(err)
	}
	if read(t, one) != "original" || attrsOf(t, one).mode != 0o640 || exists(two) || exists(filepath.Join(dir, "sub")) {
		t.Errorf("after Undo: one = %q, two exists %v, sub exists %v", read(t, one), exists(two), exists(filepath.Join(dir, "sub")))
	}
}

// TestRetryMergesRecords: records in Env.Undo are kept as they are; only
// dests not recorded yet get a record and a backup.
func TestRetryMergesRecords(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	one, two := filepath.Join(dir, "one"), filepath.Join(dir, "two")
	write(t, one, "written by attempt 1", 0o644)
	write(t, two, "two before", 0o600)
	write(t, filepath.Join(env.WorkDir, "backups", "0"), "one before", 0o600)
	env.Undo = []byte(`{"version":1,"files":[{"dest":"` + one + `","path":"` + one +
		`","existed":true,"previous":{"backup":"backups/0","mode":"0640","uid":0,"gid":0}}],"dirs":["` + filepath.Join(dir, "gone") + `"]}`)
	err := (&Runner{}).Run(context.Background(), fileStep(
		flow.FileEntry{Content: str("one new"), Dest: one},
		flow.FileEntry{Content: str("two new"), Dest: two},
	), env.Env)
	if err != nil {
		t.Fatal(err)
	}
	u := decode(t, env.saved[0])
	if len(u.Files) != 2 || u.Files[0].Previous.Mode != "0640" || u.Files[1].Previous.Backup != "backups/1" ||
		len(u.Dirs) != 1 {
		t.Fatalf("merged data %s", env.saved[0])
	}
	if read(t, filepath.Join(env.WorkDir, "backups", "0")) != "one before" ||
		read(t, filepath.Join(env.WorkDir, "backups", "1")) != "two before" {
		t.Error("backups wrong")
	}
}

func TestContext(t *testing.T) {
	env := newEnv(t)
	dir := t.TempDir()
	one, two := filepath.Join(dir, "one"), filepath.Join(dir, "two")
	write(t, one, "old", 0o644)
	ctx, cancel := context.WithCancelCause(context.Background())
	marked := onfailure.E(onfailure.UserMarkedFailure, "operator", errors.New("marked as failed"))
	env.hook = func([]byte) { cancel(marked) }
	err := (&Runner{}).Run(ctx, fileStep(
		flow.FileEntry{Content: str("new"), Dest: one},
		flow.FileEntry{Content: str("new"), Dest: two},
	), env.Env)
	if !errors.Is(err, marked) || onfailure.KindOf(err) != onfailure.UserMarkedFailure {
		t.Fatalf("got %v (kind %s), want the context's cause", err, onfailure.KindOf(err))
	}
	if read(t, one) != "old" || exists(two) {
		t.Error("an entry was written after the context ended")
	}
	noTemps(t, dir)
}

func TestUndoRefusals(t *testing.T) {
	env := newEnv(t)
	r := &Runner{}
	wantKind(t, r.Undo(context.Background(), nil, env.Env, []byte(`{"version":2,"files":[]}`)), onfailure.Unknown, "version 2")
	wantKind(t, r.Undo(context.Background(), nil, env.Env, []byte(`{"version":1,"files":[{"path":"/x","existed":true}]}`)), onfailure.Unknown, "previous is missing")
	wantKind(t, r.Undo(context.Background(), nil, env.Env,
		[]byte(`{"version":1,"files":[{"path":"/x","existed":true,"previous":{"backup":"../../etc/shadow","mode":"0644"}}]}`)),
		onfailure.Unknown, "not a path inside the work directory")

	// A symbolic link that appeared in a recorded path since is not
	// written through.
	base := t.TempDir()
	dir, outside := filepath.Join(base, "dir"), filepath.Join(base, "outside")
	write(t, filepath.Join(dir, "f"), "old", 0o644)
	write(t, filepath.Join(outside, "f"), "outside", 0o644)
	if err := r.Run(context.Background(), fileStep(flow.FileEntry{Content: str("new"), Dest: filepath.Join(dir, "f")}), env.Env); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, dir); err != nil {
		t.Fatal(err)
	}
	wantKind(t, r.Undo(context.Background(), nil, env.Env, env.saved[0]), onfailure.Authorization, "symbolic link")
	if read(t, filepath.Join(outside, "f")) != "outside" {
		t.Error("Undo wrote through a symbolic link")
	}
}

// mountTmpfs mounts a tmpfs of the given size (with extra options) on a
// new directory, or skips the test when mounting is not permitted here.
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("SKIP: cannot mount a tmpfs here (needs root and mount permission): %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func TestDiskFull(t *testing.T) {
	disk := mountTmpfs(t, "size=64k")
	env := newEnv(t)
	dest := filepath.Join(disk, "app.bin")
	write(t, dest, "old", 0o644)
	big := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB
	if err := os.WriteFile(filepath.Join(env.Root, "app.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	err := (&Runner{}).Run(context.Background(), fileStep(flow.FileEntry{Src: "app.bin", Dest: dest, SHA256: digest(big)}), env.Env)
	wantKind(t, err, onfailure.ResourceExhausted, dest, "no space left")
	if read(t, dest) != "old" {
		t.Error("dest changed on a full disk")
	}
	noTemps(t, disk)
}

func TestReadOnlyFileSystem(t *testing.T) {
	disk := mountTmpfs(t, "size=64k,ro")
	env := newEnv(t)
	err := (&Runner{}).Run(context.Background(), fileStep(flow.FileEntry{Content: str("x"), Dest: filepath.Join(disk, "x")}), env.Env)
	wantKind(t, err, onfailure.Authorization, filepath.Join(disk, "x"), "read-only")
}
