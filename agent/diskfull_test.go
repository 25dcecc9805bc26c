package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/edgeflow/edgeflow/journal"
	"github.com/edgeflow/edgeflow/onfailure"
)

// mountTmpfs mounts a small tmpfs at dir, or skips loudly where mounting is
// not permitted (not root, no CAP_SYS_ADMIN).
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("SKIP: cannot mount a tmpfs to fill (%v: %s); the disk-full test needs root", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
}

// fill writes to dir until the filesystem is full and returns the filler.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return p
		}
	}
}

func writeFlow(t *testing.T, dir, name, dest, content string) string {
	t.Helper()
	p := filepath.Join(dir, name+".yaml")
	doc := "version: 1\nname: " + name + "\nsteps:\n  - name: config\n    file: [{content: \"" + content + "\", dest: \"" + dest + "\"}]\n"
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDiskFull: with the state dir's disk full, or nearly (so that the
// failure lands at different writes: the pid file, the journal, a backup),
// a flow fails with ResourceExhausted before it changes anything, and the
// journal stays readable with what it held.
func TestDiskFull(t *testing.T) {
	for _, free := range []int64{0, 8 << 10, 64 << 10} {
		t.Run(fmt.Sprintf("free %d KiB", free>>10), func(t *testing.T) {
			dir := t.TempDir()
			state := filepath.Join(dir, "state")
			mountTmpfs(t, state, "1m")
			dest := filepath.Join(dir, "app.conf")
			if err := os.WriteFile(dest, bytes.Repeat([]byte("old\n"), 64<<10), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := Config{StateDir: state, DeviceID: "dev-1"}
			res, err := Apply(context.Background(), ApplyOptions{Config: cfg, Flow: writeFlow(t, dir, "first", filepath.Join(dir, "first.conf"), "1")})
			if err != nil || res.Status != "Succeeded" {
				t.Fatalf("first run: %v %v", res, err)
			}
			filler := fill(t, state)
			if st, err := os.Stat(filler); err == nil && free > 0 {
				if err := os.Truncate(filler, st.Size()-free); err != nil {
					t.Fatal(err)
				}
			}

			res, err = Apply(context.Background(), ApplyOptions{Config: cfg, Flow: writeFlow(t, dir, "second", dest, "new")})
			t.Logf("second run: err %v, result %+v", err, res)
			if err == nil && res.Status == "Succeeded" {
				t.Fatal("a flow ran with the journal's disk full")
			}
			kind := onfailure.KindOf(err)
			if err == nil {
				kind = res.Steps[0].Error.Type
			}
			if kind != onfailure.ResourceExhausted {
				t.Fatalf("want ResourceExhausted, got %q (%v, %+v)", kind, err, res)
			}
			if data, _ := os.ReadFile(dest); !bytes.Equal(data, bytes.Repeat([]byte("old\n"), 64<<10)) {
				t.Fatalf("the file changed with the disk full: %d bytes", len(data))
			}

			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			j, err := journal.Open(state, journal.Options{})
			if err != nil {
				t.Fatalf("the journal must stay readable: %v", err)
			}
			defer j.Close()
			ids, err := j.Executions()
			if err != nil || len(ids) == 0 {
				t.Fatalf("executions: %v %v", ids, err)
			}
			for _, id := range ids {
				if _, err := readExecution(j, id); err != nil {
					t.Fatalf("execution %s must stay readable: %v", id, err)
				}
			}
		})
	}
}
