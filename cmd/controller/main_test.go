package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func edgeflow(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestBundleCommands(t *testing.T) {
	dir := t.TempDir()
	flowDir := filepath.Join(dir, "flow")
	os.MkdirAll(filepath.Join(flowDir, "files"), 0o755)
	os.WriteFile(filepath.Join(flowDir, "flow.yaml"), []byte("version: 1\nname: app\nsteps: [{name: c, file: [{src: files/app.conf, dest: /etc/app.conf}]}]\n"), 0o644)
	os.WriteFile(filepath.Join(flowDir, "files/app.conf"), []byte("x=1\n"), 0o644)
	prefix := filepath.Join(dir, "ops")
	other := filepath.Join(dir, "other")
	bundle := filepath.Join(dir, "app.bundle")

	code, out, errs := edgeflow(t, "keygen", "--out", prefix)
	if code != 0 || !strings.Contains(out, prefix+".key") || !strings.Contains(out, "key id ") {
		t.Fatalf("keygen: %d %q %q", code, out, errs)
	}
	if code, _, errs := edgeflow(t, "keygen", "--out", prefix); code != 1 || !strings.Contains(errs, "already exists") {
		t.Fatalf("keygen over existing: %d %q", code, errs)
	}
	if code, _, _ := edgeflow(t, "keygen"); code != 2 {
		t.Fatalf("keygen without --out: %d", code)
	}
	edgeflow(t, "keygen", "--out", other)

	code, out, errs = edgeflow(t, "bundle", "build", filepath.Join(flowDir, "flow.yaml"), "-o", bundle,
		"--key", prefix+".key", "--version", "12", "--expires", "30d", "--device", "dev-1", "--label", "site=a", "--gzip")
	if code != 0 || !strings.Contains(out, `flow "app" version 12, 2 entries`) || !strings.Contains(out, "signed by key ") {
		t.Fatalf("build: %d %q %q", code, out, errs)
	}
	assertFiles(t, dir, "app.bundle", "flow", "ops.key", "ops.pub", "other.key", "other.pub")

	code, out, errs = edgeflow(t, "bundle", "inspect", bundle)
	for _, want := range []string{"flow:       app", "version:    12", "expires:    20", "signed:     yes", "devices:    dev-1", "label:      site=a", "entries:    2, ", "           4  ", "files/app.conf"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("inspect: %d, output lacks %q:\n%s%s", code, want, out, errs)
		}
	}

	code, out, errs = edgeflow(t, "bundle", "verify", bundle, "--pubkey", prefix+".pub", "--device", "dev-1", "--label", "site=a")
	if code != 0 || !strings.Contains(out, `valid: flow "app" version 12`) {
		t.Fatalf("verify: %d %q %q", code, out, errs)
	}
	refusals := []struct {
		args []string
		want string
	}{
		{[]string{"--pubkey", other + ".pub", "--device", "dev-1", "--label", "site=a"}, "unknown key"},
		{[]string{"--pubkey", prefix + ".pub", "--device", "dev-2", "--label", "site=a"}, "not dev-2"},
		{[]string{"--pubkey", prefix + ".pub", "--device", "dev-1", "--label", "site=a", "--installed", "12"}, "already installed"},
	}
	for _, r := range refusals {
		code, _, errs := edgeflow(t, append([]string{"bundle", "verify", bundle}, r.args...)...)
		if code != 1 || !strings.Contains(errs, "refused: ") || !strings.Contains(errs, r.want) {
			t.Fatalf("verify %v: %d %q, want exit 1 saying %q", r.args, code, errs, r.want)
		}
	}
	if code, _, _ := edgeflow(t, "bundle", "verify", bundle, "--pubkey", prefix+".pub", "--device", "dev-1", "--label", "site=a", "--installed", "12", "--allow-reinstall"); code != 0 {
		t.Fatalf("verify --allow-reinstall: %d", code)
	}

	// Tampered: flip the last byte of the payload.
	plain := filepath.Join(dir, "plain.bundle")
	if code, _, errs := edgeflow(t, "bundle", "build", filepath.Join(flowDir, "flow.yaml"), "-o", plain, "--key", prefix+".key"); code != 0 {
		t.Fatalf("build: %q", errs)
	}
	data, _ := os.ReadFile(plain)
	i := bytes.Index(data, []byte("x=1\n"))
	data[i] = 'y'
	os.WriteFile(plain, data, 0o644)
	if code, _, errs := edgeflow(t, "bundle", "verify", plain, "--pubkey", prefix+".pub"); code != 1 || !strings.Contains(errs, "sha256") {
		t.Fatalf("tampered: %d %q", code, errs)
	}

	// Usage errors exit 2.
	usage := [][]string{
		{"bundle", "verify", bundle},
		{"bundle", "verify", bundle, "--pubkey", prefix + ".key"},
		{"bundle", "verify", filepath.Join(dir, "missing"), "--pubkey", prefix + ".pub"},
		{"bundle", "build", filepath.Join(flowDir, "flow.yaml")},
		{"bundle", "build", filepath.Join(flowDir, "flow.yaml"), "-o", bundle, "--expires", "soon"},
		{"bundle", "build", filepath.Join(flowDir, "flow.yaml"), "-o", bundle, "--label", "novalue"},
		{"bundle", "build", filepath.Join(flowDir, "flow.yaml"), "-o", bundle, "--key", prefix + ".pub"},
		{"bundle", "build", filepath.Join(flowDir, "flow.yaml"), "-o", filepath.Join(flowDir, "files/app.conf")},
		{"bundle", "build", filepath.Join(dir, "nope.yaml"), "-o", bundle},
		{"bundle", "inspect"},
		{"bundle"},
	}
	for _, a := range usage {
		if code, _, errs := edgeflow(t, a...); code != 2 {
			t.Fatalf("%v: exit %d (%q), want 2", a, code, errs)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(flowDir, "files/app.conf")); string(got) != "x=1\n" {
		t.Fatal("build -o onto a bundled file changed it")
	}
	// An invalid flow prints its problems, FILE:LINE:COL.
	os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("version: 1\nname: app\nstepz: []\n"), 0o644)
	if code, _, errs := edgeflow(t, "bundle", "build", filepath.Join(dir, "bad.yaml"), "-o", bundle); code != 2 || !strings.Contains(errs, "bad.yaml:3:1: unknown key") {
		t.Fatalf("invalid flow: %d %q", code, errs)
	}
	// Inspecting garbage is a refusal (exit 1).
	os.WriteFile(filepath.Join(dir, "junk"), []byte("junk"), 0o644)
	if code, _, errs := edgeflow(t, "bundle", "inspect", filepath.Join(dir, "junk")); code != 1 || !strings.Contains(errs, "not a valid bundle") {
		t.Fatalf("inspect junk: %d %q", code, errs)
	}
	assertFiles(t, dir, "app.bundle", "bad.yaml", "flow", "junk", "ops.key", "ops.pub", "other.key", "other.pub", "plain.bundle")
}

func TestUnsignedInspect(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte("version: 1\nname: app\nsteps: [{name: s, script: {run: true}}]\n"), 0o644)
	b := filepath.Join(dir, "b.tar")
	if code, out, errs := edgeflow(t, "bundle", "build", filepath.Join(dir, "flow.yaml"), "-o", b); code != 0 || !strings.Contains(out, "unsigned") {
		t.Fatalf("build: %d %q %q", code, out, errs)
	}
	code, out, _ := edgeflow(t, "bundle", "inspect", b)
	if code != 0 || !strings.Contains(out, "key id:     none") || !strings.Contains(out, "signed:     no") || !strings.Contains(out, "expires:    never") {
		t.Fatalf("inspect: %d\n%s", code, out)
	}
}

// assertFiles fails unless dir holds exactly names (no temporary files).
func assertFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}
