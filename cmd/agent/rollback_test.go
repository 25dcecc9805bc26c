package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const confFlow = `version: 1
name: conf
steps:
  - name: conf
    file: [{content: "new\n", dest: %s}]
    onFailure: [{action: revertFiles, trigger: anyStep}]
  - name: check
    verify: { command: "test -s %s" }
`

// rollbackCmd is a rollback command as docs/protocol.md shows it.
func rollbackCmd(id, deployment string) string {
	return fmt.Sprintf(`{"v":1,"id":%q,"type":"rollback","device":%q,"time":%q,"body":{"deployment":%q,"by":"interop","note":"threshold"}}`,
		id, interopDevice, time.Now().UTC().Format(time.RFC3339), deployment)
}

// TestDaemonRollback: a succeeded deployment is undone by a rollback
// command (its files are back, the release can be deployed again); a
// redelivered rollback does nothing; a rollback of a deployment that is
// not the device's last execution, or of one undone already, is refused.
func TestDaemonRollback(t *testing.T) {
	be, c := newInterop(t)
	target := filepath.Join(c.dir, "app.conf")
	writeFile(t, target, "old\n")
	url, sum, size := c.bundle("conf", fmt.Sprintf(confFlow, target, target), 1)
	c.start()
	be.waitOnline()
	caps, _ := be.lastPresence()["capabilities"].(map[string]any)
	if cmds, _ := caps["commands"].([]any); !slices.Contains(cmds, any("rollback")) {
		t.Fatalf("presence capabilities.commands = %v, want rollback", caps["commands"])
	}

	be.dispatch("ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-1", url, sum, size)
	waitFor(t, "flow-finished", func() bool { return be.event("dep-1", "flow-finished") != nil })
	if got := readFile(t, target); got != "new\n" {
		t.Fatalf("installed %q", got)
	}

	const r1 = "ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f02"
	be.publish("commands", rollbackCmd(r1, "dep-1"))
	waitFor(t, "rolled-back", func() bool { return be.event("dep-1", "rolled-back") != nil })
	want := []string{"accepted", "step-started conf", "step-finished conf Succeeded", "step-started check", "step-finished check Succeeded",
		"flow-finished Succeeded", "rollback-action conf Succeeded", "rolled-back RolledBack"}
	if got := be.types("dep-1"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q", got, want)
	}
	rb := be.event("dep-1", "rolled-back")
	if rb["execution"] != be.event("dep-1", "accepted")["execution"] {
		t.Errorf("rolled-back names execution %v, the deployment ran %v", rb["execution"], be.event("dep-1", "accepted")["execution"])
	}
	if ra := be.event("dep-1", "rollback-action"); ra["action"] != "revertFiles" || ra["trigger"] != "anyStep" {
		t.Errorf("rollback-action = %v", ra)
	}
	if got := readFile(t, target); got != "old\n" {
		t.Errorf("after the rollback the file is %q, want it back as %q", got, "old\n")
	}

	// The same rollback again does nothing; a new one of the same
	// deployment is refused: it was undone already.
	be.publish("commands", rollbackCmd(r1, "dep-1"))
	be.publish("commands", rollbackCmd("ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f03", "dep-1"))
	waitFor(t, "the second rollback answered", func() bool { return be.count("dep-1", "rolled-back") == 2 })
	if got := be.types("dep-1"); got[len(got)-1] != "rolled-back Failed" || be.count("dep-1", "rollback-action") != 1 {
		t.Errorf("events after a redelivered and a second rollback: %q", got)
	}
	time.Sleep(200 * time.Millisecond)
	if n := be.count("dep-1", "rolled-back"); n != 2 {
		t.Errorf("%d rolled-back events, want 2 (the redelivered rollback must do nothing)", n)
	}

	// The release is no longer installed: the same bundle deploys again.
	be.dispatch("ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f04", "dep-2", url, sum, size)
	waitFor(t, "flow-finished of dep-2", func() bool { return be.event("dep-2", "flow-finished") != nil || be.event("dep-2", "rejected") != nil })
	if ff := be.event("dep-2", "flow-finished"); ff == nil || ff["status"] != "Succeeded" {
		t.Fatalf("the same release deployed again: %q", be.types("dep-2"))
	}

	// dep-1's execution is no longer the device's last one: refused.
	be.publish("commands", rollbackCmd("ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f05", "dep-1"))
	waitFor(t, "the rollback refused", func() bool { return be.count("dep-1", "rolled-back") == 3 })
	var last map[string]any
	be.mu.Lock()
	for _, e := range be.events {
		if body := e["body"].(map[string]any); e["type"] == "rolled-back" && body["deployment"] == "dep-1" {
			last = body
		}
	}
	be.mu.Unlock()
	if e, _ := last["error"].(map[string]any); last["status"] != "Failed" || e == nil || !strings.Contains(e["message"].(string), "not the device's last execution") {
		t.Errorf("rolled-back = %v", last)
	}
	if got := readFile(t, target); got != "new\n" {
		t.Errorf("a refused rollback changed the file: %q", got)
	}
	// A deployment the device never ran.
	be.publish("commands", rollbackCmd("ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f06", "dep-never"))
	waitFor(t, "the rollback of an unknown deployment refused", func() bool { return be.event("dep-never", "rolled-back") != nil })
	if rb := be.event("dep-never", "rolled-back"); rb["status"] != "Failed" || rb["execution"] != nil {
		t.Errorf("rolled-back = %v", rb)
	}
	be.checkSeqs()
	c.stop()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
