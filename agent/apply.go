// Package agent is the device side of edgeflow: it wires the engine to the
// step types and the journal, runs a flow offline (apply), and, later, the
// daemon that receives flows over MQTT.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/journal"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/file"
	"github.com/edgeflow/edgeflow/steps/script"
	"github.com/edgeflow/edgeflow/steps/verify"
)

// DefaultStateDir is where the agent keeps its journal and backups.
const DefaultStateDir = "/var/lib/edgeflow"

// Config is what an agent knows about its device and how it runs steps.
type Config struct {
	StateDir string
	DeviceID string
	Labels   map[string]string
	// AllowPaths restricts where file steps may write; empty allows all.
	AllowPaths []string
	// KillGrace is the time between SIGTERM and SIGKILL of a stopped
	// script's process group; zero means script.DefaultGrace.
	KillGrace time.Duration
	Logger    *slog.Logger
}

// UsageError is bad input from the user: an invalid flow, a variable the
// flow does not declare, a step that cannot run here. Nothing has run.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// IsUsage marks the error as bad input (exit status 2).
func (e *UsageError) IsUsage() bool { return true }

// IsUsage reports whether err is bad input on which nothing ran.
func IsUsage(err error) bool {
	var ue *UsageError
	return errors.As(err, &ue)
}

// Runners returns the step types this agent supports.
func Runners(c Config) map[string]steps.Runner {
	return map[string]steps.Runner{
		flow.TypeFile:   &file.Runner{AllowPaths: c.AllowPaths},
		flow.TypeScript: &script.Runner{Grace: c.KillGrace},
		flow.TypeVerify: &verify.Runner{Grace: c.KillGrace},
	}
}

// ApplyOptions is one offline run of a flow.
type ApplyOptions struct {
	Config
	// Flow is the path of the flow document.
	Flow string
	Vars map[string]string
	// Observe receives progress events; may be nil.
	Observe func(engine.Event)
}

// Apply runs the flow at opts.Flow on this device and returns its result.
// A flow that is invalid or cannot run here returns a *UsageError and
// changes nothing.
func Apply(ctx context.Context, opts ApplyOptions) (*engine.Result, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := flow.Load(opts.Flow)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	j, err := journal.Open(opts.StateDir, journal.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := j.Close(); err != nil {
			log.Error("close journal", "error", err)
		}
	}()
	eng := engine.New(engine.Options{
		DeviceID: opts.DeviceID,
		Labels:   opts.Labels,
		Vars:     opts.Vars,
		StateDir: opts.StateDir,
		Runners:  Runners(opts.Config),
		Commands: &script.Runner{Grace: opts.KillGrace},
		Store:    j,
		Logger:   log,
		Observe:  opts.Observe,
	})
	ctl, err := ServeControl(opts.StateDir, eng, log)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	res, err := eng.Run(ctx, f)
	var pe *engine.PreflightError
	if errors.As(err, &pe) {
		return nil, &UsageError{Err: err}
	}
	if err == nil {
		if perr := prune(j, opts.StateDir, KeepExecutions); perr != nil {
			log.Warn("prune old executions", "error", perr)
		}
	}
	return res, err
}

// DeviceID returns the default device id: the host name.
func DeviceID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// ParsePairs reads K=V arguments (--label, --var) into a map.
func ParsePairs(flag string, pairs []string) (map[string]string, error) {
	m := map[string]string{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, &UsageError{Err: fmt.Errorf("--%s %q: want KEY=VALUE", flag, p)}
		}
		if _, dup := m[k]; dup {
			return nil, &UsageError{Err: fmt.Errorf("--%s %s is given twice", flag, k)}
		}
		m[k] = v
	}
	return m, nil
}
