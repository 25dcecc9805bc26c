package packaging

import (
	"bytes"
	"compress/gzip"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/onfailure"
)

func FuzzManifest(f *testing.F) {
	m := manifestOf(payload())
	m.KeyID = testKey.ID()
	good, err := m.Encode()
	must(f, err)
	f.Add(good)
	f.Add([]byte(`{"format":1}`))
	f.Add([]byte(`{"format":1,"flow":"x","flowFile":"a","version":1,"entries":[{"path":"a/../b","size":1,"sha256":""}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data, Limits{})
		if err != nil {
			if onfailure.KindOf(err) != onfailure.Integrity {
				t.Fatalf("refusal of kind %s: %v", onfailure.KindOf(err), err)
			}
			return
		}
		for _, e := range m.Entries {
			if checkPath(e.Path) != nil {
				t.Fatalf("accepted unsafe path %q", e.Path)
			}
		}
		again, err := m.Encode()
		must(t, err)
		m2, err := DecodeManifest(again, Limits{})
		if err != nil || !reflect.DeepEqual(m.Entries, m2.Entries) || m.Version != m2.Version {
			t.Fatalf("re-encoded manifest: %v", err)
		}
	})
}

func FuzzOpen(f *testing.F) {
	p := payload()
	p[2].data = "img" // small seeds keep the fuzzer's minimization quick
	plain := craft(f, manifestOf(p), testKey, p)
	f.Add(plain)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	f.Add(gz.Bytes())
	f.Add(craft(f, manifestOf(p), nil, p))
	f.Add(plain[:len(plain)/2])
	f.Add([]byte("garbage"))
	trusted := []PublicKey{testKey.Public()}
	skipSync = true // fsync is not what is fuzzed, and it makes each run slow
	defer func() { skipSync = false }()
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		file := filepath.Join(parent, "b.tar")
		must(t, os.WriteFile(file, data, 0o644))
		dest := filepath.Join(parent, "out")
		lim := Limits{MaxEntryBytes: 1 << 20, MaxTotalBytes: 4 << 20}
		// With the trusted key, as a device reads a stream.
		if _, err := Verify(bytes.NewReader(data), VerifyOptions{Trusted: trusted, Now: testNow, Limits: lim}); err != nil && onfailure.KindOf(err) != onfailure.Integrity {
			t.Fatalf("refusal of kind %s: %v", onfailure.KindOf(err), err)
		}
		// Without keys, so mutated payloads reach the extraction checks too.
		{
			opts := VerifyOptions{Now: testNow, Limits: lim}
			b, err := Extract(file, dest, opts)
			if err != nil {
				if onfailure.KindOf(err) != onfailure.Integrity {
					t.Fatalf("refusal of kind %s: %v", onfailure.KindOf(err), err)
				}
				assertOnly(t, parent, "b.tar")
				return
			}
			// Everything extracted is a regular file listed in the manifest.
			listed := map[string]bool{}
			for _, e := range b.Manifest.Entries {
				listed[e.Path] = true
			}
			err = filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				rel, _ := filepath.Rel(dest, p)
				if !d.Type().IsRegular() || !listed[filepath.ToSlash(rel)] || strings.HasPrefix(rel, "..") {
					t.Fatalf("extracted %s (%v), not a listed regular file", rel, d.Type())
				}
				return nil
			})
			must(t, err)
			assertOnly(t, parent, "b.tar", "out")
			must(t, os.RemoveAll(dest))
		}
	})
}
