// Package agent is the device side of edgeflow: it wires the engine to the
// step types and the journal, runs a flow offline (apply), and, later, the
// daemon that receives flows over MQTT.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/journal"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/compose"
	"github.com/edgeflow/edgeflow/steps/container"
	"github.com/edgeflow/edgeflow/steps/containers"
	"github.com/edgeflow/edgeflow/steps/docker"
	"github.com/edgeflow/edgeflow/steps/file"
	"github.com/edgeflow/edgeflow/steps/reboot"
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
	// RebootCommand reboots the device for reboot steps; empty means
	// reboot.DefaultCommand.
	RebootCommand string
	// BootIDFile is where the kernel's boot id is read; empty means
	// reboot.DefaultBootIDFile (tests point it elsewhere).
	BootIDFile string
	// ComposeDir is the root of the compose projects' directories; empty
	// means compose.DefaultDir.
	ComposeDir string
	// ComposeCommand is the Compose CLI (such as ["docker-compose"]);
	// empty means the one the device has, `docker compose` preferred.
	ComposeCommand []string
	Logger         *slog.Logger
	// NoControl leaves the control socket to the caller (the daemon
	// serves it for its whole life, not per execution).
	NoControl bool
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

// Runners returns the step types this agent supports. The compose and
// container steps reach the Docker engine through docker.
func Runners(c Config, docker containers.Engine) map[string]steps.Runner {
	return map[string]steps.Runner{
		flow.TypeFile:      &file.Runner{AllowPaths: c.AllowPaths},
		flow.TypeScript:    &script.Runner{Grace: c.KillGrace},
		flow.TypeVerify:    &verify.Runner{Grace: c.KillGrace},
		flow.TypeReboot:    &reboot.Runner{Command: c.RebootCommand, BootIDFile: c.BootIDFile, Grace: c.KillGrace},
		flow.TypeCompose:   &compose.Runner{Engine: docker, Dir: c.ComposeDir, Command: c.ComposeCommand, Grace: c.KillGrace},
		flow.TypeContainer: &container.Runner{Engine: docker, Grace: c.KillGrace},
	}
}

// ApplyOptions is one offline run of a flow.
type ApplyOptions struct {
	Config
	// Flow is the path of the flow document, or of a bundle.
	Flow string
	Vars map[string]string
	// TrustedKeys may sign bundles; with any, a bundle must be signed by
	// one of them.
	TrustedKeys []packaging.PublicKey
	// AllowReinstall accepts a bundle of the release already installed.
	AllowReinstall bool
	// GuidedFailure, if set, pauses a failure that would abort the flow for
	// guidance instead (see ParseGuidedFailure).
	GuidedFailure *engine.GuidedFailure
	// FlowStrategies are the flow-level failure strategies of a flow that
	// takes them at deploy time (`failureStrategies: input`; see
	// flow.ParseStrategies for reading them from a file).
	FlowStrategies []onfailure.Strategy
	// Observe receives progress events; may be nil.
	Observe func(engine.Event)
}

// ParseGuidedFailure reads the --guided-failure flag, TIMEOUT[:ONTIMEOUT]
// (such as "30m" or "30m:RollbackFlow"): how long a pause waits for
// guidance, and the action when none came (default Abort).
func ParseGuidedFailure(s string) (*engine.GuidedFailure, error) {
	d, onTimeout, _ := strings.Cut(s, ":")
	timeout, err := time.ParseDuration(d)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("--guided-failure %q: want TIMEOUT[:ONTIMEOUT], such as 30m or 30m:RollbackFlow: %w", s, err)}
	}
	g := &engine.GuidedFailure{Timeout: timeout, OnTimeout: onfailure.Action(onTimeout)}
	if err := g.Check(); err != nil {
		return nil, &UsageError{Err: fmt.Errorf("--guided-failure %q: %w", s, err)}
	}
	return g, nil
}

// LoadStrategies reads the --strategies flag's file: a YAML (or JSON)
// list of failure strategies for a flow that takes its flow-level
// strategies at deploy time (flow.ParseStrategies).
func LoadStrategies(path string) ([]onfailure.Strategy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("--strategies: %w", err)}
	}
	list, err := flow.ParseStrategies(path, data)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	return list, nil
}

