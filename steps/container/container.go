package container

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/containers"
	"github.com/edgeflow/edgeflow/steps/file"
)

// DefaultGrace is how long a container gets to stop before it is killed,
// when Runner.Grace is not set (docker stop's default).
const DefaultGrace = 10 * time.Second

// Runner runs container steps, undoes them (restartPreviousContainer) and
// removes the previous container once the flow has ended.
type Runner struct {
	// Engine is the Docker engine.
	Engine containers.Engine
	// Grace is how long a container gets to stop before it is killed;
	// zero means DefaultGrace.
	Grace time.Duration
	// Health tunes the health wait (tests shorten Interval and Settle). A
	// step's waitHealthy overrides Health.Window.
	Health containers.Options
}

var (
	_ steps.Runner   = (*Runner)(nil)
	_ steps.Undoer   = (*Runner)(nil)
	_ steps.Finisher = (*Runner)(nil)
)

// Preflight checks a container step before the flow starts, changing
// nothing: name and image are set, and an imageArchive is a regular file
// inside root.
func (r *Runner) Preflight(s *flow.Step, root string) error {
	c, err := spec(s)
	if err != nil {
		return err
	}
	if c.ImageArchive != "" {
		if _, err := file.InRoot(root, c.ImageArchive); err != nil {
			return onfailure.Wrap(fmt.Sprintf("container %s: imageArchive %s", c.Name, c.ImageArchive), err)
		}
	}
	return nil
}

func spec(s *flow.Step) (*flow.Container, error) {
	c := s.Container
	if c == nil {
		return nil, onfailure.Errorf(onfailure.Unknown, "step %q is not a container step", s.Name)
	}
	if c.Name == "" || c.Image == "" {
		return nil, onfailure.Errorf(onfailure.Unknown, "container step %q needs name and image", s.Name)
	}
	return c, nil
}

func (r *Runner) grace() time.Duration {
	if r.Grace > 0 {
		return r.Grace
	}
	return DefaultGrace
}

// options returns the health wait options for step c.
func (r *Runner) options(c *flow.Container) containers.Options {
	o := r.Health
	if c.WaitHealthy > 0 {
		o.Window = c.WaitHealthy
	}
	if o.Window <= 0 {
		o.Window = containers.DefaultWindow
	}
	o.Expect = nil
	return o
}

func logf(env *steps.Env, format string, args ...any) {
	if env.Log != nil {
		fmt.Fprintf(env.Log, format+"\n", args...)
	}
}

