package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/client"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

// The fleet commands' environment and defaults.
const (
	EnvController     = "EDGEFLOW_CONTROLLER"
	EnvToken          = "EDGEFLOW_TOKEN"
	EnvSigningKey     = "EDGEFLOW_SIGNING_KEY"
	DefaultController = "http://127.0.0.1:8080"
)

// Fleet runs the operator's fleet commands against one controller. Its
// methods are the commands, minus flag parsing; they print results on Out
// (in Format) and notes and progress on Err.
type Fleet struct {
	Client *client.Client
	Out    io.Writer
	Err    io.Writer
	Format Format
	// TTY says Out is a terminal: watch redraws a progress bar instead of
	// printing a line per change.
	TTY bool
	// Now is the clock ages are measured against.
	Now func() time.Time
}

// FleetCommands returns the operator commands that drive a controller:
// devices, deploy, deployments, deployment show, watch, logs, cancel,
// promote, guide, interventions, mark-failed, retry, strategy-sets and
// strategy-set.
func FleetCommands(stdout, stderr io.Writer) []*cobra.Command {
	return []*cobra.Command{
		devicesCommand(stdout, stderr),
		deployCommand(stdout, stderr),
		deploymentsCommand(stdout, stderr),
		deploymentCommand(stdout, stderr),
		watchCommand(stdout, stderr),
		logsCommand(stdout, stderr),
		cancelCommand(stdout, stderr),
		promoteCommand(stdout, stderr),
		guideCommand(stdout, stderr),
		interventionsCommand(stdout, stderr),
		markFailedCommand(stdout, stderr),
		retryCommand(stdout, stderr),
		strategySetsCommand(stdout, stderr),
		strategySetCommand(stdout, stderr),
	}
}

// connFlags are the flags every fleet command has.
type connFlags struct {
	controller, token, output string
}

func (f *connFlags) add(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.controller, "controller", "", "controller URL (default $"+EnvController+", then "+DefaultController+")")
	fl.StringVar(&f.token, "token", "", "API token, sent as a bearer token (default $"+EnvToken+")")
	fl.StringVarP(&f.output, "output", "o", string(FormatTable), "output format: table, json or yaml")
}

// fleet resolves the flags, then the environment, into a Fleet.
func (f *connFlags) fleet(stdout, stderr io.Writer) (*Fleet, error) {
	format, err := ParseFormat(f.output)
	if err != nil {
		return nil, Usage(err)
	}
	url := cmpOr(f.controller, os.Getenv(EnvController), DefaultController)
	c, err := client.New(url, cmpOr(f.token, os.Getenv(EnvToken)), nil)
	if err != nil {
		return nil, Usage(fmt.Errorf("--controller: %w", err))
	}
	return &Fleet{Client: c, Out: stdout, Err: stderr, Format: format, TTY: isTerminal(stdout), Now: time.Now}, nil
}

func cmpOr(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// apiErr maps a client error to what the operator is told and the exit
// code: a 400 or 413 is bad input (exit 2); a refused token says where
// the token comes from; the rest exit 1 as they are (an unreachable
// controller already names its URL).
func apiErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *client.APIError
	if errors.As(err, &ae) && (ae.Status == 400 || ae.Status == 413 || ae.Code == api.CodeInvalid) {
		return Usage(err)
	}
	switch onfailure.KindOf(err) {
	case onfailure.Authentication:
		return fmt.Errorf("%w (check --token or $%s)", err, EnvToken)
	case onfailure.Connectivity:
		return fmt.Errorf("%w (check --controller or $%s)", err, EnvController)
	}
	return err
}

