package transport

import (
	"fmt"
	"net/url"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Limits on fields, in bytes. A message over one is refused by Decode and
// by Encode, so a sender finds out before it publishes.
const (
	// MaxIDLen bounds message, deployment and execution ids.
	MaxIDLen = 128
	// MaxNameLen bounds flow, step, group and action names, the agent
	// version, and label and var keys.
	MaxNameLen = 256
	// MaxTextLen bounds error messages, notes, URLs and label and var values.
	MaxTextLen = 4096
	// MaxLogTail bounds the log tail of a step-finished event. The agent
	// sends the last MaxLogTail bytes of a step's log and sets LogTruncated.
	MaxLogTail = 8 << 10
)

// Status is the status of a step, rollback action or flow, as in the flow
// specification's section 8 (the engine's statuses).
type Status string

// The statuses of spec 8.
const (
	StatusPending        Status = "Pending"
	StatusRunning        Status = "Running"
	StatusPaused         Status = "Paused"
	StatusSucceeded      Status = "Succeeded"
	StatusFailed         Status = "Failed"
	StatusIgnored        Status = "Ignored"
	StatusSkipped        Status = "Skipped"
	StatusAborted        Status = "Aborted"
	StatusRolledBack     Status = "RolledBack"
	StatusRollbackFailed Status = "RollbackFailed"
)

// Statuses lists every status.
var Statuses = []Status{
	StatusPending, StatusRunning, StatusPaused, StatusSucceeded, StatusFailed,
	StatusIgnored, StatusSkipped, StatusAborted, StatusRolledBack, StatusRollbackFailed,
}

// Valid reports whether s is one of Statuses.
func (s Status) Valid() bool { return slices.Contains(Statuses, s) }

// Done reports whether s is a status in which a step, action or flow has
// ended (every status but Pending, Running and Paused).
func (s Status) Done() bool {
	return s.Valid() && s != StatusPending && s != StatusRunning && s != StatusPaused
}

// ErrorInfo is a failure as reported: its kind (spec 5) and message. It has
// the JSON shape of the engine's ErrorInfo.
type ErrorInfo struct {
	Type    onfailure.Kind `json:"type"`
	Message string         `json:"message"`
}

func (e *ErrorInfo) check(field string) error {
	if e == nil {
		return nil
	}
	if !e.Type.Valid() {
		return fmt.Errorf("%s.type: unknown error kind %q", field, e.Type)
	}
	return text(field+".message", e.Message, MaxTextLen, false)
}

// Body is the body of a message. The types of this package implement it
// (as pointers: *Dispatch, *StepFinished, ...); Type says which message
// the body belongs to.
type Body interface {
	// Type returns the message type of this body.
	Type() Type
	check() error
}

// Dispatch asks an agent to run a deployment: download the bundle at URL,
// check that it is Size bytes with the given SHA256, verify it as a
// signed bundle and run its flow with Vars. An agent runs one flow at a
// time; a dispatch that arrives while another runs waits in order (and the
// agent reports it queued). Dispatches are idempotent by envelope id: an
// agent that already has a dispatch with this id (running, queued or done)
// does nothing but report its state again.
type Dispatch struct {
	Deployment string `json:"deployment"`
	URL        string `json:"url"`
	// SHA256 is the bundle's digest: 64 lowercase hex digits.
	SHA256 string `json:"sha256"`
	// Size is the bundle's length in bytes.
	Size int64             `json:"size"`
	Vars map[string]string `json:"vars,omitempty"`
	// GuidedFailure, if set, asks the agent to pause for guidance, rather
	// than end the flow, on a failure that would abort it (guided failure,
	// docs/failure-handling.md). An agent that predates the field ignores
	// it and handles failures as usual.
	GuidedFailure *GuidedFailure `json:"guidedFailure,omitempty"`
	// FailureStrategies, if set, are the flow-level failure strategies of
	// a flow that says `failureStrategies: input` (docs/flows.md,
	// "Failure strategies as runtime input"). The agent refuses them
	// (rejected) for a flow that does not ask, and refuses a flow that
	// asks without them. An agent that predates the field ignores it, but
	// it cannot decode such a flow either, so it rejects it.
	FailureStrategies []Strategy `json:"failureStrategies,omitempty"`
}

// MaxStrategies bounds Dispatch.FailureStrategies.
const MaxStrategies = 64

// Strategy is a failure strategy as the flow document writes it (flow spec
// 5), durations as Go duration strings such as "30s".
type Strategy struct {
	Errors []onfailure.Kind `json:"errors"`
	Action onfailure.Action `json:"action"`
	Retry  *StrategyRetry   `json:"retry,omitempty"`
	Manual *StrategyManual  `json:"manual,omitempty"`
}

// StrategyRetry is a strategy's retry.
type StrategyRetry struct {
	Count       int              `json:"count"`
	Intervals   []string         `json:"intervals,omitempty"`
	OnExhausted onfailure.Action `json:"onExhausted,omitempty"`
}

// StrategyManual is a strategy's manual.
type StrategyManual struct {
	Timeout   string           `json:"timeout"`
	OnTimeout onfailure.Action `json:"onTimeout"`
}

// StrategiesOf is the wire form of list.
func StrategiesOf(list []onfailure.Strategy) []Strategy {
	if len(list) == 0 {
		return nil
	}
	out := make([]Strategy, len(list))
	for i, s := range list {
		out[i] = Strategy{Errors: s.Errors, Action: s.Action}
		if r := s.Retry; r != nil {
			out[i].Retry = &StrategyRetry{Count: r.Count, OnExhausted: r.OnExhausted}
			for _, d := range r.Intervals {
				out[i].Retry.Intervals = append(out[i].Retry.Intervals, d.String())
			}
		}
		if m := s.Manual; m != nil {
			out[i].Manual = &StrategyManual{Timeout: m.Timeout.String(), OnTimeout: m.OnTimeout}
		}
	}
	return out
}

// Policies is the onfailure form of list. It fails only on a duration
// that does not parse, which a decoded message's check has refused.
func Policies(list []Strategy) ([]onfailure.Strategy, error) {
	if len(list) == 0 {
		return nil, nil
	}
	out := make([]onfailure.Strategy, len(list))
	for i, s := range list {
		out[i] = onfailure.Strategy{Errors: s.Errors, Action: s.Action}
		if r := s.Retry; r != nil {
			out[i].Retry = &onfailure.RetryPolicy{Count: r.Count, OnExhausted: r.OnExhausted}
			for j, x := range r.Intervals {
				d, err := duration(x)
				if err != nil {
					return nil, fmt.Errorf("failureStrategies[%d].retry.intervals[%d]: %w", i, j, err)
				}
				out[i].Retry.Intervals = append(out[i].Retry.Intervals, d)
			}
		}
		if m := s.Manual; m != nil {
			d, err := duration(m.Timeout)
			if err != nil {
				return nil, fmt.Errorf("failureStrategies[%d].manual.timeout: %w", i, err)
			}
			out[i].Manual = &onfailure.ManualPolicy{Timeout: d, OnTimeout: m.OnTimeout}
		}
	}
	return out, nil
}

func duration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want a duration such as 30s or 5m", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return d, nil
}

