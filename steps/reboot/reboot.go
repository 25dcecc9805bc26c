// Package reboot is the reboot step: it journals the current boot id,
// runs the agent's reboot command, and succeeds when the agent runs again
// in a new boot (the boot id changed) within the step's timeout.
//
//	Run (first entry)             Run (re-entered after the agent restarts)
//	  read boot id B                read boot id C, journaled B
//	  journal {B, requestedAt}      C != B  → Succeeded (a new boot)
//	  run the reboot command        C == B  → wait for the reboot, up to the
//	  wait to be killed by it                 timeout from requestedAt
//	  timeout → Timeout              timeout → Timeout ("no reboot within")
//
// The engine calls Run again for a reboot step that was running when the
// agent stopped (the step is Reentrant), instead of failing it with
// AgentRestart; its loop guard still limits how often.
package reboot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/script"
)

// Defaults.
const (
	DefaultCommand    = "systemctl reboot"
	DefaultBootIDFile = "/proc/sys/kernel/random/boot_id"
	DefaultTimeout    = 10 * time.Minute
)

// Runner runs reboot steps.
type Runner struct {
	// Command reboots the device (run with /bin/sh -c); empty means
	// DefaultCommand.
	Command string
	// BootIDFile holds the kernel's boot id; empty means DefaultBootIDFile.
	BootIDFile string
	// Grace is the SIGTERM→SIGKILL grace for the command.
	Grace time.Duration
}

// state is what the step journals before it reboots.
type state struct {
	BootID      string    `json:"bootId"`
	RequestedAt time.Time `json:"requestedAt"`
}

// Reentrant tells the engine to call Run again after an agent restart.
func (r *Runner) Reentrant() bool { return true }

func (r *Runner) bootID() (string, error) {
	path := r.BootIDFile
	if path == "" {
		path = DefaultBootIDFile
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", onfailure.Wrap("read boot id", err)
	}
	id := string(bytes.TrimSpace(b))
	if id == "" {
		return "", onfailure.Errorf(onfailure.Unknown, "read boot id: %s is empty", path)
	}
	return id, nil
}

// Run reboots the device, or, re-entered after a restart, confirms the
// reboot happened.
func (r *Runner) Run(ctx context.Context, s *flow.Step, env *steps.Env) error {
	if s.Reboot == nil {
		return onfailure.Errorf(onfailure.Unknown, "step %q is not a reboot step", s.Name)
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	now, err := r.bootID()
	if err != nil {
		return err
	}
	var st state
	if env.Undo != nil {
		if err := json.Unmarshal(env.Undo, &st); err != nil {
			return onfailure.Errorf(onfailure.Unknown, "reboot state in the journal: %v", err)
		}
		if st.BootID != now {
			fmt.Fprintf(env.Log, "new boot %s (was %s)\n", now, st.BootID)
			return nil
		}
		fmt.Fprintf(env.Log, "agent restarted in the same boot %s; waiting for the reboot\n", now)
		return r.wait(ctx, st, timeout)
	}
	st = state{BootID: now, RequestedAt: time.Now().UTC()}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := env.SaveUndo(data); err != nil {
		return err
	}
	cmd := r.Command
	if cmd == "" {
		cmd = DefaultCommand
	}
	fmt.Fprintf(env.Log, "boot %s: rebooting with %q\n", now, cmd)
	code, err := script.Exec(ctx, script.Command{Text: cmd, Dir: env.Root, Output: env.Log, Grace: r.Grace})
	if err != nil {
		return fmt.Errorf("reboot command: %w", err)
	}
	if code != 0 {
		return onfailure.Errorf(onfailure.Unknown, "reboot command %q exited %d", cmd, code)
	}
	return r.wait(ctx, st, timeout)
}

// wait blocks until the reboot kills the agent, or the timeout counted from
// the request runs out.
func (r *Runner) wait(ctx context.Context, st state, timeout time.Duration) error {
	left := time.Until(st.RequestedAt.Add(timeout))
	if left <= 0 {
		return onfailure.Errorf(onfailure.Timeout, "no reboot within %s (still boot %s)", timeout, st.BootID)
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-t.C:
		return onfailure.Errorf(onfailure.Timeout, "no reboot within %s (still boot %s)", timeout, st.BootID)
	case <-ctx.Done():
		return fmt.Errorf("waiting for the reboot: %w", context.Cause(ctx))
	}
}
