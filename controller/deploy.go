package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/transport"
)

// newDeploymentID returns a deployment id that sorts by creation time:
// "dep-20250601-100000-3f1c0e4a".
func newDeploymentID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "dep-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// validSHA256 reports whether s is 64 lowercase hex digits.
func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkPairs checks a map of names to texts (vars, a selector) against the
// protocol's limits.
func checkPairs(field string, m map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		switch {
		case k == "":
			return invalid("%s: a key is empty", field)
		case len(k) > transport.MaxNameLen:
			return invalid("%s key %.32q...: %d bytes, over the %d-byte limit", field, k, len(k), transport.MaxNameLen)
		case !utf8.ValidString(k):
			return invalid("%s key %q: not valid UTF-8", field, k)
		case len(v) > transport.MaxTextLen:
			return invalid("%s[%q]: %d bytes, over the %d-byte limit", field, k, len(v), transport.MaxTextLen)
		case !utf8.ValidString(v):
			return invalid("%s[%q]: not valid UTF-8", field, k)
		}
	}
	return nil
}

func formatPairs(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// spec is a checked deployment request.
type spec struct {
	bundle        store.Bundle
	devices       []string // by id
	vars          map[string]string
	rollout       *api.Rollout
	targets       []int // the waves' cumulative targets, with a rollout
	guidedFailure *api.GuidedFailure
	strategies    []transport.Strategy
	strategySet   string
	retryOf       string
}

// check validates a deployment request; a refusal is an *Error with code
// invalid. A retry is lenient with its rollout's waves (checkRollout).
func (c *Controller) check(ctx context.Context, req api.CreateDeployment, retry bool) (spec, error) {
	if !validSHA256(req.Bundle) {
		return spec{}, invalid("bundle %q: want the sha256 of an uploaded bundle (64 lowercase hex digits)", req.Bundle)
	}
	b, err := c.st.Bundle(ctx, req.Bundle)
	if errors.Is(err, store.ErrNotFound) {
		return spec{}, invalid("bundle %s is not uploaded here (POST it to %s first)", req.Bundle, api.PathBundles)
	}
	if err != nil {
		return spec{}, fmt.Errorf("create deployment: %w", err)
	}
	if err := checkPairs("vars", req.Vars); err != nil {
		return spec{}, err
	}
	devices, err := c.targets(ctx, req)
	if err != nil {
		return spec{}, err
	}
	rollout, targets, err := checkRollout(req.Rollout, len(devices), retry)
	if err != nil {
		return spec{}, err
	}
	gf, err := checkGuidedFailure(req.GuidedFailure)
	if err != nil {
		return spec{}, err
	}
	strategies, set, err := c.requestStrategies(ctx, req)
	if err != nil {
		return spec{}, err
	}
	// The largest dispatch each device may get: with a guided failure.
	worst := gf
	if worst == nil && c.opts.GuidedFailure != nil {
		worst = &api.GuidedFailure{Timeout: c.opts.GuidedFailure.Timeout.String(), OnTimeout: c.opts.GuidedFailure.OnTimeout}
	}
	now := c.now().UTC()
	d := store.Deployment{ID: newDeploymentID(now), Vars: req.Vars, FailureStrategies: strategies}
	for _, dev := range devices {
		m := &transport.Message{V: transport.Version, ID: transport.NewID(), Type: transport.TypeDispatch, Device: dev, Time: now, Body: c.dispatchBody(d, b, worst)}
		if _, err := m.Encode(); err != nil {
			return spec{}, invalid("dispatch to device %s: %v", dev, err)
		}
	}
	return spec{bundle: b, devices: devices, vars: req.Vars, rollout: rollout, targets: targets, guidedFailure: gf,
		strategies: strategies, strategySet: set}, nil
}

// create adds a deployment of s to the work: the deployment, a run per
// device and the dispatches it makes now: to every device without a
// rollout, else to the first wave's (up to maxInFlight).
func (w *work) create(s spec, now time.Time) (*store.Deployment, error) {
	d := &store.Deployment{
		ID: newDeploymentID(now), Bundle: s.bundle.SHA256, Vars: s.vars, Devices: len(s.devices),
		Status: api.DeploymentRunning, Created: now, Counts: map[string]int{},
		Rollout: s.rollout, GuidedFailure: s.guidedFailure, RetryOf: s.retryOf,
		FailureStrategies: s.strategies, StrategySet: s.strategySet,
	}
	for _, t := range s.targets {
		d.Waves = append(d.Waves, store.Wave{Target: t, Counts: map[string]int{}})
	}
	w.addDeployment(d)
	b := s.bundle
	w.bundles[b.SHA256] = &b
	runs := make([]*store.Run, len(s.devices))
	for i, dev := range s.devices {
		r := &store.Run{Deployment: d.ID, DeviceRun: api.DeviceRun{Device: dev, Status: api.DeviceWaiting, Updated: now}}
		if d.Rollout != nil {
			r.Wave = waveOf(s.targets, i)
			d.Waves[r.Wave-1].Counts[api.DeviceWaiting]++
		}
		count(d, api.DeviceWaiting, +1)
		runs[i] = r
		w.putRun(r)
	}
	w.created[d.ID] = runs
	w.creating = true
	defer func() { w.creating = false }()
	if d.Rollout == nil {
		for _, r := range runs {
			if err := w.dispatch(d, r, now); err != nil {
				return nil, err
			}
		}
		d.Dispatched, d.Cursor = len(runs), ""
		settle(d, now)
	} else {
		startWave(d, 1, now)
		if err := w.advance(d, now); err != nil {
			return nil, err
		}
	}
	// The first feed event: the deployment as created, its first
	// dispatches made.
	if err := w.deploymentEvent(d, true); err != nil {
		return nil, err
	}
	return d, nil
}

// Create validates req, stores the deployment with a run per device, and
// dispatches: to every device at once without a rollout, else to the
// first wave's devices (up to maxInFlight), the rest waiting for their
// turn. A dispatch is stored with a fresh message id before it is
// published; one that cannot be published now stays pending and goes out
// when the controller reconnects or the device comes online. It returns
// the deployment with its runs; a refusal is an *Error with code invalid.
func (c *Controller) Create(ctx context.Context, req api.CreateDeployment) (api.Deployment, error) {
	s, err := c.check(ctx, req, false)
	if err != nil {
		return api.Deployment{}, err
	}
	c.mu.Lock()
	w := c.newWork(ctx)
	d, err := w.create(s, c.now().UTC())
	if err == nil {
		err = c.commit(w)
	}
	c.mu.Unlock()
	if err != nil {
		return api.Deployment{}, fmt.Errorf("create deployment: %w", err)
	}
	c.log.Info("deployment created", "deployment", d.ID, "bundle", s.bundle.SHA256, "flow", s.bundle.Flow, "devices", len(s.devices), "dispatched", len(w.send))
	// The dispatches are stored: publishing them outlives the request.
	c.after(context.WithoutCancel(ctx), w)
	return c.Deployment(ctx, d.ID)
}

// targets returns the devices a deployment request names, by id.
func (c *Controller) targets(ctx context.Context, req api.CreateDeployment) ([]string, error) {
	if (len(req.Devices) > 0) == (len(req.Selector) > 0) {
		return nil, invalid("give exactly one of devices (a list of device ids) and selector (labels every device must have)")
	}
	if len(req.Devices) > 0 {
		seen := map[string]bool{}
		for i, id := range req.Devices {
			if err := transport.CheckDeviceID(id); err != nil {
				return nil, invalid("devices[%d]: %v", i, err)
			}
			if seen[id] {
				return nil, invalid("devices[%d]: device %s is listed twice", i, id)
			}
			seen[id] = true
		}
		return slices.Sorted(maps.Keys(seen)), nil
	}
	if err := checkPairs("selector", req.Selector); err != nil {
		return nil, err
	}
	all, err := c.st.Devices(ctx)
	if err != nil {
		return nil, fmt.Errorf("create deployment: %w", err)
	}
	var ids []string
	for _, d := range all {
		if matches(d.Labels, req.Selector) {
			ids = append(ids, d.ID)
		}
	}
	if len(ids) == 0 {
		return nil, invalid("selector %s matches no known device (%d known)", formatPairs(req.Selector), len(all))
	}
	return ids, nil
}

// matches reports whether labels include every pair of selector.
func matches(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Cancel cancels a deployment that has not finished: it publishes a
// cancel to every device whose run has not finished. A Waiting, Pending
// or Queued run (the device has not started it) becomes Cancelled at once
// and its dispatch is no longer sent again; a Running or Paused run keeps
// its status until the agent reports how it ended, and its cancel is sent
// again like a dispatch until then. No device starts any more. The
// deployment becomes Cancelled once no run is unfinished. Cancelling a
// final deployment is a conflict; a second cancel sends the cancels again.
func (c *Controller) Cancel(ctx context.Context, id string, req api.Cancel) (api.Deployment, error) {
	if err := checkWho(req.By, req.Note); err != nil {
		return api.Deployment{}, err
	}
	c.mu.Lock()
	w := c.newWork(ctx)
	err := c.cancel(w, id, req)
	if err == nil {
		err = c.commit(w)
	}
	c.mu.Unlock()
	if err != nil {
		return api.Deployment{}, wrapUnlessRefused(err, "cancel deployment "+id)
	}
	c.after(context.WithoutCancel(ctx), w)
	return c.Deployment(ctx, id)
}

// checkWho checks a request's by and note.
func checkWho(by, note string) error {
	if len(by) > transport.MaxNameLen || !utf8.ValidString(by) {
		return invalid("by: want valid UTF-8 of at most %d bytes", transport.MaxNameLen)
	}
	if len(note) > transport.MaxTextLen || !utf8.ValidString(note) {
		return invalid("note: want valid UTF-8 of at most %d bytes", transport.MaxTextLen)
	}
	return nil
}

// wrapUnlessRefused adds what was being done to an error, unless it is a
// refusal (*Error), whose message stands as it is.
func wrapUnlessRefused(err error, op string) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return fmt.Errorf("%s: %w", op, err)
}

// cancel records a cancel in the work, with the commands to publish.
func (c *Controller) cancel(w *work, id string, req api.Cancel) error {
	d, err := w.deployment(id)
	if err != nil {
		return err
	}
	if d == nil {
		return notFound("deployment %s not found", id)
	}
	if deploymentFinal(d.Status) {
		return conflict("deployment %s has already ended: %s", id, d.Status)
	}
	if d.Status == api.DeploymentRollingBack {
		return conflict("deployment %s is rolling back after its abort: %d of its devices have not answered their rollback yet; it ends when they have (or when the rollout's deviceTimeout passes)", id, d.Rollback.Pending())
	}
	now := c.now().UTC()
	if d.Cancel == nil {
		d.Cancel = &api.Cancellation{By: req.By, Note: req.Note, Time: now}
	}
	d.AwaitingPromotion, d.PausedUntil = false, nil
	w.audit(d, api.AuditEntry{Time: now, By: req.By, Action: api.AuditCancel, Note: req.Note})
	runs, err := c.st.Runs(w.ctx, id)
	if err != nil {
		return err
	}
	sent := 0
	for _, sr := range runs {
		r := w.adopt(sr)
		if runFinished(r.Status) {
			continue
		}
		switch r.Status {
		case api.DeviceWaiting:
			// Never dispatched: nothing to tell the device.
			setRunStatus(d, &r.DeviceRun, api.DeviceCancelled)
			r.Updated = now
			w.putRun(r)
			w.deviceEvent(d, r, nil)
			continue
		case api.DevicePending, api.DeviceQueued:
			setRunStatus(d, &r.DeviceRun, api.DeviceCancelled)
			r.Updated = now
			w.putRun(r)
			w.deviceEvent(d, r, nil)
			w.batch.DeleteCommands = append(w.batch.DeleteCommands, store.CommandKey{Device: r.Device, Deployment: id, Type: transport.TypeDispatch})
		}
		keep := r.Status != api.DeviceCancelled
		cmd, err := w.cancelCommand(id, r.Device, req.By, req.Note, keep, now)
		if err != nil {
			return err
		}
		w.send = append(w.send, cmd)
		sent++
	}
	// advance starts nothing on a cancelled deployment; it finishes the
	// wave whose devices the cancel ended, then settles the status.
	if err := w.advance(d, now); err != nil {
		return err
	}
	if err := w.deploymentEvent(d, false); err != nil {
		return err
	}
	c.log.Info("deployment cancel requested", "deployment", id, "by", req.By, "devices", sent, "status", d.Status)
	return nil
}

// deploymentView is a deployment as the API shows it, without its runs
// and its audit.
func (c *Controller) deploymentView(d store.Deployment, b store.Bundle) api.Deployment {
	counts := maps.Clone(d.Counts)
	if counts == nil {
		counts = map[string]int{}
	}
	v := api.Deployment{
		ID: d.ID, Bundle: c.bundleView(b), Vars: d.Vars, Status: d.Status,
		Created: d.Created, Finished: d.Finished, Counts: counts, Cancel: d.Cancel,
		Rollout: d.Rollout, GuidedFailure: d.GuidedFailure, Wave: d.Wave,
		FailureStrategies: d.FailureStrategies, StrategySet: d.StrategySet,
		AwaitingPromotion: d.AwaitingPromotion, PausedUntil: d.PausedUntil, Abort: d.Abort,
		Rollback: cloneRollback(d.Rollback), RetryOf: d.RetryOf, Retries: slices.Clone(d.Retries),
	}
	prev := 0
	for i, wv := range d.Waves {
		status := api.WaveWaiting
		switch {
		case wv.Finished != nil:
			status = api.WaveFinished
		case wv.Started != nil:
			status = api.WaveRunning
		}
		wc := maps.Clone(wv.Counts)
		if wc == nil {
			wc = map[string]int{}
		}
		v.Waves = append(v.Waves, api.Wave{Number: i + 1, Target: wv.Target, Devices: wv.Target - prev, Status: status,
			Started: wv.Started, Finished: wv.Finished, Counts: wc})
		prev = wv.Target
	}
	return v
}

func cloneRollback(r *api.RollbackState) *api.RollbackState {
	if r == nil {
		return nil
	}
	c := *r
	return &c
}

func (c *Controller) bundleView(b store.Bundle) api.Bundle {
	return api.Bundle{SHA256: b.SHA256, Size: b.Size, Flow: b.Flow, Version: b.Version, KeyID: b.KeyID, Created: b.Created, URL: c.BundleURL(b.SHA256)}
}

// Deployment returns a deployment with its runs, by device id.
func (c *Controller) Deployment(ctx context.Context, id string) (api.Deployment, error) {
	d, err := c.st.Deployment(ctx, id)
	if err != nil {
		return api.Deployment{}, lookup(err, "deployment %s not found", id)
	}
	b, err := c.st.Bundle(ctx, d.Bundle)
	if err != nil {
		return api.Deployment{}, fmt.Errorf("deployment %s: %w", id, err)
	}
	runs, err := c.st.Runs(ctx, id)
	if err != nil {
		return api.Deployment{}, fmt.Errorf("deployment %s: %w", id, err)
	}
	view := c.deploymentView(d, b)
	view.Audit = slices.Clone(d.Audit)
	view.Devices = make([]api.DeviceRun, len(runs))
	for i, r := range runs {
		view.Devices[i] = r.DeviceRun
	}
	return view, nil
}

// Deployments returns every deployment, newest first, without runs.
func (c *Controller) Deployments(ctx context.Context) ([]api.Deployment, error) {
	ds, err := c.st.Deployments(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Deployment, 0, len(ds))
	bundles := map[string]store.Bundle{}
	for _, d := range ds {
		b, ok := bundles[d.Bundle]
		if !ok {
			if b, err = c.st.Bundle(ctx, d.Bundle); err != nil {
				return nil, fmt.Errorf("deployment %s: %w", d.ID, err)
			}
			bundles[d.Bundle] = b
		}
		out = append(out, c.deploymentView(d, b))
	}
	return out, nil
}

// Devices returns every known device, by id.
func (c *Controller) Devices(ctx context.Context) ([]api.Device, error) {
	ds, err := c.st.Devices(ctx)
	if ds == nil {
		ds = []api.Device{}
	}
	return ds, err
}

// Device returns a known device.
func (c *Controller) Device(ctx context.Context, id string) (api.Device, error) {
	d, err := c.st.Device(ctx, id)
	return d, lookup(err, "device %s not found", id)
}

// Bundles returns every uploaded bundle, newest first.
func (c *Controller) Bundles(ctx context.Context) ([]api.Bundle, error) {
	bs, err := c.st.Bundles(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Bundle, 0, len(bs))
	for _, b := range bs {
		out = append(out, c.bundleView(b))
	}
	return out, nil
}

// Logs returns the log tails of the steps a device finished in a
// deployment, in the order reported, only those of step when it is not "".
func (c *Controller) Logs(ctx context.Context, deployment, device, step string) ([]api.Log, error) {
	if _, err := c.st.Deployment(ctx, deployment); err != nil {
		return nil, lookup(err, "deployment %s not found", deployment)
	}
	if _, err := c.st.Run(ctx, deployment, device); err != nil {
		return nil, lookup(err, "device %s is not in deployment %s", device, deployment)
	}
	events, err := c.st.Events(ctx, deployment, device)
	if err != nil {
		return nil, err
	}
	logs := []api.Log{}
	for _, e := range events {
		if e.Type != transport.TypeStepFinished {
			continue
		}
		m, err := transport.DecodeMessage(e.Message)
		if err != nil {
			c.log.Warn("stored event does not decode", "deployment", deployment, "device", device, "seq", e.Seq, "error", err)
			continue
		}
		b := m.Body.(*transport.StepFinished)
		if step != "" && b.Step != step {
			continue
		}
		logs = append(logs, api.Log{Step: b.Step, Rollback: b.Rollback, Attempt: b.Attempt, Status: string(b.Status), Log: b.Log, Truncated: b.LogTruncated})
	}
	return logs, nil
}
