package controller

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// maxWaves bounds a rollout's waves.
const maxWaves = 100

// GuidedFailureSetting is the controller's guided-failure setting: every
// dispatch to a device whose labels include all of Selector asks the
// agent to pause for guidance where a failure would end the flow, for at
// most Timeout, then to apply OnTimeout. A deployment's own
// guidedFailure option takes precedence.
type GuidedFailureSetting struct {
	Selector  map[string]string
	Timeout   time.Duration
	OnTimeout onfailure.Action
}

// DefaultGuidedFailureOnTimeout is the action after a guided failure's
// timeout when none is given.
const DefaultGuidedFailureOnTimeout = onfailure.Abort

// CheckGuidedFailure checks a guided failure's timeout and action (field
// names the input in messages) and returns it with the default action
// filled in.
func CheckGuidedFailure(field string, timeout time.Duration, onTimeout onfailure.Action) (onfailure.Action, error) {
	if timeout < time.Second || timeoutSeconds(timeout) > transport.MaxGuidedTimeoutSeconds {
		return "", fmt.Errorf("%s timeout %v: want 1s to %v (the agent counts whole seconds)", field, timeout, time.Duration(transport.MaxGuidedTimeoutSeconds)*time.Second)
	}
	if onTimeout == "" {
		onTimeout = DefaultGuidedFailureOnTimeout
	}
	for _, a := range onfailure.TimeoutActions {
		if strings.EqualFold(string(a), string(onTimeout)) {
			return a, nil
		}
	}
	return "", fmt.Errorf("%s onTimeout %q: want one of %s", field, onTimeout, actionList(onfailure.TimeoutActions))
}

func actionList(as []onfailure.Action) string {
	parts := make([]string, len(as))
	for i, a := range as {
		parts[i] = string(a)
	}
	return strings.Join(parts, ", ")
}

// checkGuidedFailure checks a deployment's guidedFailure and returns it
// normalized (the default onTimeout filled in).
func checkGuidedFailure(g *api.GuidedFailure) (*api.GuidedFailure, error) {
	if g == nil {
		return nil, nil
	}
	d, err := time.ParseDuration(g.Timeout)
	if err != nil {
		return nil, invalid("guidedFailure.timeout %q: want a duration such as 30m", g.Timeout)
	}
	a, err := CheckGuidedFailure("guidedFailure:", d, g.OnTimeout)
	if err != nil {
		return nil, invalid("%v", err)
	}
	return &api.GuidedFailure{Timeout: g.Timeout, OnTimeout: a}, nil
}

// plan is a checked rollout, parsed.
type plan struct {
	maxInFlight int
	pause       time.Duration
	manual      bool
	timeout     time.Duration
}

// planOf parses a rollout that checkRollout accepted.
func planOf(r *api.Rollout) plan {
	var p plan
	if r == nil {
		return p
	}
	p.maxInFlight = r.MaxInFlight
	if r.Pause == api.PauseManual {
		p.manual = true
	} else if r.Pause != "" {
		p.pause, _ = time.ParseDuration(r.Pause)
	}
	if r.DeviceTimeout != "" {
		p.timeout, _ = time.ParseDuration(r.DeviceTimeout)
	}
	return p
}