func devicesCommand(stdout, stderr io.Writer) *cobra.Command {
	var cf connFlags
	c := &cobra.Command{
		Use:   "devices [ID]",
		Short: "List the devices the controller knows (or show one)",
		Args: func(cmd *cobra.Command, a []string) error {
			if len(a) > 1 {
				return Usage(fmt.Errorf("devices: at most one device id, got %d", len(a)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			if len(a) == 1 {
				return f.Device(cmd.Context(), a[0])
			}
			return f.Devices(cmd.Context())
		},
	}
	cf.add(c)
	return c
}

// Devices prints the devices: ID, STATUS, AGENT, LABELS, RUNNING
// (deployment/flow), LAST SEEN.
func (f *Fleet) Devices(ctx context.Context) error {
	ds, err := f.Client.Devices(ctx)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, api.DeviceList{Devices: nonNil(ds)})
	}
	if len(ds) == 0 {
		fmt.Fprintln(f.Err, "no devices yet: a device appears when its agent connects to the controller's broker")
		return nil
	}
	ds = slices.Clone(ds)
	slices.SortFunc(ds, func(a, b api.Device) int { return strings.Compare(a.ID, b.ID) })
	return f.deviceTable(ds)
}

// Device prints one device, as a one-row table or as the API's resource.
func (f *Fleet) Device(ctx context.Context, id string) error {
	d, err := f.Client.Device(ctx, id)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, d)
	}
	return f.deviceTable([]api.Device{*d})
}

func (f *Fleet) deviceTable(ds []api.Device) error {
	tw := table(f.Out, "ID", "STATUS", "AGENT", "LABELS", "RUNNING", "LAST SEEN")
	now := f.Now()
	for _, d := range ds {
		running := ""
		if x := d.Execution; x != nil {
			running = x.Flow
			if x.Deployment != "" {
				running = x.Deployment + "/" + x.Flow
			}
		}
		row(tw, d.ID, d.Status, d.Agent, keyValues(d.Labels), running, age(now, d.LastSeen))
	}
	return tw.Flush()
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func deploymentsCommand(stdout, stderr io.Writer) *cobra.Command {
	var cf connFlags
	c := &cobra.Command{
		Use:   "deployments",
		Short: "List deployments, newest first",
		Args:  Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.Deployments(cmd.Context())
		},
	}
	cf.add(c)
	return c
}

// Deployments prints the deployments: ID, FLOW, VERSION, STATUS, DEVICES
// (counts by state), CREATED.
func (f *Fleet) Deployments(ctx context.Context) error {
	ds, err := f.Client.Deployments(ctx)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, api.DeploymentList{Deployments: nonNil(ds)})
	}
	if len(ds) == 0 {
		fmt.Fprintln(f.Err, "no deployments yet (edgeflow deploy FLOW --device ID)")
		return nil
	}
	tw := table(f.Out, "ID", "FLOW", "VERSION", "STATUS", "DEVICES", "CREATED")
	now := f.Now()
	for _, d := range ds {
		row(tw, d.ID, d.Bundle.Flow, fmt.Sprint(d.Bundle.Version), d.Status, countsText(d.Counts), age(now, d.Created))
	}
	return tw.Flush()
}

func deploymentCommand(stdout, stderr io.Writer) *cobra.Command {
	c := &cobra.Command{
		Use:   "deployment",
		Short: "Show a deployment (deployment show ID)",
		Args:  Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Usage(fmt.Errorf("deployment: say show ID (see %s --help)", cmd.CommandPath()))
		},
	}
	var cf connFlags
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a deployment: its state, every device's state, step and error, the failing steps, waves, paused devices and audit",
		Args:  Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.ShowDeployment(cmd.Context(), a[0])
		},
	}
	cf.add(show)
	c.AddCommand(show)
	return c
}

