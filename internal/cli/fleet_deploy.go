package cli

import (
	"context"
	"encoding/json"
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
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/packaging"
)

// DeployFlags are the flags of `deploy`.
type DeployFlags struct {
	// Devices are device ids (--device, repeatable or comma-separated).
	Devices []string
	// Selector are K=V labels, comma-separated (--selector, repeatable).
	Selector []string
	// Vars are K=V flow variables (--var, repeatable).
	Vars []string
	// Key signs a bundle built from a flow (--key); EnvKey is
	// $EDGEFLOW_SIGNING_KEY, used when Key is empty.
	Key, EnvKey string
	// Version of a bundle built from a flow; 0 means the Unix time.
	Version uint64
	// Gzip compresses a bundle built from a flow.
	Gzip bool
	// Wait follows the deployment until it ends; Timeout bounds the whole
	// command (0: no limit).
	Wait    bool
	Timeout time.Duration

	// The rollout (docs/rollouts.md): Waves as "1,10%,100%"; MaxInFlight
	// devices at once; Pause between waves (a duration or "manual");
	// AbortThreshold percent (as "20" or "20%") of at least MinSample
	// finished devices failing with AbortOn kinds; DeviceTimeout.
	Waves          string
	MaxInFlight    int
	Pause          string
	AbortThreshold string
	MinSample      int
	AbortOn        []string
	DeviceTimeout  string
	// RollbackOnAbort rolls back the devices that succeeded once the
	// abort threshold trips (--rollback-on-abort; needs AbortThreshold).
	RollbackOnAbort bool
	// GuidedFailure is TIMEOUT[:ONTIMEOUT] (--guided-failure).
	GuidedFailure string
	// Strategies is FILE|NAME (--strategies): the flow-level failure
	// strategies of a flow that takes them at deploy time, from a file
	// (when one exists at that path) or a strategy set stored in the
	// controller.
	Strategies string
}

func deployCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cf connFlags
		f  DeployFlags
	)
	c := &cobra.Command{
		Use:   "deploy FLOW|BUNDLE (--device ID... | --selector K=V,...) [--var K=V]... [--key PREFIX.key] [rollout flags] [--strategies FILE|NAME] [--guided-failure TIMEOUT[:ONTIMEOUT]] [--wait] [--timeout D]",
		Short: "Send a flow or a bundle to devices (with --wait, follow it to its end)",
		Long: `Send a flow or a bundle to devices.

A BUNDLE (a file built by "edgeflow bundle build") is uploaded as it is. A
FLOW document is first validated and built into a bundle, as "bundle build"
does, signed with --key (or $EDGEFLOW_SIGNING_KEY) when one is given. The
deployment's id is printed on stdout; notes go to stderr.

A rollout starts the devices in waves instead of all at once
(docs/rollouts.md): --waves 1,10%,100% (cumulative targets), --max-in-flight
N, --pause 5m|manual between waves (manual: "edgeflow promote ID" starts
the next), --abort-threshold 20 --min-sample 5 [--abort-on KIND,...] to stop
when more than 20% of at least 5 finished devices failed (with
--rollback-on-abort, the devices that had succeeded are then rolled back),
--device-timeout 30m to fail a device that has not finished 30m after its
dispatch.
--strategies FILE|NAME gives the flow-level failure strategies of a flow
that says "failureStrategies: input" (docs/flows.md): FILE, when a file of
that name exists, is a YAML or JSON list checked here and sent with the
deployment; else NAME is a strategy set stored in the controller
("edgeflow strategy-set put"), copied into the deployment.
--guided-failure 30m[:Abort] makes a failure that would end a device's flow
pause it for guidance (edgeflow interventions, edgeflow guide).

With --wait, the command follows the deployment like "edgeflow watch" and
exits 0 when every device succeeded, 1 when any failed, rolled back or was
rejected or the deployment was cancelled, aborted or rolled back, 2 on bad input
(nothing was deployed), 3 when --timeout elapsed first. A deployment that
waits (for a promotion, or for guidance) has not ended: --wait keeps
waiting through it.`,
		Args: Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			fl, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			f.EnvKey = os.Getenv(EnvSigningKey)
			return fl.Deploy(cmd.Context(), a[0], f, time.Now())
		},
	}
	cf.add(c)
	fl := c.Flags()
	fl.StringSliceVar(&f.Devices, "device", nil, "device id to deploy to (repeatable, or comma-separated)")
	fl.StringArrayVar(&f.Selector, "selector", nil, "deploy to every known device with these labels: K=V,K=V (repeatable)")
	fl.StringArrayVar(&f.Vars, "var", nil, "K=V flow variable (repeatable)")
	fl.StringVar(&f.Key, "key", "", "private key (PREFIX.key) that signs a bundle built from FLOW (default $"+EnvSigningKey+"; without either the bundle is unsigned)")
	fl.Uint64Var(&f.Version, "version", 0, "release version of a bundle built from FLOW (default: the current Unix time in seconds)")
	fl.BoolVar(&f.Gzip, "gzip", false, "gzip-compress a bundle built from FLOW")
	fl.BoolVar(&f.Wait, "wait", false, "follow the deployment until it ends; the exit code says how")
	fl.DurationVar(&f.Timeout, "timeout", 0, "give up after this long and exit 3 (default: no limit)")
	fl.StringVar(&f.Waves, "waves", "", "rollout waves, cumulative: counts or percents of the devices, the last 100%: 1,10%,100%")
	fl.IntVar(&f.MaxInFlight, "max-in-flight", 0, "rollout: at most this many devices dispatched and not finished (default: no limit)")
	fl.StringVar(&f.Pause, "pause", "", `rollout: pause between waves: a duration (5m), or "manual" to wait for "edgeflow promote"`)
	fl.StringVar(&f.AbortThreshold, "abort-threshold", "", "rollout: abort when more than this percent of the finished devices failed (20 or 20%)")
	fl.IntVar(&f.MinSample, "min-sample", 0, "rollout: judge the abort threshold once at least this many devices finished")
	fl.StringSliceVar(&f.AbortOn, "abort-on", nil, "rollout: the error kinds the abort threshold counts (comma-separated; default AllErrors)")
	fl.BoolVar(&f.RollbackOnAbort, "rollback-on-abort", false, "rollout: once the abort threshold trips, roll back the devices that succeeded (needs --abort-threshold; agents that list the rollback command)")
	fl.StringVar(&f.DeviceTimeout, "device-timeout", "", "rollout: a device not finished this long after its dispatch times out (a failure of kind Timeout)")
	fl.StringVar(&f.Strategies, "strategies", "", "FILE|NAME: the flow-level failure strategies of a flow that says failureStrategies: input: a YAML or JSON list in FILE (when the file exists), else the strategy set NAME stored in the controller")
	fl.StringVar(&f.GuidedFailure, "guided-failure", "", "TIMEOUT[:ONTIMEOUT]: pause a device for guidance where a failure would end its flow, for TIMEOUT, then apply ONTIMEOUT (default Abort)")
	return c
}