// checkStrategies checks the shape of a strategies list: its length,
// error types, actions and durations. The rules of flow spec 5 (which
// action needs which keys, RollbackFlow needing rollbackOnFailure) depend
// on the flow and are the agent's (flow.CheckGiven).
func checkStrategies(field string, list []Strategy) error {
	if list == nil {
		return nil
	}
	if len(list) == 0 || len(list) > MaxStrategies {
		return fmt.Errorf("%s: %d strategies: want 1 to %d", field, len(list), MaxStrategies)
	}
	action := func(f string, a onfailure.Action, optional bool) error {
		if (a == "" && optional) || a.Valid() {
			return nil
		}
		return fmt.Errorf("%s %q: want one of %v", f, a, onfailure.Actions)
	}
	for i, s := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		if len(s.Errors) == 0 || len(s.Errors) > len(onfailure.Kinds)+1 {
			return fmt.Errorf("%s.errors: want 1 to %d error types", f, len(onfailure.Kinds)+1)
		}
		for _, k := range s.Errors {
			if !k.Valid() && k != onfailure.AllErrors {
				return fmt.Errorf("%s.errors: %q is not an error type", f, k)
			}
		}
		if err := action(f+".action", s.Action, false); err != nil {
			return err
		}
		if r := s.Retry; r != nil {
			if r.Count < 0 || r.Count > 1000 {
				return fmt.Errorf("%s.retry.count %d: want 0 to 1000", f, r.Count)
			}
			if len(r.Intervals) > 100 {
				return fmt.Errorf("%s.retry.intervals: more than 100", f)
			}
			if err := action(f+".retry.onExhausted", r.OnExhausted, true); err != nil {
				return err
			}
		}
		if m := s.Manual; m != nil {
			if err := action(f+".manual.onTimeout", m.OnTimeout, true); err != nil {
				return err
			}
		}
	}
	_, err := Policies(list)
	return err
}

