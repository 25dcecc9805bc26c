package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/client"
	"github.com/edgeflow/edgeflow/transport"
)

func watchCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf      connFlags
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "watch ID [--timeout D]",
		Short: "Follow a deployment until it ends",
		Long: `Follow a deployment until it ends.

On a terminal, a progress bar of finished devices with their counts by
state is redrawn in place, and every failing step is printed as it
happens; elsewhere (a pipe, a CI log) each change is one plain line. With
-o json each event of the controller's stream is one JSON line.

A rollout's waves are shown as they start and finish, and its pauses: a
deployment that waits for a promotion (edgeflow promote ID) or for
guidance (edgeflow interventions) is not over, so watch keeps waiting; use
--timeout to bound it.

Exit codes: 0 every device succeeded; 1 any failed, rolled back, timed out
or was rejected, or the deployment was cancelled or aborted (also: the
controller cannot be reached); 2 bad input; 3 --timeout elapsed first.`,
		Args: Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.Watch(cmd.Context(), a[0], timeout)
		},
	}
	cf.add(c)
	c.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long and exit 3 (default: no limit)")
	return c
}

// timeoutCause ends a context whose --timeout elapsed.
type timeoutCause struct{ d time.Duration }

func (t *timeoutCause) Error() string { return fmt.Sprintf("--timeout %v elapsed", t.d) }

// withTimeout bounds ctx by d when d > 0. timedOut reports whether an
// error happened because d elapsed (and not because ctx itself ended).
func withTimeout(ctx context.Context, d time.Duration) (_ context.Context, cancel func(), timedOut func() bool) {
	if d <= 0 {
		return ctx, func() {}, func() bool { return false }
	}
	cause := &timeoutCause{d}
	tctx, cancel := context.WithTimeoutCause(ctx, d, cause)
	return tctx, cancel, func() bool { return ctx.Err() == nil && context.Cause(tctx) == cause }
}

// Watch follows a deployment until it is final, then says how it ended
// and returns an exit error: nil when every device succeeded, ExitFailed
// when any did not or the deployment was cancelled, ExitTimeout when
// timeout (when > 0) elapsed first.
//
// In table format it prints, on a terminal, a progress bar with the counts
// by state and every failing step as it happens; elsewhere a line per
// change (a device's state or step, a failing step). In json or yaml it
// prints every api.Event of the stream, one JSON line (or YAML document)
// each; a deployment that is already final gives one device event per
// device and a deployment event, with seq 0, from its current state.
func (f *Fleet) Watch(ctx context.Context, id string, timeout time.Duration) error {
	if timeout < 0 {
		return Usage(fmt.Errorf("--timeout %v: want a positive duration", timeout))
	}
	ctx, cancel, timedOut := withTimeout(ctx, timeout)
	defer cancel()
	d, err := f.Client.Deployment(ctx, id)
	if err != nil {
		if timedOut() {
			fmt.Fprintf(f.Err, "timed out after %v waiting for the controller at %s\n", timeout, f.Client.BaseURL())
			return &ExitError{Code: ExitTimeout}
		}
		return apiErr(err)
	}
	summary := f.Out
	if f.Format != FormatTable {
		summary = f.Err
	}
	if client.FinalStatus(d.Status) {
		if err := f.replayFinal(d); err != nil {
			return err
		}
		return outcome(summary, d)
	}
	var sink func(api.Event) error
	var p *progress
	if f.Format == FormatTable {
		p = newProgress(f.Out, f.TTY, d)
		fmt.Fprintf(f.Out, "watching deployment %s: flow %s version %d, %s\n", d.ID, d.Bundle.Flow, d.Bundle.Version, countsText(d.Counts))
		p.draw()
		sink = p.event
	} else {
		sink = func(e api.Event) error { return f.Format.EncodeLine(f.Out, e) }
	}
	final, err := f.follow(ctx, d, sink)
	if p != nil {
		p.close()
		if err != nil {
			final.Counts = p.counts()
		}
	}
	if err != nil {
		return f.watchErr(err, final, timeout, timedOut())
	}
	return outcome(summary, final)
}

// follow reads d's event stream into sink until the final event and
// returns the deployment as that event says (without its devices). On an
// error it returns the last state it knew.
func (f *Fleet) follow(ctx context.Context, d *api.Deployment, sink func(api.Event) error) (*api.Deployment, error) {
	last := *d
	err := f.Client.Watch(ctx, d.ID, "", func(e api.Event) error {
		if e.Kind == api.EventDeployment && e.Deployment != nil {
			counts := last.Counts
			last = *e.Deployment
			last.ID = cmpOr(last.ID, d.ID)
			if last.Counts == nil {
				last.Counts = counts
			}
		}
		return sink(e)
	})
	return &last, err
}

