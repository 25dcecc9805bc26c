package packaging

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"
)

func TestIsBundle(t *testing.T) {
	dir := t.TempDir()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	_ = tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: 2})
	_, _ = tw.Write([]byte("{}"))
	_ = tw.Close()
	var gzBuf bytes.Buffer
	zw := gzip.NewWriter(&gzBuf)
	_, _ = zw.Write(tarBuf.Bytes())
	_ = zw.Close()
	for name, c := range map[string]struct {
		data []byte
		want bool
	}{
		"flow.yaml": {[]byte("version: 1\nname: web\nsteps: []\n"), false},
		"flow.json": {[]byte(`{"version": 1}`), false},
		"empty":     {nil, false},
		"b.tar":     {tarBuf.Bytes(), true},
		"b.tar.gz":  {gzBuf.Bytes(), true},
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := IsBundle(p); err != nil || got != c.want {
			t.Errorf("%s: IsBundle %v (%v), want %v", name, got, err, c.want)
		}
	}
	if _, err := IsBundle(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file is no error")
	}
}
