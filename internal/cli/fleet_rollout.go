package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/onfailure"
)

// The commands that steer a running deployment (docs/rollouts.md):
// promote, guide, interventions, mark-failed and retry.

func promoteCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf   connFlags
		note string
	)
	c := &cobra.Command{
		Use:   "promote ID [--note TEXT]",
		Short: "Start the next wave of a deployment that waits between waves",
		Long: `Start the next wave of a deployment's rollout that waits between waves:
for a promotion (--pause manual), or for the end of a timed pause, which it
cuts short. The login name and the note are recorded in the deployment's
audit.`,
		Args: Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.Promote(cmd.Context(), a[0], api.Promote{By: operator(), Note: note})
		},
	}
	cf.add(c)
	c.Flags().StringVar(&note, "note", "", "why, recorded with the promotion")
	return c
}

// Promote starts the next wave of a deployment and says which.
func (f *Fleet) Promote(ctx context.Context, id string, body api.Promote) error {
	d, err := f.Client.Promote(ctx, id, body)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, d)
	}
	wave := ""
	if d.Wave >= 1 && d.Wave <= len(d.Waves) {
		w := d.Waves[d.Wave-1]
		wave = fmt.Sprintf(" (%d devices, %d in all)", w.Devices, w.Target)
	}
	fmt.Fprintf(f.Out, "deployment %s: wave %d of %d started%s: %s\n", d.ID, d.Wave, len(d.Waves), wave, countsText(d.Counts))
	return nil
}

// parseGuidance reads a guidance action as an operator types it: any
// case, with or without dashes ("retry", "mark-as-success",
// "MarkAsSuccess").
func parseGuidance(s string) (onfailure.Action, error) {
	norm := strings.NewReplacer("-", "", "_", "").Replace(strings.TrimSpace(s))
	for _, a := range onfailure.GuidanceActions {
		if strings.EqualFold(string(a), norm) {
			return a, nil
		}
	}
	var names []string
	for _, a := range onfailure.GuidanceActions {
		names = append(names, kebab(string(a)))
	}
	return "", fmt.Errorf("guide: action %q: want one of %s", s, strings.Join(names, ", "))
}

// kebab writes a CamelCase name as lowercase words joined by dashes:
// "mark-as-success".
func kebab(s string) string { return strings.ReplaceAll(words(s), " ", "-") }

func guideCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf            connFlags
		device, group string
		step, note    string
		actionList    []string
	)
	for _, a := range onfailure.GuidanceActions {
		actionList = append(actionList, kebab(string(a)))
	}
	c := &cobra.Command{
		Use:   "guide (ID --device D | --group G) ACTION [--step S] [--note TEXT]",
		Short: "Answer a device (or a group of devices) paused for guidance",
		Long: `Answer a device paused for guidance (a ManualIntervention strategy, or guided
failure): "edgeflow guide ID --device D ACTION", or every device of an
intervention group at once: "edgeflow guide --group G ACTION" (the groups:
edgeflow interventions).

ACTION is one of ` + strings.Join(actionList, ", ") + `
(any case; MarkAsSuccess works too). exclude takes the device out of the
deployment: it no longer counts, and its agent ends the flow. The login
name and the note are recorded in the deployment's audit.`,
		Args: func(cmd *cobra.Command, a []string) error {
			want := 2
			if group != "" {
				want = 1
			}
			if len(a) != want {
				if group != "" {
					return Usage(fmt.Errorf("guide --group G: want only ACTION, got %d arguments", len(a)))
				}
				return Usage(fmt.Errorf("guide: want ID and ACTION (with --device D), or --group G and ACTION; got %d arguments", len(a)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			if group != "" {
				if device != "" || step != "" {
					return Usage(errors.New("guide --group: --device and --step do not apply (the group names its devices and step)"))
				}
				return f.GuideGroup(cmd.Context(), group, a[0], note)
			}
			return f.Guide(cmd.Context(), a[0], device, a[1], api.Guide{Step: step, By: operator(), Note: note})
		},
	}
	cf.add(c)
	c.Flags().StringVar(&device, "device", "", "the paused device")
	c.Flags().StringVar(&group, "group", "", "answer every device of this intervention group (edgeflow interventions)")
	c.Flags().StringVar(&step, "step", "", "the paused step (default: the one the device paused at)")
	c.Flags().StringVar(&note, "note", "", "why, recorded with the guidance")
	return c
}

// Guide answers one paused device of a deployment with action.
func (f *Fleet) Guide(ctx context.Context, id, device, action string, body api.Guide) error {
	if device == "" {
		return Usage(errors.New("guide: --device D is required (or --group G)"))
	}
	a, err := parseGuidance(action)
	if err != nil {
		return Usage(err)
	}
	body.Action = a
	d, err := f.Client.Guide(ctx, id, device, body)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, d)
	}
	if a == onfailure.Exclude {
		fmt.Fprintf(f.Out, "device %s excluded from deployment %s; its agent ends the flow: %s\n", device, d.ID, countsText(d.Counts))
		return nil
	}
	fmt.Fprintf(f.Out, "guidance %s sent to %s of deployment %s; it applies once the device has it (edgeflow watch %s follows it)\n", a, device, d.ID, d.ID)
	return nil
}