// checkRollout checks a rollout request against n devices and returns it
// normalized (pause "manual" in lower case, the abort's errors defaulting
// to AllErrors) with the waves' cumulative targets in devices. A wave
// whose target adds no device to the one before it (10% of 5 devices is
// 1, as is a first wave of 1) is dropped; so is one whose target is below
// the one before it when lenient (a retry, on fewer devices than the
// rollout was written for), which is refused otherwise.
func checkRollout(r *api.Rollout, n int, lenient bool) (*api.Rollout, []int, error) {
	if r == nil {
		return nil, nil, nil
	}
	out := *r
	out.Waves = append([]string(nil), r.Waves...)
	if r.RollbackOnAbort && r.Abort == nil {
		return nil, nil, invalid("rollout.rollbackOnAbort: needs an abort threshold (rollout.abort): it rolls back the devices that succeeded once the threshold trips")
	}
	if r.MaxInFlight < 0 {
		return nil, nil, invalid("rollout.maxInFlight %d: want 0 (no limit) or more devices", r.MaxInFlight)
	}
	switch p := strings.TrimSpace(r.Pause); {
	case p == "":
		out.Pause = ""
	case strings.EqualFold(p, api.PauseManual):
		out.Pause = api.PauseManual
	default:
		d, err := time.ParseDuration(p)
		if err != nil || d < 0 {
			return nil, nil, invalid("rollout.pause %q: want a duration such as 5m, or %q to wait for a promotion", r.Pause, api.PauseManual)
		}
		out.Pause = p
	}
	if r.DeviceTimeout != "" {
		d, err := time.ParseDuration(r.DeviceTimeout)
		if err != nil || d <= 0 {
			return nil, nil, invalid("rollout.deviceTimeout %q: want a positive duration such as 30m", r.DeviceTimeout)
		}
	}
	if a := r.Abort; a != nil {
		if math.IsNaN(a.Threshold) || a.Threshold < 0 || a.Threshold > 100 {
			return nil, nil, invalid("rollout.abort.threshold %v: want a percent from 0 to 100", a.Threshold)
		}
		if a.MinSample < 0 {
			return nil, nil, invalid("rollout.abort.minSample %d: want 0 or more finished devices", a.MinSample)
		}
		abort := *a
		abort.Errors = nil
		for i, k := range a.Errors {
			if k != onfailure.AllErrors && !k.Valid() {
				return nil, nil, invalid("rollout.abort.errors[%d] %q: unknown error kind; want %s or one of %s", i, k, onfailure.AllErrors, kindList())
			}
			abort.Errors = append(abort.Errors, k)
		}
		if len(abort.Errors) == 0 {
			abort.Errors = []onfailure.Kind{onfailure.AllErrors}
		}
		out.Abort = &abort
	}
	targets, err := waveTargets(r.Waves, n, lenient)
	if err != nil {
		return nil, nil, err
	}
	return &out, targets, nil
}

func kindList() string {
	parts := make([]string, len(onfailure.Kinds))
	for i, k := range onfailure.Kinds {
		parts[i] = string(k)
	}
	return strings.Join(parts, ", ")
}

// waveTargets resolves waves against n devices: each a count ("10") or a
// percent ("10%", "all"), counts increasing among counts and percents
// among percents, the last 100%. A percent is rounded up (at least 1
// device); a count is capped at n. A target below the one before it is
// refused, or dropped when lenient.
func waveTargets(waves []string, n int, lenient bool) ([]int, error) {
	if len(waves) == 0 {
		return []int{n}, nil
	}
	if len(waves) > maxWaves {
		return nil, invalid("rollout.waves: %d waves, over the limit of %d", len(waves), maxWaves)
	}
	var (
		targets             []int
		lastCount, prev     int
		lastPct             float64
		lastCountS, prevS   string
		last100, anyPercent bool
	)
	for i, raw := range waves {
		s := strings.TrimSpace(raw)
		var t int
		last100 = false
		switch {
		case strings.EqualFold(s, api.WavesAll):
			s, last100, anyPercent = "100%", true, true
			t = n
			if lastPct >= 100 {
				return nil, invalid("rollout.waves[%d] %q: comes after 100%%", i, raw)
			}
			lastPct = 100
		case strings.HasSuffix(s, "%"):
			p, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(s, "%")), 64)
			if err != nil || math.IsNaN(p) || p <= 0 || p > 100 {
				return nil, invalid("rollout.waves[%d] %q: want a percent above 0 and at most 100, such as 10%%", i, raw)
			}
			if p <= lastPct {
				return nil, invalid("rollout.waves[%d] %q: not above the percent before it (%g%%): the targets are cumulative and must increase", i, raw, lastPct)
			}
			lastPct, anyPercent = p, true
			last100 = p == 100
			t = int(math.Ceil(p * float64(n) / 100))
		default:
			c, err := strconv.Atoi(s)
			if err != nil || c < 1 {
				return nil, invalid("rollout.waves[%d] %q: want a number of devices (such as 10) or a percent of the deployment's devices (such as 10%%)", i, raw)
			}
			if c <= lastCount {
				return nil, invalid("rollout.waves[%d] %q: not above %q before it: the targets are cumulative and must increase", i, raw, lastCountS)
			}
			lastCount, lastCountS = c, raw
			t = c
		}
		t = max(min(t, n), 1)
		switch {
		case t < prev && lenient:
			continue
		case t < prev:
			return nil, invalid("rollout.waves[%d] %q is %d of the %d devices, fewer than the %d of %q before it: the targets are cumulative", i, raw, t, n, prev, prevS)
		case t > prev:
			targets = append(targets, t)
		}
		prev, prevS = t, raw
	}
	if !last100 {
		hint := ""
		if !anyPercent {
			hint = " (the number of devices can change with a selector)"
		}
		return nil, invalid("rollout.waves: the last wave is %q: it must be 100%% or %q, so that every device gets the deployment%s", waves[len(waves)-1], api.WavesAll, hint)
	}
	return targets, nil
}