// MaxGuidedTimeoutSeconds bounds GuidedFailure.TimeoutSeconds: 366 days.
const MaxGuidedTimeoutSeconds = 366 * 24 * 60 * 60

// GuidedFailure is a dispatch's guided failure: how long a pause waits for
// guidance, and what applies when none came.
type GuidedFailure struct {
	// TimeoutSeconds is how long a pause waits: 1 to
	// MaxGuidedTimeoutSeconds.
	TimeoutSeconds int64 `json:"timeoutSeconds"`
	// OnTimeout applies when no guidance came in time: one of
	// onfailure.TimeoutActions; empty means Abort.
	OnTimeout onfailure.Action `json:"onTimeout,omitempty"`
}

func (g *GuidedFailure) check(field string) error {
	if g == nil {
		return nil
	}
	if g.TimeoutSeconds < 1 || g.TimeoutSeconds > MaxGuidedTimeoutSeconds {
		return fmt.Errorf("%s.timeoutSeconds %d: want 1 to %d", field, g.TimeoutSeconds, MaxGuidedTimeoutSeconds)
	}
	if g.OnTimeout != "" && !slices.Contains(onfailure.TimeoutActions, g.OnTimeout) {
		return fmt.Errorf("%s.onTimeout %q: want one of %v", field, g.OnTimeout, onfailure.TimeoutActions)
	}
	return nil
}

// Cancel asks an agent to drop a queued deployment, or to stop a running
// one as its failure strategies say for a step marked as failed.
type Cancel struct {
	Deployment string `json:"deployment"`
	By         string `json:"by,omitempty"`
	Note       string `json:"note,omitempty"`
}

// Guide answers a paused step or group of a running deployment, as
// `edgeflow-agent guide` does on the device.
type Guide struct {
	Deployment string `json:"deployment"`
	// Step names the paused step or group; empty means the only one paused.
	Step string `json:"step,omitempty"`
	// Action is one of onfailure.GuidanceActions.
	Action onfailure.Action `json:"action"`
	By     string           `json:"by,omitempty"`
	Note   string           `json:"note,omitempty"`
}

// MarkFailed stops the running step of a deployment as failed (kind
// UserMarkedFailure), as `edgeflow-agent mark-failed` does on the device.
type MarkFailed struct {
	Deployment string `json:"deployment"`
	// Step names the running step; empty means whichever is running.
	Step string `json:"step,omitempty"`
	By   string `json:"by,omitempty"`
	Note string `json:"note,omitempty"`
}

