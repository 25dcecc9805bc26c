//go:build !crashtest

package agent

import (
	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/journal"
)

// journalStore is the engine's journal. Builds with the crashtest tag
// wrap it to kill the agent at a chosen write (store_crashtest.go).
func journalStore(j *journal.Journal) engine.Store { return j }
