package agent

import (
	"context"
	"errors"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/journal"
)

// ErrNoExecution says a state dir has never run a flow.
var ErrNoExecution = errors.New("this state dir has no executions")

// Status returns the flow running in stateDir (asked over the control
// socket), or else the last execution in its journal.
func Status(ctx context.Context, stateDir string) (*engine.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := Ask(ctx, stateDir, ControlRequest{Op: "status"})
	switch {
	case err == nil && resp.Result != nil:
		return resp.Result, nil
	case err == nil:
		// An agent holds the state dir but has no execution yet.
		return nil, errors.New("an agent holds this state dir and is starting a flow; try again")
	case !errors.Is(err, ErrNoAgent):
		return nil, err
	}
	j, err := journal.Open(stateDir, journal.Options{})
	if err != nil {
		return nil, err
	}
	defer j.Close()
	rec, err := LastExecution(j)
	if err != nil {
		return nil, err
	}
	return rec.Result(), nil
}

// LastExecution reads the newest execution record of a journal.
func LastExecution(j *journal.Journal) (*engine.Record, error) {
	ids, err := j.Executions()
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, ErrNoExecution
	}
	return readExecution(j, ids[len(ids)-1])
}