// GuideGroup answers every device of an intervention group with action.
func (f *Fleet) GuideGroup(ctx context.Context, group, action, note string) error {
	a, err := parseGuidance(action)
	if err != nil {
		return Usage(err)
	}
	r, err := f.Client.GuideGroup(ctx, group, api.Guide{Action: a, By: operator(), Note: note})
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, r)
	}
	fmt.Fprintf(f.Out, "guidance %s sent to %d device(s) of group %s:\n", r.Action, len(r.Guided), r.Group)
	tw := table(f.Out, "  DEPLOYMENT", "DEVICE")
	for _, g := range r.Guided {
		row(tw, "  "+g.Deployment, g.Device)
	}
	return tw.Flush()
}

func interventionsCommand(stdout, stderr io.Writer) *cobra.Command {
	var cf connFlags
	c := &cobra.Command{
		Use:   "interventions",
		Short: "List the devices paused for guidance, grouped by flow, step, error kind and message",
		Long: `List the devices paused for guidance in deployments that have not ended,
grouped by flow, step, error kind and message. One guidance answers a whole
group: edgeflow guide --group G ACTION.`,
		Args: Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.Interventions(cmd.Context())
		},
	}
	cf.add(c)
	return c
}

// Interventions prints the paused devices by group: a line per group
// (its id, flow, step and how many devices), its error, and a row per
// device (DEPLOYMENT, DEVICE, PAUSED, TIMEOUT).
func (f *Fleet) Interventions(ctx context.Context) error {
	gs, err := f.Client.Interventions(ctx)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, api.InterventionList{Interventions: nonNil(gs)})
	}
	if len(gs) == 0 {
		fmt.Fprintln(f.Err, "no device waits for guidance")
		return nil
	}
	now := f.Now()
	for i, g := range gs {
		if i > 0 {
			fmt.Fprintln(f.Out)
		}
		where := "step " + cmpOr(g.Step, "-")
		switch {
		case g.Step == "" && g.StepGroup != "":
			where = "group " + g.StepGroup
		case g.StepGroup != "":
			where += " (group " + g.StepGroup + ")"
		}
		fmt.Fprintf(f.Out, "group %s: flow %s, %s: %d device(s) paused\n", g.Group, g.Flow, where, len(g.Devices))
		if g.Kind != "" || g.Message != "" {
			fmt.Fprintf(f.Out, "  %s: %s\n", cmpOr(string(g.Kind), "-"), oneLine(g.Message))
		}
		tw := table(f.Out, "  DEPLOYMENT", "DEVICE", "PAUSED", "TIMEOUT")
		for _, d := range g.Devices {
			row(tw, "  "+d.Deployment, d.Device, age(now, d.Since), until(now, d.Until))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(f.Err, "\nanswer a group: edgeflow guide --group G ACTION [--note TEXT]; one device: edgeflow guide ID --device D ACTION")
	return nil
}

// until says when t comes: "in 55m", "due"; "" for nil.
func until(now time.Time, t *time.Time) string {
	if t == nil {
		return ""
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return "due"
	case d < time.Minute:
		return fmt.Sprintf("in %ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("in %dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("in %dh", int(d.Hours()))
	}
	return fmt.Sprintf("in %dd", int(d.Hours()/24))
}

func markFailedCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf         connFlags
		devices    []string
		all        bool
		step, note string
	)
	c := &cobra.Command{
		Use:   "mark-failed ID (--device D... | --all) [--step S] [--note TEXT]",
		Short: "Stop the running step of devices of a deployment as failed (UserMarkedFailure)",
		Long: `Stop the running step of devices of a deployment as failed: the step fails
with the error kind UserMarkedFailure and the flow's failure strategies
decide what follows. --device D (repeatable, or comma-separated) names
Running devices; --all takes every Running device of the deployment.

The controller must allow it (edgeflow serve --allow-mark-failed); else it
refuses (403) and this command exits 1.`,
		Args: Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.MarkFailed(cmd.Context(), a[0], api.MarkFailed{Devices: devices, All: all, Step: step, By: operator(), Note: note})
		},
	}
	cf.add(c)
	c.Flags().StringSliceVar(&devices, "device", nil, "a Running device (repeatable, or comma-separated)")
	c.Flags().BoolVar(&all, "all", false, "every Running device of the deployment")
	c.Flags().StringVar(&step, "step", "", "the step to stop (default: whichever runs)")
	c.Flags().StringVar(&note, "note", "", "why, recorded with the request")
	return c
}

