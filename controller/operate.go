package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// The operator's requests on a running deployment: guidance for paused
// devices (one, or a whole intervention group), mark-failed, promotion
// of the next wave, and retry. Each is recorded in the deployment's
// audit, in the same commit as what it does.

// mutate runs fn on a new work under the state lock, commits, publishes
// the feed, then does what the work leaves to do (publish commands, arm
// timers) without the request's cancellation.
func (c *Controller) mutate(ctx context.Context, op string, fn func(w *work, now time.Time) error) error {
	c.mu.Lock()
	w := c.newWork(ctx)
	err := fn(w, c.now().UTC())
	if err == nil {
		err = c.commit(w)
	}
	c.mu.Unlock()
	if err != nil {
		return wrapUnlessRefused(err, op)
	}
	c.after(context.WithoutCancel(ctx), w)
	return nil
}

// liveDeployment returns a deployment of the work that exists and has not
// ended.
func liveDeployment(w *work, id string) (*store.Deployment, error) {
	d, err := w.deployment(id)
	switch {
	case err != nil:
		return nil, err
	case d == nil:
		return nil, notFound("deployment %s not found", id)
	case deploymentFinal(d.Status):
		return nil, conflict("deployment %s has already ended: %s", id, d.Status)
	}
	return d, nil
}

// parseAction reads a guidance action, in any case ("retry", "Retry").
func parseAction(a onfailure.Action) (onfailure.Action, error) {
	for _, g := range onfailure.GuidanceActions {
		if strings.EqualFold(string(g), string(a)) {
			return g, nil
		}
	}
	if a == "" {
		return "", invalid("action: missing; want one of %s", actionList(onfailure.GuidanceActions))
	}
	return "", invalid("action %q: want one of %s", a, actionList(onfailure.GuidanceActions))
}

// checkStep checks an optional step name.
func checkStep(step string) error {
	if len(step) > transport.MaxNameLen || strings.ContainsAny(step, "\x00\n\r") {
		return invalid("step %.32q: want a step name of at most %d bytes", step, transport.MaxNameLen)
	}
	return nil
}

// checkGuide checks a guidance request and returns it normalized.
func checkGuide(g api.Guide) (api.Guide, error) {
	a, err := parseAction(g.Action)
	if err != nil {
		return g, err
	}
	g.Action = a
	if err := checkStep(g.Step); err != nil {
		return g, err
	}
	return g, checkWho(g.By, g.Note)
}

// Guide answers a device paused for guidance in a deployment: it stores a
// guide command (sent again until the device reports it resumed or its
// flow ended) and publishes it, and records it in the audit. Exclude
// also takes the device out of the deployment at once (Excluded: final,
// out of the abort threshold's count); the agent ends its flow. A device
// that is not Paused is a conflict.
func (c *Controller) Guide(ctx context.Context, id, device string, g api.Guide) (api.Deployment, error) {
	g, err := checkGuide(g)
	if err != nil {
		return api.Deployment{}, err
	}
	err = c.mutate(ctx, "guide device "+device+" of deployment "+id, func(w *work, now time.Time) error {
		d, err := w.deployment(id)
		if err != nil {
			return err
		}
		if d == nil {
			return notFound("deployment %s not found", id)
		}
		r, err := w.run(id, device)
		if err != nil {
			return err
		}
		if r == nil {
			return notFound("device %s is not in deployment %s", device, id)
		}
		step, err := c.guide(w, d, r, g, now)
		if err != nil {
			return err
		}
		w.audit(d, api.AuditEntry{Time: now, By: g.By, Action: api.AuditGuide, Device: device, Step: step, Guidance: g.Action, Note: g.Note})
		if err := w.advance(d, now); err != nil {
			return err
		}
		return w.deploymentEvent(d, false)
	})
	if err != nil {
		return api.Deployment{}, err
	}
	c.log.Info("guidance sent", "deployment", id, "device", device, "action", g.Action, "by", g.By)
	return c.Deployment(ctx, id)
}