// deployTarget is a checked deploy request, before anything is uploaded.
type deployTarget struct {
	devices       []string
	selector      map[string]string
	vars          map[string]string
	rollout       *api.Rollout
	guidedFailure *api.GuidedFailure
	strategies    json.RawMessage
	strategySet   string
}

func (o DeployFlags) target() (deployTarget, error) {
	var t deployTarget
	for _, d := range o.Devices {
		if d = strings.TrimSpace(d); d == "" {
			return t, errors.New("deploy: --device: an empty device id")
		}
		t.devices = append(t.devices, d)
	}
	var err error
	if t.selector, err = keyValueFlag("--selector", o.Selector, true); err != nil {
		return t, fmt.Errorf("deploy: %w", err)
	}
	if t.vars, err = keyValueFlag("--var", o.Vars, false); err != nil {
		return t, fmt.Errorf("deploy: %w", err)
	}
	switch {
	case len(t.devices) == 0 && len(t.selector) == 0:
		return t, errors.New("deploy: say which devices: --device ID... or --selector K=V")
	case len(t.devices) > 0 && len(t.selector) > 0:
		return t, errors.New("deploy: --device and --selector exclude each other; give one")
	case o.Timeout < 0:
		return t, fmt.Errorf("deploy: --timeout %v: want a positive duration", o.Timeout)
	}
	if t.rollout, err = o.rollout(); err != nil {
		return t, fmt.Errorf("deploy: %w", err)
	}
	if t.guidedFailure, err = guidedFailureFlag(o.GuidedFailure); err != nil {
		return t, fmt.Errorf("deploy: %w", err)
	}
	if t.strategies, t.strategySet, err = strategiesFlag(o.Strategies); err != nil {
		return t, fmt.Errorf("deploy: %w", err)
	}
	return t, nil
}