// MarkFailed asks the controller to stop the running step of devices.
func (f *Fleet) MarkFailed(ctx context.Context, id string, body api.MarkFailed) error {
	for i, d := range body.Devices {
		if body.Devices[i] = strings.TrimSpace(d); body.Devices[i] == "" {
			return Usage(errors.New("mark-failed: --device: an empty device id"))
		}
	}
	if (len(body.Devices) > 0) == body.All {
		return Usage(errors.New("mark-failed: say which devices: --device D... or --all (not both)"))
	}
	d, err := f.Client.MarkFailed(ctx, id, body)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, d)
	}
	which := strings.Join(body.Devices, ", ")
	if body.All {
		n := 0
		if len(d.Audit) > 0 {
			n = d.Audit[len(d.Audit)-1].Devices
		}
		which = fmt.Sprintf("every Running device (%d)", n)
	}
	fmt.Fprintf(f.Out, "mark-failed sent to %s of deployment %s; the failure strategies decide what follows (edgeflow watch %s follows it)\n", which, d.ID, d.ID)
	return nil
}

func retryCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf         connFlags
		failedOnly bool
		note       string
	)
	c := &cobra.Command{
		Use:   "retry ID [--failed-only] [--note TEXT]",
		Short: "Deploy again, as a new deployment, to the devices of a finished deployment that did not succeed",
		Long: `Make a new deployment of a finished one's bundle, vars, rollout and guided
failure, to its devices that did not succeed (every one but Succeeded and
Excluded), or with --failed-only to those that failed (not the Cancelled
or Skipped ones). The new deployment's id is printed on stdout; it names
the first as retryOf.`,
		Args: Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.Retry(cmd.Context(), a[0], api.Retry{FailedOnly: failedOnly, By: operator(), Note: note})
		},
	}
	cf.add(c)
	c.Flags().BoolVar(&failedOnly, "failed-only", false, "only the devices that failed")
	c.Flags().StringVar(&note, "note", "", "why, recorded with the retry")
	return c
}

// Retry makes a new deployment of a finished deployment's failed devices
// and prints its id.
func (f *Fleet) Retry(ctx context.Context, id string, body api.Retry) error {
	d, err := f.Client.Retry(ctx, id, body)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, d)
	}
	fmt.Fprintln(f.Out, d.ID)
	n := 0
	for _, c := range d.Counts {
		n += c
	}
	fmt.Fprintf(f.Err, "deployment %s retries %s on %d device(s): %s (edgeflow watch %s follows it)\n", d.ID, id, n, countsText(d.Counts), d.ID)
	return nil
}

// rolloutText says a deployment's rollout in one line: "waves 1,10%,100%,
// at most 5 in flight, pause manual, abort over 20% of at least 5
// finished (AllErrors), device timeout 30m".
func rolloutText(r *api.Rollout) string {
	var parts []string
	if len(r.Waves) > 0 {
		parts = append(parts, "waves "+strings.Join(r.Waves, ","))
	}
	if r.MaxInFlight > 0 {
		parts = append(parts, fmt.Sprintf("at most %d in flight", r.MaxInFlight))
	}
	if r.Pause != "" {
		parts = append(parts, "pause "+r.Pause)
	}
	if a := r.Abort; a != nil {
		kinds := make([]string, len(a.Errors))
		for i, k := range a.Errors {
			kinds[i] = string(k)
		}
		parts = append(parts, fmt.Sprintf("abort over %g%% of at least %d finished (%s)", a.Threshold, max(a.MinSample, 1), strings.Join(kinds, ",")))
	}
	if r.RollbackOnAbort {
		parts = append(parts, "roll back on abort")
	}
	if r.DeviceTimeout != "" {
		parts = append(parts, "device timeout "+r.DeviceTimeout)
	}
	if len(parts) == 0 {
		return "one wave"
	}
	return strings.Join(parts, ", ")
}

// waveState says where a rollout stands: "wave 2 of 3", and why it waits.
func waveState(d *api.Deployment, now time.Time) string {
	if len(d.Waves) == 0 {
		return ""
	}
	s := fmt.Sprintf("wave %d of %d", d.Wave, len(d.Waves))
	switch {
	case d.Abort != nil:
		s += ": aborted: " + d.Abort.Reason
		if d.Rollback != nil {
			s += "; " + rollbackText(d.Rollback)
		}
	case d.AwaitingPromotion:
		s += fmt.Sprintf(" finished: the next waits for a promotion (edgeflow promote %s)", d.ID)
	case d.PausedUntil != nil:
		s += fmt.Sprintf(" finished: the next starts at %s (%s; edgeflow promote %s starts it now)",
			d.PausedUntil.UTC().Format(time.RFC3339), until(now, d.PausedUntil), d.ID)
	}
	return s
}