// waveOf returns the wave (from 1) of the device at index i of a
// deployment's devices in id order.
func waveOf(targets []int, i int) int {
	for w, t := range targets {
		if i < t {
			return w + 1
		}
	}
	return len(targets)
}

// startWave starts wave number n.
func startWave(d *store.Deployment, n int, now time.Time) {
	d.Wave = n
	t := now
	d.Waves[n-1].Started = &t
	d.AwaitingPromotion, d.PausedUntil = false, nil
}

// waveDone reports whether every run of waves 1 to n has finished.
func waveDone(d *store.Deployment, n int) bool {
	for i := 0; i < n && i < len(d.Waves); i++ {
		for s, c := range d.Waves[i].Counts {
			if c > 0 && !runFinished(s) {
				return false
			}
		}
	}
	return true
}

// inFlightCount counts the runs dispatched and not finished.
func inFlightCount(d *store.Deployment) int {
	n := 0
	for s, c := range d.Counts {
		if inFlight(s) {
			n += c
		}
	}
	return n
}

// adopt returns the work's copy of a run read from the store apart: the
// one already in the work when there is one.
func (w *work) adopt(r store.Run) *store.Run {
	k := runKey{r.Deployment, r.Device}
	if c, ok := w.runs[k]; ok && c != nil {
		return c
	}
	w.runs[k] = &r
	return &r
}

// runsAfter returns up to limit (0: all) runs of a deployment after the
// device id after, by device id, as the work has them: a deployment the
// work creates has its runs in the work only.
func (w *work) runsAfter(deployment, after string, limit int) ([]*store.Run, error) {
	var out []*store.Run
	if runs, ok := w.created[deployment]; ok {
		for _, r := range runs {
			if limit > 0 && len(out) == limit {
				break
			}
			if r.Device > after {
				out = append(out, r)
			}
		}
		return out, nil
	}
	runs, err := w.c.st.RunsAfter(w.ctx, deployment, after, limit)
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		out = append(out, w.adopt(r))
	}
	return out, nil
}

