package packaging

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

const testFlow = `version: 1
name: web-2.3.0
steps:
  - name: config
    file:
      - { src: files/app.conf, dest: /etc/app/app.conf }
  - name: migrate
    script: { run: sh ./migrate.sh, workdir: scripts }
  - name: web
    compose: { project: web, file: compose/web.yml, images: [images/web.tar] }
  - name: api
    container: { name: api, image: example/api:2.3, imageArchive: images/api.tar }
`

var testFiles = map[string]string{
	"files/app.conf":      "level=info\n",
	"scripts/migrate.sh":  "echo migrate\n",
	"scripts/lib/util.sh": "true\n",
	"compose/web.yml":     "services: {web: {image: web:2}}\n",
	"images/web.tar":      strings.Repeat("web image layer ", 1000),
	"images/api.tar":      strings.Repeat("api image layer ", 1000),
	"unrelated.txt":       "not referenced, not bundled\n",
}

// writeFlow writes the test flow and its files into a new directory and
// returns the flow's path.
func writeFlow(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(testFlow), 0o644))
	for name, content := range testFiles {
		p := filepath.Join(dir, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(content), 0o644))
	}
	return filepath.Join(dir, "flow.yaml")
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var (
	testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	testKey = PrivateKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)))
)

func buildFile(t testing.TB, flowPath string, opts Options) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bundle.tar")
	var buf bytes.Buffer
	if _, err := Build(flowPath, &buf, opts); err != nil {
		t.Fatalf("build: %v", err)
	}
	must(t, os.WriteFile(out, buf.Bytes(), 0o644))
	return out
}

func TestRoundTrip(t *testing.T) {
	flowPath := writeFlow(t)
	for _, gz := range []bool{false, true} {
		file := buildFile(t, flowPath, Options{Key: testKey, Version: 7, Created: testNow, Expires: testNow.Add(time.Hour), Devices: []string{"dev-1"}, Labels: map[string]string{"site": "a"}, Gzip: gz})
		data, _ := os.ReadFile(file)
		if isGz := data[0] == 0x1f && data[1] == 0x8b; isGz != gz {
			t.Fatalf("gzip %v: file starts % x", gz, data[:2])
		}
		opts := VerifyOptions{Trusted: []PublicKey{testKey.Public()}, Now: testNow, DeviceID: "dev-1", Labels: map[string]string{"site": "a", "extra": "x"}, Installed: 6}
		m, err := Verify(bytes.NewReader(data), opts)
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		var paths []string
		for _, e := range m.Entries {
			paths = append(paths, e.Path)
		}
		want := "flow.yaml compose/web.yml files/app.conf images/api.tar images/web.tar scripts/lib/util.sh scripts/migrate.sh"
		if got := strings.Join(paths, " "); got != want {
			t.Fatalf("entries %q, want %q", got, want)
		}
		if m.Flow != "web-2.3.0" || m.Version != 7 || m.KeyID != testKey.ID() || m.Expires == nil {
			t.Fatalf("manifest %+v", m)
		}

		dest := filepath.Join(t.TempDir(), "web")
		b, err := Extract(file, dest, opts)
		if err != nil {
			t.Fatalf("extract: %v", err)
		}
		if !b.Signed || !b.Verified || b.KeyID != testKey.ID() || b.FlowPath() != filepath.Join(dest, "flow.yaml") {
			t.Fatalf("bundle %+v", b)
		}
		got, _ := os.ReadFile(b.FlowPath())
		if string(got) != testFlow {
			t.Fatalf("flow.yaml = %q", got)
		}
		for _, p := range paths[1:] {
			got, err := os.ReadFile(filepath.Join(dest, p))
			if err != nil || string(got) != testFiles[p] {
				t.Fatalf("%s: %q, %v", p, got, err)
			}
			st, _ := os.Stat(filepath.Join(dest, p))
			if st.Mode() != 0o644 {
				t.Fatalf("%s: mode %v, want 0644", p, st.Mode())
			}
			dst, _ := os.Stat(filepath.Dir(filepath.Join(dest, p)))
			if dst.Mode().Perm() != 0o755 {
				t.Fatalf("%s: dir mode %v, want 0755", p, dst.Mode())
			}
		}
		if _, err := os.Stat(filepath.Join(dest, "unrelated.txt")); err == nil {
			t.Fatal("an unreferenced file was bundled")
		}
		assertOnly(t, filepath.Dir(dest), "web")
	}
}