// Run replaces the container as the package doc says: it finds the
// current container and the new image, journals the undo data, and only
// then renames the current container aside, stops it, creates its clone
// on the new image under the name, starts it and waits for it to be
// healthy.
func (r *Runner) Run(ctx context.Context, s *flow.Step, env *steps.Env) error {
	c, err := spec(s)
	if err != nil {
		return err
	}
	if env == nil || env.SaveUndo == nil {
		return onfailure.Errorf(onfailure.Unknown, "container step %q: no way to journal undo data", s.Name)
	}
	if r.Engine == nil {
		return onfailure.Errorf(onfailure.Unknown, "container step %q: no Docker engine configured", s.Name)
	}
	op := "container " + c.Name
	e := r.Engine
	if err := e.Ping(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}

	var u *undoData
	if env.Undo != nil {
		if u, err = decodeUndo(env.Undo); err != nil {
			return err
		}
		if u.Name != c.Name {
			return onfailure.Errorf(onfailure.Unknown, "%s: the journaled undo data is for container %q", op, u.Name)
		}
		logf(env, "resuming: previous container %s (image %s) is recorded", short(u.PreviousID), u.PreviousImage)
	} else {
		cur, err := e.Inspect(ctx, c.Name)
		if errors.Is(err, containers.ErrNotFound) {
			return onfailure.Errorf(onfailure.Unknown, "%s: no container named %q to replace: a container step updates an existing container", op, c.Name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		u = &undoData{
			Version:       UndoVersion,
			Name:          c.Name,
			PreviousID:    cur.ID,
			PreviousImage: cur.Image,
			Running:       cur.Status == "running" || cur.Status == "restarting",
			Aside:         asideName(c.Name, env.Execution),
			RestartPolicy: recordPolicy(cur.RestartPolicy),
		}
	}

	imageID, err := r.image(ctx, c, env)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}

	if env.Undo == nil {
		data, err := u.encode()
		if err != nil {
			return err
		}
		if err := env.SaveUndo(data); err != nil {
			return fmt.Errorf("%s: journal undo data: %w", op, err)
		}
		logf(env, "journaled previous container %s (image %s)", short(u.PreviousID), u.PreviousImage)
	}

	// From here on the device changes; every step below is idempotent,
	// so a later attempt or Undo can start from whatever state a kill
	// left.
	if err := r.clearName(ctx, env, u); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := e.Rename(ctx, u.PreviousID, u.Aside); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf(env, "previous container %s renamed to %s", short(u.PreviousID), u.Aside)
	if err := e.Stop(ctx, u.PreviousID, r.grace()); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf(env, "previous container stopped")
	newID, err := e.Clone(ctx, u.PreviousID, c.Name, c.Image)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf(env, "created container %s (%s) on image %s (%s)", c.Name, short(newID), c.Image, imageID)
	if err := r.parkPrevious(ctx, env, u, newID); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := e.Start(ctx, newID); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	o := r.options(c)
	logf(env, "started; waiting up to %s for it to be healthy", o.Window)
	if err := containers.Wait(ctx, r.poll(newID), o, nil); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf(env, "container %s is healthy on image %s", c.Name, c.Image)
	return nil
}

// parkPrevious keeps the previous container from coming back while it is
// aside: once its clone exists (Clone copied the restart policy from it),
// it sets its restart policy to "no", or the daemon would start it again
// when it restarts (a reboot later in the flow). Undo puts the recorded
// policy back. On a later attempt an earlier one may already have set
// "no", which Clone then copied: the clone gets the recorded policy
// first. A policy that restarts nothing, or was not recorded (undo data
// of an older agent), is left alone.
func (r *Runner) parkPrevious(ctx context.Context, env *steps.Env, u *undoData, newID string) error {
	if !u.RestartPolicy.parked() {
		return nil
	}
	want := u.RestartPolicy.policy()
	if env.Undo != nil {
		if err := r.Engine.SetRestartPolicy(ctx, newID, want); err != nil {
			return err
		}
	}
	if err := r.Engine.SetRestartPolicy(ctx, u.PreviousID, noRestart); err != nil {
		return err
	}
	logf(env, "previous container's restart policy set to no while it is aside (was %s)", want)
	return nil
}

// image makes the step's image present (loading its archive, or pulling
// it if it is not there) and returns its id.
func (r *Runner) image(ctx context.Context, c *flow.Container, env *steps.Env) (string, error) {
	e := r.Engine
	if c.ImageArchive != "" {
		path, err := file.InRoot(env.Root, c.ImageArchive)
		if err != nil {
			return "", onfailure.Wrap("imageArchive "+c.ImageArchive, err)
		}
		logf(env, "loading image archive %s", c.ImageArchive)
		if err := e.LoadImage(ctx, path); err != nil {
			return "", err
		}
		id, err := e.ImageID(ctx, c.Image)
		if errors.Is(err, containers.ErrNotFound) {
			return "", onfailure.Errorf(onfailure.Unknown, "image archive %s has no image %s", c.ImageArchive, c.Image)
		}
		return id, err
	}
	id, err := e.ImageID(ctx, c.Image)
	if !errors.Is(err, containers.ErrNotFound) {
		return id, err
	}
	logf(env, "pulling image %s", c.Image)
	if err := e.PullImage(ctx, c.Image); err != nil {
		return "", err
	}
	return e.ImageID(ctx, c.Image)
}

// clearName removes a container that holds the step's name and is not the
// previous one: the new container of an interrupted attempt.
func (r *Runner) clearName(ctx context.Context, env *steps.Env, u *undoData) error {
	cur, err := r.Engine.Inspect(ctx, u.Name)
	if errors.Is(err, containers.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.ID == u.PreviousID {
		return nil
	}
	logf(env, "removing container %s (%s) left by an interrupted attempt", u.Name, short(cur.ID))
	return r.Engine.Remove(ctx, cur.ID)
}

// poll is the health wait's view of one container.
func (r *Runner) poll(id string) containers.Poll {
	return func(ctx context.Context) ([]containers.Container, error) {
		c, err := r.Engine.Inspect(ctx, id)
		if err != nil {
			return nil, err
		}
		return []containers.Container{c}, nil
	}
}

// asideName is where the previous container waits while the flow runs:
// NAME.edgeflow-prev-<first 8 characters of the execution id>.
func asideName(name, execution string) string {
	var b strings.Builder
	for _, r := range execution {
		if b.Len() == 8 {
			break
		}
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	id := b.String()
	if id == "" {
		id = "0"
	}
	return name + ".edgeflow-prev-" + id
}

// short is a container id as docker ps shows it.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