// rollbackText says how a rollback on abort stands: "rolled back 1 of 2
// succeeded devices, 1 rolling back, 1 failed, 1 cannot roll back".
func rollbackText(r *api.RollbackState) string {
	s := fmt.Sprintf("rolled back %d of %d succeeded device(s)", r.RolledBack, r.Devices+r.Unsupported)
	if n := r.Pending(); n > 0 {
		s += fmt.Sprintf(", %d rolling back", n)
	}
	if r.Failed > 0 {
		s += fmt.Sprintf(", %d failed to", r.Failed)
	}
	if r.Unsupported > 0 {
		s += fmt.Sprintf(", %d cannot (their agent lacks the rollback command)", r.Unsupported)
	}
	return s
}

// auditLine says one audit entry: "2030-01-02T11:55:00Z alice guide
// edge-3 Retry (step migrate): db is back".
func auditLine(e api.AuditEntry) string {
	what := e.Action
	switch e.Action {
	case api.AuditGuide:
		what += " " + string(e.Guidance)
	case api.AuditPromote:
		what += fmt.Sprintf(" to wave %d", e.Wave)
	case api.AuditRetry:
		what += " as " + e.Deployment
	}
	switch {
	case e.Device != "":
		what += " " + e.Device
	case e.Group != "" && e.Devices > 0:
		what += fmt.Sprintf(" %d devices", e.Devices)
	case e.Devices > 0:
		what += fmt.Sprintf(" %d devices", e.Devices)
	}
	if e.Group != "" {
		what += " of group " + e.Group
	}
	if e.Step != "" {
		what += " (step " + e.Step + ")"
	}
	return fmt.Sprintf("%s  %s  %s%s", e.Time.UTC().Format(time.RFC3339), cmpOr(e.By, "(unknown)"), what, noteSuffix(e.Note))
}

// showRollout prints a deployment's waves, paused devices and audit, as
// deployment show does after its devices.
func (f *Fleet) showRollout(d *api.Deployment, now time.Time) error {
	if len(d.Waves) > 0 {
		fmt.Fprintln(f.Out)
		tw := table(f.Out, "WAVE", "DEVICES", "TARGET", "STATUS", "PROGRESS")
		for _, w := range d.Waves {
			row(tw, fmt.Sprint(w.Number), fmt.Sprint(w.Devices), fmt.Sprint(w.Target), w.Status, countsText(w.Counts))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	var paused []api.DeviceRun
	for _, r := range d.Devices {
		if r.Pause != nil {
			paused = append(paused, r)
		}
	}
	if len(paused) > 0 {
		fmt.Fprintln(f.Out, "\npaused for guidance (edgeflow guide "+d.ID+" --device D ACTION):")
		for _, r := range paused {
			p := r.Pause
			line := fmt.Sprintf("  %s: %s", r.Device, strings.TrimPrefix(pauseWhere(p), " "))
			if p.Error != nil {
				line += " (" + errText(p.Error, 0) + ")"
			}
			line += ", paused " + age(now, p.Since)
			if p.Until != nil {
				line += ", times out " + until(now, p.Until)
			}
			fmt.Fprintln(f.Out, line)
		}
	}
	if d.Rollback != nil {
		fmt.Fprintln(f.Out, "\nrollback on abort: "+rollbackText(d.Rollback)+":")
		for _, r := range d.Devices {
			rb := r.Rollback
			if rb == nil {
				continue
			}
			line := fmt.Sprintf("  %s: %s", r.Device, r.Status)
			switch {
			case rb.Note != "":
				line += ": " + oneLine(rb.Note)
			case rb.Refused && r.Error != nil:
				line += ": refused: " + errText(r.Error, 0)
			case r.Error != nil:
				line += ": " + errText(r.Error, 0)
			}
			fmt.Fprintln(f.Out, line)
		}
	}
	if len(d.Audit) > 0 {
		fmt.Fprintln(f.Out, "\naudit:")
		for _, e := range slices.Clone(d.Audit) {
			fmt.Fprintln(f.Out, "  "+auditLine(e))
		}
	}
	return nil
}

// pauseWhere says what a pause waits at: "step migrate", "group app".
func pauseWhere(p *api.RunPause) string {
	switch {
	case p.Step != "" && p.Group != "":
		return "step " + p.Step + " of group " + p.Group
	case p.Step != "":
		return "step " + p.Step
	case p.Group != "":
		return "group " + p.Group
	}
	return "a step"
}