// rollout reads the rollout flags; nil when none is given. The
// controller checks the rest (waves against the number of devices, kinds,
// limits) and answers 400 with what is wrong.
func (o DeployFlags) rollout() (*api.Rollout, error) {
	var r api.Rollout
	set := false
	if s := strings.TrimSpace(o.Waves); s != "" {
		for _, w := range strings.Split(s, ",") {
			r.Waves = append(r.Waves, strings.TrimSpace(w))
		}
		set = true
	}
	if o.MaxInFlight < 0 {
		return nil, fmt.Errorf("--max-in-flight %d: want 1 or more devices", o.MaxInFlight)
	}
	if o.MaxInFlight > 0 {
		r.MaxInFlight, set = o.MaxInFlight, true
	}
	if p := strings.TrimSpace(o.Pause); p != "" {
		if !strings.EqualFold(p, api.PauseManual) {
			if d, err := time.ParseDuration(p); err != nil || d < 0 {
				return nil, fmt.Errorf("--pause %q: want a duration such as 5m, or manual", o.Pause)
			}
		}
		r.Pause, set = p, true
	}
	if d := strings.TrimSpace(o.DeviceTimeout); d != "" {
		if v, err := time.ParseDuration(d); err != nil || v <= 0 {
			return nil, fmt.Errorf("--device-timeout %q: want a positive duration such as 30m", o.DeviceTimeout)
		}
		r.DeviceTimeout, set = d, true
	}
	if th := strings.TrimSpace(o.AbortThreshold); th != "" {
		p, err := strconv.ParseFloat(strings.TrimSuffix(th, "%"), 64)
		if err != nil || p < 0 || p > 100 {
			return nil, fmt.Errorf("--abort-threshold %q: want a percent from 0 to 100, such as 20", o.AbortThreshold)
		}
		a := &api.AbortPolicy{Threshold: p, MinSample: o.MinSample}
		for _, k := range o.AbortOn {
			if k = strings.TrimSpace(k); k != "" {
				a.Errors = append(a.Errors, onfailure.Kind(k))
			}
		}
		r.Abort, set = a, true
	} else if o.MinSample != 0 || len(o.AbortOn) > 0 {
		return nil, errors.New("--min-sample and --abort-on go with --abort-threshold P (the percent that aborts)")
	}
	if o.MinSample < 0 {
		return nil, fmt.Errorf("--min-sample %d: want 0 or more devices", o.MinSample)
	}
	if o.RollbackOnAbort {
		if r.Abort == nil {
			return nil, errors.New("--rollback-on-abort goes with --abort-threshold P: it rolls back the devices that succeeded once the threshold trips")
		}
		r.RollbackOnAbort = true
	}
	if !set {
		return nil, nil
	}
	return &r, nil
}

// guidedFailureFlag reads --guided-failure TIMEOUT[:ONTIMEOUT].
func guidedFailureFlag(v string) (*api.GuidedFailure, error) {
	if v = strings.TrimSpace(v); v == "" {
		return nil, nil
	}
	timeout, action, _ := strings.Cut(v, ":")
	if d, err := time.ParseDuration(timeout); err != nil || d <= 0 {
		return nil, fmt.Errorf("--guided-failure %q: want TIMEOUT[:ONTIMEOUT], such as 30m or 30m:RollbackFlow", v)
	}
	return &api.GuidedFailure{Timeout: timeout, OnTimeout: onfailure.Action(action)}, nil
}

// LabelSelector reads K=V,K=V values (repeatable) of flag into a label
// selector.
func LabelSelector(flag string, vals []string) (map[string]string, error) {
	m, err := keyValueFlag(flag, vals, true)
	if err == nil && len(m) == 0 {
		err = fmt.Errorf("%s: want K=V labels", flag)
	}
	return m, err
}

// keyValueFlag reads K=V values; with commas, each value may hold several
// pairs separated by commas.
func keyValueFlag(flag string, vals []string, commas bool) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, v := range vals {
		pairs := []string{v}
		if commas {
			pairs = strings.Split(v, ",")
		}
		for _, kv := range pairs {
			k, val, ok := strings.Cut(kv, "=")
			if k = strings.TrimSpace(k); !ok || k == "" {
				return nil, fmt.Errorf("%s %q: want K=V", flag, kv)
			}
			if old, dup := m[k]; dup && old != val {
				return nil, fmt.Errorf("%s: %s given twice (%q and %q)", flag, k, old, val)
			}
			m[k] = val
		}
	}
	return m, nil
}

