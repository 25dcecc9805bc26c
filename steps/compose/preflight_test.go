package compose

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
)

// TestPreflight: a compose file or an image archive that is missing, or
// that a symbolic link would take outside the flow's directory, is refused
// before the flow starts, each one named.
func TestPreflight(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	for p, data := range map[string]string{
		filepath.Join(root, "web.yml"):        "services: {}\n",
		filepath.Join(root, "images/web.tar"): "tar",
		filepath.Join(outside, "secret.yml"):  "x",
		filepath.Join(outside, "outside.tar"): "x",
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(outside, "secret.yml"), filepath.Join(root, "link.yml")); err != nil {
		t.Fatal(err)
	}
	r := &Runner{}
	step := func(file string, images ...string) *flow.Step {
		return &flow.Step{Name: "web", Compose: &flow.Compose{Project: "web", File: file, Images: images}}
	}
	if err := r.Preflight(step("web.yml", "images/web.tar"), root); err != nil {
		t.Fatalf("a good step refused: %v", err)
	}
	err := r.Preflight(step("missing.yml", "images/web.tar", "images/none.tar"), root)
	if err == nil || !strings.Contains(err.Error(), "compose file missing.yml") || !strings.Contains(err.Error(), "image archive images/none.tar") {
		t.Fatalf("missing file and archive: %v", err)
	}
	if err := r.Preflight(step("link.yml"), root); err == nil {
		t.Fatal("a link out of the flow's directory was followed")
	}
	if err := r.Preflight(step("../"+filepath.Base(outside)+"/outside.tar"), root); err == nil {
		t.Fatal("a path out of the flow's directory was accepted")
	}
}