func TestUnsignedWithoutKeys(t *testing.T) {
	file := buildFile(t, writeFlow(t), Options{Version: 1, Created: testNow})
	dest := filepath.Join(t.TempDir(), "out")
	b, err := Extract(file, dest, VerifyOptions{Now: testNow})
	if err != nil || b.Signed || b.Verified || b.Manifest.KeyID != "" {
		t.Fatalf("unsigned bundle, no keys: %+v, %v", b, err)
	}
	// A signed bundle read without keys is accepted but not Verified.
	file = buildFile(t, writeFlow(t), Options{Key: testKey, Version: 1, Created: testNow})
	b, err = Extract(file, filepath.Join(t.TempDir(), "out"), VerifyOptions{Now: testNow})
	if err != nil || !b.Signed || b.Verified {
		t.Fatalf("signed bundle, no keys: %+v, %v", b, err)
	}
}

// assertOnly fails unless dir holds exactly names (no temporary leftovers).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

func TestBuildRefusals(t *testing.T) {
	cases := []struct {
		name, flow, want string
		setup            func(dir string)
	}{
		{"missing src", "file: [{src: files/nope.conf, dest: /etc/x}]", "files/nope.conf", nil},
		{"symlink out", "file: [{src: files/link, dest: /etc/x}]", "leads outside the flow directory", func(dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, "files"), 0o755))
			must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "files/link")))
		}},
		{"symlink out in workdir", "script: {run: true, workdir: w}", "leads outside", func(dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, "w"), 0o755))
			must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "w/link")))
		}},
		{"dot dot", "file: [{src: ../x, dest: /etc/x}]", "must be a relative path", nil},
		{"not regular", "file: [{src: files, dest: /etc/x}]", "not a regular file", func(dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, "files"), 0o755))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			doc := "version: 1\nname: x\nsteps:\n  - name: s\n    " + c.flow + "\n"
			must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(doc), 0o644))
			if c.setup != nil {
				c.setup(dir)
			}
			var buf bytes.Buffer
			_, err := Build(filepath.Join(dir, "flow.yaml"), &buf, Options{Version: 1})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want it to say %q", err, c.want)
			}
			if buf.Len() != 0 {
				t.Fatal("a refused build wrote output")
			}
		})
	}
	// A symlink inside the flow directory is bundled as the file it names.
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "real.conf"), []byte("x"), 0o644))
	must(t, os.Symlink("real.conf", filepath.Join(dir, "link.conf")))
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte("version: 1\nname: x\nsteps: [{name: s, file: [{src: link.conf, dest: /etc/x}]}]\n"), 0o644))
	m, err := Build(filepath.Join(dir, "flow.yaml"), &bytes.Buffer{}, Options{Version: 1})
	if err != nil || len(m.Entries) != 2 || m.Entries[1].Path != "link.conf" || m.Entries[1].Size != 1 {
		t.Fatalf("symlink inside: %+v, %v", m, err)
	}
	if _, err := Build(filepath.Join(dir, "flow.yaml"), &bytes.Buffer{}, Options{}); err == nil {
		t.Fatal("version 0 accepted")
	}
}

// raw is one tar entry of a hand-made bundle.
type raw struct {
	name string
	typ  byte
	data string
	size int64 // header size when not len(data)
	link string
}

func payload() []raw {
	return []raw{
		{name: "flow.yaml", data: "version: 1\nname: demo\nsteps: [{name: s, script: {run: true}}]\n"},
		{name: "files/a.conf", data: "a=1\n"},
		{name: "images/app.tar", data: strings.Repeat("x", 5000)},
	}
}

func manifestOf(entries []raw) *Manifest {
	m := &Manifest{Format: 1, Flow: "demo", FlowFile: "flow.yaml", Version: 5, Created: testNow}
	for _, e := range entries {
		sum := sha256.Sum256([]byte(e.data))
		m.Entries = append(m.Entries, Entry{Path: e.name, Size: int64(len(e.data)), SHA256: hex.EncodeToString(sum[:])})
	}
	return m
}

// craft writes a bundle by hand: manifest m signed by key (nil: unsigned),
// then entries exactly as given.
func craft(t testing.TB, m *Manifest, key PrivateKey, entries []raw) []byte {
	t.Helper()
	if key != nil && m.KeyID == "" {
		m.KeyID = key.ID()
	}
	mdata, err := m.Encode()
	must(t, err)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	put := func(r raw) {
		size := int64(len(r.data))
		if r.size != 0 {
			size = r.size
		}
		typ := r.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		if typ != tar.TypeReg {
			size = 0
		}
		must(t, tw.WriteHeader(&tar.Header{Name: r.name, Typeflag: typ, Size: size, Mode: 0o644, Linkname: r.link, ModTime: testNow}))
		data := []byte(r.data)
		for int64(len(data)) < size {
			data = append(data, 0)
		}
		_, err := tw.Write(data[:size])
		must(t, err)
	}
	put(raw{name: ManifestName, data: string(mdata)})
	if key != nil {
		put(raw{name: SignatureName, data: string(ed25519.Sign(ed25519.PrivateKey(key), mdata))})
	}
	for _, e := range entries {
		put(e)
	}
	must(t, tw.Close())
	return buf.Bytes()
}

