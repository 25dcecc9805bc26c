package engine

import (
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Status is the status of a step, group or flow (spec 8).
type Status string

// Statuses of spec 8.
const (
	Pending        Status = "Pending"
	Running        Status = "Running"
	Paused         Status = "Paused"
	Succeeded      Status = "Succeeded"
	Failed         Status = "Failed"
	Ignored        Status = "Ignored"
	Skipped        Status = "Skipped"
	Aborted        Status = "Aborted"
	RolledBack     Status = "RolledBack"
	RollbackFailed Status = "RollbackFailed"
)

// Done reports whether a step or group in status s has ended.
func (s Status) Done() bool {
	switch s {
	case Pending, Running, Paused:
		return false
	}
	return true
}

// ErrorInfo is a failure as reported: its kind and message.
type ErrorInfo struct {
	Type    onfailure.Kind `json:"type"`
	Message string         `json:"message"`
}

func errorInfo(err error) *ErrorInfo {
	if err == nil {
		return nil
	}
	return &ErrorInfo{Type: onfailure.KindOf(err), Message: err.Error()}
}

// StepResult is one main-sequence step in the result (spec 11).
type StepResult struct {
	Name     string     `json:"name"`
	Group    string     `json:"group"`
	Status   Status     `json:"status"`
	Attempts int        `json:"attempts"`
	Error    *ErrorInfo `json:"error,omitempty"`
	// Marked is set when a failure was resolved by MarkAsSuccess.
	Marked bool `json:"marked,omitempty"`
	// DurationMS is the wall time of the step's attempts, in milliseconds.
	DurationMS int64 `json:"durationMs,omitempty"`
}

// GroupResult is one group in the result.
type GroupResult struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
}

// ActionResult is one rollback action or rollback step that ran.
type ActionResult struct {
	Step    string     `json:"step"`
	Action  string     `json:"action"`
	Trigger string     `json:"trigger,omitempty"`
	Status  Status     `json:"status"`
	Error   *ErrorInfo `json:"error,omitempty"`
}

// GuidanceResult is one guidance or mark-as-failed, with who and when.
type GuidanceResult struct {
	Step   string           `json:"step"`
	Action onfailure.Action `json:"action"`
	By     string           `json:"by"`
	At     time.Time        `json:"at"`
	Note   string           `json:"note,omitempty"`
	// Guided is set on guidance (or a timeout) that answered a pause
	// guided failure made.
	Guided bool `json:"guided,omitempty"`
}

// PauseResult is a step or group waiting for guidance.
type PauseResult struct {
	// Step names the paused step or group.
	Step string `json:"step"`
	// Until is when the pause times out and its onTimeout applies.
	Until time.Time `json:"until"`
	// Guided is set when guided failure made the pause (not a
	// ManualIntervention strategy).
	Guided bool `json:"guided,omitempty"`
}

// Result is the outcome of a flow execution (spec 11), as `apply --output
// json` prints it.
type Result struct {
	Execution string           `json:"execution"`
	Flow      string           `json:"flow"`
	Status    Status           `json:"status"`
	Steps     []StepResult     `json:"steps"`
	Groups    []GroupResult    `json:"groups"`
	Actions   []ActionResult   `json:"actions"`
	Guidance  []GuidanceResult `json:"guidance"`
	// Error says why the flow stopped when no step says it (a flow timeout).
	Error *ErrorInfo `json:"error,omitempty"`
	// Pauses lists, while the flow has not ended, the steps and groups
	// waiting for guidance, by name.
	Pauses []PauseResult `json:"pauses,omitempty"`
	// Undo is set on an execution that ended Succeeded and was then undone
	// (its status is then RolledBack or RollbackFailed, or Running while
	// the undo runs).
	Undo *UndoRecord `json:"undo,omitempty"`
}

// Record is an execution as journaled: everything needed to report it, and
// to resume or undo it after a restart. The engine writes it (fsynced)
// before each step acts and after each step ends.
type Record struct {
	ID       string            `json:"id"`
	Flow     string            `json:"flow"`
	File     string            `json:"file"`
	Dir      string            `json:"dir"`
	Source   []byte            `json:"source"`
	DeviceID string            `json:"deviceId"`
	Labels   map[string]string `json:"labels,omitempty"`
	Vars     map[string]string `json:"vars,omitempty"`
	// Agent holds the agent's own settings for this execution (such as
	// the allowed paths), so a resumed execution runs under the same ones.
	Agent json.RawMessage `json:"agent,omitempty"`

	Status    Status     `json:"status"`
	StartedAt time.Time  `json:"startedAt"`
	EndedAt   *time.Time `json:"endedAt,omitempty"`
	Error     *ErrorInfo `json:"error,omitempty"`

	Steps    []*StepRecord    `json:"steps"`
	Groups   []*GroupRecord   `json:"groups"`
	Actions  []ActionRecord   `json:"actions"`
	Guidance []GuidanceResult `json:"guidance"`
	// Seq counts step starts, to order "latest start first".
	Seq int `json:"seq"`

	// Stop is set, before any rollback work, when the main sequence has
	// stopped: how the flow ends. A resumed execution goes straight to it.
	Stop *StopRecord `json:"stop,omitempty"`
	// Pending lists rollback work in progress, journaled before it starts
	// and removed when it ends, so a restart finishes it.
	Pending []PlanRecord `json:"pending,omitempty"`
	// Pauses holds the guidance deadline of each paused step or group, so
	// a restart keeps the time already waited.
	Pauses map[string]time.Time `json:"pauses,omitempty"`
	// GuidedPauses marks the pauses of Pauses that guided failure made.
	GuidedPauses map[string]bool `json:"guidedPauses,omitempty"`
	// Resumes counts how often the execution was resumed after a restart.
	Resumes int `json:"resumes,omitempty"`
	// Undo is set when the execution, after it ended Succeeded, is being
	// (or was) undone (Engine.Undo): journaled before the first rollback
	// action acts, so a restart finishes the undo.
	Undo *UndoRecord `json:"undo,omitempty"`
}

