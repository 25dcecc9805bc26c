package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/journal"
)

// KeepExecutions is how many executions a state dir keeps, with their logs
// and backups; older ones are deleted after each run. The unfinished
// execution is never deleted, and neither is the last one: its work
// directory and bundle hold the undo data a rollback command needs
// (docs/protocol.md, rollback) until a newer flow runs.
const KeepExecutions = 10

// extractedBundle returns the directory the bundle of execution id was
// extracted to, when it ran from a bundle, else "".
func extractedBundle(j *journal.Journal, stateDir, id string) string {
	data, err := j.Execution(id)
	if err != nil {
		return ""
	}
	var rec struct {
		Dir string `json:"dir"`
	}
	if json.Unmarshal(data, &rec) != nil || rec.Dir == "" {
		return ""
	}
	root := filepath.Join(stateDir, BundlesDir) + string(filepath.Separator)
	if !strings.HasPrefix(filepath.Clean(rec.Dir)+string(filepath.Separator), root) || filepath.Clean(rec.Dir)+string(filepath.Separator) == root {
		return ""
	}
	return filepath.Clean(rec.Dir)
}

// prune deletes all but the newest keep executions of j and their work
// directories under stateDir.
func prune(j *journal.Journal, stateDir string, keep int) error {
	ids, err := j.Executions()
	if err != nil {
		return err
	}
	cur, err := j.Current()
	if err != nil {
		return err
	}
	// The newest execution stays, whatever keep says.
	for len(ids) > max(keep, 1) {
		id := ids[0]
		ids = ids[1:]
		if id == cur {
			continue
		}
		bundleDir := extractedBundle(j, stateDir, id)
		if err := j.DeleteExecution(id); err != nil {
			return fmt.Errorf("prune execution %s: %w", id, err)
		}
		if err := os.RemoveAll(engine.WorkRoot(stateDir, id)); err != nil {
			return fmt.Errorf("prune execution %s: %w", id, err)
		}
		if bundleDir != "" {
			if err := os.RemoveAll(bundleDir); err != nil {
				return fmt.Errorf("prune execution %s: %w", id, err)
			}
		}
	}
	return nil
}
