package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/file"
)

// TestUndoRestoresFiles undoes a succeeded flow of real file steps: every
// dest is back as it was, the actions are in the record, in order, and
// the execution ends RolledBack.
func TestUndoRestoresFiles(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "app.conf")
	fresh := filepath.Join(dir, "new.conf")
	if err := os.WriteFile(old, []byte("v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Options{})
	h.eng.opts.Runners[flow.TypeFile] = &file.Runner{}
	f := parse(t, head+`rollback:
  - {name: notify, script: {run: ok}}
steps:
  - name: conf
    file: [{content: "v2\n", dest: `+old+`}]
    onFailure: [{action: revertFiles, trigger: anyStep}]
  - name: extra
    file: [{content: "x\n", dest: `+fresh+`}]
    onFailure: [{action: revertFiles, trigger: anyStep}, {action: command, command: only-on-own-failure}]
  - {name: check, script: {run: ok}, onFailure: [{action: command, command: tell, trigger: anyStep}]}
`)
	res, err := h.eng.Run(context.Background(), f)
	if err != nil || res.Status != Succeeded {
		t.Fatalf("run: %v %v", res, err)
	}
	if b, _ := os.ReadFile(old); string(b) != "v2\n" {
		t.Fatalf("not installed: %q", b)
	}
	rec := h.store.last
	res, err = h.eng.Undo(context.Background(), f, &rec, "alice", "abort threshold")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != RolledBack {
		t.Fatalf("status %s, want RolledBack: %+v", res.Status, res.Actions)
	}
	if got, want := actions(res), "check.command=Succeeded extra.revertFiles=Succeeded conf.revertFiles=Succeeded notify.rollbackStep=Succeeded"; got != want {
		t.Fatalf("actions %q, want %q", got, want)
	}
	if b, _ := os.ReadFile(old); string(b) != "v1\n" {
		t.Errorf("app.conf is %q, want it back as v1", b)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("new.conf did not exist before; it must be gone: %v", err)
	}
	if summary(res) != "conf=Succeeded extra=Succeeded check=Succeeded" {
		t.Errorf("steps keep their statuses: %s", summary(res))
	}
	last := h.store.last
	if last.Undo == nil || last.Undo.By != "alice" || last.Undo.SucceededAt == nil || last.EndedAt == nil || res.Undo == nil {
		t.Errorf("undo not recorded: %+v", last.Undo)
	}
	// Undone once: a second undo is refused, and nothing runs.
	calls := len(h.fake.Calls())
	if _, err := h.eng.Undo(context.Background(), f, &last, "bob", ""); !errors.Is(err, ErrNotUndoable) {
		t.Fatalf("second undo: %v, want ErrNotUndoable", err)
	}
	if len(h.fake.Calls()) != calls {
		t.Error("a refused undo ran something")
	}
}

func TestUndoRefused(t *testing.T) {
	h := newHarness(t, Options{})
	f := parse(t, head+`steps:
  - {name: a, script: {run: ok}, onFailure: [{action: command, command: c, trigger: anyStep}]}
  - {name: b, script: {run: fail Unknown}}
`)
	res, err := h.eng.Run(context.Background(), f)
	if err != nil || res.Status != Failed {
		t.Fatalf("run: %v %v", res, err)
	}
	rec := h.store.last
	if _, err := h.eng.Undo(context.Background(), f, &rec, "", ""); !errors.Is(err, ErrNotUndoable) || !strings.Contains(err.Error(), "ended Failed") {
		t.Fatalf("undo of a Failed execution: %v", err)
	}

	f = parse(t, head+`steps:
  - {name: a, file: [{content: ok, dest: /x}], onFailure: [{action: revertFiles, trigger: anyStep}]}
`)
	if res, err := h.eng.Run(context.Background(), f); err != nil || res.Status != Succeeded {
		t.Fatalf("run: %v %v", res, err)
	}
	rec = h.store.last
	if err := os.RemoveAll(WorkRoot(h.eng.opts.StateDir, rec.ID)); err != nil {
		t.Fatal(err)
	}
	calls := len(h.fake.Calls())
	if _, err := h.eng.Undo(context.Background(), f, &rec, "", ""); !errors.Is(err, ErrNotUndoable) || !strings.Contains(err.Error(), "undo data is gone") {
		t.Fatalf("undo without undo data: %v", err)
	}
	if len(h.fake.Calls()) != calls || h.store.last.Undo != nil {
		t.Error("a refused undo changed something")
	}
}

// TestUndoResumesWithoutRerunningAnAction: an agent restart in the middle
// of an undo resumes it; the built-in undo that ended is not run again, the
// script cut off is not run again (it is Failed with AgentRestart), and the
// rest runs.
func TestUndoResumesWithoutRerunningAnAction(t *testing.T) {
	h := newHarness(t, Options{})
	f := parse(t, head+`rollback:
  - {name: notify, script: {run: ok}}
steps:
  - {name: a, script: {run: ok}, onFailure: [{action: script, script: {run: ok}, trigger: anyStep}]}
  - {name: b, script: {run: ok}, onFailure: [{action: script, script: {run: block}, trigger: anyStep}]}
  - {name: c, file: [{content: ok, dest: /x}], onFailure: [{action: revertFiles, trigger: anyStep}]}
`)
	if res, err := h.eng.Run(context.Background(), f); err != nil || res.Status != Succeeded {
		t.Fatalf("run: %v %v", res, err)
	}
	rec := h.store.last
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, "b's script to run", func() bool { return slices.Contains(h.fake.Calls(), "script:b") })
		cancel()
	}()
	if _, err := h.eng.Undo(ctx, f, &rec, "ctl", ""); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	h.store.mu.Lock()
	journaled := h.store.last
	h.store.mu.Unlock()
	if journaled.Status != Running || journaled.Undo == nil {
		t.Fatalf("journal says %s, undo %v: a restart would not resume the undo", journaled.Status, journaled.Undo)
	}
	res, err := h.eng.Resume(context.Background(), f, &journaled)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != RollbackFailed {
		t.Errorf("status %s, want RollbackFailed (b's script was cut off)", res.Status)
	}
	if got, want := actions(res), "c.revertFiles=Succeeded b.script=Failed a.script=Succeeded notify.rollbackStep=Succeeded"; got != want {
		t.Errorf("actions %q, want %q", got, want)
	}
	count := func(call string) int {
		n := 0
		for _, c := range h.fake.Calls() {
			if c == call {
				n++
			}
		}
		return n
	}
	for _, c := range []string{"undo:c:undo-c", "script:b", "script:a", "run:notify#1"} {
		if n := count(c); n != 1 {
			t.Errorf("%s ran %d times, want once: %v", c, n, h.fake.Calls())
		}
	}
}

// TestUndoEvents: the undo reports a start marked Undo, each action, and
// the flow's end.
func TestUndoEvents(t *testing.T) {
	var evs []Event
	h := newHarness(t, Options{Observe: func(e Event) { evs = append(evs, e) }})
	f := parse(t, head+`steps:
  - {name: a, script: {run: ok}, onFailure: [{action: command, command: c, trigger: anyStep}]}
`)
	if _, err := h.eng.Run(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	evs = nil
	rec := h.store.last
	if _, err := h.eng.Undo(context.Background(), f, &rec, "", ""); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, string(e.Type)+":"+string(e.Status))
	}
	if strings.Join(got, " ") != "start:Running action:Running action:Succeeded flow:RolledBack" && strings.Join(got, " ") != "start:Running action:Succeeded flow:RolledBack" {
		t.Errorf("events %v", got)
	}
	if !evs[0].Undo {
		t.Error("the start event does not say it is an undo")
	}
}

var _ steps.Undoer = (*fake)(nil)
