package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/packaging"
)

// The bundle tests run the real agent on bundles built with the packaging
// package: a signed bundle runs; a replay of it, a tampered, unsigned,
// expired or wrong-device bundle is refused with Integrity, runs nothing,
// changes nothing, and is journaled.

type bundleCase struct {
	t       *testing.T
	dir     string
	state   string
	dest    string // the file the flow installs
	key     packaging.PrivateKey
	pubPath string
}

func newBundleCase(t *testing.T) *bundleCase {
	t.Helper()
	dir := t.TempDir()
	priv, _, err := packaging.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	_, pub, err := packaging.WriteKeyFiles(filepath.Join(dir, "release"), priv)
	if err != nil {
		t.Fatal(err)
	}
	c := &bundleCase{t: t, dir: dir, state: filepath.Join(dir, "state"), dest: filepath.Join(dir, "etc", "app.conf"), key: priv, pubPath: pub}
	writeFile(t, c.dest, "old\n")
	return c
}

// build writes a bundle of a flow that installs files/app.conf (content
// body) at c.dest, and returns its path.
func (c *bundleCase) build(name, body string, opts packaging.Options) string {
	c.t.Helper()
	src := filepath.Join(c.dir, "src-"+name)
	writeFile(c.t, filepath.Join(src, "files", "app.conf"), body)
	writeFile(c.t, filepath.Join(src, "flow.yaml"), `version: 1
name: app
steps:
  - name: config
    file: [ { src: files/app.conf, dest: "`+c.dest+`" } ]
`)
	var buf bytes.Buffer
	if _, err := packaging.Build(filepath.Join(src, "flow.yaml"), &buf, opts); err != nil {
		c.t.Fatal(err)
	}
	out := filepath.Join(c.dir, name+".bundle")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *bundleCase) apply(bundle string, extra ...string) agentRun {
	c.t.Helper()
	args := append([]string{"apply", bundle, "--state-dir", c.state, "--output", "json", "--device-id", "dev-1",
		"--trusted-key", c.pubPath}, extra...)
	return runAgent(c.t, args...)
}

func (c *bundleCase) content() string {
	data, _ := os.ReadFile(c.dest)
	return string(data)
}

// refused checks that r is a refusal with Integrity saying want, and that
// the installed file is still want content.
func (c *bundleCase) refused(what string, r agentRun, says, content string) {
	c.t.Helper()
	res := decodeResult(c.t, what, r.stdout)
	var e struct {
		Error *procError `json:"error"`
	}
	_ = json.Unmarshal([]byte(r.stdout), &e)
	if r.code != 1 || res.Status != "Failed" || len(res.Steps) != 0 || e.Error == nil || e.Error.Type != "Integrity" || !strings.Contains(e.Error.Message, says) {
		c.t.Fatalf("%s: exit %d, status %s, steps %d, error %+v; want a Failed Integrity refusal saying %q\n%s", what, r.code, res.Status, len(res.Steps), e.Error, says, r.stderr)
	}
	if got := c.content(); got != content {
		c.t.Fatalf("%s: the device file is %q, want %q untouched", what, got, content)
	}
	// The refusal is journaled: status shows it as the last execution.
	st := runAgent(c.t, "status", "--state-dir", c.state, "--output", "json")
	if !strings.Contains(st.stdout, res.Execution) || !strings.Contains(st.stdout, "Integrity") {
		c.t.Fatalf("%s: status does not show the refused execution %s:\n%s", what, res.Execution, st.stdout)
	}
}