// ShowDeployment prints a deployment: a header, a table of its devices
// (DEVICE, STATUS, STEP, ERROR, UPDATED), then every failing step with its
// whole error, then (when it has them) its waves' progress, the devices
// paused for guidance and the audit of operators' requests.
func (f *Fleet) ShowDeployment(ctx context.Context, id string) error {
	d, err := f.Client.Deployment(ctx, id)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, d)
	}
	now := f.Now()
	b := d.Bundle
	signed := "unsigned"
	if b.KeyID != "" {
		signed = "signed by key " + b.KeyID
	}
	tw := table(f.Out, "deployment:", d.ID)
	fmt.Fprintf(tw, "flow:\t%s version %d (bundle %s, %s)\n", b.Flow, b.Version, short(b.SHA256), signed)
	fmt.Fprintf(tw, "status:\t%s\n", d.Status)
	fmt.Fprintf(tw, "devices:\t%s\n", countsText(d.Counts))
	if len(d.Vars) > 0 {
		fmt.Fprintf(tw, "vars:\t%s\n", keyValues(d.Vars))
	}
	if d.Rollout != nil {
		fmt.Fprintf(tw, "rollout:\t%s\n", rolloutText(d.Rollout))
		fmt.Fprintf(tw, "wave:\t%s\n", waveState(d, now))
	}
	if g := d.GuidedFailure; g != nil {
		fmt.Fprintf(tw, "guided failure:\tpause up to %s for guidance, then %s\n", g.Timeout, g.OnTimeout)
	}
	if len(d.FailureStrategies) > 0 {
		from := "given inline"
		if d.StrategySet != "" {
			from = "copied from set " + d.StrategySet
		}
		fmt.Fprintf(tw, "failure strategies:\t%s (%s)\n", strategiesText(d.FailureStrategies), from)
	}
	if d.RetryOf != "" {
		fmt.Fprintf(tw, "retry of:\t%s\n", d.RetryOf)
	}
	if len(d.Retries) > 0 {
		fmt.Fprintf(tw, "retried as:\t%s\n", strings.Join(d.Retries, ", "))
	}
	fmt.Fprintf(tw, "created:\t%s (%s)\n", d.Created.UTC().Format(time.RFC3339), age(now, d.Created))
	if c := d.Cancel; c != nil {
		fmt.Fprintf(tw, "cancelled:\t%s by %s%s\n", c.Time.UTC().Format(time.RFC3339), cmpOr(c.By, "(unknown)"), noteSuffix(c.Note))
	}
	if d.Finished != nil {
		fmt.Fprintf(tw, "finished:\t%s (%s)\n", d.Finished.UTC().Format(time.RFC3339), age(now, *d.Finished))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.Devices) == 0 {
		return f.showRollout(d, now)
	}
	fmt.Fprintln(f.Out)
	tw = table(f.Out, "DEVICE", "STATUS", "STEP", "ERROR", "UPDATED")
	for _, r := range d.Devices {
		step, e := runStep(r)
		row(tw, r.Device, r.Status, step, errText(e, 60), age(now, r.Updated))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var lines []string
	for _, r := range d.Devices {
		lines = append(lines, failures(r)...)
	}
	if len(lines) > 0 {
		fmt.Fprintln(f.Out, "\nfailing steps:")
		for _, l := range lines {
			fmt.Fprintln(f.Out, "  "+l)
		}
	}
	return f.showRollout(d, now)
}

// short abbreviates a sha256 as 12 hex digits.
func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}

// runStep returns what the STEP and ERROR columns say of a device's run:
// its failing step (the last one reported with an error) and that error,
// else its running step, else, while it has not finished, the last step
// reported; and the run's own error when no step carries one.
func runStep(r api.DeviceRun) (string, *transport.ErrorInfo) {
	for i := len(r.Steps) - 1; i >= 0; i-- {
		if s := r.Steps[i]; s.Error != nil && s.Status != string(transport.StatusIgnored) {
			return stepName(s), s.Error
		}
	}
	for i := len(r.Steps) - 1; i >= 0; i-- {
		if s := r.Steps[i]; s.Status == string(transport.StatusRunning) || s.Status == string(transport.StatusPaused) {
			return stepName(s), r.Error
		}
	}
	if !deviceDone(r.Status) && len(r.Steps) > 0 {
		return stepName(r.Steps[len(r.Steps)-1]), r.Error
	}
	return "", r.Error
}

// stepName is the step's name, marked when it is a rollback step.
func stepName(s api.StepRun) string {
	if s.Rollback != "" {
		return s.Name + " (rollback)"
	}
	return s.Name
}