func TestRefusals(t *testing.T) {
	other := PrivateKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)))
	trusted := []PublicKey{testKey.Public()}
	base := VerifyOptions{Trusted: trusted, Now: testNow, DeviceID: "dev-1", Labels: map[string]string{"site": "a"}, Installed: 4}
	signed := func(mut func(*Manifest), entries []raw) []byte {
		m := manifestOf(payload())
		if mut != nil {
			mut(m)
		}
		return craft(t, m, testKey, entries)
	}
	p := payload()
	cases := []struct {
		name   string
		bundle []byte
		opts   func(*VerifyOptions)
		want   string
	}{
		{"unsigned", craft(t, manifestOf(p), nil, p), nil, "unsigned"},
		{"unknown key", craft(t, manifestOf(p), other, p), nil, "unknown key"},
		{"bad signature", func() []byte {
			b := signed(nil, p)
			i := bytes.Index(b, []byte(`"flow": "demo"`))
			copy(b[i:], `"flow": "demX"`)
			return b
		}(), nil, "bad signature"},
		{"key id lies", func() []byte {
			m := manifestOf(p)
			m.KeyID = other.ID()
			return craft(t, m, testKey, p)
		}(), nil, "names key"},
		{"expired", signed(func(m *Manifest) { e := testNow.Add(-time.Second); m.Expires = &e }, p), nil, "expired"},
		{"wrong device", signed(func(m *Manifest) { m.Devices = []string{"dev-2"} }, p), nil, "not dev-1"},
		{"no device id", signed(func(m *Manifest) { m.Devices = []string{"dev-2"} }, p), func(o *VerifyOptions) { o.DeviceID = "" }, "no device id"},
		{"wrong label", signed(func(m *Manifest) { m.Labels = map[string]string{"site": "b"} }, p), nil, "site=b"},
		{"missing label", signed(func(m *Manifest) { m.Labels = map[string]string{"tier": "edge"} }, p), nil, "no label tier"},
		{"older", signed(func(m *Manifest) { m.Version = 3 }, p), nil, "older than the installed version 4"},
		{"equal", signed(func(m *Manifest) { m.Version = 4 }, p), nil, "already installed"},
		{"not in manifest", signed(nil, append(payload(), raw{name: "extra", data: "x"})), nil, `"extra" is not in the manifest`},
		{"duplicate entry", signed(nil, append(payload(), payload()[1])), nil, "appears twice"},
		{"out of order", signed(nil, []raw{p[0], p[2], p[1]}), nil, "out of order"},
		{"missing entry", signed(nil, p[:2]), nil, `"images/app.tar" (3 of 3) is missing`},
		{"size mismatch", signed(nil, []raw{p[0], {name: p[1].name, data: p[1].data, size: 9}, p[2]}), nil, "the tar says 9 bytes"},
		{"sha256 mismatch", signed(nil, []raw{p[0], {name: p[1].name, data: "b=1\n"}, p[2]}), nil, "sha256"},
		{"dot dot", signed(nil, []raw{p[0], {name: "../evil", data: "x"}}), nil, "outside the bundle root"},
		{"absolute", signed(nil, []raw{p[0], {name: "/etc/evil", data: "x"}}), nil, "absolute"},
		{"symlink", signed(nil, []raw{p[0], {name: p[1].name, typ: tar.TypeSymlink, link: "/etc/passwd"}}), nil, "symbolic link"},
		{"hardlink", signed(nil, []raw{p[0], {name: p[1].name, typ: tar.TypeLink, link: "flow.yaml"}}), nil, "hard link"},
		{"device", signed(nil, []raw{p[0], {name: p[1].name, typ: tar.TypeChar}}), nil, "character device"},
		{"directory", signed(nil, []raw{p[0], {name: "files/", typ: tar.TypeDir}}), nil, "directory"},
		{"manifest path outside", signed(func(m *Manifest) { m.Entries[1].Path = "../a.conf" }, p), nil, "outside the bundle root"},
		{"entry over cap", signed(nil, p), func(o *VerifyOptions) { o.Limits.MaxEntryBytes = 4999 }, "over the 4999 byte limit"},
		{"total over cap", signed(nil, p), func(o *VerifyOptions) { o.Limits.MaxTotalBytes = 5000 }, "more than the 5000 byte limit"},
		{"too many entries", signed(nil, p), func(o *VerifyOptions) { o.Limits.MaxEntries = 2 }, "over the limit of 2"},
		{"manifest over cap", signed(nil, p), func(o *VerifyOptions) { o.Limits.MaxManifestBytes = 100 }, "over the 100 byte limit"},
		{"manifest not first", func() []byte {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			tw.WriteHeader(&tar.Header{Name: "flow.yaml", Typeflag: tar.TypeReg, Mode: 0o644})
			tw.Close()
			return buf.Bytes()
		}(), nil, "starts with manifest.json"},
		{"garbage", bytes.Repeat([]byte("garbage!"), 200), nil, "not a valid bundle"},
		{"empty", nil, nil, "empty bundle"},
		{"truncated", func() []byte { b := signed(nil, p); return b[:len(b)-3000] }(), nil, "not a valid bundle"},
		{"truncated gzip", func() []byte {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			zw.Write(signed(nil, p))
			zw.Close()
			return buf.Bytes()[:buf.Len()/2]
		}(), nil, "not a valid bundle"},
		{"bad gzip", []byte{0x1f, 0x8b, 1, 2, 3}, nil, "gzip header"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := base
			if c.opts != nil {
				c.opts(&opts)
			}
			parent := t.TempDir()
			file := filepath.Join(parent, "b.tar")
			must(t, os.WriteFile(file, c.bundle, 0o644))
			dest := filepath.Join(parent, "out")
			_, err := Extract(file, dest, opts)
			if err == nil || onfailure.KindOf(err) != onfailure.Integrity || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v (kind %s), want Integrity saying %q", err, onfailure.KindOf(err), c.want)
			}
			assertOnly(t, parent, "b.tar") // dest absent, no temporary left
			if _, err := Verify(bytes.NewReader(c.bundle), opts); onfailure.KindOf(err) != onfailure.Integrity {
				t.Fatalf("Verify: %v", err)
			}
		})
	}

	// An equal version is accepted with AllowReinstall, a newer one always.
	opts := base
	opts.AllowReinstall = true
	if _, err := Verify(bytes.NewReader(signed(func(m *Manifest) { m.Version = 4 }, p)), opts); err != nil {
		t.Fatalf("reinstall: %v", err)
	}
	if _, err := Verify(bytes.NewReader(signed(nil, p)), base); err != nil {
		t.Fatalf("newer: %v", err)
	}
	// Rotation: a device trusting the old and the new key accepts either.
	opts = base
	opts.Trusted = []PublicKey{other.Public(), testKey.Public()}
	if _, err := Verify(bytes.NewReader(craft(t, manifestOf(p), other, p)), opts); err != nil {
		t.Fatalf("second trusted key: %v", err)
	}
}

