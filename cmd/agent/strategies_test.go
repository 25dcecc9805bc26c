package main

// Failure strategies as runtime input (docs/flows.md): a dispatch's
// failureStrategies fill a flow's `failureStrategies: input`, as the real
// binary runs it.

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// inputDaemonFlow leaves its flow-level strategies to the dispatch; flaky
// fails (exit 3, kind Unknown) on its first attempt only.
const inputDaemonFlow = `version: 1
name: input-strategies
failureStrategies: input
steps:
  - name: flaky
    script: { run: 'if [ -f @TMP@/marker ]; then echo fixed; exit 0; fi; touch @TMP@/marker; echo broken; exit 3' }
  - name: after
    script: { run: "echo after" }
`

// dispatchStrategies publishes a dispatch with a failureStrategies body
// field, as docs/protocol.md shows it ("" leaves the field out).
func (b *backend) dispatchStrategies(id, deployment, url, sha string, size int64, strategies string) {
	extra := ""
	if strategies != "" {
		extra = `, "failureStrategies": ` + strategies
	}
	b.publish("commands", fmt.Sprintf(`{
  "v": 1, "id": %q, "type": "dispatch", "device": %q, "time": %q,
  "body": {"deployment": %q, "url": %q, "sha256": %q, "size": %d%s}
}`, id, interopDevice, time.Now().UTC().Format(time.RFC3339), deployment, url, sha, size, extra))
}

// TestDaemonFailureStrategies: a dispatch with failureStrategies [Retry
// count 1 on AllErrors] makes the flaky step succeed on attempt 2; the
// same flow dispatched without strategies is rejected before anything
// runs.
func TestDaemonFailureStrategies(t *testing.T) {
	be, c := newInterop(t)
	tmp := t.TempDir()
	url, sum, size := c.bundle("input", strings.ReplaceAll(inputDaemonFlow, "@TMP@", tmp), 1)
	c.start()
	be.waitOnline()

	be.dispatchStrategies("ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f01", "dep-none", url, sum, size, "")
	waitFor(t, "rejected", func() bool { return be.event("dep-none", "rejected") != nil })
	if e, _ := be.event("dep-none", "rejected")["error"].(map[string]any); !strings.Contains(fmt.Sprint(e["message"]), "but none were given") {
		t.Errorf("rejected error = %v", e)
	}

	be.dispatchStrategies("ab1c0e4a9b7d4c2e8f6a1b3c5d7e9f02", "dep-input", url, sum, size,
		`[{"errors": ["AllErrors"], "action": "Retry", "retry": {"count": 1, "intervals": ["100ms"]}}]`)
	waitFor(t, "flow-finished", func() bool { return be.event("dep-input", "flow-finished") != nil })
	want := []string{"accepted", "step-started flaky", "step-finished flaky Failed", "step-started flaky", "step-finished flaky Succeeded",
		"step-started after", "step-finished after Succeeded", "flow-finished Succeeded"}
	if got := be.types("dep-input"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q\nagent: %s", got, want, c.stderrText())
	}
	var attempts []string
	for _, f := range be.all("dep-input", "step-finished") {
		if f["step"] == "flaky" {
			attempts = append(attempts, fmt.Sprintf("%v:%v", f["attempt"], f["status"]))
		}
	}
	if strings.Join(attempts, " ") != "1:Failed 2:Succeeded" {
		t.Errorf("flaky's attempts: %v, want 1:Failed 2:Succeeded", attempts)
	}
	be.checkSeqs()
}