// guide makes the guide command of a paused run and, for Exclude, takes
// the run out of the deployment. It returns the step it names.
func (c *Controller) guide(w *work, d *store.Deployment, r *store.Run, g api.Guide, now time.Time) (string, error) {
	if r.Status != string(transport.StatusPaused) {
		return "", conflict("device %s is %s in deployment %s, not Paused: only a device paused for guidance takes it", r.Device, r.Status, d.ID)
	}
	step := g.Step
	if p := r.Pause; p != nil {
		switch {
		case step == "":
			step = p.Step
		case step != p.Step && step != p.Group:
			return "", conflict("device %s of deployment %s is paused at %s, not at %s", r.Device, d.ID, pauseWhere(p), step)
		}
	}
	cmd := store.Command{ID: transport.NewID(), Type: transport.TypeGuide, Device: r.Device, Deployment: d.ID, Time: now,
		By: g.By, Note: g.Note, Step: step, Action: g.Action}
	// One guide pending per device and deployment: the latest answer.
	w.batch.PutCommands = append(w.batch.PutCommands, cmd)
	w.send = append(w.send, cmd)
	if g.Action == onfailure.Exclude {
		setRunStatus(d, &r.DeviceRun, api.DeviceExcluded)
		r.Pause, r.Updated = nil, now
		w.putRun(r)
		w.dirtyDeployments[d.ID] = true
		w.deviceEvent(d, r, nil)
	}
	return step, nil
}

// pauseWhere names what a pause waits at: "step migrate", "group app".
func pauseWhere(p *api.RunPause) string {
	if p.Step != "" {
		return "step " + p.Step
	}
	return "group " + p.Group
}

// pausedRun is a paused run of a live deployment, with its flow.
type pausedRun struct {
	flow string
	run  store.Run
}

// groupOf returns a paused run's intervention group: its id and what it
// is keyed by.
func groupOf(p pausedRun) api.Intervention {
	g := api.Intervention{Flow: p.flow}
	if pause := p.run.Pause; pause != nil {
		g.Step, g.StepGroup = pause.Step, pause.Group
		if pause.Error != nil {
			g.Kind, g.Message = pause.Error.Type, pause.Error.Message
		}
	} else {
		// A pause reported before the controller kept its details: the
		// paused step, if the run shows one.
		for _, s := range p.run.Steps {
			if s.Status == string(transport.StatusPaused) && s.Rollback == "" {
				g.Step, g.StepGroup = s.Name, s.Group
				if s.Error != nil {
					g.Kind, g.Message = s.Error.Type, s.Error.Message
				}
			}
		}
	}
	sum := sha256.Sum256([]byte(strings.Join([]string{g.Flow, g.Step, g.StepGroup, string(g.Kind), g.Message}, "\x00")))
	g.Group = "g-" + hex.EncodeToString(sum[:6])
	return g
}

// pausedRuns returns the paused runs of every deployment that has one.
func (c *Controller) pausedRuns(ctx context.Context) ([]pausedRun, error) {
	ds, err := c.st.Deployments(ctx)
	if err != nil {
		return nil, err
	}
	var out []pausedRun
	for _, d := range ds {
		if deploymentFinal(d.Status) || d.Counts[string(transport.StatusPaused)] == 0 {
			continue
		}
		b, err := c.st.Bundle(ctx, d.Bundle)
		if err != nil {
			return nil, fmt.Errorf("deployment %s: %w", d.ID, err)
		}
		runs, err := c.st.Runs(ctx, d.ID)
		if err != nil {
			return nil, fmt.Errorf("deployment %s: %w", d.ID, err)
		}
		for _, r := range runs {
			if r.Status == string(transport.StatusPaused) {
				out = append(out, pausedRun{flow: b.Flow, run: r})
			}
		}
	}
	return out, nil
}