// advance moves a deployment on as far as it can now: with a rollout it
// trips the abort threshold, finishes waves, starts the next one (at once,
// after the pause, or on promotion) and dispatches the next devices up to
// the wave's target and maxInFlight; then it settles the deployment's
// status. It is the scheduler: every change that may let a rollout go on
// (an event, a timer, a request) calls it in the same unit of work, so
// what it decides is committed with what caused it.
func (w *work) advance(d *store.Deployment, now time.Time) error {
	defer settle(d, now)
	if d.Rollout == nil || deploymentFinal(d.Status) {
		return nil
	}
	// The rollout's state (tally, waves, cursor) is part of the record.
	w.dirtyDeployments[d.ID] = true
	p := planOf(d.Rollout)
	if a := d.Rollout.Abort; a != nil && d.Abort == nil && d.Cancel == nil {
		t := d.Tally
		if t.Finished >= max(a.MinSample, 1) && float64(t.Failed)*100 > a.Threshold*float64(t.Finished) {
			if err := w.trip(d, now); err != nil {
				return err
			}
		}
	}
	// rollbackOnAbort: once the devices in flight have finished, the
	// Succeeded ones are rolled back.
	if d.Abort != nil && d.Cancel == nil && d.Rollout.RollbackOnAbort && d.Rollback == nil && !anyUnfinished(d) {
		if err := w.rollBack(d, now); err != nil {
			return err
		}
	}
	// A cancelled or aborted rollout starts nothing any more, but the wave
	// it stopped in still finishes when its last device does.
	stopped := d.Cancel != nil || d.Abort != nil
	for d.Wave >= 1 && waveDone(d, d.Wave) {
		wave := &d.Waves[d.Wave-1]
		if wave.Finished == nil {
			t := now
			wave.Finished = &t
			w.dirtyDeployments[d.ID] = true
			w.c.log.Info("rollout wave finished", "deployment", d.ID, "wave", d.Wave, "counts", wave.Counts)
		}
		if stopped || d.Wave == len(d.Waves) || d.AwaitingPromotion {
			break
		}
		if p.manual {
			d.AwaitingPromotion = true
			w.c.log.Info("rollout waits for a promotion", "deployment", d.ID, "wave", d.Wave+1)
			break
		}
		if p.pause > 0 {
			if d.PausedUntil == nil {
				u := wave.Finished.Add(p.pause)
				d.PausedUntil = &u
			}
			if now.Before(*d.PausedUntil) {
				w.wakeAt(d.ID, *d.PausedUntil)
				break
			}
		}
		startWave(d, d.Wave+1, now)
		w.c.log.Info("rollout wave started", "deployment", d.ID, "wave", d.Wave)
	}
	if stopped || d.AwaitingPromotion || d.PausedUntil != nil || d.Wave < 1 {
		return nil
	}
	n := d.Waves[d.Wave-1].Target - d.Dispatched
	if p.maxInFlight > 0 {
		n = min(n, p.maxInFlight-inFlightCount(d))
	}
	if n <= 0 {
		return nil
	}
	runs, err := w.runsAfter(d.ID, d.Cursor, n)
	if err != nil {
		return err
	}
	for _, r := range runs {
		d.Cursor = r.Device
		d.Dispatched++
		if r.Status != api.DeviceWaiting {
			continue
		}
		if err := w.dispatch(d, r, now); err != nil {
			return err
		}
	}
	return nil
}

// trip records that the abort threshold tripped: no device starts any
// more (the runs still Waiting become Skipped); those in flight finish.
func (w *work) trip(d *store.Deployment, now time.Time) error {
	a, t := d.Rollout.Abort, d.Tally
	kinds := make([]string, len(a.Errors))
	for i, k := range a.Errors {
		kinds[i] = string(k)
	}
	d.Abort = &api.AbortState{Time: now, Failed: t.Failed, Finished: t.Finished,
		Reason: fmt.Sprintf("%d of %d finished devices failed with %s: %.4g%%, over the threshold of %g%% (minimum sample %d)",
			t.Failed, t.Finished, strings.Join(kinds, " or "), float64(t.Failed)*100/float64(t.Finished), a.Threshold, a.MinSample)}
	d.AwaitingPromotion, d.PausedUntil = false, nil
	w.dirtyDeployments[d.ID] = true
	w.c.log.Warn("rollout aborted: threshold tripped", "deployment", d.ID, "failed", t.Failed, "finished", t.Finished, "threshold", a.Threshold)
	runs, err := w.runsAfter(d.ID, d.Cursor, 0)
	if err != nil {
		return err
	}
	for _, r := range runs {
		if r.Status != api.DeviceWaiting {
			continue
		}
		setRunStatus(d, &r.DeviceRun, api.DeviceSkipped)
		r.Updated = now
		w.putRun(r)
		w.deviceEvent(d, r, nil)
	}
	return nil
}

// anyUnfinished reports whether some run of the deployment has not
// finished its flow.
func anyUnfinished(d *store.Deployment) bool {
	for s, n := range d.Counts {
		if n > 0 && !runFinished(s) {
			return true
		}
	}
	return false
}

