// Package store is the controller's durable state: the devices it has
// heard of, the bundles uploaded to it (their metadata; the bytes are
// files the controller keeps beside the store), the deployments with one
// run per device, the agents' events and the live feed of each
// deployment, how far each device's events were processed (the agent's
// event stream and its last seq), and the commands (dispatches, cancels,
// guidance, mark-failed) that still have to reach a device.
//
// Store is the interface the controller needs and nothing more, so that a
// networked database can take the place of the bbolt file later: a few
// reads, and one write, Commit, that applies a Batch atomically. The
// controller computes every change in memory and commits it at once, so a
// crash leaves either all of an agent event's effects (the event, the run,
// the deployment's counts, the feed, the device's last seq) or none.
//
// Open returns the bbolt implementation, the only controller package that
// imports bbolt.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

var (
	// ErrNotFound is returned (wrapped) when a record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict is returned (wrapped) by Commit when the stored state is
	// not the one the batch was computed from: a device's last seq moved,
	// or a feed event with the same seq exists. Nothing was written.
	ErrConflict = errors.New("conflict with the stored state")
)

// Store is the controller's state. Its methods are safe for concurrent
// use. Lists come back in a stable order, given with each method.
type Store interface {
	// Device returns a device by id.
	Device(ctx context.Context, id string) (api.Device, error)
	// Devices returns every device, by id.
	Devices(ctx context.Context) ([]api.Device, error)
	// LastSeq returns what was processed of a device's event stream (the
	// zero value: nothing).
	LastSeq(ctx context.Context, device string) (DeviceSeq, error)

	// AddBundle stores a bundle's metadata unless one with its SHA256 is
	// stored; it returns the stored record and whether it is new.
	AddBundle(ctx context.Context, b Bundle) (Bundle, bool, error)
	// Bundle returns a bundle by SHA256.
	Bundle(ctx context.Context, sha256 string) (Bundle, error)
	// Bundles returns every bundle, newest first.
	Bundles(ctx context.Context) ([]Bundle, error)

	// Deployment returns a deployment by id.
	Deployment(ctx context.Context, id string) (Deployment, error)
	// Deployments returns every deployment, newest first.
	Deployments(ctx context.Context) ([]Deployment, error)
	// Run returns the run of a deployment on a device.
	Run(ctx context.Context, deployment, device string) (Run, error)
	// Runs returns every run of a deployment, by device id.
	Runs(ctx context.Context, deployment string) ([]Run, error)
	// RunsAfter returns up to limit (0: all) runs of a deployment whose
	// device id sorts after after ("": from the first), by device id.
	RunsAfter(ctx context.Context, deployment, after string, limit int) ([]Run, error)

	// Events returns the agent events stored for a deployment and device,
	// by seq.
	Events(ctx context.Context, deployment, device string) ([]Event, error)
	// Feed returns up to limit (0: all) feed events of a deployment with a
	// Seq above after, by Seq.
	Feed(ctx context.Context, deployment string, after uint64, limit int) ([]api.Event, error)

	// StrategySet returns a strategy set by name.
	StrategySet(ctx context.Context, name string) (api.StrategySet, error)
	// StrategySets returns every strategy set, by name.
	StrategySets(ctx context.Context) ([]api.StrategySet, error)
	// PutStrategySet stores s, replacing the set of its name (whose
	// Created it keeps); it returns the stored set and whether it is new.
	PutStrategySet(ctx context.Context, s api.StrategySet) (api.StrategySet, bool, error)
	// DeleteStrategySet deletes a strategy set (ErrNotFound: none).
	DeleteStrategySet(ctx context.Context, name string) error

	// Commands returns the pending commands of a device, or of every
	// device when device is "", by device, deployment and type.
	Commands(ctx context.Context, device string) ([]Command, error)

	// Commit applies b atomically and durably: when it returns nil, all of
	// b survives a crash; when it returns an error, none of it was written.
	Commit(ctx context.Context, b Batch) error

	// Close releases the store.
	Close() error
}

// Bundle is an uploaded bundle's metadata, read from its manifest.
type Bundle struct {
	SHA256  string    `json:"sha256"`
	Size    int64     `json:"size"`
	Flow    string    `json:"flow"`
	Version uint64    `json:"version"`
	KeyID   string    `json:"keyId,omitempty"`
	Created time.Time `json:"created"`
}