// Deploy sends the flow or bundle at path to the devices the flags name
// and prints the deployment (its id in table format, the API's resource
// in json or yaml). With Wait it then follows it as Watch does and
// returns the same exit errors (in json or yaml, progress goes to Err and
// the final deployment, with its devices, to Out). Bad flags, an invalid
// flow or a request the controller refuses as invalid are usage errors,
// and nothing is deployed.
func (f *Fleet) Deploy(ctx context.Context, path string, o DeployFlags, now time.Time) error {
	t, err := o.target()
	if err != nil {
		return Usage(err)
	}
	ctx, cancel, timedOut := withTimeout(ctx, o.Timeout)
	defer cancel()
	timeout := func(what string) error {
		fmt.Fprintf(f.Err, "timed out after %v %s\n", o.Timeout, what)
		return &ExitError{Code: ExitTimeout}
	}

	bundle, cleanup, err := f.bundleFor(path, o, now)
	if err != nil {
		return err
	}
	defer cleanup()
	b, err := f.Client.UploadBundleFile(ctx, bundle)
	if err != nil {
		if timedOut() {
			return timeout("uploading the bundle; nothing was deployed")
		}
		return apiErr(err)
	}
	fmt.Fprintf(f.Err, "uploaded bundle %s: flow %s version %d, %d bytes\n", short(b.SHA256), b.Flow, b.Version, b.Size)

	d, err := f.Client.CreateDeployment(ctx, api.CreateDeployment{Bundle: b.SHA256, Devices: t.devices, Selector: t.selector, Vars: t.vars,
		Rollout: t.rollout, GuidedFailure: t.guidedFailure, FailureStrategies: t.strategies, StrategySet: t.strategySet})
	if err != nil {
		if timedOut() {
			return timeout("creating the deployment; it may or may not exist (edgeflow deployments)")
		}
		return apiErr(err)
	}
	if !o.Wait {
		if f.Format != FormatTable {
			return f.Format.Encode(f.Out, d)
		}
		fmt.Fprintln(f.Out, d.ID)
		fmt.Fprintf(f.Err, "deployment %s created: %s (edgeflow watch %s follows it)\n", d.ID, countsText(d.Counts), d.ID)
		return nil
	}

	w, summary := f.Out, f.Out
	if f.Format == FormatTable {
		fmt.Fprintln(f.Out, d.ID)
	} else {
		w, summary = f.Err, f.Err
	}
	p := newProgress(w, f.TTY && f.Format == FormatTable, d)
	fmt.Fprintf(f.Err, "deployment %s created: %s; following it\n", d.ID, countsText(d.Counts))
	p.draw()
	final := d
	if !client.FinalStatus(d.Status) {
		final, err = f.follow(ctx, d, p.event)
		p.close()
		if err != nil {
			final.Counts = p.counts()
			return f.watchErr(err, final, o.Timeout, timedOut())
		}
	}
	if f.Format != FormatTable {
		full, err := f.Client.Deployment(ctx, d.ID)
		if err != nil {
			return apiErr(err)
		}
		if err := f.Format.Encode(f.Out, full); err != nil {
			return err
		}
	}
	return outcome(summary, final)
}

// bundleFor returns the bundle file to upload for path: path itself when
// it is a bundle, else a bundle built from the flow at path into a
// temporary file that cleanup removes.
func (f *Fleet) bundleFor(path string, o DeployFlags, now time.Time) (file string, cleanup func(), err error) {
	nothing := func() {}
	isBundle, err := packaging.IsBundle(path)
	if err != nil {
		return "", nothing, Usage(fmt.Errorf("deploy: %w", err))
	}
	if isBundle {
		if o.Key != "" || o.Version != 0 || o.Gzip {
			return "", nothing, Usage(fmt.Errorf("deploy: %s is a bundle, uploaded as it was built: --key, --version and --gzip apply to a FLOW", path))
		}
		return path, nothing, nil
	}

	opts := packaging.Options{Version: o.Version, Created: now, Gzip: o.Gzip}
	if opts.Version == 0 {
		opts.Version = uint64(now.Unix())
	}
	key := cmpOr(o.Key, o.EnvKey)
	if key != "" {
		if opts.Key, err = packaging.LoadPrivateKey(key); err != nil {
			return "", nothing, Usage(fmt.Errorf("deploy: signing key: %w", err))
		}
	}
	plan, err := packaging.Collect(path, opts)
	if err != nil {
		return "", nothing, Usage(err)
	}
	tmp, err := os.CreateTemp("", "edgeflow-deploy-*.bundle")
	if err != nil {
		return "", nothing, fmt.Errorf("deploy: build the bundle: %w", err)
	}
	cleanup = func() { os.Remove(tmp.Name()) }
	err = plan.Write(tmp)
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("deploy: build the bundle: %w", cerr)
	}
	if err != nil {
		cleanup()
		return "", nothing, err
	}
	m := plan.Manifest
	signed := "signed by key " + m.KeyID
	if m.KeyID == "" {
		signed = "UNSIGNED (no --key or $" + EnvSigningKey + "): devices with trusted keys refuse it"
	}
	fmt.Fprintf(f.Err, "built bundle: flow %q version %d, %d entries, %d bytes of payload, %s\n",
		m.Flow, m.Version, len(m.Entries), m.TotalSize(), signed)
	return tmp.Name(), cleanup, nil
}
