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

	"github.com/edgeflow/edgeflow/transport"
)

// Paths. {id}, {device} and {sha256} are path values.
const (
	PathHealth          = "/v1/health"
	PathDevices         = "/v1/devices"                                // GET list
	PathDevice          = "/v1/devices/{id}"                           // GET one
	PathBundles         = "/v1/bundles"                                // GET list, POST upload (body: the bundle)
	PathBundle          = "/v1/bundles/{sha256}"                       // GET the bundle's bytes (Range, ETag); agents download here
	PathDeployments     = "/v1/deployments"                            // GET list, POST create
	PathDeployment      = "/v1/deployments/{id}"                       // GET one, with its devices
	PathDeploymentWatch = "/v1/deployments/{id}/events"                // GET server-sent events (text/event-stream)
	PathDeviceLogs      = "/v1/deployments/{id}/devices/{device}/logs" // GET ?step=S
	PathCancel          = "/v1/deployments/{id}/cancel"                // POST
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
}

// Deployment states.
const (
	DeploymentRunning   = "Running"   // some device has not finished
	DeploymentSucceeded = "Succeeded" // every device Succeeded
	DeploymentFailed    = "Failed"    // every device finished, some not Succeeded
	DeploymentCancelled = "Cancelled" // cancelled by an operator
)

// Device run states in a deployment: the flow statuses of the protocol
// (Running, Paused, Succeeded, Failed, Aborted, RolledBack,
// RollbackFailed, ...) plus these.
const (
	DevicePending  = "Pending"  // dispatched, not yet answered by the agent
	DeviceQueued   = "Queued"   // waiting on the device behind another flow
	DeviceRejected = "Rejected" // the agent refused the dispatch; nothing ran
	// DeviceCancelled: the deployment was cancelled while the device had
	// not started it (Pending or Queued). A report the device sends later
	// still moves the run on.
	DeviceCancelled = "Cancelled"
)

// Cancellation records an operator's cancel of a deployment.
type Cancellation struct {
	By   string    `json:"by,omitempty"`
	Note string    `json:"note,omitempty"`
	Time time.Time `json:"time"`
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
	// status stays Running until no device runs it any more.
	Cancel *Cancellation `json:"cancel,omitempty"`
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
	Updated         time.Time           `json:"updated"`
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