// UndoRecord is the undoing of an execution that ended Succeeded: who
// asked, why, when, and when the execution had ended.
type UndoRecord struct {
	By   string    `json:"by,omitempty"`
	Note string    `json:"note,omitempty"`
	At   time.Time `json:"at"`
	// SucceededAt is when the execution had ended Succeeded.
	SucceededAt *time.Time `json:"succeededAt,omitempty"`
	// FirstAction is the index in Record.Actions of the undo's first
	// action (those before ran during the execution).
	FirstAction int `json:"firstAction,omitempty"`
}

// StopRecord is how the main sequence stopped.
type StopRecord struct {
	Action onfailure.Action `json:"action"`
	// Step is the failed step, empty when a group failed or time ran out.
	Step  string     `json:"step,omitempty"`
	Error *ErrorInfo `json:"error,omitempty"`
}

// PlanRecord is rollback work in progress: the rollback actions planned
// for a failure of Step (empty: a group failed) within Group (empty: the
// whole flow), then, with RollbackSteps, the group's or flow's rollback
// steps.
type PlanRecord struct {
	Step          string     `json:"step,omitempty"`
	Group         string     `json:"group,omitempty"`
	RollbackSteps bool       `json:"rollbackSteps,omitempty"`
	Error         *ErrorInfo `json:"error,omitempty"`
}

// same reports whether p and q describe the same rollback work.
func (p PlanRecord) same(q PlanRecord) bool {
	return p.Step == q.Step && p.Group == q.Group && p.RollbackSteps == q.RollbackSteps
}

// StepRecord is one step's state in the journal.
type StepRecord struct {
	Name  string `json:"name"`
	Group string `json:"group,omitempty"`
	// Rollback is "flow" or the group's name for a rollback step.
	Rollback  string            `json:"rollback,omitempty"`
	Status    Status            `json:"status"`
	Attempts  int               `json:"attempts"`
	Error     *ErrorInfo        `json:"error,omitempty"`
	Marked    bool              `json:"marked,omitempty"`
	Undo      []byte            `json:"undo,omitempty"`
	Outputs   map[string]string `json:"outputs,omitempty"`
	Seq       int               `json:"seq,omitempty"`
	StartedAt *time.Time        `json:"startedAt,omitempty"`
	EndedAt   *time.Time        `json:"endedAt,omitempty"`
	// Elapsed sums the wall time of all attempts.
	Elapsed time.Duration `json:"elapsed,omitempty"`
	// Restarts counts agent restarts that interrupted this step.
	Restarts int `json:"restarts,omitempty"`
	// Reentry is set when a Reentrant step continues after a restart: the
	// next run continues the interrupted attempt.
	Reentry bool `json:"reentry,omitempty"`
	// Retrying is set while a failed step waits to be run again.
	Retrying bool `json:"retrying,omitempty"`
}

// GroupRecord is one group's state in the journal.
type GroupRecord struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Runs   int    `json:"runs"`
	// Failure is set while the group's own failure waits for the flow's
	// strategies to decide (after a RollbackGroup, or RetryGroup ran out).
	Failure *ErrorInfo `json:"failure,omitempty"`
	// Retry is set while the group waits to run again (RetryGroup).
	Retry bool `json:"retry,omitempty"`
}

// ActionRecord is a rollback action or rollback step that ran (or is
// running: it is journaled before it acts).
type ActionRecord struct {
	ActionResult
	// Key identifies an onFailure action ("step#index") for at-most-once.
	Key string `json:"key,omitempty"`
}

// Result returns the spec 11 view of the record.
func (r *Record) Result() *Result {
	res := &Result{
		Execution: r.ID, Flow: r.Flow, Status: r.Status, Error: r.Error, Undo: r.Undo,
		Steps: []StepResult{}, Groups: []GroupResult{}, Actions: []ActionResult{},
		Guidance: append([]GuidanceResult{}, r.Guidance...),
	}
	for _, s := range r.Steps {
		if s.Rollback != "" {
			continue
		}
		res.Steps = append(res.Steps, StepResult{
			Name: s.Name, Group: s.Group, Status: s.Status, Attempts: s.Attempts,
			Error: s.Error, Marked: s.Marked, DurationMS: s.Elapsed.Milliseconds(),
		})
	}
	for _, g := range r.Groups {
		res.Groups = append(res.Groups, GroupResult{Name: g.Name, Status: g.Status})
	}
	for _, a := range r.Actions {
		res.Actions = append(res.Actions, a.ActionResult)
	}
	if !r.Status.Done() {
		for _, name := range slices.Sorted(maps.Keys(r.Pauses)) {
			res.Pauses = append(res.Pauses, PauseResult{Step: name, Until: r.Pauses[name], Guided: r.GuidedPauses[name]})
		}
	}
	return res
}