// rollBack starts the rollback on abort (rollbackOnAbort) of a deployment
// whose threshold tripped and whose every run has finished its flow: each
// Succeeded device whose agent lists the rollback command
// (presence.capabilities.commands, as last known) is sent one, stored as
// a pending command before it is published and sent again with the same
// id until the device answers rolled-back; its run becomes RollingBack
// (with a new deadline, when the rollout has a deviceTimeout). A
// Succeeded device whose agent cannot undo stays Succeeded with a note.
// With no Succeeded device there is nothing to roll back: the deployment
// ends Aborted as without the option.
func (w *work) rollBack(d *store.Deployment, now time.Time) error {
	runs, err := w.runsAfter(d.ID, "", 0)
	if err != nil {
		return err
	}
	note := "abort threshold tripped: " + d.Abort.Reason
	p := planOf(d.Rollout)
	st := &api.RollbackState{Time: now}
	for _, r := range runs {
		if r.Status != string(transport.StatusSucceeded) || r.Rollback != nil {
			continue
		}
		dev, err := w.device(r.Device)
		if err != nil {
			return err
		}
		r.Updated = now
		if dev == nil || !dev.Capabilities.HasCommand(transport.CommandRollback) {
			agent := "its agent"
			if dev != nil && dev.Agent != "" {
				agent = "its agent " + dev.Agent
			}
			r.Rollback = &api.RunRollback{Note: fmt.Sprintf("not rolled back: %s does not list the %q command in its presence's capabilities, so it cannot undo the deployment", agent, transport.CommandRollback)}
			st.Unsupported++
			w.putRun(r)
			w.deviceEvent(d, r, nil)
			w.c.log.Warn("device cannot roll back: it stays Succeeded", "deployment", d.ID, "device", r.Device)
			continue
		}
		cmd := store.Command{ID: transport.NewID(), Type: transport.TypeRollback, Device: r.Device, Deployment: d.ID, Time: now, By: "controller", Note: note}
		t := now
		r.Rollback = &api.RunRollback{Command: cmd.ID, Sent: &t}
		setRunStatus(d, &r.DeviceRun, api.DeviceRollingBack)
		if p.timeout > 0 {
			dl := now.Add(p.timeout)
			r.Deadline = &dl
			w.wakeAt(d.ID, dl)
		}
		w.putRun(r)
		w.deviceEvent(d, r, nil)
		w.batch.PutCommands = append(w.batch.PutCommands, cmd)
		w.send = append(w.send, cmd)
		st.Devices++
	}
	if st.Devices+st.Unsupported == 0 {
		return nil
	}
	d.Rollback = st
	w.dirtyDeployments[d.ID] = true
	w.audit(d, api.AuditEntry{Time: now, By: "controller", Action: api.AuditRollback, Devices: st.Devices,
		Note: fmt.Sprintf("%s; rolling back %d succeeded device(s), %d cannot roll back", note, st.Devices, st.Unsupported)})
	w.c.log.Warn("rollout rolls back the succeeded devices", "deployment", d.ID, "devices", st.Devices, "unsupported", st.Unsupported)
	return nil
}

// dispatch makes a run's dispatch: a new message id, stored as a pending
// command and published after the commit; the run becomes Pending, with
// its deadline (rollout deviceTimeout) and guided failure.
func (w *work) dispatch(d *store.Deployment, r *store.Run, now time.Time) error {
	gf, err := w.guidedFailure(d, r.Device)
	if err != nil {
		return err
	}
	cmd := store.Command{ID: transport.NewID(), Type: transport.TypeDispatch, Device: r.Device, Deployment: d.ID, Time: now}
	t := now
	r.Dispatch, r.Dispatched, r.GuidedFailure, r.Updated = cmd.ID, &t, gf, now
	if p := planOf(d.Rollout); p.timeout > 0 {
		dl := now.Add(p.timeout)
		r.Deadline = &dl
		w.wakeAt(d.ID, dl)
	}
	setRunStatus(d, &r.DeviceRun, api.DevicePending)
	w.putRun(r)
	w.dirtyDeployments[d.ID] = true
	if !w.creating {
		w.deviceEvent(d, r, nil)
	}
	w.batch.PutCommands = append(w.batch.PutCommands, cmd)
	w.send = append(w.send, cmd)
	return nil
}

// guidedFailure is what a dispatch to device asks of the agent: the
// deployment's guidedFailure, else the controller's setting when the
// device's labels (as known now) match its selector, else nothing.
func (w *work) guidedFailure(d *store.Deployment, device string) (*api.GuidedFailure, error) {
	if d.GuidedFailure != nil {
		g := *d.GuidedFailure
		return &g, nil
	}
	s := w.c.opts.GuidedFailure
	if s == nil {
		return nil, nil
	}
	dev, err := w.device(device)
	if err != nil || dev == nil || !matches(dev.Labels, s.Selector) {
		return nil, err
	}
	return &api.GuidedFailure{Timeout: s.Timeout.String(), OnTimeout: s.OnTimeout}, nil
}

