package container_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/internal/dockertest"
	"github.com/edgeflow/edgeflow/steps/container"
	"github.com/edgeflow/edgeflow/steps/containers"
)

// errKilled is the cause of the context a cutEngine cancels: the agent
// was killed.
var errKilled = errors.New("agent killed (test)")

// cutEngine passes the first limit engine calls through, then kills: it
// cancels the context of the run it serves and fails every later call,
// as if the agent had died right after call number limit (a call that
// reached the engine and whose answer was lost looks the same). A
// negative limit never kills.
type cutEngine struct {
	containers.Engine
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	limit int
	calls []string
	cut   bool
}

func (c *cutEngine) call(ctx context.Context, what string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut || (c.limit >= 0 && len(c.calls) >= c.limit) {
		c.cut = true
		c.cancel(errKilled)
		return fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	c.calls = append(c.calls, what)
	return nil
}

func (c *cutEngine) Ping(ctx context.Context) error {
	if err := c.call(ctx, "Ping"); err != nil {
		return err
	}
	return c.Engine.Ping(ctx)
}

func (c *cutEngine) ImageID(ctx context.Context, ref string) (string, error) {
	if err := c.call(ctx, "ImageID"); err != nil {
		return "", err
	}
	return c.Engine.ImageID(ctx, ref)
}

func (c *cutEngine) LoadImage(ctx context.Context, path string) error {
	if err := c.call(ctx, "LoadImage"); err != nil {
		return err
	}
	return c.Engine.LoadImage(ctx, path)
}

func (c *cutEngine) PullImage(ctx context.Context, ref string) error {
	if err := c.call(ctx, "PullImage"); err != nil {
		return err
	}
	return c.Engine.PullImage(ctx, ref)
}

func (c *cutEngine) TagImage(ctx context.Context, id, ref string) error {
	if err := c.call(ctx, "TagImage"); err != nil {
		return err
	}
	return c.Engine.TagImage(ctx, id, ref)
}

func (c *cutEngine) Inspect(ctx context.Context, nameOrID string) (containers.Container, error) {
	if err := c.call(ctx, "Inspect"); err != nil {
		return containers.Container{}, err
	}
	return c.Engine.Inspect(ctx, nameOrID)
}

func (c *cutEngine) ProjectContainers(ctx context.Context, project string) ([]containers.Container, error) {
	if err := c.call(ctx, "ProjectContainers"); err != nil {
		return nil, err
	}
	return c.Engine.ProjectContainers(ctx, project)
}

func (c *cutEngine) Clone(ctx context.Context, from, name, image string) (string, error) {
	if err := c.call(ctx, "Clone"); err != nil {
		return "", err
	}
	return c.Engine.Clone(ctx, from, name, image)
}

func (c *cutEngine) Rename(ctx context.Context, id, name string) error {
	if err := c.call(ctx, "Rename"); err != nil {
		return err
	}
	return c.Engine.Rename(ctx, id, name)
}

func (c *cutEngine) Start(ctx context.Context, id string) error {
	if err := c.call(ctx, "Start"); err != nil {
		return err
	}
	return c.Engine.Start(ctx, id)
}

func (c *cutEngine) Stop(ctx context.Context, id string, grace time.Duration) error {
	if err := c.call(ctx, "Stop"); err != nil {
		return err
	}
	return c.Engine.Stop(ctx, id, grace)
}

func (c *cutEngine) Remove(ctx context.Context, id string) error {
	if err := c.call(ctx, "Remove"); err != nil {
		return err
	}
	return c.Engine.Remove(ctx, id)
}

func (c *cutEngine) SetRestartPolicy(ctx context.Context, id string, policy containers.RestartPolicy) error {
	if err := c.call(ctx, "SetRestartPolicy"); err != nil {
		return err
	}
	return c.Engine.SetRestartPolicy(ctx, id, policy)
}

// countJournal makes env's SaveUndo one of the calls c counts and kills
// at: the agent may die before or after it journals.
func (c *cutEngine) countJournal(ctx context.Context, env *testEnv) {
	save := env.SaveUndo
	env.SaveUndo = func(data []byte) error {
		if err := c.call(ctx, "SaveUndo"); err != nil {
			return err
		}
		return save(data)
	}
}

// killAfter returns a Runner like r whose engine kills after limit calls,
// and the context to run it with.
func killAfter(t *testing.T, r *container.Runner, limit int) (*container.Runner, *cutEngine, context.Context) {
	ctx, cancel := context.WithCancelCause(bg(t))
	t.Cleanup(func() { cancel(nil) })
	ce := &cutEngine{Engine: r.Engine, cancel: cancel, limit: limit}
	k := *r
	k.Engine = ce
	return &k, ce, ctx
}

// TestCrashMatrix kills Run after each of its engine calls in turn (0, 1,
// 2, ... up to a whole run; journaling the undo data counts as a call),
// then, as the agent would after its restart and with a fresh context,
// either runs Undo ("undo" cases) or runs the step again from the
// journaled undo data, lets it finish, and then runs Undo ("retry" cases;
// a kill before the journal gives a fresh run). Either way the previous
// container, created with restart policy always, must end up back under
// its name, running its old image, serving its old version, with policy
// always again and no clone left; Finish then keeps it. A retry must give
// the new container policy always and leave the previous one aside with
// policy no, whatever the earlier attempt had done. A kill before the
// undo data was journaled must have left the container untouched.
func TestCrashMatrix(t *testing.T) {
	t.Parallel()
	base := runner(t)
	v1, v2 := dockertest.Image(t, v1Plain), dockertest.Image(t, v2Plain)

	// One whole run, to count its engine calls.
	p := dockertest.Prefix(t)
	dockertest.Run(t, p+"app", v1, "--restart", "always")
	r, ce, ctx := killAfter(t, base, -1)
	env := newEnv(t)
	ce.countJournal(ctx, env)
	if err := r.Run(ctx, step(p+"app", v2), env.Env); err != nil {
		t.Fatalf("whole run: %v", err)
	}
	total := len(ce.calls)
	t.Logf("a whole run makes %d engine calls: %v", total, ce.calls)
	if !slices.Contains(ce.calls, "SetRestartPolicy") {
		t.Fatalf("a whole run never set the previous container's restart policy: %v", ce.calls)
	}
	dockertest.RemoveAll(t, p)

	// The cases wait on the engine far more than they compute, so they run
	// at once (t.Run from several goroutines), not bounded by -parallel.
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for n := 0; n <= total; n++ {
		for _, retry := range []bool{false, true} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				then := "undo"
				if retry {
					then = "retry"
				}
				t.Run(fmt.Sprintf("kill-after-%d/%s", n, then), func(t *testing.T) { killedRun(t, base, n, retry, v1, v2) })
			}()
		}
	}
	wg.Wait()
}

