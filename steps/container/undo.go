package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/containers"
)

// UndoVersion is the version of the undo data this package writes and
// reads. Data of another version is refused, never guessed at.
const UndoVersion = 1

// undoData is the undo data of a container step, journaled as JSON (see
// the package doc).
type undoData struct {
	Version int `json:"version"`
	// Name is the step's container name.
	Name string `json:"name"`
	// PreviousID is the id of the container that held Name before the
	// step; PreviousImage the id of its image.
	PreviousID    string `json:"previousId"`
	PreviousImage string `json:"previousImage"`
	// Running says whether the previous container was running.
	Running bool `json:"running"`
	// Aside is the name the previous container has while the flow runs.
	Aside string `json:"aside"`
	// RestartPolicy is the previous container's restart policy before
	// the step. Absent (undo data of an agent that did not record it)
	// means unknown: Run then leaves the previous container's policy as
	// it is, and Undo does not set it.
	RestartPolicy restartPolicy `json:"restartPolicy,omitzero"`
}

// restartPolicy is containers.RestartPolicy as the undo data records it;
// the zero value is "not recorded" (a recorded policy always has a name,
// "no" included).
type restartPolicy struct {
	Name       string `json:"name"`
	MaxRetries int    `json:"maxRetries,omitempty"`
}

func recordPolicy(p containers.RestartPolicy) restartPolicy {
	if p.IsNone() {
		return restartPolicy{Name: "no"}
	}
	return restartPolicy{Name: p.Name, MaxRetries: p.MaxRetries}
}

// known reports whether the policy was recorded.
func (p restartPolicy) known() bool { return p.Name != "" }

func (p restartPolicy) policy() containers.RestartPolicy {
	return containers.RestartPolicy{Name: p.Name, MaxRetries: p.MaxRetries}
}

// parked reports whether Run sets the previous container's policy to
// "no" while it is aside, and so whether it must be put back: the policy
// is known and restarts something.
func (p restartPolicy) parked() bool { return p.known() && !p.policy().IsNone() }

// noRestart is the policy of the previous container while it is aside.
var noRestart = containers.RestartPolicy{Name: "no"}

func (u *undoData) encode() ([]byte, error) {
	b, err := json.Marshal(u)
	if err != nil {
		return nil, onfailure.E(onfailure.Unknown, "container step undo data", err)
	}
	return b, nil
}

// decodeUndo parses and checks undo data.
func decodeUndo(data []byte) (*undoData, error) {
	var u undoData
	if err := json.Unmarshal(data, &u); err != nil {
		return nil, onfailure.E(onfailure.Unknown, "container step undo data", err)
	}
	if u.Version != UndoVersion {
		return nil, onfailure.Errorf(onfailure.Unknown, "container step undo data has version %d; this agent reads version %d", u.Version, UndoVersion)
	}
	if u.Name == "" || u.PreviousID == "" || u.Aside == "" || u.Aside == u.Name {
		return nil, onfailure.Errorf(onfailure.Unknown, "container step undo data is incomplete: %s", data)
	}
	return &u, nil
}

// Undo is restartPreviousContainer: it removes whatever container holds
// the name if it is not the previous one, gives the previous container
// its name back and its recorded restart policy, starts it if it was
// running, and waits for it to be healthy. It is idempotent.
func (r *Runner) Undo(ctx context.Context, s *flow.Step, env *steps.Env, undo []byte) error {
	c, err := spec(s)
	if err != nil {
		return err
	}
	u, err := decodeUndo(undo)
	if err != nil {
		return err
	}
	if r.Engine == nil {
		return onfailure.Errorf(onfailure.Unknown, "container step %q: no Docker engine configured", s.Name)
	}
	op := "restore previous container " + u.Name
	e := r.Engine
	prev, err := e.Inspect(ctx, u.PreviousID)
	if err != nil {
		if errors.Is(err, containers.ErrNotFound) {
			return onfailure.Errorf(onfailure.Unknown, "%s: the previous container %s is gone; nothing to restore", op, short(u.PreviousID))
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := r.clearName(ctx, env, u); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := e.Rename(ctx, u.PreviousID, u.Name); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf(env, "previous container %s is %s again", short(u.PreviousID), u.Name)
	if want := u.RestartPolicy; want.known() && recordPolicy(prev.RestartPolicy) != want {
		if err := e.SetRestartPolicy(ctx, u.PreviousID, want.policy()); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		logf(env, "restart policy %s restored", want.policy())
	}
	if !u.Running {
		logf(env, "it was not running before the step; leaving it stopped")
		return nil
	}
	if err := e.Start(ctx, u.PreviousID); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	o := r.options(c)
	logf(env, "started; waiting up to %s for it to be healthy", o.Window)
	if err := containers.Wait(ctx, r.poll(u.PreviousID), o, nil); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf(env, "previous container %s is healthy", u.Name)
	return nil
}

// Finish removes the previous container once the flow has ended, if it is
// still aside (not restored) and another container holds the name; else
// it leaves it. It is idempotent.
func (r *Runner) Finish(ctx context.Context, s *flow.Step, env *steps.Env, undo []byte) error {
	u, err := decodeUndo(undo)
	if err != nil {
		return err
	}
	if r.Engine == nil {
		return onfailure.Errorf(onfailure.Unknown, "container step %q: no Docker engine configured", s.Name)
	}
	op := "remove previous container " + u.Aside
	e := r.Engine
	prev, err := e.Inspect(ctx, u.PreviousID)
	if errors.Is(err, containers.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if prev.Name != u.Aside {
		return nil // restored, or renamed by someone else: not ours to remove
	}
	cur, err := e.Inspect(ctx, u.Name)
	if errors.Is(err, containers.ErrNotFound) {
		logf(env, "keeping previous container %s: no container holds %s", u.Aside, u.Name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if cur.ID == u.PreviousID {
		return nil
	}
	if err := e.Remove(ctx, u.PreviousID); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf(env, "removed previous container %s", u.Aside)
	return nil
}