// watchErr says why a watch ended before the deployment did.
func (f *Fleet) watchErr(err error, last *api.Deployment, timeout time.Duration, timedOut bool) error {
	if timedOut {
		fmt.Fprintf(f.Err, "timed out after %v: deployment %s is still %s: %s (edgeflow watch %s follows it)\n",
			timeout, last.ID, last.Status, countsText(last.Counts), last.ID)
		return &ExitError{Code: ExitTimeout}
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("interrupted; deployment %s goes on (edgeflow watch %s follows it): %w", last.ID, last.ID, err)
	}
	return apiErr(err)
}

// outcome says how a final deployment ended and returns its exit error.
func outcome(w io.Writer, d *api.Deployment) error {
	fmt.Fprintf(w, "deployment %s %s: %s\n", d.ID, d.Status, countsText(d.Counts))
	if d.Status == api.DeploymentSucceeded {
		return nil
	}
	return &ExitError{Code: ExitFailed}
}

// replayFinal shows a deployment that had already ended: its failing
// steps (table), or its state as events (json, yaml).
func (f *Fleet) replayFinal(d *api.Deployment) error {
	if f.Format == FormatTable {
		for _, r := range d.Devices {
			for _, l := range failures(r) {
				fmt.Fprintln(f.Out, l)
			}
		}
		return nil
	}
	for i := range d.Devices {
		e := api.Event{Kind: api.EventDevice, Time: d.Devices[i].Updated, Run: &d.Devices[i]}
		if err := f.Format.EncodeLine(f.Out, e); err != nil {
			return err
		}
	}
	dep := *d
	dep.Devices = nil
	t := dep.Created
	if dep.Finished != nil {
		t = *dep.Finished
	}
	return f.Format.EncodeLine(f.Out, api.Event{Kind: api.EventDeployment, Time: t, Deployment: &dep})
}

// progress shows a deployment's events as they come: on a terminal, a
// progress bar redrawn in place with failing steps printed above it;
// elsewhere one plain line per change, with no control codes.
type progress struct {
	w      io.Writer
	tty    bool
	width  int
	dep    api.Deployment    // the latest state: status and counts
	status map[string]string // the latest state of each device
	// fresh says the latest event was the deployment's, so its counts
	// are current; else they are counted from status.
	fresh  bool
	said   map[string]bool           // failures already printed
	states map[string]deviceProgress // what was last said of each device
	drawn  bool                      // the bar is on screen
	last   string                    // the bar drawn last
}

type deviceProgress struct{ status, step string }

func newProgress(w io.Writer, tty bool, d *api.Deployment) *progress {
	width := 80
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 20 {
		width = n
	}
	p := &progress{w: w, tty: tty, width: width, dep: *d, fresh: true,
		status: map[string]string{}, said: map[string]bool{}, states: map[string]deviceProgress{}}
	p.dep.Devices = nil
	for _, r := range d.Devices {
		p.status[r.Device] = r.Status
	}
	return p
}

// counts returns the devices by state: the deployment's counts when its
// event was the latest, else the states of the devices' latest events,
// those not heard of yet counted as Pending (a device's every change has
// an event; the deployment's events may come only when its status
// changes).
func (p *progress) counts() map[string]int {
	if p.fresh {
		return p.dep.Counts
	}
	total := 0
	for _, n := range p.dep.Counts {
		total += n
	}
	m := map[string]int{}
	for _, s := range p.status {
		m[s]++
	}
	if n := total - len(p.status); n > 0 {
		m[api.DevicePending] += n
	}
	return m
}

// event takes one event of the stream.
func (p *progress) event(e api.Event) error {
	switch {
	case e.Kind == api.EventDeployment && e.Deployment != nil:
		p.dep.Status = e.Deployment.Status
		if e.Deployment.Counts != nil {
			p.dep.Counts, p.fresh = e.Deployment.Counts, true
		}
		if c := e.Deployment.Cancel; c != nil && p.dep.Cancel == nil {
			p.dep.Cancel = c
			p.println(fmt.Sprintf("deployment %s: cancel requested by %s%s", p.dep.ID, cmpOr(c.By, "(unknown)"), noteSuffix(c.Note)))
		}
		p.rollout(e.Deployment)
	case e.Kind == api.EventDevice && e.Run != nil:
		p.device(*e.Run)
	}
	p.draw()
	return nil
}

