package reboot

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

type fixture struct {
	dir    string
	bootID string
	saved  []byte
	env    *steps.Env
}

func newFixture(t *testing.T, boot string) *fixture {
	f := &fixture{dir: t.TempDir()}
	f.bootID = filepath.Join(f.dir, "boot_id")
	if err := os.WriteFile(f.bootID, []byte(boot+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.env = &steps.Env{Step: "reboot", Root: f.dir, WorkDir: f.dir, Log: steps.NewLogBuffer(0),
		SaveUndo: func(b []byte) error { f.saved = append([]byte(nil), b...); return nil }}
	return f
}

func step(timeout time.Duration) *flow.Step {
	return &flow.Step{Name: "reboot", Timeout: timeout, Reboot: &flow.Reboot{}}
}

func TestFirstEntryJournalsThenRunsTheCommand(t *testing.T) {
	f := newFixture(t, "boot-1")
	marker := filepath.Join(f.dir, "rebooted")
	// The "reboot" records that it ran, and whether the boot id was
	// journaled before it.
	r := &Runner{BootIDFile: f.bootID, Command: "touch " + marker}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := r.Run(ctx, step(100*time.Millisecond), f.env)
	if onfailure.KindOf(err) != onfailure.Timeout || !strings.Contains(err.Error(), "no reboot within") {
		t.Fatalf("no reboot within the timeout must be a Timeout: %v", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("the reboot command did not run")
	}
	var st state
	if err := json.Unmarshal(f.saved, &st); err != nil || st.BootID != "boot-1" || st.RequestedAt.IsZero() {
		t.Fatalf("journaled %s (%v)", f.saved, err)
	}
}

func TestReentryInANewBootSucceeds(t *testing.T) {
	f := newFixture(t, "boot-2")
	f.env.Undo = []byte(`{"bootId":"boot-1","requestedAt":"` + time.Now().UTC().Format(time.RFC3339Nano) + `"}`)
	r := &Runner{BootIDFile: f.bootID, Command: "false"}
	if err := r.Run(context.Background(), step(time.Minute), f.env); err != nil {
		t.Fatalf("a changed boot id confirms the reboot: %v", err)
	}
	if f.saved != nil {
		t.Error("confirming must not journal a new request")
	}
}

func TestReentryInTheSameBootWaitsThenTimesOut(t *testing.T) {
	f := newFixture(t, "boot-1")
	f.env.Undo = []byte(`{"bootId":"boot-1","requestedAt":"` + time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano) + `"}`)
	r := &Runner{BootIDFile: f.bootID}
	err := r.Run(context.Background(), step(time.Minute), f.env)
	if onfailure.KindOf(err) != onfailure.Timeout {
		t.Fatalf("same boot past the timeout: %v", err)
	}
}

func TestFailingCommand(t *testing.T) {
	f := newFixture(t, "boot-1")
	r := &Runner{BootIDFile: f.bootID, Command: "exit 4"}
	err := r.Run(context.Background(), step(time.Minute), f.env)
	if onfailure.KindOf(err) != onfailure.Unknown || !strings.Contains(err.Error(), "exited 4") {
		t.Fatalf("got %v", err)
	}
}

func TestMissingBootID(t *testing.T) {
	f := newFixture(t, "x")
	r := &Runner{BootIDFile: filepath.Join(f.dir, "nope")}
	if err := r.Run(context.Background(), step(time.Minute), f.env); err == nil || f.saved != nil {
		t.Fatalf("no boot id: must fail before journaling anything: %v", err)
	}
}
