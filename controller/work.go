package controller

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
)

// work is one unit of work on the state: it reads records through a
// cache, changes them in memory, and commits every change in one batch.
// The caller holds Controller.mu from the first read to the commit.
type work struct {
	c   *Controller
	ctx context.Context

	deployments map[string]*store.Deployment // nil value: known not to exist
	runs        map[runKey]*store.Run
	devices     map[string]*api.Device
	bundles     map[string]*store.Bundle
	seqs        map[string]store.DeviceSeq // as changed, per device read
	seqBase     map[string]store.DeviceSeq // as stored, per device read

	dirtyDeployments map[string]bool
	dirtyRuns        map[runKey]bool
	dirtyDevices     map[string]bool
	// summaries are the deployments as first read, to see whether a
	// "deployment" feed event is due.
	summaries map[string]string

	batch store.Batch
	feed  []store.FeedEvent
	// send are the commands to publish once the batch is committed.
	send []store.Command
	// wake are the times the rollout's timer of a deployment must fire
	// by (a pause's end, a device's deadline), to arm after the commit.
	wake map[string]time.Time
	// created are the runs of the deployments this work creates, by
	// device id (they are not in the store yet).
	created map[string][]*store.Run
	// creating: dispatches made now are part of the deployment's first
	// state, not feed events of their own.
	creating bool
}

type runKey struct{ deployment, device string }

func (c *Controller) newWork(ctx context.Context) *work {
	return &work{
		c: c, ctx: ctx,
		deployments: map[string]*store.Deployment{}, runs: map[runKey]*store.Run{},
		devices: map[string]*api.Device{}, bundles: map[string]*store.Bundle{},
		seqs: map[string]store.DeviceSeq{}, seqBase: map[string]store.DeviceSeq{},
		dirtyDeployments: map[string]bool{}, dirtyRuns: map[runKey]bool{}, dirtyDevices: map[string]bool{},
		summaries: map[string]string{}, wake: map[string]time.Time{}, created: map[string][]*store.Run{},
	}
}