// rollout prints what changed in a deployment's rollout: a wave started
// or finished, a pause, a promotion awaited, the abort threshold tripped.
func (p *progress) rollout(d *api.Deployment) {
	if len(d.Waves) == 0 {
		return
	}
	was := p.dep
	p.dep.Waves, p.dep.Wave, p.dep.AwaitingPromotion, p.dep.PausedUntil, p.dep.Abort = d.Waves, d.Wave, d.AwaitingPromotion, d.PausedUntil, d.Abort
	p.dep.Rollback = d.Rollback
	for _, w := range d.Waves {
		if w.Status != api.WaveFinished || (w.Number <= len(was.Waves) && was.Waves[w.Number-1].Status == api.WaveFinished) {
			continue
		}
		p.println(fmt.Sprintf("wave %d of %d finished: %s", w.Number, len(d.Waves), countsText(w.Counts)))
	}
	if d.Wave > was.Wave && d.Wave >= 1 {
		w := d.Waves[d.Wave-1]
		p.println(fmt.Sprintf("wave %d of %d started: %d device(s), %d in all", d.Wave, len(d.Waves), w.Devices, w.Target))
	}
	switch {
	case d.Abort != nil && was.Abort == nil:
		p.println(fmt.Sprintf("deployment %s aborting: %s; no device starts any more", p.dep.ID, d.Abort.Reason))
	case d.AwaitingPromotion && !was.AwaitingPromotion:
		p.println(fmt.Sprintf("deployment %s paused: wave %d waits for a promotion (edgeflow promote %s); still watching", p.dep.ID, d.Wave+1, p.dep.ID))
	case d.PausedUntil != nil && (was.PausedUntil == nil || !was.PausedUntil.Equal(*d.PausedUntil)):
		p.println(fmt.Sprintf("deployment %s paused: wave %d starts at %s", p.dep.ID, d.Wave+1, d.PausedUntil.UTC().Format(time.RFC3339)))
	}
	if r := d.Rollback; r != nil && was.Rollback == nil {
		line := fmt.Sprintf("deployment %s rolling back: %d succeeded device(s) sent a rollback", p.dep.ID, r.Devices)
		if r.Unsupported > 0 {
			line += fmt.Sprintf(", %d cannot roll back (their agent lacks the rollback command)", r.Unsupported)
		}
		p.println(line)
	}
}

// device prints what changed in a device's run: new failing steps, then
// its state (and step, while it runs).
func (p *progress) device(r api.DeviceRun) {
	p.status[r.Device] = r.Status
	p.fresh = false
	stepFailed := false
	for _, s := range r.Steps {
		if s.Error == nil {
			continue
		}
		stepFailed = true
		key := fmt.Sprintf("%s\x00%s\x00%s\x00%d", r.Device, s.Rollback, s.Name, s.Attempt)
		if !p.said[key] {
			p.said[key] = true
			p.println(failureLine(r.Device, s))
		}
	}
	for _, a := range r.RollbackActions {
		if a.Error == nil {
			continue
		}
		stepFailed = true
		key := fmt.Sprintf("%s\x00rollback\x00%s\x00%s", r.Device, a.Step, a.Action)
		if !p.said[key] {
			p.said[key] = true
			p.println(rollbackFailureLine(r.Device, a))
		}
	}
	if rb := r.Rollback; rb != nil && rb.Note != "" && !p.said[r.Device+"\x00rollback"] {
		p.said[r.Device+"\x00rollback"] = true
		p.println(r.Device + ": " + oneLine(rb.Note))
	}
	if r.Error != nil && !stepFailed && deviceDone(r.Status) && !p.said[r.Device] {
		p.said[r.Device] = true
		p.println(runFailureLine(r))
	}
	if p.tty {
		return
	}
	now := deviceProgress{status: r.Status}
	if !deviceDone(r.Status) {
		now.step, _ = runStep(r)
	}
	if p.states[r.Device] == now {
		return
	}
	p.states[r.Device] = now
	line := r.Device + ": " + r.Status
	if now.step != "" {
		line += " (step " + now.step + ")"
	}
	p.println(line)
}

// println prints a line; on a terminal, above the bar.
func (p *progress) println(s string) {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
	fmt.Fprintln(p.w, s)
}

// draw redraws the bar on a terminal.
func (p *progress) draw() {
	if !p.tty {
		return
	}
	bar := truncate(p.bar(), p.width-1)
	if p.drawn && bar == p.last {
		return
	}
	fmt.Fprint(p.w, "\r\x1b[K"+bar)
	p.drawn, p.last = true, bar
}

// close ends the bar's line.
func (p *progress) close() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// bar is "[#########...........] 3/5 finished: 2 succeeded, 1 failed, 2 running".
func (p *progress) bar() string {
	const n = 24
	total, done := 0, 0
	counts := p.counts()
	for s, c := range counts {
		total += c
		if deviceDone(s) {
			done += c
		}
	}
	fill := 0
	if total > 0 {
		fill = done * n / total
	}
	states := countsList(counts)
	wave := ""
	if len(p.dep.Waves) > 0 {
		wave = fmt.Sprintf(" (wave %d/%d", p.dep.Wave, len(p.dep.Waves))
		switch {
		case p.dep.AwaitingPromotion:
			wave += ", waits for promotion"
		case p.dep.PausedUntil != nil:
			wave += ", paused"
		}
		wave += ")"
	}
	return fmt.Sprintf("[%s%s] %d/%d finished%s: %s", strings.Repeat("#", fill), strings.Repeat(".", n-fill),
		done, total, wave, strings.Join(states, ", "))
}

// countsList writes every state that has devices, succeeded first:
// "2 succeeded", "1 failed", "2 running".
func countsList(counts map[string]int) []string {
	var out []string
	if n := counts[string(transport.StatusSucceeded)]; n > 0 {
		out = append(out, fmt.Sprintf("%d succeeded", n))
	}
	return append(out, otherCounts(counts)...)
}
