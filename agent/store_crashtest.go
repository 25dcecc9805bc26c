//go:build crashtest

package agent

import (
	"os"
	"strconv"
	"sync"
	"syscall"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/journal"
)

// CrashEnv names the journal write after which a crashtest build kills
// itself with SIGKILL: EDGEFLOW_CRASH_AT=N dies right after the N-th
// execution write is synced (the write is on disk, nothing after it ran).
// EDGEFLOW_CRASH_COUNT=FILE writes the number of execution writes made to
// FILE when the agent exits normally, so a test knows the crash points.
const CrashEnv = "EDGEFLOW_CRASH_AT"

type crashStore struct {
	*journal.Journal
	mu     sync.Mutex
	writes int
	at     int
	count  string
}

func journalStore(j *journal.Journal) engine.Store {
	at, _ := strconv.Atoi(os.Getenv(CrashEnv))
	return &crashStore{Journal: j, at: at, count: os.Getenv("EDGEFLOW_CRASH_COUNT")}
}

func (c *crashStore) SaveExecution(id string, rec []byte, unfinished bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.Journal.SaveExecution(id, rec, unfinished)
	c.writes++
	if c.count != "" {
		_ = os.WriteFile(c.count, []byte(strconv.Itoa(c.writes)), 0o644)
	}
	if c.at > 0 && c.writes == c.at {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return err
}