// killedRun is one case of TestCrashMatrix: Run killed after n calls
// (journaling counts as one), then, if retry, Run again to its end, then
// Undo and Finish. (TestUndoCrashChain kills Undo itself.)
func killedRun(t *testing.T, base *container.Runner, n int, retry bool, v1, v2 string) {
	f := runApp(t, base, v1, v2, "-e", "USER_SETTING=kept", "--restart", "always")
	env := f.env
	r, ce, ctx := killAfter(t, base, n)
	ce.countJournal(ctx, env)
	err := r.Run(ctx, f.s, env.Env)
	switch {
	case ce.cut && !errors.Is(err, errKilled):
		t.Fatalf("killed run returned %v, not the kill", err)
	case !ce.cut && err != nil:
		t.Fatalf("run: %v", err)
	}
	t.Logf("calls before the kill: %v (killed: %v)", ce.calls, ce.cut)

	undo := env.undo()
	if undo == nil && (slices.Contains(ce.calls, "Rename") || slices.Contains(ce.calls, "Stop")) {
		t.Fatalf("the container was changed (%v) with no undo data journaled", ce.calls)
	}
	if retry {
		next := newEnv(t) // nothing journaled: the step runs afresh
		if undo != nil {
			next = env.retry(t)
		}
		if err := base.Run(bg(t), f.s, next.Env); err != nil {
			t.Fatalf("retry: %v\nlog:\n%s", err, next.Log)
		}
		if undo == nil {
			undo = next.undo()
		}
		serves(t, f.name, f.v2, "v2")
		wantPolicy(t, "after the retry the new container", f.name, "always 0")
		wantPolicy(t, "after the retry the previous container", f.prevID, "no 0")
	}
	if undo != nil {
		if rp, _ := undoOf(t, undo)["restartPolicy"].(map[string]any); rp["name"] != "always" {
			t.Fatalf("journaled restart policy %v, want always", undoOf(t, undo)["restartPolicy"])
		}
		if err := base.Undo(bg(t), f.s, env.Env, undo); err != nil {
			t.Fatalf("undo: %v", err)
		}
		if err := base.Finish(bg(t), f.s, env.Env, undo); err != nil {
			t.Fatalf("finish: %v", err)
		}
	}
	f.assertOnly(t)
	f.assertRestored(t)
	wantPolicy(t, "restored container", f.name, "always 0")
}

// TestUndoCrashChain kills Undo after its first engine call, then a new
// Undo after its second, and so on, each starting from what the last one
// left, until one runs to its end: the previous container is then back,
// with its restart policy (on-failure:3).
// The same for Finish after a successful run. This proves Undo and Finish
// pick up from any point a kill leaves.
func TestUndoCrashChain(t *testing.T) {
	t.Parallel()
	f := newFixture(t, v1Plain, v2Plain, "--restart", "on-failure:3")
	if err := f.r.Run(f.ctx, f.s, f.env.Env); err != nil {
		t.Fatal(err)
	}
	undo := f.env.undo()
	wantPolicy(t, "aside container", f.prevID, "no 0")

	for n := 1; ; n++ {
		if n > 100 {
			t.Fatal("undo never finished")
		}
		r, ce, kctx := killAfter(t, f.r, n)
		err := r.Undo(kctx, f.s, f.env.Env, undo)
		if !ce.cut {
			if err != nil {
				t.Fatalf("undo: %v", err)
			}
			break
		}
		if !errors.Is(err, errKilled) {
			t.Fatalf("killed undo returned %v", err)
		}
	}
	f.assertRestored(t)
	wantPolicy(t, "restored container", f.name, "on-failure 3")
	f.assertOnly(t)

	// Run again as a new execution, then Finish with kills.
	env2 := newEnv(t)
	env2.Execution = "1a2b3c4d5e"
	if err := f.r.Run(f.ctx, f.s, env2.Env); err != nil {
		t.Fatal(err)
	}
	for n := 1; ; n++ {
		r, ce, kctx := killAfter(t, f.r, n)
		err := r.Finish(kctx, f.s, env2.Env, env2.undo())
		if !ce.cut {
			if err != nil {
				t.Fatalf("finish: %v", err)
			}
			break
		}
	}
	f.assertOnly(t)
	serves(t, f.name, f.v2, "v2")
}