// Deployment is a deployment's own record; its runs are stored apart.
type Deployment struct {
	ID string `json:"id"`
	// Bundle is the bundle's SHA256.
	Bundle string            `json:"bundle"`
	Vars   map[string]string `json:"vars,omitempty"`
	// Devices is the number of devices (runs).
	Devices  int        `json:"devices"`
	Status   string     `json:"status"`
	Created  time.Time  `json:"created"`
	Finished *time.Time `json:"finished,omitempty"`
	// Counts are the runs by status.
	Counts map[string]int `json:"counts"`
	// Cancel is set once an operator asked to cancel.
	Cancel *api.Cancellation `json:"cancel,omitempty"`
	// FeedSeq is the Seq of the deployment's last feed event.
	FeedSeq uint64 `json:"feedSeq"`

	// Rollout and GuidedFailure are the deployment's options, as
	// created (checked then).
	Rollout       *api.Rollout       `json:"rollout,omitempty"`
	GuidedFailure *api.GuidedFailure `json:"guidedFailure,omitempty"`
	// FailureStrategies are sent with every dispatch, as copied at
	// creation; StrategySet is the set they came from, if one.
	FailureStrategies []transport.Strategy `json:"failureStrategies,omitempty"`
	StrategySet       string               `json:"strategySet,omitempty"`
	// Waves are the rollout's waves (nil without a rollout); Wave is the
	// number of the last one started (from 1).
	Waves []Wave `json:"waves,omitempty"`
	Wave  int    `json:"wave,omitempty"`
	// Cursor is the device id of the last run the rollout dispatched:
	// runs are dispatched in device id order, so those after it have not
	// been. Dispatched counts them.
	Cursor     string `json:"cursor,omitempty"`
	Dispatched int    `json:"dispatched,omitempty"`
	// AwaitingPromotion and PausedUntil say why the next wave waits.
	AwaitingPromotion bool       `json:"awaitingPromotion,omitempty"`
	PausedUntil       *time.Time `json:"pausedUntil,omitempty"`
	// Abort is set once the abort threshold tripped.
	Abort *api.AbortState `json:"abort,omitempty"`
	// Rollback is set once rollbackOnAbort sent its rollbacks.
	Rollback *api.RollbackState `json:"rollback,omitempty"`
	// Tally counts the runs the abort threshold judges.
	Tally Tally `json:"tally,omitzero"`
	// RetryOf and Retries link a retry to the deployment it retries.
	RetryOf string   `json:"retryOf,omitempty"`
	Retries []string `json:"retries,omitempty"`
	// Audit is every operator request, oldest first.
	Audit []api.AuditEntry `json:"audit,omitempty"`
}

// Wave is a rollout wave: its cumulative target, when it started and
// finished, and its runs by status.
type Wave struct {
	Target   int            `json:"target"`
	Started  *time.Time     `json:"started,omitempty"`
	Finished *time.Time     `json:"finished,omitempty"`
	Counts   map[string]int `json:"counts"`
}

// Tally is what a rollout's abort threshold weighs: the runs that
// finished (Succeeded or failed) and those that failed with a kind the
// threshold counts.
type Tally struct {
	Finished int `json:"finished"`
	Failed   int `json:"failed"`
}

// Run is a deployment's run on one device.
type Run struct {
	Deployment string `json:"deployment"`
	api.DeviceRun
}

// Event is an agent event as received, stored for its deployment and
// device (also when the deployment is unknown).
type Event struct {
	Deployment string         `json:"deployment"`
	Device     string         `json:"device"`
	Seq        uint64         `json:"seq"`
	Type       transport.Type `json:"type"`
	Received   time.Time      `json:"received"`
	// Message is the event's wire form.
	Message json.RawMessage `json:"message"`
}

// Command is a command that still has to reach a device: a dispatch whose
// run is Pending, a cancel whose run has not finished, a guide until the
// device reports it resumed, a mark-failed until it reports the step
// failed (or paused), a rollback until it reports rolled-back. A device's flow-finished or rejected for the
// deployment ends them all. The controller sends it again, with the same
// ID, when it reconnects to the broker and when the device comes online;
// agents deduplicate commands by ID.
type Command struct {
	ID         string         `json:"id"`
	Type       transport.Type `json:"type"`
	Device     string         `json:"device"`
	Deployment string         `json:"deployment"`
	Time       time.Time      `json:"time"`
	By         string         `json:"by,omitempty"`
	Note       string         `json:"note,omitempty"`
	// Step and Action are a guide's (Step also a mark-failed's).
	Step   string           `json:"step,omitempty"`
	Action onfailure.Action `json:"action,omitempty"`
}

// Key returns the command's key.
func (c Command) Key() CommandKey {
	return CommandKey{Device: c.Device, Deployment: c.Deployment, Type: c.Type}
}

// CommandKey names a pending command: a device has at most one of each
// type per deployment.
type CommandKey struct {
	Device     string
	Deployment string
	Type       transport.Type
}

// FeedEvent is a feed event of a deployment.
type FeedEvent struct {
	Deployment string
	Event      api.Event
}

// DeviceSeq is how far the controller processed a device's events: the
// agent's event stream (presence.stream; "" until a presence names one)
// and the last seq processed in it. A new stream starts again at seq 0.
type DeviceSeq struct {
	Stream string `json:"stream,omitempty"`
	Seq    uint64 `json:"seq"`
}

// SeqUpdate moves a device's DeviceSeq from From to To. Commit refuses it
// (ErrConflict) unless the stored value is From.
type SeqUpdate struct {
	Device   string
	From, To DeviceSeq
}

// Batch is what Commit writes: records put (replacing any with the same
// key), feed events appended (never replacing one), seq updates and
// commands deleted.
type Batch struct {
	Devices        []api.Device
	Deployments    []Deployment
	Runs           []Run
	Events         []Event
	Feed           []FeedEvent
	Seqs           []SeqUpdate
	PutCommands    []Command
	DeleteCommands []CommandKey
}

// Empty reports whether b writes nothing.
func (b *Batch) Empty() bool {
	return len(b.Devices)+len(b.Deployments)+len(b.Runs)+len(b.Events)+len(b.Feed)+
		len(b.Seqs)+len(b.PutCommands)+len(b.DeleteCommands) == 0
}