// Interventions returns the devices paused for guidance in deployments
// that have not ended, grouped by flow, step, error kind and message:
// groups in that order, each group's devices oldest pause first.
func (c *Controller) Interventions(ctx context.Context) ([]api.Intervention, error) {
	runs, err := c.pausedRuns(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]*api.Intervention{}
	for _, p := range runs {
		g := groupOf(p)
		have := byID[g.Group]
		if have == nil {
			have = &g
			byID[g.Group] = have
		}
		pr := api.PausedRun{Deployment: p.run.Deployment, Device: p.run.Device, Since: p.run.Updated}
		if pause := p.run.Pause; pause != nil {
			pr.Since, pr.Until = pause.Since, pause.Until
		}
		have.Devices = append(have.Devices, pr)
	}
	out := make([]api.Intervention, 0, len(byID))
	for _, g := range byID {
		slices.SortFunc(g.Devices, func(a, b api.PausedRun) int {
			return cmp.Or(a.Since.Compare(b.Since), strings.Compare(a.Deployment, b.Deployment), strings.Compare(a.Device, b.Device))
		})
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b api.Intervention) int {
		return cmp.Or(strings.Compare(a.Flow, b.Flow), strings.Compare(a.Step, b.Step), strings.Compare(a.StepGroup, b.StepGroup),
			strings.Compare(string(a.Kind), string(b.Kind)), strings.Compare(a.Message, b.Message))
	})
	return out, nil
}

