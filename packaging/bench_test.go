package packaging

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// largeBundle builds, once per benchmark, a bundle holding a 64 MiB image
// archive, written to disk in 1 MiB chunks (never held whole in memory).
func largeBundle(b *testing.B) (string, VerifyOptions) {
	b.Helper()
	dir := b.TempDir()
	must(b, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte("version: 1\nname: big\nsteps:\n  - name: api\n    container: { name: api, image: example/api:2, imageArchive: image.tar }\n"), 0o644))
	img, err := os.Create(filepath.Join(dir, "image.tar"))
	must(b, err)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	for i := 0; i < 64; i++ {
		chunk[i] = byte(i) // not all chunks alike
		_, err := img.Write(chunk)
		must(b, err)
	}
	must(b, img.Close())
	out, err := os.Create(filepath.Join(b.TempDir(), "big.tar"))
	must(b, err)
	if _, err := Build(filepath.Join(dir, "flow.yaml"), out, Options{Key: testKey, Version: 1, Created: testNow}); err != nil {
		b.Fatal(err)
	}
	must(b, out.Close())
	return out.Name(), VerifyOptions{Trusted: []PublicKey{testKey.Public()}, Now: testNow}
}

// BenchmarkVerifyLarge verifies a 64 MiB bundle; with -benchmem, B/op stays
// a small constant (buffers), far below the bundle's size.
func BenchmarkVerifyLarge(b *testing.B) {
	file, opts := largeBundle(b)
	st, _ := os.Stat(file)
	b.SetBytes(st.Size())
	b.ReportAllocs()
	for b.Loop() {
		f, err := os.Open(file)
		must(b, err)
		if _, err := Verify(f, opts); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// BenchmarkExtractLarge extracts a 64 MiB bundle (fsync included).
func BenchmarkExtractLarge(b *testing.B) {
	file, opts := largeBundle(b)
	st, _ := os.Stat(file)
	b.SetBytes(st.Size())
	b.ReportAllocs()
	parent := b.TempDir()
	for b.Loop() {
		dest := filepath.Join(parent, "out")
		if _, err := Extract(file, dest, opts); err != nil {
			b.Fatal(err)
		}
		must(b, os.RemoveAll(dest))
	}
}

// BenchmarkBuildLarge builds a 64 MiB bundle to io.Discard.
func BenchmarkBuildLarge(b *testing.B) {
	dir := b.TempDir()
	must(b, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte("version: 1\nname: big\nsteps:\n  - name: api\n    container: { name: api, image: example/api:2, imageArchive: image.tar }\n"), 0o644))
	img, err := os.Create(filepath.Join(dir, "image.tar"))
	must(b, err)
	must(b, img.Truncate(64<<20))
	must(b, img.Close())
	b.SetBytes(64 << 20)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(filepath.Join(dir, "flow.yaml"), io.Discard, Options{Key: testKey, Version: 1, Created: testNow}); err != nil {
			b.Fatal(err)
		}
	}
}