func TestBundleApply(t *testing.T) {
	t.Parallel()
	c := newBundleCase(t)

	v2 := c.build("v2", "v2\n", packaging.Options{Key: c.key, Version: 2, Gzip: true})
	if r := c.apply(v2); r.code != 0 || c.content() != "v2\n" {
		t.Fatalf("signed bundle: exit %d, file %q\n%s\n%s", r.code, c.content(), r.stdout, r.stderr)
	}
	// The same release again is a replay, unless asked for.
	c.refused("replay", c.apply(v2), "version 2", "v2\n")
	if r := c.apply(v2, "--allow-reinstall"); r.code != 0 {
		t.Fatalf("--allow-reinstall: exit %d\n%s", r.code, r.stdout)
	}
	// An older release is a downgrade.
	v1 := c.build("v1", "v1\n", packaging.Options{Key: c.key, Version: 1})
	c.refused("downgrade", c.apply(v1), "version 1", "v2\n")

	// Unsigned, while keys are trusted.
	c.refused("unsigned", c.apply(c.build("unsigned", "x\n", packaging.Options{Version: 3})), "unsigned", "v2\n")
	// Signed by another key.
	other, _, _ := packaging.GenerateKey()
	c.refused("other key", c.apply(c.build("other", "x\n", packaging.Options{Key: other, Version: 3})), "unknown key", "v2\n")
	// Expired.
	c.refused("expired", c.apply(c.build("expired", "x\n", packaging.Options{Key: c.key, Version: 3, Created: time.Now().Add(-2 * time.Hour), Expires: time.Now().Add(-time.Hour)})), "expired", "v2\n")
	// For another device.
	c.refused("other device", c.apply(c.build("dev2", "x\n", packaging.Options{Key: c.key, Version: 3, Devices: []string{"dev-2"}})), "dev-1", "v2\n")
	// Tampered: one byte of the payload changed after signing.
	v3 := c.build("v3", "v3-payload\n", packaging.Options{Key: c.key, Version: 3})
	data, _ := os.ReadFile(v3)
	i := bytes.Index(data, []byte("v3-payload"))
	if i < 0 {
		t.Fatal("payload not found in the uncompressed bundle")
	}
	data[i] = 'X'
	tampered := filepath.Join(c.dir, "tampered.bundle")
	if err := os.WriteFile(tampered, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c.refused("tampered", c.apply(tampered), "sha256", "v2\n")
	// The untampered v3 still applies: the refusals recorded no version.
	if r := c.apply(v3); r.code != 0 || c.content() != "v3-payload\n" {
		t.Fatalf("v3 after the refusals: exit %d, file %q\n%s", r.code, c.content(), r.stdout)
	}
	// Nothing of the refused bundles was left extracted.
	entries, _ := os.ReadDir(filepath.Join(c.state, "bundles"))
	if len(entries) != 3 { // v2, v2 reinstalled, v3
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("extracted bundles %v, want the 3 that ran", names)
	}
}

// TestBundleResume: an agent killed while running a bundle resumes it from
// the extracted copy, and the success after the restart records the
// release as installed (a replay is then refused).
func TestBundleResume(t *testing.T) {
	t.Parallel()
	c := newBundleCase(t)
	v1 := c.build("v1", "v1\n", packaging.Options{Key: c.key, Version: 1})
	// Killed right after the execution's first journal write, before its
	// step started.
	cmd := exec.Command(crashAgent(t), "apply", v1, "--state-dir", c.state, "--output", "json",
		"--device-id", "dev-1", "--trusted-key", c.pubPath)
	cmd.Env = append(os.Environ(), "EDGEFLOW_CRASH_AT=1")
	if err := cmd.Run(); !killedBySIGKILL(err) {
		t.Fatalf("the agent was not killed: %v", err)
	}
	if c.content() != "old\n" {
		t.Fatalf("the file changed before the step ran: %q", c.content())
	}
	r := runAgent(t, "resume", "--state-dir", c.state, "--output", "json")
	if res := decodeResult(t, "resume", r.stdout); r.code != 0 || res.Status != "Succeeded" || c.content() != "v1\n" {
		t.Fatalf("resume: exit %d, status %s, file %q\n%s", r.code, res.Status, c.content(), r.stdout)
	}
	// The resumed success recorded the release: a replay is refused.
	c.refused("replay after resume", c.apply(v1), "version 1", "v1\n")
}