// timeOut ends the runs in flight whose deadline has passed (TimedOut,
// with a cancel to the device) and asks for a wake at the next deadline.
func (w *work) timeOut(d *store.Deployment, now time.Time) error {
	p := planOf(d.Rollout)
	if p.timeout <= 0 {
		return nil
	}
	runs, err := w.c.st.Runs(w.ctx, d.ID)
	if err != nil {
		return err
	}
	for _, sr := range runs {
		r := w.adopt(sr)
		if r.Status == api.DeviceRollingBack && r.Deadline != nil {
			w.rollbackTimeOut(d, r, now)
			continue
		}
		if !inFlight(r.Status) || r.Deadline == nil {
			continue
		}
		if now.Before(*r.Deadline) {
			w.wakeAt(d.ID, *r.Deadline)
			continue
		}
		old := r.Status
		msg := fmt.Sprintf("did not finish within the rollout's deviceTimeout of %s after its dispatch", d.Rollout.DeviceTimeout)
		setRun(d, &r.DeviceRun, api.DeviceTimedOut, &transport.ErrorInfo{Type: onfailure.Timeout, Message: msg})
		r.Pause, r.Updated = nil, now
		w.putRun(r)
		w.dirtyDeployments[d.ID] = true
		w.deviceEvent(d, r, nil)
		w.batch.DeleteCommands = append(w.batch.DeleteCommands, store.CommandKey{Device: r.Device, Deployment: d.ID, Type: transport.TypeDispatch})
		// Like an operator's cancel: a device that has not started drops
		// the dispatch; one that runs it stops, and its cancel is kept
		// until it reports how the flow ended.
		keep := old != api.DevicePending && old != api.DeviceQueued
		cmd, err := w.cancelCommand(d.ID, r.Device, "controller", "device timeout: "+msg, keep, now)
		if err != nil {
			return err
		}
		w.send = append(w.send, cmd)
		w.c.log.Warn("device timed out", "deployment", d.ID, "device", r.Device, "was", old)
	}
	return nil
}

// rollbackTimeOut ends a rollback on abort that the device has not
// answered by its deadline: the run becomes RollbackFailed (kind Timeout)
// and its rollback is no longer sent. A later rolled-back is stored but
// does not move the run.
func (w *work) rollbackTimeOut(d *store.Deployment, r *store.Run, now time.Time) {
	if now.Before(*r.Deadline) {
		w.wakeAt(d.ID, *r.Deadline)
		return
	}
	msg := fmt.Sprintf("did not answer its rollback within the rollout's deviceTimeout of %s", d.Rollout.DeviceTimeout)
	setRun(d, &r.DeviceRun, string(transport.StatusRollbackFailed), &transport.ErrorInfo{Type: onfailure.Timeout, Message: msg})
	if r.Rollback != nil {
		rb := *r.Rollback
		t := now
		rb.Finished = &t
		r.Rollback = &rb
	}
	if d.Rollback != nil {
		d.Rollback.Failed++
	}
	r.Updated = now
	w.putRun(r)
	w.dirtyDeployments[d.ID] = true
	w.deviceEvent(d, r, nil)
	w.batch.DeleteCommands = append(w.batch.DeleteCommands, store.CommandKey{Device: r.Device, Deployment: d.ID, Type: transport.TypeRollback})
	w.c.log.Warn("rollback timed out", "deployment", d.ID, "device", r.Device)
}

// cancelCommand returns the cancel to send to a device for a deployment:
// the pending one (the same intent: the same id) when there is one, else
// a new one, stored as pending when keep.
func (w *work) cancelCommand(deployment, device, by, note string, keep bool, now time.Time) (store.Command, error) {
	pending, err := w.c.st.Commands(w.ctx, device)
	if err != nil {
		return store.Command{}, err
	}
	for _, p := range pending {
		if p.Deployment == deployment && p.Type == transport.TypeCancel {
			return p, nil
		}
	}
	for _, p := range w.batch.PutCommands {
		if p.Device == device && p.Deployment == deployment && p.Type == transport.TypeCancel {
			return p, nil
		}
	}
	cmd := store.Command{ID: transport.NewID(), Type: transport.TypeCancel, Device: device, Deployment: deployment, Time: now, By: by, Note: note}
	if keep {
		w.batch.PutCommands = append(w.batch.PutCommands, cmd)
	}
	return cmd, nil
}