func TestExtractDestExists(t *testing.T) {
	file := buildFile(t, writeFlow(t), Options{Version: 1, Created: testNow})
	dest := t.TempDir()
	if _, err := Extract(file, dest, VerifyOptions{Now: testNow}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("existing dest: %v", err)
	}
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	priv, pub, err := GenerateKey()
	must(t, err)
	keyPath, pubPath, err := WriteKeyFiles(filepath.Join(dir, "ops"), priv)
	must(t, err)
	if st, _ := os.Stat(keyPath); st.Mode().Perm() != 0o600 {
		t.Fatalf("%s mode %v", keyPath, st.Mode())
	}
	if _, _, err := WriteKeyFiles(filepath.Join(dir, "ops"), priv); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwrite: %v", err)
	}
	k, err := LoadPrivateKey(keyPath)
	if err != nil || !bytes.Equal(k, priv) {
		t.Fatalf("load private: %v", err)
	}
	p, err := LoadPublicKey(pubPath)
	if err != nil || !bytes.Equal(p, pub) || p.ID() != priv.ID() || len(p.ID()) != 16 {
		t.Fatalf("load public: %v", err)
	}
	if _, err := LoadPublicKey(keyPath); err == nil || !strings.Contains(err.Error(), keyPath) || !strings.Contains(err.Error(), "private key") {
		t.Fatalf("private as public: %v", err)
	}
	if _, err := LoadPrivateKey(pubPath); err == nil || !strings.Contains(err.Error(), pubPath) {
		t.Fatalf("public as private: %v", err)
	}
	must(t, os.Chmod(keyPath, 0o644))
	if _, err := LoadPrivateKey(keyPath); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("readable private key: %v", err)
	}
	bad := filepath.Join(dir, "bad.pub")
	must(t, os.WriteFile(bad, []byte(PublicKeyHeader+" AAAA\n"), 0o644))
	if _, err := LoadPublicKey(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("short key: %v", err)
	}
}