// GuideGroup answers every device of an intervention group at once, each
// as Guide does, and records one audit entry per deployment. A group with
// no paused device (unknown, or answered already) is not found.
func (c *Controller) GuideGroup(ctx context.Context, group string, g api.Guide) (api.GuideResult, error) {
	if g.Step != "" {
		return api.GuideResult{}, invalid("step: not taken with a group: the group names its step")
	}
	g, err := checkGuide(g)
	if err != nil {
		return api.GuideResult{}, err
	}
	res := api.GuideResult{Group: group, Action: g.Action, Guided: []api.PausedRun{}}
	err = c.mutate(ctx, "guide intervention group "+group, func(w *work, now time.Time) error {
		runs, err := c.pausedRuns(w.ctx)
		if err != nil {
			return err
		}
		perDeployment := map[string][]string{}
		var (
			order []string
			step  string
		)
		for _, p := range runs {
			if groupOf(p).Group != group {
				continue
			}
			d, err := w.deployment(p.run.Deployment)
			if err != nil {
				return err
			}
			r := w.adopt(p.run)
			if step, err = c.guide(w, d, r, g, now); err != nil {
				return err
			}
			if perDeployment[d.ID] == nil {
				order = append(order, d.ID)
			}
			perDeployment[d.ID] = append(perDeployment[d.ID], r.Device)
			pr := api.PausedRun{Deployment: d.ID, Device: r.Device, Since: p.run.Updated}
			if pause := p.run.Pause; pause != nil {
				pr.Since, pr.Until = pause.Since, pause.Until
			}
			res.Guided = append(res.Guided, pr)
		}
		if len(order) == 0 {
			return notFound("no device waits for guidance in intervention group %s (edgeflow interventions lists the groups)", group)
		}
		for _, id := range order {
			d := w.deployments[id]
			e := api.AuditEntry{Time: now, By: g.By, Action: api.AuditGuide, Step: step, Guidance: g.Action, Group: group, Note: g.Note}
			if devs := perDeployment[id]; len(devs) == 1 {
				e.Device = devs[0]
			} else {
				e.Devices = len(devs)
			}
			w.audit(d, e)
			if err := w.advance(d, now); err != nil {
				return err
			}
			if err := w.deploymentEvent(d, false); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return api.GuideResult{}, err
	}
	c.log.Info("guidance sent to a group", "group", group, "action", g.Action, "devices", len(res.Guided), "by", g.By)
	return res, nil
}

// MarkFailed stops the running step of devices of a deployment as failed
// (UserMarkedFailure): a mark-failed command to each, stored until the
// device reports the step failed, a pause or the flow's end. It is
// refused (forbidden) unless Options.AllowMarkFailed. Named devices must
// be Running; All takes every Running device.
func (c *Controller) MarkFailed(ctx context.Context, id string, req api.MarkFailed) (api.Deployment, error) {
	if !c.opts.AllowMarkFailed {
		return api.Deployment{}, errMarkFailedOff
	}
	if (len(req.Devices) > 0) == req.All {
		return api.Deployment{}, invalid("give exactly one of devices (a list of device ids) and all (every running device)")
	}
	if err := checkStep(req.Step); err != nil {
		return api.Deployment{}, err
	}
	if err := checkWho(req.By, req.Note); err != nil {
		return api.Deployment{}, err
	}
	seen := map[string]bool{}
	for i, dev := range req.Devices {
		if err := transport.CheckDeviceID(dev); err != nil {
			return api.Deployment{}, invalid("devices[%d]: %v", i, err)
		}
		if seen[dev] {
			return api.Deployment{}, invalid("devices[%d]: device %s is listed twice", i, dev)
		}
		seen[dev] = true
	}
	var marked []string
	err := c.mutate(ctx, "mark-failed in deployment "+id, func(w *work, now time.Time) error {
		d, err := liveDeployment(w, id)
		if err != nil {
			return err
		}
		var runs []*store.Run
		if req.All {
			all, err := c.st.Runs(w.ctx, id)
			if err != nil {
				return err
			}
			for _, r := range all {
				if r.Status == string(transport.StatusRunning) {
					runs = append(runs, w.adopt(r))
				}
			}
			if len(runs) == 0 {
				return conflict("no device of deployment %s is Running (%s): nothing to mark failed", id, formatCounts(d.Counts))
			}
		}
		for _, dev := range req.Devices {
			r, err := w.run(id, dev)
			if err != nil {
				return err
			}
			if r == nil {
				return notFound("device %s is not in deployment %s", dev, id)
			}
			if r.Status != string(transport.StatusRunning) {
				hint := ""
				switch r.Status {
				case string(transport.StatusPaused):
					hint = "; it waits for guidance: guide it instead (edgeflow guide)"
				case api.DeviceWaiting, api.DevicePending, api.DeviceQueued:
					hint = "; it has not started: cancel the deployment to stop it before it does"
				}
				return conflict("device %s is %s in deployment %s: only a Running device has a running step to mark failed%s", dev, r.Status, id, hint)
			}
			runs = append(runs, r)
		}
		for _, r := range runs {
			cmd := store.Command{ID: transport.NewID(), Type: transport.TypeMarkFailed, Device: r.Device, Deployment: id, Time: now,
				By: req.By, Note: req.Note, Step: req.Step}
			w.batch.PutCommands = append(w.batch.PutCommands, cmd)
			w.send = append(w.send, cmd)
			marked = append(marked, r.Device)
			if !req.All {
				w.audit(d, api.AuditEntry{Time: now, By: req.By, Action: api.AuditMarkFailed, Device: r.Device, Step: req.Step, Note: req.Note})
			}
		}
		if req.All {
			w.audit(d, api.AuditEntry{Time: now, By: req.By, Action: api.AuditMarkFailed, Devices: len(runs), Step: req.Step, Note: req.Note})
		}
		return nil
	})
	if err != nil {
		return api.Deployment{}, err
	}
	c.log.Info("mark-failed sent", "deployment", id, "devices", len(marked), "by", req.By)
	return c.Deployment(ctx, id)
}

// errMarkFailedOff is MarkFailed's answer on a controller that does not
// allow it.
var errMarkFailedOff = forbidden("mark-failed is turned off on this controller: it stops running steps on devices, so the controller must allow it (edgeflow serve --allow-mark-failed); see docs/rollouts.md")

func formatCounts(counts map[string]int) string {
	var parts []string
	for _, s := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
	}
	return strings.Join(parts, ", ")
}

// Promote starts the next wave of a rollout that waits between waves:
// for a promotion (pause "manual") or for the end of a timed pause (which
// it cuts short). A deployment whose current wave is still running, that
// has no next wave, or that is aborting or cancelling is a conflict.
func (c *Controller) Promote(ctx context.Context, id string, req api.Promote) (api.Deployment, error) {
	if err := checkWho(req.By, req.Note); err != nil {
		return api.Deployment{}, err
	}
	var wave int
	err := c.mutate(ctx, "promote deployment "+id, func(w *work, now time.Time) error {
		d, err := liveDeployment(w, id)
		if err != nil {
			return err
		}
		switch {
		case d.Rollout == nil:
			return conflict("deployment %s has no rollout: every device got it at once, so there is no wave to promote", id)
		case d.Cancel != nil:
			return conflict("deployment %s is being cancelled: no device starts any more", id)
		case d.Abort != nil:
			return conflict("deployment %s aborted: %s; no device starts any more (edgeflow retry makes a new deployment)", id, d.Abort.Reason)
		case d.AwaitingPromotion || d.PausedUntil != nil:
		case d.Wave >= len(d.Waves):
			return conflict("deployment %s is in its last wave (%d of %d): there is no next wave to promote", id, d.Wave, len(d.Waves))
		default:
			cur := d.Waves[d.Wave-1]
			left := 0
			for s, n := range cur.Counts {
				if !runFinished(s) {
					left += n
				}
			}
			return conflict("wave %d of deployment %s is still running (%d of its devices have not finished): promote once it has finished", d.Wave, id, left)
		}
		startWave(d, d.Wave+1, now)
		wave = d.Wave
		w.audit(d, api.AuditEntry{Time: now, By: req.By, Action: api.AuditPromote, Wave: d.Wave, Note: req.Note})
		if err := w.advance(d, now); err != nil {
			return err
		}
		return w.deploymentEvent(d, false)
	})
	if err != nil {
		return api.Deployment{}, err
	}
	c.log.Info("deployment promoted", "deployment", id, "wave", wave, "by", req.By)
	return c.Deployment(ctx, id)
}

// Retry makes a new deployment of a deployment that has ended: the same
// bundle, vars, rollout and guided failure, to its devices that failed
// (FailedOnly) or that did not succeed (all but Succeeded and Excluded
// ones). The new deployment's RetryOf names the first, whose Retries and
// audit record it. A deployment that has not ended, or has no such
// device, is a conflict.
func (c *Controller) Retry(ctx context.Context, id string, req api.Retry) (api.Deployment, error) {
	if err := checkWho(req.By, req.Note); err != nil {
		return api.Deployment{}, err
	}
	var created string
	err := c.mutate(ctx, "retry deployment "+id, func(w *work, now time.Time) error {
		first, err := w.deployment(id)
		if err != nil {
			return err
		}
		if first == nil {
			return notFound("deployment %s not found", id)
		}
		if !deploymentFinal(first.Status) {
			return conflict("deployment %s is still %s: retry it once it has ended (edgeflow cancel stops it)", id, first.Status)
		}
		runs, err := c.st.Runs(w.ctx, id)
		if err != nil {
			return err
		}
		var devices []string
		for _, r := range runs {
			if req.FailedOnly && runFailed(r.Status) ||
				!req.FailedOnly && r.Status != string(transport.StatusSucceeded) && r.Status != api.DeviceExcluded {
				devices = append(devices, r.Device)
			}
		}
		if len(devices) == 0 {
			what := "unsuccessful (not Succeeded nor Excluded)"
			if req.FailedOnly {
				what = "failed"
			}
			return conflict("deployment %s has no %s device to retry (%s)", id, what, formatCounts(first.Counts))
		}
		s, err := c.check(w.ctx, api.CreateDeployment{Bundle: first.Bundle, Devices: devices, Vars: first.Vars,
			Rollout: first.Rollout, GuidedFailure: first.GuidedFailure, FailureStrategies: rawStrategies(first.FailureStrategies)}, true)
		if err != nil {
			return err
		}
		// The retry keeps the first's copy of its strategies (and says
		// which set they came from), whatever the set says now.
		s.retryOf, s.strategySet = id, first.StrategySet
		d, err := w.create(s, now)
		if err != nil {
			return err
		}
		created = d.ID
		first.Retries = append(first.Retries, d.ID)
		w.audit(first, api.AuditEntry{Time: now, By: req.By, Action: api.AuditRetry, Deployment: d.ID, Devices: len(devices), Note: req.Note})
		return nil
	})
	if err != nil {
		return api.Deployment{}, err
	}
	c.log.Info("deployment retried", "deployment", id, "retry", created, "failed_only", req.FailedOnly, "by", req.By)
	return c.Deployment(ctx, created)
}