// stepWhat says which step, for a sentence: `step health`, `rollback
// step restore of group web`.
func stepWhat(s api.StepRun) string {
	switch s.Rollback {
	case "":
		return "step " + s.Name
	case "flow":
		return "rollback step " + s.Name
	}
	return "rollback step " + s.Name + " of group " + s.Rollback
}

// errText is "Kind: message", truncated to n runes when n > 0.
func errText(e *transport.ErrorInfo, n int) string {
	if e == nil {
		return ""
	}
	s := string(e.Type) + ": " + e.Message
	if n > 0 {
		s = truncate(s, n)
	}
	return s
}

// failureLine says one step failed: `edge-3: step health failed
// (Verification): GET http://... 503`.
func failureLine(device string, s api.StepRun) string {
	attempt := ""
	if s.Attempt > 1 {
		attempt = fmt.Sprintf(" on attempt %d", s.Attempt)
	}
	ignored := ""
	if s.Status == string(transport.StatusIgnored) {
		ignored = ", ignored"
	}
	return fmt.Sprintf("%s: %s failed%s (%s%s): %s", device, stepWhat(s), attempt, s.Error.Type, ignored, oneLine(s.Error.Message))
}

// runFailureLine says a run failed with no step to blame (such as a
// rejected dispatch): `edge-4: Rejected (Integrity): ...`.
func runFailureLine(r api.DeviceRun) string {
	return fmt.Sprintf("%s: %s (%s): %s", r.Device, r.Status, r.Error.Type, oneLine(r.Error.Message))
}

// rollbackFailureLine says a rollback action failed: `edge-3: rollback
// action restore-backup for step config failed (Integrity): ...`.
func rollbackFailureLine(device string, a api.RollbackActionRun) string {
	return fmt.Sprintf("%s: rollback action %s for step %s failed (%s): %s", device, a.Action, a.Step, a.Error.Type, oneLine(a.Error.Message))
}

// failures lists a run's failing steps and rollback actions, or its own
// error when neither failed.
func failures(r api.DeviceRun) []string {
	var out []string
	for _, s := range r.Steps {
		if s.Error != nil {
			out = append(out, failureLine(r.Device, s))
		}
	}
	for _, a := range r.RollbackActions {
		if a.Error != nil {
			out = append(out, rollbackFailureLine(r.Device, a))
		}
	}
	if len(out) == 0 && r.Error != nil {
		out = append(out, runFailureLine(r))
	}
	return out
}

// noteSuffix is ": NOTE" on one line, or nothing without a note.
func noteSuffix(note string) string {
	if note = oneLine(note); note != "" {
		return ": " + note
	}
	return ""
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// deviceDone reports whether a device's run in a deployment has ended.
func deviceDone(status string) bool {
	switch status {
	case api.DeviceRejected, api.DeviceCancelled, api.DeviceExcluded, api.DeviceTimedOut, api.DeviceSkipped:
		return true
	}
	return transport.Status(status).Done()
}

// countOrder is the order counts are written in after "N/T succeeded".
var countOrder = []string{
	string(transport.StatusFailed), string(transport.StatusRolledBack), string(transport.StatusRollbackFailed),
	api.DeviceTimedOut, api.DeviceRejected, string(transport.StatusAborted), api.DeviceCancelled,
	api.DeviceExcluded, api.DeviceSkipped, api.DeviceRollingBack,
	string(transport.StatusRunning), string(transport.StatusPaused),
	api.DeviceQueued, api.DevicePending, api.DeviceWaiting,
}

// countsText writes counts by state: "3/5 succeeded, 1 failed, 1 rolled
// back" (succeeded out of all, then the other states that have devices).
func countsText(counts map[string]int) string {
	total := 0
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return "no devices"
	}
	parts := []string{fmt.Sprintf("%d/%d succeeded", counts[string(transport.StatusSucceeded)], total)}
	return strings.Join(append(parts, otherCounts(counts)...), ", ")
}