// rolloutTimers fire each rollout deployment's timer: one per deployment,
// armed for the earliest time it is needed (the end of a pause, a
// device's deadline). The times are stored with the deployment and its
// runs; the timers are only the alarm clock, re-armed from the store when
// the controller starts.
type rolloutTimers struct {
	mu      sync.Mutex
	running bool
	ctx     context.Context
	wg      sync.WaitGroup
	timers  map[string]*rolloutTimer
}

type rolloutTimer struct {
	at   time.Time
	stop func() bool
}

// AfterFunc is how the controller waits: it calls f in its own goroutine
// after d and returns a function that stops it (time.AfterFunc's Stop).
type AfterFunc func(d time.Duration, f func()) (stop func() bool)

func realAfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// startTimers lets timers be armed until stopTimers, and ticks every
// rollout deployment that has not ended, which re-arms its timer from
// the store (a pause's end, the devices' deadlines) and catches up on
// what came due while the controller was away.
func (c *Controller) startTimers(ctx context.Context) {
	c.timers.mu.Lock()
	c.timers.running, c.timers.ctx = true, ctx
	c.timers.timers = map[string]*rolloutTimer{}
	c.timers.mu.Unlock()
	ds, err := c.st.Deployments(ctx)
	if err != nil {
		c.log.Error("read deployments to re-arm rollout timers", "error", err)
		return
	}
	for _, d := range ds {
		if d.Rollout != nil && !deploymentFinal(d.Status) {
			c.tick(ctx, d.ID)
		}
	}
}

// stopTimers stops every timer and waits for the ticks running.
func (c *Controller) stopTimers() {
	c.timers.mu.Lock()
	c.timers.running = false
	for _, t := range c.timers.timers {
		t.stop()
	}
	c.timers.timers = nil
	c.timers.mu.Unlock()
	c.timers.wg.Wait()
}

// arm makes the deployment's timer fire by at (keeping an earlier one).
func (c *Controller) arm(id string, at time.Time) {
	c.timers.mu.Lock()
	defer c.timers.mu.Unlock()
	if !c.timers.running {
		return
	}
	if old := c.timers.timers[id]; old != nil {
		if !old.at.After(at) {
			return
		}
		old.stop()
	}
	t := &rolloutTimer{at: at}
	t.stop = c.afterFunc(max(at.Sub(c.now()), 0), func() { c.fire(id, t) })
	c.timers.timers[id] = t
}

func (c *Controller) fire(id string, t *rolloutTimer) {
	c.timers.mu.Lock()
	if !c.timers.running || c.timers.timers[id] != t {
		c.timers.mu.Unlock()
		return
	}
	delete(c.timers.timers, id)
	c.timers.wg.Add(1)
	ctx := c.timers.ctx
	c.timers.mu.Unlock()
	defer c.timers.wg.Done()
	c.tick(ctx, id)
}

// tick applies what has come due for a deployment: devices past their
// deadline time out, a pause that has ended starts the next wave; then
// the rollout goes on (advance) and the timer is armed for what comes
// next.
func (c *Controller) tick(ctx context.Context, id string) {
	c.mu.Lock()
	w := c.newWork(ctx)
	err := func() error {
		d, err := w.deployment(id)
		if err != nil || d == nil || deploymentFinal(d.Status) {
			return err
		}
		now := c.now().UTC()
		if err := w.timeOut(d, now); err != nil {
			return err
		}
		if err := w.advance(d, now); err != nil {
			return err
		}
		return w.deploymentEvent(d, false)
	}()
	if err == nil {
		err = c.commit(w)
	}
	c.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("rollout timer of a deployment", "deployment", id, "error", err)
		}
		return
	}
	c.after(ctx, w)
}

// after does what a committed unit of work leaves to do: arm its timers
// and publish its commands (with ctx: a request's context should not end
// them, so callers pass context.WithoutCancel).
func (c *Controller) after(ctx context.Context, w *work) {
	for id, t := range w.wake {
		c.arm(id, t)
	}
	if failed, err := c.sendCommands(ctx, w.send); err != nil {
		c.log.Warn("publish commands; they go out again on the next connect or presence", "commands", len(w.send), "failed", failed, "error", err)
	}
}
