package agent

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/journal"
)

func TestPruneKeepsNewestAndUnfinished(t *testing.T) {
	dir := t.TempDir()
	j, err := journal.Open(dir, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	ids := []string{"e1", "e2", "e3", "e4", "e5"}
	for _, id := range ids {
		if err := j.SaveExecution(id, []byte(`{}`), id == "e1"); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(engine.WorkRoot(dir, id), "step"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := prune(j, dir, 2); err != nil {
		t.Fatal(err)
	}
	left, _ := j.Executions()
	if want := []string{"e1", "e4", "e5"}; len(left) != 3 || left[0] != want[0] || left[1] != want[1] || left[2] != want[2] {
		t.Fatalf("left %v, want %v (the unfinished e1 and the newest two)", left, want)
	}
	for _, id := range []string{"e2", "e3"} {
		if _, err := os.Stat(engine.WorkRoot(dir, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("work dir of %s must be gone: %v", id, err)
		}
	}
	if _, err := os.Stat(engine.WorkRoot(dir, "e1")); err != nil {
		t.Errorf("work dir of the unfinished execution must stay: %v", err)
	}
}

// TestPruneKeepsLastExecution: the last execution's work dir holds the
// undo data a rollback command needs; no keep count prunes it.
func TestPruneKeepsLastExecution(t *testing.T) {
	dir := t.TempDir()
	j, err := journal.Open(dir, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for _, id := range []string{"e1", "e2"} {
		if err := j.SaveExecution(id, []byte(`{}`), false); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(engine.WorkRoot(dir, id), "step"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := prune(j, dir, 0); err != nil {
		t.Fatal(err)
	}
	if left, _ := j.Executions(); len(left) != 1 || left[0] != "e2" {
		t.Fatalf("left %v, want [e2]", left)
	}
	if _, err := os.Stat(engine.WorkRoot(dir, "e2")); err != nil {
		t.Errorf("work dir of the last execution must stay: %v", err)
	}
}