// Apply runs the flow at opts.Flow on this device and returns its result.
// A flow that is invalid or cannot run here returns a *UsageError and
// changes nothing.
func Apply(ctx context.Context, opts ApplyOptions) (*engine.Result, error) {
	isBundle, err := packaging.IsBundle(opts.Flow)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	if isBundle {
		return applyBundle(ctx, opts)
	}
	f, err := flow.Load(opts.Flow)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	s, err := openSession(opts.Config, nil, opts.Vars, opts.Observe, func(s *session) error {
		s.guided, s.strategies = opts.GuidedFailure, opts.FlowStrategies
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer s.close()
	res, err := s.eng.Run(ctx, f)
	var pe *engine.PreflightError
	if errors.As(err, &pe) {
		return nil, &UsageError{Err: err}
	}
	s.done(err)
	return res, err
}

// ErrNothingToResume says the state dir has no unfinished execution.
var ErrNothingToResume = errors.New("nothing to resume: no unfinished execution in this state dir")

// Resume continues the unfinished execution of the state dir (one that an
// agent restart, a crash or a power cut interrupted) and returns its result.
//
// It runs under the settings the execution started with (allowed paths,
// kill grace, reboot command, compose directory and command, guided
// failure), not cfg's, so a resumed flow is held to the same limits, finds
// its projects and pauses as it would have.
func Resume(ctx context.Context, cfg Config, observe func(engine.Event)) (*engine.Result, error) {
	rec, err := unfinished(cfg)
	if err != nil {
		return nil, err
	}
	return resume(ctx, cfg, nil, rec, observe, nil)
}

// resume continues rec, the unfinished execution, in a session on j (nil:
// the session opens the state dir's journal); ready, if set, receives the
// engine before it resumes.
func resume(ctx context.Context, cfg Config, j *journal.Journal, rec *engine.Record, observe func(engine.Event), ready func(*engine.Engine)) (*engine.Result, error) {
	saved, err := savedSettings(rec)
	if err != nil {
		return nil, err
	}
	saved.apply(&cfg)
	s, err := openSession(cfg, j, nil, observe, func(s *session) error {
		s.release, s.dispatch, s.guided = saved.Release, saved.Dispatch, saved.GuidedFailure
		s.strategies = saved.FlowStrategies
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer s.close()
	f, err := flow.Parse(rec.File, rec.Source)
	if err != nil {
		return nil, fmt.Errorf("execution %s: its flow no longer decodes: %w", rec.ID, err)
	}
	f.Dir = rec.Dir
	s.log.Info("resuming execution", "execution", rec.ID, "flow", rec.Flow)
	if ready != nil {
		ready(s.eng)
	}
	res, err := s.eng.Resume(ctx, f, rec)
	s.done(err)
	return res, err
}

// savedSettings reads the agent settings journaled with rec.
func savedSettings(rec *engine.Record) (settings, error) {
	var saved settings
	if len(rec.Agent) > 0 {
		if err := json.Unmarshal(rec.Agent, &saved); err != nil {
			return saved, fmt.Errorf("execution %s: agent settings: %w", rec.ID, err)
		}
	}
	return saved, nil
}

// settings are the agent settings journaled with an execution.
type settings struct {
	AllowPaths     []string      `json:"allowPaths,omitempty"`
	KillGrace      time.Duration `json:"killGrace,omitempty"`
	RebootCommand  string        `json:"rebootCommand,omitempty"`
	BootIDFile     string        `json:"bootIdFile,omitempty"`
	ComposeDir     string        `json:"composeDir,omitempty"`
	ComposeCommand []string      `json:"composeCommand,omitempty"`
	// Release is the bundle the execution runs, if it came in one.
	Release *release `json:"release,omitempty"`
	// Dispatch is the controller's dispatch the execution runs, when the
	// daemon runs it.
	Dispatch *dispatchRef `json:"dispatch,omitempty"`
	// GuidedFailure is the execution's guided failure (apply's flag, or
	// the dispatch's), if any.
	GuidedFailure *engine.GuidedFailure `json:"guidedFailure,omitempty"`
	// FlowStrategies are the flow-level failure strategies given at deploy
	// time (apply's --strategies, or the dispatch's), if any.
	FlowStrategies []onfailure.Strategy `json:"failureStrategies,omitempty"`
}

// dispatchRef names the dispatch an execution runs.
type dispatchRef struct {
	ID         string `json:"id"`
	Deployment string `json:"deployment"`
}

func settingsOf(c Config) settings {
	return settings{AllowPaths: c.AllowPaths, KillGrace: c.KillGrace, RebootCommand: c.RebootCommand,
		BootIDFile: c.BootIDFile, ComposeDir: c.ComposeDir, ComposeCommand: c.ComposeCommand}
}

func (st settings) apply(c *Config) {
	c.AllowPaths, c.KillGrace = st.AllowPaths, st.KillGrace
	c.RebootCommand, c.BootIDFile = st.RebootCommand, st.BootIDFile
	c.ComposeDir, c.ComposeCommand = st.ComposeDir, st.ComposeCommand
}

// unfinished reads the state dir's unfinished execution.
func unfinished(cfg Config) (*engine.Record, error) {
	j, err := journal.Open(cfg.StateDir, journal.Options{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	defer j.Close()
	id, err := j.Current()
	if err != nil {
		return nil, err
	}
	if id == "" {
		return nil, ErrNothingToResume
	}
	return readExecution(j, id)
}

// readExecution decodes an execution record from the journal.
func readExecution(j *journal.Journal, id string) (*engine.Record, error) {
	data, err := j.Execution(id)
	if err != nil {
		return nil, err
	}
	var rec engine.Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("journal %s: execution %s: %w", j.Path(), id, err)
	}
	return &rec, nil
}

// session is an agent holding a state dir: its journal, an engine and the
// control socket.
type session struct {
	cfg Config
	log *slog.Logger
	j   *journal.Journal
	eng *engine.Engine
	ctl *Control
	// docker is the Docker engine client of the compose and container
	// steps.
	docker *docker.Client
	// release is the bundle the session runs, if any: its version is
	// recorded as installed when the execution succeeds.
	release *release
	// dispatch is the controller's dispatch the session runs, if any.
	dispatch *dispatchRef
	// guided is the execution's guided failure, if any.
	guided *engine.GuidedFailure
	// strategies are the execution's flow-level failure strategies given
	// at deploy time, if any.
	strategies []onfailure.Strategy
	// final, if set, writes inside the transaction of the execution's
	// final record (rec) what must commit with it (the daemon's
	// rolled-back event).
	final func(tx *journal.Tx, rec []byte) error
	// ownJournal is set when the session opened j (and closes it).
	ownJournal bool
}

// openSession opens the state dir's journal (or uses j, which the caller
// keeps open), runs prepare (if not nil) on the session before the engine
// is built, so that it can set what the execution journals with its
// settings (the bundle's release, the dispatch, guided failure), and
// starts the engine and, unless cfg.NoControl, the control socket.
func openSession(cfg Config, j *journal.Journal, vars map[string]string, observe func(engine.Event), prepare func(*session) error) (*session, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	own := j == nil
	if own {
		var err error
		if j, err = journal.Open(cfg.StateDir, journal.Options{Logger: log}); err != nil {
			return nil, err
		}
	}
	s := &session{cfg: cfg, log: log, j: j, ownJournal: own}
	fail := func(err error) (*session, error) {
		if own {
			j.Close()
		}
		return nil, err
	}
	if prepare != nil {
		if err := prepare(s); err != nil {
			return fail(err)
		}
	}
	st := settingsOf(cfg)
	st.Release, st.Dispatch, st.GuidedFailure = s.release, s.dispatch, s.guided
	st.FlowStrategies = s.strategies
	agentData, err := json.Marshal(st)
	if err != nil {
		return fail(err)
	}
	// The Docker client connects lazily: a device without Docker runs
	// every other step, and a Docker step fails with Connectivity.
	if s.docker, err = docker.New(); err != nil {
		return fail(err)
	}
	s.eng = engine.New(engine.Options{
		AgentData: agentData,
		DeviceID:  cfg.DeviceID,
		Labels:    cfg.Labels,
		Vars:      vars,
		StateDir:  cfg.StateDir,
		Runners:   Runners(cfg, s.docker),
		Commands:  &script.Runner{Grace: cfg.KillGrace},
		Store:     &releaseStore{Store: journalStore(j), j: j, s: s},
		Logger:    log,
		Observe:   observe,
		// A resumed execution gets back the guided failure it journaled.
		GuidedFailure: s.guided,
		// ... and the failure strategies given at deploy time.
		FlowStrategies: s.strategies,
	})
	if !cfg.NoControl {
		if s.ctl, err = ServeControl(cfg.StateDir, s.eng, log); err != nil {
			s.docker.Close()
			return fail(err)
		}
	}
	return s, nil
}

// done prunes old executions after a run that ended.
func (s *session) done(runErr error) {
	if runErr != nil {
		return
	}
	if err := prune(s.j, s.cfg.StateDir, KeepExecutions); err != nil {
		s.log.Warn("prune old executions", "error", err)
	}
}

func (s *session) close() {
	if s.ctl != nil {
		if err := s.ctl.Close(); err != nil {
			s.log.Warn("close control socket", "error", err)
		}
	}
	if err := s.docker.Close(); err != nil {
		s.log.Warn("close docker client", "error", err)
	}
	if !s.ownJournal {
		return
	}
	if err := s.j.Close(); err != nil {
		s.log.Error("close journal", "error", err)
	}
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