// otherCounts writes the states but Succeeded that have devices: in
// countOrder, then any other in name order. "1 failed", "2 rolled back".
func otherCounts(counts map[string]int) []string {
	var parts, rest []string
	for _, s := range countOrder {
		if n := counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, words(s)))
		}
	}
	for s, n := range counts {
		if n > 0 && s != string(transport.StatusSucceeded) && !slices.Contains(countOrder, s) {
			rest = append(rest, s)
		}
	}
	slices.Sort(rest)
	for _, s := range rest {
		parts = append(parts, fmt.Sprintf("%d %s", counts[s], words(s)))
	}
	return parts
}

// words turns a CamelCase state into lowercase words: "rolled back".
func words(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte(' ')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

func logsCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf           connFlags
		device, step string
	)
	c := &cobra.Command{
		Use:   "logs ID --device D [--step S]",
		Short: "Print the log tails of a deployment's steps on one device",
		Args:  Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.Logs(cmd.Context(), a[0], device, step)
		},
	}
	cf.add(c)
	c.Flags().StringVar(&device, "device", "", "device id (required)")
	c.Flags().StringVar(&step, "step", "", "only this step's logs")
	return c
}

// Logs prints the log tail of each step (of one step with step set) of a
// deployment on one device, each after a header line naming the step, its
// attempt and its status.
func (f *Fleet) Logs(ctx context.Context, id, device, step string) error {
	if device == "" {
		return Usage(errors.New("logs: --device D is required"))
	}
	ls, err := f.Client.Logs(ctx, id, device, step)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, api.LogList{Logs: nonNil(ls)})
	}
	if len(ls) == 0 {
		what := "no step"
		if step != "" {
			what = "step " + step + " has not"
		}
		fmt.Fprintf(f.Err, "%s of deployment %s on %s reported a log yet\n", what, id, device)
		return nil
	}
	for i, l := range ls {
		if i > 0 {
			fmt.Fprintln(f.Out)
		}
		what := stepWhat(api.StepRun{Name: l.Step, Rollback: l.Rollback})
		fmt.Fprintf(f.Out, "==> %s, attempt %d: %s <==\n", what, l.Attempt, l.Status)
		if l.Truncated {
			fmt.Fprintln(f.Out, "[… earlier output cut: the agent keeps the tail]")
		}
		switch {
		case l.Log == "":
			fmt.Fprintln(f.Out, "(no output)")
		case strings.HasSuffix(l.Log, "\n"):
			fmt.Fprint(f.Out, l.Log)
		default:
			fmt.Fprintln(f.Out, l.Log)
		}
	}
	return nil
}

func cancelCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf   connFlags
		note string
	)
	c := &cobra.Command{
		Use:   "cancel ID [--note TEXT]",
		Short: "Cancel a deployment",
		Args:  Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.Cancel(cmd.Context(), a[0], api.Cancel{By: operator(), Note: note})
		},
	}
	cf.add(c)
	c.Flags().StringVar(&note, "note", "", "why, recorded with the cancel")
	return c
}

// Cancel cancels a deployment and prints its state (the API's resource
// with -o json|yaml).
func (f *Fleet) Cancel(ctx context.Context, id string, body api.Cancel) error {
	d, err := f.Client.Cancel(ctx, id, body)
	if err != nil {
		return apiErr(err)
	}
	if d == nil { // the controller answered without a body
		if d, err = f.Client.Deployment(ctx, id); err != nil {
			return apiErr(fmt.Errorf("cancelled; then: %w", err))
		}
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, d)
	}
	if client.FinalStatus(d.Status) {
		fmt.Fprintf(f.Out, "deployment %s %s: %s\n", d.ID, d.Status, countsText(d.Counts))
		return nil
	}
	fmt.Fprintf(f.Out, "cancel of deployment %s requested: it ends once no device runs it (edgeflow watch %s follows it): %s\n",
		d.ID, d.ID, countsText(d.Counts))
	return nil
}

// operator names who runs the command, for the record: the login name.
func operator() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}