// Rollback asks an agent to undo the execution of a deployment that ended
// Succeeded: the anyStep rollback actions of the steps that ran, then the
// flow's rollback steps, as docs/failure-handling.md describes. It is
// gated by a capability: a controller sends it only to an agent whose
// presence lists CommandRollback in capabilities.commands. Rollbacks are
// idempotent by envelope id; the agent answers with one RolledBack event.
// It runs when no flow runs (after the one running, in arrival order) and
// is refused (RolledBack with status Failed) when the deployment's
// execution is not the device's last one, did not end Succeeded, or its
// undo data is gone.
type Rollback struct {
	Deployment string `json:"deployment"`
	By         string `json:"by,omitempty"`
	Note       string `json:"note,omitempty"`
}

// CommandRollback is the name an agent lists in capabilities.commands when
// it handles Rollback.
const CommandRollback = "rollback"

// RolledBack reports the end of a Rollback: RolledBack or RollbackFailed
// once the undo ran (its actions were reported as rollback-action events
// before), or Failed when the agent refused it (Error says why) and
// nothing ran.
type RolledBack struct {
	Deployment string `json:"deployment"`
	// Execution is the deployment's execution on the device; empty only
	// when the device has none.
	Execution string     `json:"execution,omitempty"`
	Status    Status     `json:"status"`
	Error     *ErrorInfo `json:"error,omitempty"`
}

// RolledBackStatuses are the statuses of a RolledBack event.
var RolledBackStatuses = []Status{StatusRolledBack, StatusRollbackFailed, StatusFailed}

// Accepted reports that the agent took a dispatch and started (or resumed)
// its execution.
type Accepted struct {
	Deployment string `json:"deployment"`
	// Dispatch is the envelope id of the dispatch.
	Dispatch  string `json:"dispatch"`
	Execution string `json:"execution"`
	Flow      string `json:"flow"`
}

// Rejected reports that the agent refused a dispatch before running
// anything: a download, digest, signature, target or release check failed.
type Rejected struct {
	Deployment string     `json:"deployment"`
	Dispatch   string     `json:"dispatch"`
	Error      *ErrorInfo `json:"error"`
}

// Queued reports that a dispatch waits behind another execution.
type Queued struct {
	Deployment string `json:"deployment"`
	Dispatch   string `json:"dispatch"`
	// Position is 1 for the next to run.
	Position int `json:"position"`
}

// StepStarted reports an attempt of a step starting.
type StepStarted struct {
	Deployment string `json:"deployment"`
	Execution  string `json:"execution"`
	Step       string `json:"step"`
	Group      string `json:"group,omitempty"`
	// Rollback is "flow" or the group's name for a rollback step.
	Rollback string `json:"rollback,omitempty"`
	// Attempt counts from 1.
	Attempt int `json:"attempt"`
}

// StepFinished reports a step ending (Succeeded, Failed, Ignored, Skipped,
// Aborted, RolledBack or RollbackFailed), with its last attempt's error and
// the tail of its log.
type StepFinished struct {
	Deployment string `json:"deployment"`
	Execution  string `json:"execution"`
	Step       string `json:"step"`
	Group      string `json:"group,omitempty"`
	Rollback   string `json:"rollback,omitempty"`
	// Attempt is the last attempt; 0 for a step that never ran (Skipped).
	Attempt int        `json:"attempt"`
	Status  Status     `json:"status"`
	Error   *ErrorInfo `json:"error,omitempty"`
	// Marked is set when a failure was resolved by MarkAsSuccess.
	Marked     bool  `json:"marked,omitempty"`
	DurationMS int64 `json:"durationMs,omitempty"`
	// Log is the last at most MaxLogTail bytes of the step's log.
	Log string `json:"log,omitempty"`
	// LogTruncated is set when Log is not the whole log.
	LogTruncated bool `json:"logTruncated,omitempty"`
}

