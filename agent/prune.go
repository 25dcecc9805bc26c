package agent

import (
	"fmt"
	"os"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/journal"
)

// KeepExecutions is how many executions a state dir keeps, with their logs
// and backups; older ones are deleted after each run. The unfinished
// execution is never deleted.
const KeepExecutions = 10

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
	for len(ids) > keep {
		id := ids[0]
		ids = ids[1:]
		if id == cur {
			continue
		}
		if err := j.DeleteExecution(id); err != nil {
			return fmt.Errorf("prune execution %s: %w", id, err)
		}
		if err := os.RemoveAll(engine.WorkRoot(stateDir, id)); err != nil {
			return fmt.Errorf("prune execution %s: %w", id, err)
		}
	}
	return nil
}
