package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/packaging"
)

// flowDir writes a flow "app" with a file it installs, and a signing key
// pair, and returns the flow's path and the key's prefix.
func flowDir(t *testing.T) (flowPath, keyPrefix string) {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "files"), 0o755)
	flowPath = filepath.Join(dir, "flow.yaml")
	os.WriteFile(flowPath, []byte("version: 1\nname: app\nsteps: [{name: c, file: [{src: files/app.conf, dest: /etc/app.conf}]}]\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "files", "app.conf"), []byte("x=1\n"), 0o644)
	keyPrefix = filepath.Join(dir, "ops")
	priv, _, err := packaging.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := packaging.WriteKeyFiles(keyPrefix, priv); err != nil {
		t.Fatal(err)
	}
	return flowPath, keyPrefix
}

// verifyUpload checks an uploaded bundle as a device trusting the key
// would, and returns its manifest.
func verifyUpload(t *testing.T, data []byte, keyPrefix string) *packaging.Manifest {
	t.Helper()
	pub, err := packaging.LoadPublicKey(keyPrefix + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	m, err := packaging.Verify(bytes.NewReader(data), packaging.VerifyOptions{Trusted: []packaging.PublicKey{pub}})
	if err != nil {
		t.Fatalf("the uploaded bundle does not verify: %v", err)
	}
	return m
}

func sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func TestDeployFlowBuildsSignsAndUploads(t *testing.T) {
	t.Setenv(EnvSigningKey, "")
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the bundle is built
	f := newFake(t)
	flow, key := flowDir(t)
	before := time.Now().Unix()
	code, out, errs := f.run(t, "deploy", flow, "--device", "edge-1,edge-2", "--device", "edge-3", "--var", "a=1", "--var", "b=x=y,z", "--key", key+".key")
	if code != 0 || out != "d-new\n" {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	for _, want := range []string{`built bundle: flow "app" version `, "signed by key ", "uploaded bundle ", "deployment d-new created"} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q: %s", want, errs)
		}
	}
	if len(f.uploads) != 1 || len(f.creates) != 1 {
		t.Fatalf("%d uploads, %d creates", len(f.uploads), len(f.creates))
	}
	m := verifyUpload(t, f.uploads[0], key)
	if m.Flow != "app" || m.FlowFile != "flow.yaml" || len(m.Entries) != 2 || m.Entries[1].Path != "files/app.conf" || m.Version < uint64(before) {
		t.Fatalf("manifest %+v", m)
	}
	want := api.CreateDeployment{Bundle: sum(f.uploads[0]), Devices: []string{"edge-1", "edge-2", "edge-3"}, Vars: map[string]string{"a": "1", "b": "x=y,z"}}
	if !reflect.DeepEqual(f.creates[0], want) {
		t.Fatalf("create %+v, want %+v", f.creates[0], want)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "edgeflow-deploy-*")); len(left) > 0 {
		t.Fatalf("the built bundle was left behind: %v", left)
	}

	// $EDGEFLOW_SIGNING_KEY signs when --key is not given; --version and a
	// selector.
	t.Setenv(EnvSigningKey, key+".key")
	code, _, errs = f.run(t, "deploy", flow, "--selector", "site=a,tier=edge", "--version", "42")
	if code != 0 {
		t.Fatalf("%d %q", code, errs)
	}
	m = verifyUpload(t, f.uploads[1], key)
	if m.Version != 42 || !reflect.DeepEqual(f.creates[1].Selector, map[string]string{"site": "a", "tier": "edge"}) || f.creates[1].Devices != nil {
		t.Fatalf("manifest %+v, create %+v", m, f.creates[1])
	}

	// Unsigned, said loudly; -o json prints the deployment resource.
	t.Setenv(EnvSigningKey, "")
	code, out, errs = f.run(t, "deploy", flow, "--device", "edge-1", "-o", "json")
	var d api.Deployment
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d.ID != "d-new" || d.Bundle.SHA256 != sum(f.uploads[2]) || !strings.Contains(errs, "UNSIGNED") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
}

func TestDeployBundleAsIs(t *testing.T) {
	t.Setenv(EnvSigningKey, "")
	f := newFake(t)
	flow, key := flowDir(t)
	priv, err := packaging.LoadPrivateKey(key + ".key")
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "app.bundle")
	var b bytes.Buffer
	if _, err := packaging.Build(flow, &b, packaging.Options{Key: priv, Version: 5, Gzip: true}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bundle, b.Bytes(), 0o644)
	code, out, errs := f.run(t, "deploy", bundle, "--device", "edge-1")
	if code != 0 || out != "d-new\n" || len(f.uploads) != 1 || !bytes.Equal(f.uploads[0], b.Bytes()) {
		t.Fatalf("%d %q %q, uploaded %d bytes", code, out, errs, len(f.uploads[0]))
	}
	if strings.Contains(errs, "built bundle") {
		t.Fatalf("a bundle was rebuilt: %s", errs)
	}
	// Flags that build a bundle make no sense with one.
	if code, _, errs := f.run(t, "deploy", bundle, "--device", "edge-1", "--key", key+".key"); code != ExitInvalid || !strings.Contains(errs, "is a bundle") {
		t.Fatalf("--key with a bundle: %d %q", code, errs)
	}
	// $EDGEFLOW_SIGNING_KEY is for flows only, not an error with a bundle.
	t.Setenv(EnvSigningKey, key+".key")
	if code, _, errs := f.run(t, "deploy", bundle, "--device", "edge-1"); code != 0 {
		t.Fatalf("env key with a bundle: %d %q", code, errs)
	}
}