// RollbackAction reports a rollback action or rollback step that ran.
type RollbackAction struct {
	Deployment string `json:"deployment"`
	Execution  string `json:"execution"`
	// Step is the step whose action ran.
	Step string `json:"step"`
	// Action names the action, as the execution result does (spec 6:
	// revertFiles, command, ...); Trigger is its trigger (thisStep, anyStep).
	Action  string     `json:"action"`
	Trigger string     `json:"trigger,omitempty"`
	Status  Status     `json:"status"`
	Error   *ErrorInfo `json:"error,omitempty"`
}

// Paused reports a step or group waiting for guidance (a
// ManualIntervention strategy).
type Paused struct {
	Deployment string `json:"deployment"`
	Execution  string `json:"execution"`
	// Step is the paused step; empty when a group is paused.
	Step  string     `json:"step,omitempty"`
	Group string     `json:"group,omitempty"`
	Error *ErrorInfo `json:"error,omitempty"`
	// Until is when the pause times out and its onTimeout action applies.
	Until *time.Time `json:"until,omitempty"`
}

// Resumed reports a paused step or group going on: Action is the guidance
// given (or the onTimeout action), By who gave it.
type Resumed struct {
	Deployment string           `json:"deployment"`
	Execution  string           `json:"execution"`
	Step       string           `json:"step,omitempty"`
	Group      string           `json:"group,omitempty"`
	Action     onfailure.Action `json:"action"`
	By         string           `json:"by,omitempty"`
}

// FlowFinished reports the end of an execution; it is the last event of a
// deployment on a device.
type FlowFinished struct {
	Deployment string     `json:"deployment"`
	Execution  string     `json:"execution"`
	Flow       string     `json:"flow"`
	Status     Status     `json:"status"`
	Error      *ErrorInfo `json:"error,omitempty"`
	DurationMS int64      `json:"durationMs,omitempty"`
}

// Ack acknowledges every event of the device up to and including Seq.
// Acks are cumulative: the agent drops those events from its outbox.
type Ack struct {
	Seq uint64 `json:"seq"`
}

// Presence states.
const (
	Online  = "online"
	Offline = "offline"
)