// deployment returns the deployment (nil if unknown) for changing.
func (w *work) deployment(id string) (*store.Deployment, error) {
	if d, ok := w.deployments[id]; ok {
		return d, nil
	}
	d, err := w.c.st.Deployment(w.ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		w.deployments[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	w.summaries[id] = summary(&d)
	w.deployments[id] = &d
	return &d, nil
}

// addDeployment adds a new deployment.
func (w *work) addDeployment(d *store.Deployment) {
	w.deployments[d.ID] = d
	w.summaries[d.ID] = ""
	w.dirtyDeployments[d.ID] = true
}

// run returns the run of deployment on device (nil if none) for changing.
func (w *work) run(deployment, device string) (*store.Run, error) {
	k := runKey{deployment, device}
	if r, ok := w.runs[k]; ok {
		return r, nil
	}
	r, err := w.c.st.Run(w.ctx, deployment, device)
	if errors.Is(err, store.ErrNotFound) {
		w.runs[k] = nil
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	w.runs[k] = &r
	return &r, nil
}

func (w *work) putRun(r *store.Run) {
	k := runKey{r.Deployment, r.Device}
	w.runs[k] = r
	w.dirtyRuns[k] = true
}

// device returns the device (nil if unknown) for changing.
func (w *work) device(id string) (*api.Device, error) {
	if d, ok := w.devices[id]; ok {
		return d, nil
	}
	d, err := w.c.st.Device(w.ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		w.devices[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	w.devices[id] = &d
	return &d, nil
}

func (w *work) putDevice(d *api.Device) {
	w.devices[d.ID] = d
	w.dirtyDevices[d.ID] = true
}

func (w *work) bundle(sha string) (*store.Bundle, error) {
	if b, ok := w.bundles[sha]; ok {
		return b, nil
	}
	b, err := w.c.st.Bundle(w.ctx, sha)
	if err != nil {
		return nil, err
	}
	w.bundles[sha] = &b
	return &b, nil
}

// lastSeq returns how far the device's events were processed, as changed
// so far.
func (w *work) lastSeq(device string) (store.DeviceSeq, error) {
	if s, ok := w.seqs[device]; ok {
		return s, nil
	}
	s, err := w.c.st.LastSeq(w.ctx, device)
	if err != nil {
		return store.DeviceSeq{}, err
	}
	w.seqs[device], w.seqBase[device] = s, s
	return s, nil
}

func (w *work) setSeq(device string, seq store.DeviceSeq) { w.seqs[device] = seq }

// deviceEvent appends a "device" feed event: the run changed, by message
// (the agent's event in its wire form, or nil).
func (w *work) deviceEvent(d *store.Deployment, r *store.Run, message json.RawMessage) {
	run := r.DeviceRun
	run.Steps = slices.Clone(run.Steps)
	run.RollbackActions = slices.Clone(run.RollbackActions)
	w.appendFeed(d, api.Event{Kind: api.EventDevice, Run: &run, Message: message})
}

// deploymentEvent appends a "deployment" feed event when what it shows
// of the deployment (status, counts, cancel, waves, pause, abort,
// retries) changed since the work first read it (or always, with force).
func (w *work) deploymentEvent(d *store.Deployment, force bool) error {
	now := summary(d)
	if !force && w.summaries[d.ID] == now {
		return nil
	}
	b, err := w.bundle(d.Bundle)
	if err != nil {
		return err
	}
	view := w.c.deploymentView(*d, *b)
	w.appendFeed(d, api.Event{Kind: api.EventDeployment, Deployment: &view})
	w.summaries[d.ID] = now
	return nil
}

// wakeAt asks for the deployment's rollout timer to fire by t.
func (w *work) wakeAt(id string, t time.Time) {
	if old, ok := w.wake[id]; !ok || t.Before(old) {
		w.wake[id] = t
	}
}

// audit appends an operator's request to the deployment's record.
func (w *work) audit(d *store.Deployment, e api.AuditEntry) {
	d.Audit = append(d.Audit, e)
	w.dirtyDeployments[d.ID] = true
}

// commit commits w and then hands its feed events to the watchers. The
// caller holds c.mu, so feeds go out in the order of their commits.
func (c *Controller) commit(w *work) error {
	feed, err := w.commit()
	if err != nil {
		return err
	}
	c.feed.publish(feed)
	return nil
}

func (w *work) appendFeed(d *store.Deployment, e api.Event) {
	d.FeedSeq++
	e.Seq, e.Time = d.FeedSeq, w.c.now().UTC()
	w.dirtyDeployments[d.ID] = true
	w.feed = append(w.feed, store.FeedEvent{Deployment: d.ID, Event: e})
}

// commit writes every change in one batch. It returns the feed events
// written, for the watchers.
func (w *work) commit() ([]store.FeedEvent, error) {
	b := &w.batch
	for _, id := range sortedKeys(w.dirtyDeployments) {
		b.Deployments = append(b.Deployments, *w.deployments[id])
	}
	keys := slices.Collect(maps.Keys(w.dirtyRuns))
	slices.SortFunc(keys, func(x, y runKey) int {
		if x.deployment != y.deployment {
			return strings.Compare(x.deployment, y.deployment)
		}
		return strings.Compare(x.device, y.device)
	})
	for _, k := range keys {
		b.Runs = append(b.Runs, *w.runs[k])
	}
	for _, id := range sortedKeys(w.dirtyDevices) {
		b.Devices = append(b.Devices, *w.devices[id])
	}
	for _, dev := range sortedKeys(w.seqs) {
		if w.seqs[dev] != w.seqBase[dev] {
			b.Seqs = append(b.Seqs, store.SeqUpdate{Device: dev, From: w.seqBase[dev], To: w.seqs[dev]})
		}
	}
	b.Feed = w.feed
	if err := w.c.st.Commit(w.ctx, *b); err != nil {
		return nil, err
	}
	return w.feed, nil
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