func TestDeployBadInputDeploysNothing(t *testing.T) {
	t.Setenv(EnvSigningKey, "")
	f := newFake(t)
	flow, key := flowDir(t)
	bad := filepath.Join(filepath.Dir(flow), "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\nname: app\nstepz: []\n"), 0o644)
	missing := filepath.Join(filepath.Dir(flow), "missing.yaml")
	os.WriteFile(missing, []byte("version: 1\nname: app\nsteps: [{name: c, file: [{src: files/nope, dest: /etc/x}]}]\n"), 0o644)
	cases := []struct {
		args []string
		err  string
	}{
		{[]string{"deploy", flow}, "say which devices"},
		{[]string{"deploy", flow, "--device", "a", "--selector", "k=v"}, "exclude each other"},
		{[]string{"deploy", flow, "--device", "a,,b"}, "empty device id"},
		{[]string{"deploy", flow, "--device", "a", "--var", "novalue"}, `--var "novalue": want K=V`},
		{[]string{"deploy", flow, "--selector", "a=1,b"}, `--selector "b": want K=V`},
		{[]string{"deploy", flow, "--selector", "a=1", "--selector", "a=2"}, "a given twice"},
		{[]string{"deploy", flow, "--device", "a", "--timeout", "-1s"}, "--timeout"},
		{[]string{"deploy", bad, "--device", "a"}, bad + `:3:1: unknown key "stepz"`},
		{[]string{"deploy", missing, "--device", "a"}, "files/nope"},
		{[]string{"deploy", filepath.Join(filepath.Dir(flow), "none.yaml"), "--device", "a"}, "no such file"},
		{[]string{"deploy", flow, "--device", "a", "--key", key + ".pub"}, "signing key"},
		{[]string{"deploy", flow, "--device", "a", "-o", "wide"}, "want table, json or yaml"},
		{[]string{"deploy", "--device", "a"}, "accepts 1 arg"},
	}
	for _, c := range cases {
		code, out, errs := f.run(t, c.args...)
		if code != ExitInvalid || !strings.Contains(errs, c.err) || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d saying %q", c.args, code, out, errs, ExitInvalid, c.err)
		}
	}
	if len(f.uploads) != 0 || len(f.creates) != 0 {
		t.Fatalf("bad input reached the controller: %d uploads, %d creates", len(f.uploads), len(f.creates))
	}

	// The controller refusing the deployment as invalid is bad input too.
	f.createErr = &api.Error{Error: api.ErrorBody{Code: api.CodeInvalid, Message: "selector matches no device"}}
	code, _, errs := f.run(t, "deploy", flow, "--selector", "site=mars")
	if code != ExitInvalid || !strings.Contains(errs, "selector matches no device") {
		t.Fatalf("400: %d %q", code, errs)
	}
}

func TestDeployWaitExitCodes(t *testing.T) {
	t.Setenv(EnvSigningKey, "")
	f := newFake(t)
	scenarios(f)
	flow, _ := flowDir(t)
	cases := []struct {
		id   string
		args []string
		code int
		out  []string
		err  string
	}{
		{"d-ok", nil, ExitOK, []string{"d-ok", "edge-1: Running (step config)", "edge-2: Succeeded", "deployment d-ok Succeeded: 2/2 succeeded"}, "following it"},
		{"d-fail", nil, ExitFailed, []string{"d-fail", "edge-3: step health failed (Verification): " + healthErr, "deployment d-fail Failed: 1/2 succeeded, 1 rolled back"}, ""},
		{"d-cancel", nil, ExitFailed, []string{"d-cancel", "deployment d-cancel Cancelled: 0/2 succeeded, 1 aborted, 1 cancelled"}, ""},
		{"d-slow", []string{"--timeout", "300ms"}, ExitTimeout, []string{"d-slow", "edge-1: Running (step pull)"},
			"timed out after 300ms: deployment d-slow is still Running"},
	}
	for _, c := range cases {
		f.created = c.id
		args := append([]string{"deploy", flow, "--device", "edge-1,edge-2", "--wait"}, c.args...)
		code, out, errs := f.run(t, args...)
		if code != c.code {
			t.Errorf("%s: exit %d, want %d\n%s%s", c.id, code, c.code, out, errs)
			continue
		}
		for _, want := range c.out {
			if !strings.Contains(out, want+"\n") {
				t.Errorf("%s: stdout lacks line %q:\n%s", c.id, want, out)
			}
		}
		if !strings.HasPrefix(out, c.id+"\n") {
			t.Errorf("%s: stdout does not start with the id:\n%s", c.id, out)
		}
		if !strings.Contains(errs, c.err) {
			t.Errorf("%s: stderr lacks %q: %s", c.id, c.err, errs)
		}
	}

	// -o json --wait: progress on stderr, the final deployment on stdout.
	f.created = "d-fail"
	code, out, errs := f.run(t, "deploy", flow, "--device", "edge-1", "--wait", "-o", "json")
	var d api.Deployment
	if code != ExitFailed || json.Unmarshal([]byte(out), &d) != nil || d.ID != "d-fail" ||
		!strings.Contains(errs, "edge-3: step health failed") || !strings.Contains(errs, "deployment d-fail Failed") {
		t.Fatalf("json: %d\nstdout %s\nstderr %s", code, out, errs)
	}
}