// Presence is an agent's retained state: online with its inventory, or
// offline (the last will, or a clean shutdown).
type Presence struct {
	// Status is Online or Offline.
	Status string `json:"status"`
	// Agent is the agent's version.
	Agent string `json:"agent,omitempty"`
	// Protocol lists the envelope versions the agent reads.
	Protocol []int `json:"protocol,omitempty"`
	// Stream names the agent's event stream: it changes when the agent
	// starts with a new journal (a reinstalled device), and the event seq
	// numbering starts again at 1 with it. A controller that sees a new
	// stream forgets the seq it processed for the device.
	Stream string `json:"stream,omitempty"`
	// Acked is the highest event seq of Stream the agent has had
	// acknowledged. A controller whose store says less (restored from an
	// older backup) goes on from Acked instead of waiting for events the
	// agent no longer has.
	Acked        uint64            `json:"acked,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Capabilities *Capabilities     `json:"capabilities,omitempty"`
	// Execution is the running execution, if any.
	Execution *Current `json:"execution,omitempty"`
}

// Compose variants.
const (
	// ComposeV2 is the `docker compose` plugin.
	ComposeV2 = "v2"
	// ComposeV1 is the `docker-compose` command.
	ComposeV1 = "v1"
)

// Capabilities says what a device can run.
type Capabilities struct {
	// Docker is set when a Docker engine answers.
	Docker bool `json:"docker"`
	// Compose is ComposeV2, ComposeV1 or empty (none).
	Compose string `json:"compose,omitempty"`
	// Steps lists the step types the agent runs.
	Steps []string `json:"steps,omitempty"`
	// Commands lists the capability-gated command types the agent handles
	// (CommandRollback); a controller sends such a command only to an
	// agent that lists it.
	Commands []string `json:"commands,omitempty"`
}

// HasCommand reports whether c lists the gated command type name.
func (c *Capabilities) HasCommand(name string) bool {
	return c != nil && slices.Contains(c.Commands, name)
}

// Current is the execution a device is running.
type Current struct {
	Deployment string `json:"deployment"`
	Execution  string `json:"execution"`
	Flow       string `json:"flow"`
	Status     Status `json:"status"`
}

// Type returns TypeDispatch.
func (*Dispatch) Type() Type { return TypeDispatch }

// Type returns TypeCancel.
func (*Cancel) Type() Type { return TypeCancel }

// Type returns TypeGuide.
func (*Guide) Type() Type { return TypeGuide }

// Type returns TypeMarkFailed.
func (*MarkFailed) Type() Type { return TypeMarkFailed }

// Type returns TypeRollback.
func (*Rollback) Type() Type { return TypeRollback }

// Type returns TypeRolledBack.
func (*RolledBack) Type() Type { return TypeRolledBack }

// Type returns TypeAccepted.
func (*Accepted) Type() Type { return TypeAccepted }

// Type returns TypeRejected.
func (*Rejected) Type() Type { return TypeRejected }

// Type returns TypeQueued.
func (*Queued) Type() Type { return TypeQueued }

// Type returns TypeStepStarted.
func (*StepStarted) Type() Type { return TypeStepStarted }

// Type returns TypeStepFinished.
func (*StepFinished) Type() Type { return TypeStepFinished }

// Type returns TypeRollbackAction.
func (*RollbackAction) Type() Type { return TypeRollbackAction }

// Type returns TypePaused.
func (*Paused) Type() Type { return TypePaused }

// Type returns TypeResumed.
func (*Resumed) Type() Type { return TypeResumed }

// Type returns TypeFlowFinished.
func (*FlowFinished) Type() Type { return TypeFlowFinished }

// Type returns TypeAck.
func (*Ack) Type() Type { return TypeAck }

// Type returns TypePresence.
func (*Presence) Type() Type { return TypePresence }

func (b *Dispatch) check() error {
	if err := id("deployment", b.Deployment); err != nil {
		return err
	}
	if err := text("url", b.URL, MaxTextLen, true); err != nil {
		return err
	}
	u, err := url.Parse(b.URL)
	if err != nil {
		return fmt.Errorf("url: %v", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want an absolute http or https URL", b.URL)
	}
	if len(b.SHA256) != 64 || !lowerHex(b.SHA256) {
		return fmt.Errorf("sha256 %q: want 64 lowercase hex digits", b.SHA256)
	}
	if b.Size <= 0 {
		return fmt.Errorf("size %d: want a positive number of bytes", b.Size)
	}
	if err := strMap("vars", b.Vars); err != nil {
		return err
	}
	if err := b.GuidedFailure.check("guidedFailure"); err != nil {
		return err
	}
	return checkStrategies("failureStrategies", b.FailureStrategies)
}

func (b *Cancel) check() error {
	return all(id("deployment", b.Deployment), text("by", b.By, MaxNameLen, false), text("note", b.Note, MaxTextLen, false))
}

func (b *Guide) check() error {
	if err := all(id("deployment", b.Deployment), name("step", b.Step, false), text("by", b.By, MaxNameLen, false), text("note", b.Note, MaxTextLen, false)); err != nil {
		return err
	}
	if !b.Action.Guidance() {
		return fmt.Errorf("action %q: want one of %v", b.Action, onfailure.GuidanceActions)
	}
	return nil
}

func (b *MarkFailed) check() error {
	return all(id("deployment", b.Deployment), name("step", b.Step, false), text("by", b.By, MaxNameLen, false), text("note", b.Note, MaxTextLen, false))
}

func (b *Rollback) check() error {
	return all(id("deployment", b.Deployment), text("by", b.By, MaxNameLen, false), text("note", b.Note, MaxTextLen, false))
}

func (b *RolledBack) check() error {
	if err := id("deployment", b.Deployment); err != nil {
		return err
	}
	if b.Execution != "" {
		if err := id("execution", b.Execution); err != nil {
			return err
		}
	}
	if !slices.Contains(RolledBackStatuses, b.Status) {
		return fmt.Errorf("status %q: want one of %v", b.Status, RolledBackStatuses)
	}
	if b.Status == StatusFailed && b.Error == nil {
		return fmt.Errorf("error: missing (a refused rollback says why)")
	}
	return b.Error.check("error")
}

func (b *Accepted) check() error {
	return all(id("deployment", b.Deployment), id("dispatch", b.Dispatch), id("execution", b.Execution), name("flow", b.Flow, true))
}

func (b *Rejected) check() error {
	if err := all(id("deployment", b.Deployment), id("dispatch", b.Dispatch)); err != nil {
		return err
	}
	if b.Error == nil {
		return fmt.Errorf("error: missing (a rejection says why)")
	}
	return b.Error.check("error")
}

func (b *Queued) check() error {
	if err := all(id("deployment", b.Deployment), id("dispatch", b.Dispatch)); err != nil {
		return err
	}
	if b.Position < 1 {
		return fmt.Errorf("position %d: want 1 or more", b.Position)
	}
	return nil
}

func (b *StepStarted) check() error {
	if err := all(id("deployment", b.Deployment), id("execution", b.Execution), name("step", b.Step, true), name("group", b.Group, false), name("rollback", b.Rollback, false)); err != nil {
		return err
	}
	if b.Attempt < 1 {
		return fmt.Errorf("attempt %d: want 1 or more", b.Attempt)
	}
	return nil
}

func (b *StepFinished) check() error {
	if err := all(id("deployment", b.Deployment), id("execution", b.Execution), name("step", b.Step, true), name("group", b.Group, false), name("rollback", b.Rollback, false)); err != nil {
		return err
	}
	if b.Attempt < 0 {
		return fmt.Errorf("attempt %d: want 0 or more", b.Attempt)
	}
	if err := done("status", b.Status); err != nil {
		return err
	}
	if b.DurationMS < 0 {
		return fmt.Errorf("durationMs %d: want 0 or more", b.DurationMS)
	}
	if err := text("log", b.Log, MaxLogTail, false); err != nil {
		return err
	}
	return b.Error.check("error")
}

func (b *RollbackAction) check() error {
	if err := all(id("deployment", b.Deployment), id("execution", b.Execution), name("step", b.Step, true), name("action", b.Action, true), name("trigger", b.Trigger, false)); err != nil {
		return err
	}
	if err := done("status", b.Status); err != nil {
		return err
	}
	return b.Error.check("error")
}

func (b *Paused) check() error {
	if err := all(id("deployment", b.Deployment), id("execution", b.Execution), name("step", b.Step, false), name("group", b.Group, false)); err != nil {
		return err
	}
	if b.Step == "" && b.Group == "" {
		return fmt.Errorf("step and group: missing (say what is paused)")
	}
	return b.Error.check("error")
}

func (b *Resumed) check() error {
	if err := all(id("deployment", b.Deployment), id("execution", b.Execution), name("step", b.Step, false), name("group", b.Group, false), text("by", b.By, MaxNameLen, false)); err != nil {
		return err
	}
	if b.Step == "" && b.Group == "" {
		return fmt.Errorf("step and group: missing (say what resumed)")
	}
	if !b.Action.Valid() && !b.Action.Guidance() {
		return fmt.Errorf("action %q: unknown action", b.Action)
	}
	return nil
}

func (b *FlowFinished) check() error {
	if err := all(id("deployment", b.Deployment), id("execution", b.Execution), name("flow", b.Flow, true)); err != nil {
		return err
	}
	if err := done("status", b.Status); err != nil {
		return err
	}
	if b.DurationMS < 0 {
		return fmt.Errorf("durationMs %d: want 0 or more", b.DurationMS)
	}
	return b.Error.check("error")
}

func (b *Ack) check() error {
	if b.Seq < 1 {
		return fmt.Errorf("seq %d: want 1 or more", b.Seq)
	}
	return nil
}

func (b *Presence) check() error {
	if b.Status != Online && b.Status != Offline {
		return fmt.Errorf("status %q: want %q or %q", b.Status, Online, Offline)
	}
	if err := name("agent", b.Agent, false); err != nil {
		return err
	}
	if b.Stream != "" {
		if err := id("stream", b.Stream); err != nil {
			return err
		}
	}
	for i, v := range b.Protocol {
		if v < 1 {
			return fmt.Errorf("protocol[%d] %d: want 1 or more", i, v)
		}
	}
	if err := strMap("labels", b.Labels); err != nil {
		return err
	}
	if c := b.Capabilities; c != nil {
		if c.Compose != "" && c.Compose != ComposeV1 && c.Compose != ComposeV2 {
			return fmt.Errorf("capabilities.compose %q: want %q, %q or none", c.Compose, ComposeV2, ComposeV1)
		}
		for i, s := range c.Steps {
			if err := name(fmt.Sprintf("capabilities.steps[%d]", i), s, true); err != nil {
				return err
			}
		}
		for i, s := range c.Commands {
			if err := name(fmt.Sprintf("capabilities.commands[%d]", i), s, true); err != nil {
				return err
			}
		}
	}
	if x := b.Execution; x != nil {
		if err := all(id("execution.deployment", x.Deployment), id("execution.execution", x.Execution), name("execution.flow", x.Flow, true)); err != nil {
			return err
		}
		if !x.Status.Valid() {
			return fmt.Errorf("execution.status %q: unknown status", x.Status)
		}
	}
	return nil
}

// all returns the first non-nil error.
func all(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// text checks a string field: valid UTF-8, at most max bytes, and present
// when required.
func text(field, s string, max int, required bool) error {
	switch {
	case s == "" && required:
		return fmt.Errorf("%s: missing", field)
	case len(s) > max:
		return fmt.Errorf("%s: %d bytes, over the %d-byte limit", field, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s: not valid UTF-8", field)
	}
	return nil
}

// id checks a required id field.
func id(field, s string) error { return text(field, s, MaxIDLen, true) }

// name checks a name field.
func name(field, s string, required bool) error { return text(field, s, MaxNameLen, required) }

// done checks that a status field holds an end status.
func done(field string, s Status) error {
	if !s.Done() {
		if s.Valid() {
			return fmt.Errorf("%s %q: want a final status (not Pending, Running or Paused)", field, s)
		}
		return fmt.Errorf("%s %q: unknown status", field, s)
	}
	return nil
}

// strMap checks a map of names to texts (labels, vars).
func strMap(field string, m map[string]string) error {
	for k, v := range m {
		if err := name(field+" key", k, true); err != nil {
			return err
		}
		if err := text(fmt.Sprintf("%s[%q]", field, k), v, MaxTextLen, false); err != nil {
			return err
		}
	}
	return nil
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// DeploymentOf returns the deployment a command or event body is about,
// or "" for a body that is about none (ack, presence).
func DeploymentOf(b Body) string {
	switch b := b.(type) {
	case *Dispatch:
		return b.Deployment
	case *Cancel:
		return b.Deployment
	case *Guide:
		return b.Deployment
	case *MarkFailed:
		return b.Deployment
	case *Rollback:
		return b.Deployment
	case *RolledBack:
		return b.Deployment
	case *Accepted:
		return b.Deployment
	case *Rejected:
		return b.Deployment
	case *Queued:
		return b.Deployment
	case *StepStarted:
		return b.Deployment
	case *StepFinished:
		return b.Deployment
	case *RollbackAction:
		return b.Deployment
	case *Paused:
		return b.Deployment
	case *Resumed:
		return b.Deployment
	case *FlowFinished:
		return b.Deployment
	}
	return ""
}
