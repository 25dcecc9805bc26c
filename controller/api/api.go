// Package api is the controller's REST API as data: the JSON resources,
// the paths, and the error shape. The controller serves it
// (controller.Handler) and the operator CLI reads it (controller/client);
// docs/api.md documents it for everyone else.
//
// Every path is under /v1. Requests and answers are JSON (UTF-8), except a
// bundle upload and download, which are the bundle's bytes. An error
// answers with its HTTP status and an Error body.
package api

import (
	"encoding/json"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// Paths. {id}, {device} and {sha256} are path values.
const (
	PathHealth          = "/v1/health"
	PathDevices         = "/v1/devices"                                 // GET list
	PathDevice          = "/v1/devices/{id}"                            // GET one
	PathBundles         = "/v1/bundles"                                 // GET list, POST upload (body: the bundle)
	PathBundle          = "/v1/bundles/{sha256}"                        // GET the bundle's bytes (Range, ETag); agents download here
	PathDeployments     = "/v1/deployments"                             // GET list, POST create
	PathDeployment      = "/v1/deployments/{id}"                        // GET one, with its devices
	PathDeploymentWatch = "/v1/deployments/{id}/events"                 // GET server-sent events (text/event-stream)
	PathDeviceLogs      = "/v1/deployments/{id}/devices/{device}/logs"  // GET ?step=S
	PathCancel          = "/v1/deployments/{id}/cancel"                 // POST
	PathPromote         = "/v1/deployments/{id}/promote"                // POST: start the next wave
	PathRetry           = "/v1/deployments/{id}/retry"                  // POST: a new deployment of the failed devices
	PathMarkFailed      = "/v1/deployments/{id}/mark-failed"            // POST: stop running steps as failed
	PathGuide           = "/v1/deployments/{id}/devices/{device}/guide" // POST: answer a paused device
	PathInterventions   = "/v1/interventions"                           // GET: paused devices, grouped
	PathGuideGroup      = "/v1/interventions/{group}/guide"             // POST: answer a whole group
	PathStrategySets    = "/v1/strategy-sets"                           // GET list
	PathStrategySet     = "/v1/strategy-sets/{name}"                    // GET one, PUT (body: a YAML or JSON list), DELETE
)

// Error is the body of every error answer.
type Error struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody says what went wrong. Code is one of the Code constants.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes, with their HTTP status.
const (
	CodeInvalid      = "invalid"      // 400: bad input; nothing was changed
	CodeUnauthorized = "unauthorized" // 401: the API token is missing or wrong
	CodeForbidden    = "forbidden"    // 403: the controller's settings do not allow the request (mark-failed without --allow-mark-failed)
	CodeNotFound     = "not_found"    // 404
	CodeConflict     = "conflict"     // 409: the request conflicts with the state (such as cancelling a finished deployment)
	CodeTooLarge     = "too_large"    // 413: an upload over the limit
	CodeInternal     = "internal"     // 500
)

// Health answers GET /v1/health.
type Health struct {
	// Status is "ok": the controller answers.
	Status string `json:"status"`
	// MQTT is "connected" or "disconnected": the controller's connection
	// to the broker.
	MQTT string `json:"mqtt,omitempty"`
}

// Device is a device as the controller knows it from its presence
// messages.
type Device struct {
	ID string `json:"id"`
	// Status is transport.Online or transport.Offline.
	Status       string                  `json:"status"`
	Agent        string                  `json:"agent,omitempty"`
	Protocol     []int                   `json:"protocol,omitempty"`
	Labels       map[string]string       `json:"labels,omitempty"`
	Capabilities *transport.Capabilities `json:"capabilities,omitempty"`
	Execution    *transport.Current      `json:"execution,omitempty"`
	// LastSeen is the time of the device's last message of any kind.
	LastSeen time.Time `json:"lastSeen"`
}

// DeviceList answers GET /v1/devices.
type DeviceList struct {
	Devices []Device `json:"devices"`
}

// Bundle is an uploaded bundle.
type Bundle struct {
	SHA256  string    `json:"sha256"`
	Size    int64     `json:"size"`
	Flow    string    `json:"flow"`
	Version uint64    `json:"version"`
	KeyID   string    `json:"keyId,omitempty"`
	Created time.Time `json:"created"`
	// URL is where agents download it.
	URL string `json:"url"`
}

// BundleList answers GET /v1/bundles.
type BundleList struct {
	Bundles []Bundle `json:"bundles"`
}

// CreateDeployment is the body of POST /v1/deployments. Exactly one of
// Devices and Selector says which devices: Devices by id (known or not
// yet seen), Selector every known device whose labels include all of it.
type CreateDeployment struct {
	// Bundle is the sha256 of an uploaded bundle.
	Bundle   string            `json:"bundle"`
	Devices  []string          `json:"devices,omitempty"`
	Selector map[string]string `json:"selector,omitempty"`
	Vars     map[string]string `json:"vars,omitempty"`
	// Rollout, when set, starts the devices in waves (docs/rollouts.md);
	// without it every device gets the dispatch at once.
	Rollout *Rollout `json:"rollout,omitempty"`
	// GuidedFailure, when set, makes every device of the deployment pause
	// for guidance where a failure would end its flow.
	GuidedFailure *GuidedFailure `json:"guidedFailure,omitempty"`
	// FailureStrategies are the flow-level failure strategies of a flow
	// that says `failureStrategies: input` (docs/flows.md), a JSON list
	// written as the flow document writes failureStrategies; problems are
	// answered with their line and column in this value
	// ("failureStrategies:1:42: ..."). StrategySet names a stored set
	// instead (PathStrategySet). At most one of the two; the list is
	// copied into the deployment when it is created.
	FailureStrategies json.RawMessage `json:"failureStrategies,omitempty"`
	StrategySet       string          `json:"strategySet,omitempty"`
}

// StrategySet is a named list of failure strategies stored in the
// controller, for deployments of flows that take their flow-level
// failure strategies at deploy time. Name matches StrategySetNamePattern.
type StrategySet struct {
	Name       string               `json:"name"`
	Strategies []transport.Strategy `json:"strategies"`
	Created    time.Time            `json:"created"`
	Updated    time.Time            `json:"updated"`
}

// StrategySetNamePattern is what a strategy set's name must match (the
// rule of flow names): 1 to 63 lowercase letters, digits, '.', '_' and
// '-', starting with a letter or digit.
const StrategySetNamePattern = `^[a-z0-9][a-z0-9._-]{0,62}$`

// StrategySetList answers GET /v1/strategy-sets, by name.
type StrategySetList struct {
	StrategySets []StrategySet `json:"strategySets"`
}

// Rollout is a deployment's rollout strategy. Durations are Go duration
// strings ("90s", "5m", "1h30m").
type Rollout struct {
	// Waves are cumulative targets, each a number of devices ("1") or a
	// percent of the deployment's devices ("10%"), increasing, the last
	// "100%" (or "all"). Empty: one wave of every device.
	Waves []string `json:"waves,omitempty"`
	// MaxInFlight bounds the devices dispatched and not yet finished (0:
	// no bound).
	MaxInFlight int `json:"maxInFlight,omitempty"`
	// Pause between waves: a duration, or PauseManual to wait for a
	// promotion. Empty: the next wave starts once one has finished.
	Pause string `json:"pause,omitempty"`
	// Abort stops the rollout when too many finished devices failed.
	Abort *AbortPolicy `json:"abort,omitempty"`
	// DeviceTimeout: a device that has not finished this long after its
	// dispatch becomes TimedOut (a failure of kind Timeout) and is sent a
	// cancel. Empty: no limit.
	DeviceTimeout string `json:"deviceTimeout,omitempty"`
	// RollbackOnAbort: once the abort threshold trips and the devices in
	// flight have finished, the controller sends a rollback command to
	// every Succeeded device whose agent lists it in
	// capabilities.commands, and the deployment is RollingBack until they
	// answer. It needs Abort.
	RollbackOnAbort bool `json:"rollbackOnAbort,omitempty"`
}

// PauseManual is Rollout.Pause for "wait for POST .../promote".
const PauseManual = "manual"

// WavesAll is a last wave of every device, the same as "100%".
const WavesAll = "all"

// AbortPolicy is a rollout's safety stop: once at least MinSample devices
// have finished (Succeeded or failed; Excluded, Cancelled and Skipped
// devices do not count), the rollout aborts when more than Threshold
// percent of them failed with one of Errors.
type AbortPolicy struct {
	// Threshold is a percent, 0 to 100.
	Threshold float64 `json:"threshold"`
	// MinSample is how many finished devices it takes to judge (0 or 1:
	// the first).
	MinSample int `json:"minSample,omitempty"`
	// Errors are the error kinds that count (empty: AllErrors).
	Errors []onfailure.Kind `json:"errors,omitempty"`
}

// GuidedFailure asks the agent to pause a device for guidance where a
// failure would end its flow, instead of ending it, for at most Timeout
// (a Go duration string, at least 1s); then OnTimeout applies (Ignore,
// MarkAsSuccess, MarkAsFailure, Abort or RollbackFlow; default Abort).
type GuidedFailure struct {
	Timeout   string           `json:"timeout"`
	OnTimeout onfailure.Action `json:"onTimeout,omitempty"`
}

// Deployment states.
const (
	DeploymentRunning = "Running" // some device has not finished
	// DeploymentPaused: some device has not finished, and the deployment
	// waits: between waves (for a promotion, or until PausedUntil), or
	// for guidance of a device paused after a failure.
	DeploymentPaused    = "Paused"
	DeploymentSucceeded = "Succeeded" // every device Succeeded (or was Excluded)
	DeploymentFailed    = "Failed"    // every device finished, some not Succeeded
	DeploymentCancelled = "Cancelled" // cancelled by an operator
	// DeploymentAborted: the rollout's abort threshold tripped; the
	// devices that had not started were Skipped.
	DeploymentAborted = "Aborted"
	// DeploymentRollingBack: the abort threshold tripped with
	// rollbackOnAbort, every device's flow has finished, and the
	// Succeeded devices were sent a rollback that some have not answered
	// yet. Not final.
	DeploymentRollingBack = "RollingBack"
	// DeploymentRolledBack: the abort threshold tripped with
	// rollbackOnAbort and every device that had Succeeded rolled back
	// cleanly (a device that could not, or whose rollback failed, makes
	// the deployment Aborted instead).
	DeploymentRolledBack = "RolledBack"
)

// Device run states in a deployment: the flow statuses of the protocol
// (Running, Paused, Succeeded, Failed, Aborted, RolledBack,
// RollbackFailed, ...) plus these.
const (
	// DeviceWaiting: the rollout has not started the device yet (no
	// dispatch was sent). Not to be confused with Queued, which the
	// device itself reports.
	DeviceWaiting  = "Waiting"
	DevicePending  = "Pending"  // dispatched, not yet answered by the agent
	DeviceQueued   = "Queued"   // waiting on the device behind another flow
	DeviceRejected = "Rejected" // the agent refused the dispatch; nothing ran
	// DeviceCancelled: the deployment was cancelled while the device had
	// not started it (Waiting, Pending or Queued). A report the device
	// sends later still moves the run on.
	DeviceCancelled = "Cancelled"
	// DeviceExcluded: an operator's Exclude guidance took the device out
	// of the deployment. Final; it counts neither as a success nor as a
	// failure, and later reports do not move it.
	DeviceExcluded = "Excluded"
	// DeviceTimedOut: the device had not finished within the rollout's
	// deviceTimeout of its dispatch (stuck or offline). Final; a failure
	// of kind Timeout; the device was sent a cancel.
	DeviceTimedOut = "TimedOut"
	// DeviceSkipped: the rollout aborted before the device's turn; it
	// was never dispatched.
	DeviceSkipped = "Skipped"
	// DeviceRollingBack: the device had Succeeded and was sent a rollback
	// (rollbackOnAbort) that it has not answered yet. It ends RolledBack
	// or RollbackFailed (also when the agent refused the rollback, or
	// the rollout's deviceTimeout passed first); DeviceRun.Rollback has
	// the details.
	DeviceRollingBack = "RollingBack"
)

// Cancellation records an operator's cancel of a deployment.
type Cancellation struct {
	By   string    `json:"by,omitempty"`
	Note string    `json:"note,omitempty"`
	Time time.Time `json:"time"`
}

// Wave is one wave of a rollout and how far it got.
type Wave struct {
	// Number counts from 1.
	Number int `json:"number"`
	// Target is the cumulative number of devices once this wave has
	// started; Devices the number in this wave.
	Target  int `json:"target"`
	Devices int `json:"devices"`
	// Status is WaveWaiting, WaveRunning or WaveFinished.
	Status   string     `json:"status"`
	Started  *time.Time `json:"started,omitempty"`
	Finished *time.Time `json:"finished,omitempty"`
	// Counts are this wave's devices by state.
	Counts map[string]int `json:"counts"`
}

// Wave states.
const (
	WaveWaiting  = "Waiting"  // not started
	WaveRunning  = "Running"  // started, some device has not finished
	WaveFinished = "Finished" // every device of the wave has finished
)

// AbortState says why and when a rollout's threshold tripped.
type AbortState struct {
	Time time.Time `json:"time"`
	// Failed of Finished devices had failed with a counted kind.
	Failed   int    `json:"failed"`
	Finished int    `json:"finished"`
	Reason   string `json:"reason"`
}

// Audit actions.
const (
	AuditGuide      = "guide"
	AuditMarkFailed = "mark-failed"
	AuditCancel     = "cancel"
	AuditPromote    = "promote"
	AuditRetry      = "retry"
	// AuditRollback is the controller's own decision (By "controller"):
	// rollbackOnAbort sent its rollbacks; Devices is how many.
	AuditRollback = "rollback"
)

// RollbackState is the rollback on abort of a deployment (rollbackOnAbort):
// when it started, and how its devices did.
type RollbackState struct {
	Time time.Time `json:"time"`
	// Devices is how many Succeeded devices were sent a rollback;
	// RolledBack and Failed how many of them answered so (Failed also
	// counts refusals and timeouts). The others are RollingBack.
	Devices    int `json:"devices"`
	RolledBack int `json:"rolledBack"`
	Failed     int `json:"failed"`
	// Unsupported is how many Succeeded devices were not sent one: their
	// agent does not list the rollback command (they stay Succeeded, and
	// the deployment ends Aborted).
	Unsupported int `json:"unsupported,omitempty"`
}

// Pending is how many rollbacks have not been answered.
func (r *RollbackState) Pending() int {
	if r == nil {
		return 0
	}
	return r.Devices - r.RolledBack - r.Failed
}

// AuditEntry records an operator's request on a deployment. By is what
// the request said (the CLI sends the login name); with one API token the
// controller cannot check it.
type AuditEntry struct {
	Time time.Time `json:"time"`
	By   string    `json:"by,omitempty"`
	// Action is one of the Audit constants.
	Action string `json:"action"`
	// Device is the device it was about, when one.
	Device string `json:"device,omitempty"`
	// Devices is how many devices it reached when more than one (a
	// group's guidance, mark-failed --all).
	Devices int    `json:"devices,omitempty"`
	Step    string `json:"step,omitempty"`
	// Guidance is the guide's action.
	Guidance onfailure.Action `json:"guidance,omitempty"`
	// Group is the intervention group a guidance answered.
	Group string `json:"group,omitempty"`
	// Wave is the wave a promotion started.
	Wave int `json:"wave,omitempty"`
	// Deployment is the deployment a retry created.
	Deployment string `json:"deployment,omitempty"`
	Note       string `json:"note,omitempty"`
}

// Deployment is one bundle sent to a set of devices.
type Deployment struct {
	ID      string            `json:"id"`
	Bundle  Bundle            `json:"bundle"`
	Vars    map[string]string `json:"vars,omitempty"`
	Status  string            `json:"status"`
	Created time.Time         `json:"created"`
	// Finished is set when Status is final.
	Finished *time.Time `json:"finished,omitempty"`
	// Counts of devices by state.
	Counts map[string]int `json:"counts"`
	// Cancel is set once an operator asked to cancel the deployment; the
	// status stays Running (or Paused) until no device runs it any more.
	Cancel *Cancellation `json:"cancel,omitempty"`
	// Rollout and GuidedFailure are as created.
	Rollout       *Rollout       `json:"rollout,omitempty"`
	GuidedFailure *GuidedFailure `json:"guidedFailure,omitempty"`
	// FailureStrategies are the flow-level failure strategies every
	// dispatch of the deployment carries, as copied when it was created;
	// StrategySet is the set they were copied from, when one was named
	// (a later change to the set does not change them).
	FailureStrategies []transport.Strategy `json:"failureStrategies,omitempty"`
	StrategySet       string               `json:"strategySet,omitempty"`
	// Waves are the rollout's waves (with a rollout only); Wave is the
	// number of the last one started.
	Waves []Wave `json:"waves,omitempty"`
	Wave  int    `json:"wave,omitempty"`
	// AwaitingPromotion: a wave has finished and the next one waits for
	// POST .../promote (pause "manual").
	AwaitingPromotion bool `json:"awaitingPromotion,omitempty"`
	// PausedUntil: a wave has finished and the next one starts then.
	PausedUntil *time.Time `json:"pausedUntil,omitempty"`
	// Abort is set once the abort threshold tripped: no device starts
	// any more, and the deployment ends Aborted (or, with
	// rollbackOnAbort, RollingBack and then RolledBack or Aborted).
	Abort *AbortState `json:"abort,omitempty"`
	// Rollback is set once rollbackOnAbort started rolling back the
	// Succeeded devices.
	Rollback *RollbackState `json:"rollback,omitempty"`
	// RetryOf is the deployment this one retries; Retries the
	// deployments that retry this one.
	RetryOf string   `json:"retryOf,omitempty"`
	Retries []string `json:"retries,omitempty"`
	// Audit is every operator request on the deployment, oldest first
	// (on GET /v1/deployments/{id} only).
	Audit []AuditEntry `json:"audit,omitempty"`
	// Devices is set on GET /v1/deployments/{id}, not in lists.
	Devices []DeviceRun `json:"devices,omitempty"`
}

// DeploymentList answers GET /v1/deployments, newest first.
type DeploymentList struct {
	Deployments []Deployment `json:"deployments"`
}

// DeviceRun is a deployment on one device.
type DeviceRun struct {
	Device    string               `json:"device"`
	Status    string               `json:"status"`
	Dispatch  string               `json:"dispatch"`
	Execution string               `json:"execution,omitempty"`
	Error     *transport.ErrorInfo `json:"error,omitempty"`
	// Steps are the steps reported so far, in the order they started.
	Steps []StepRun `json:"steps,omitempty"`
	// RollbackActions are the rollback actions and rollback steps
	// reported, in order.
	RollbackActions []RollbackActionRun `json:"rollbackActions,omitempty"`
	// Pause is set while the run is Paused: what waits for guidance.
	Pause *RunPause `json:"pause,omitempty"`
	// Wave is the rollout wave the device belongs to (with a rollout).
	Wave int `json:"wave,omitempty"`
	// Dispatched is when the controller made the device's dispatch; with
	// a rollout's deviceTimeout, Deadline is when it times out.
	Dispatched *time.Time `json:"dispatched,omitempty"`
	Deadline   *time.Time `json:"deadline,omitempty"`
	// GuidedFailure is what the dispatch asked of the agent, when it
	// asked for guided failure (the deployment's option, or the
	// controller's setting for the device's labels).
	GuidedFailure *GuidedFailure `json:"guidedFailure,omitempty"`
	// Rollback is set on a Succeeded run when its deployment rolled back
	// on abort: the rollback sent, or why none was.
	Rollback *RunRollback `json:"rollback,omitempty"`
	Updated  time.Time    `json:"updated"`
}

// RunRollback is the rollback on abort of one Succeeded device. The run's
// status says how far it got: RollingBack (sent), RolledBack or
// RollbackFailed (with the run's Error); a run that stays Succeeded with
// a Note was not sent one.
type RunRollback struct {
	// Command is the id of the rollback command (sent again with it until
	// the device answers).
	Command string     `json:"command,omitempty"`
	Sent    *time.Time `json:"sent,omitempty"`
	// Finished is when the device answered (or the rollback timed out).
	Finished *time.Time `json:"finished,omitempty"`
	// Refused: the agent answered rolled-back Failed: it ran nothing (the
	// run's Error says why), and the run is RollbackFailed.
	Refused bool `json:"refused,omitempty"`
	// Note says why no rollback was sent (the agent cannot undo).
	Note string `json:"note,omitempty"`
}

// RunPause is what a paused run waits with, from its paused event.
type RunPause struct {
	// Step is the paused step; Group its group (only Group when a whole
	// group is paused).
	Step  string               `json:"step,omitempty"`
	Group string               `json:"group,omitempty"`
	Error *transport.ErrorInfo `json:"error,omitempty"`
	// Since is when the controller learnt of the pause; Until when the
	// agent applies its timeout action.
	Since time.Time  `json:"since"`
	Until *time.Time `json:"until,omitempty"`
}

// RollbackActionRun is a rollback action that ran for a step, as reported
// by a rollback-action event.
type RollbackActionRun struct {
	Step    string               `json:"step"`
	Action  string               `json:"action"`
	Trigger string               `json:"trigger,omitempty"`
	Status  string               `json:"status"`
	Error   *transport.ErrorInfo `json:"error,omitempty"`
}

// StepRun is a step of a deployment on one device, as reported.
type StepRun struct {
	Name       string               `json:"name"`
	Group      string               `json:"group,omitempty"`
	Rollback   string               `json:"rollback,omitempty"`
	Status     string               `json:"status"`
	Attempt    int                  `json:"attempt"`
	Error      *transport.ErrorInfo `json:"error,omitempty"`
	DurationMS int64                `json:"durationMs,omitempty"`
}

// Log is a step's log tail as the agent reported it.
type Log struct {
	Step      string `json:"step"`
	Rollback  string `json:"rollback,omitempty"`
	Attempt   int    `json:"attempt"`
	Status    string `json:"status"`
	Log       string `json:"log"`
	Truncated bool   `json:"truncated,omitempty"`
}

// LogList answers GET .../logs.
type LogList struct {
	Logs []Log `json:"logs"`
}

// Event is one server-sent event of PathDeploymentWatch: the SSE "event"
// field is Kind, "id" is Seq, "data" is this object as JSON. Kind is
// "device" (a device's run changed: Run is set, and Message is the
// agent's event that changed it, when one did) or "deployment" (the
// deployment's status or counts changed: Deployment is set, without its
// devices). A watcher that reconnects sends Last-Event-ID and receives
// what it missed.
type Event struct {
	Seq        uint64      `json:"seq"`
	Kind       string      `json:"kind"`
	Time       time.Time   `json:"time"`
	Deployment *Deployment `json:"deployment,omitempty"`
	Run        *DeviceRun  `json:"run,omitempty"`
	// Message is the agent's event in its wire form (docs/protocol.md).
	Message json.RawMessage `json:"message,omitempty"`
}

// Event kinds.
const (
	EventDevice     = "device"
	EventDeployment = "deployment"
)

// Cancel is the body of POST .../cancel.
type Cancel struct {
	By   string `json:"by,omitempty"`
	Note string `json:"note,omitempty"`
}

// Promote is the body of POST .../promote (optional).
type Promote struct {
	By   string `json:"by,omitempty"`
	Note string `json:"note,omitempty"`
}

// Retry is the body of POST .../retry (optional).
type Retry struct {
	// FailedOnly retries the devices that failed; without it every
	// device that did not succeed (but Excluded ones) is retried.
	FailedOnly bool   `json:"failedOnly,omitempty"`
	By         string `json:"by,omitempty"`
	Note       string `json:"note,omitempty"`
}

// MarkFailed is the body of POST .../mark-failed: exactly one of Devices
// and All.
type MarkFailed struct {
	Devices []string `json:"devices,omitempty"`
	// All marks every device of the deployment that is Running.
	All bool `json:"all,omitempty"`
	// Step names the step to stop (empty: whichever runs).
	Step string `json:"step,omitempty"`
	By   string `json:"by,omitempty"`
	Note string `json:"note,omitempty"`
}

// Guide is the body of POST .../devices/{device}/guide and of POST
// /v1/interventions/{group}/guide (which takes no Step).
type Guide struct {
	// Action is one of onfailure.GuidanceActions.
	Action onfailure.Action `json:"action"`
	// Step names the paused step (empty: the one the device paused).
	Step string `json:"step,omitempty"`
	By   string `json:"by,omitempty"`
	Note string `json:"note,omitempty"`
}

// Intervention is a group of paused devices that wait for guidance with
// the same flow, step, error kind and message. Group is its id, stable:
// the same four give the same id. StepGroup is the flow group of the
// step (or the paused group, when Step is empty).
type Intervention struct {
	Group     string         `json:"group"`
	Flow      string         `json:"flow"`
	Step      string         `json:"step,omitempty"`
	StepGroup string         `json:"stepGroup,omitempty"`
	Kind      onfailure.Kind `json:"kind,omitempty"`
	Message   string         `json:"message,omitempty"`
	// Devices are the paused runs, oldest pause first.
	Devices []PausedRun `json:"devices"`
}

// PausedRun is one paused device of an intervention group.
type PausedRun struct {
	Deployment string     `json:"deployment"`
	Device     string     `json:"device"`
	Since      time.Time  `json:"since"`
	Until      *time.Time `json:"until,omitempty"`
}

// InterventionList answers GET /v1/interventions.
type InterventionList struct {
	Interventions []Intervention `json:"interventions"`
}

// GuideResult answers POST /v1/interventions/{group}/guide: the devices
// the guidance was sent to.
type GuideResult struct {
	Group  string           `json:"group"`
	Action onfailure.Action `json:"action"`
	Guided []PausedRun      `json:"guided"`
}
