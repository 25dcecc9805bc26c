package cli

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/packaging"
)

// KeygenCommand writes a new bundle signing key pair.
func KeygenCommand(stdout io.Writer) *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "keygen --out PREFIX",
		Short: "Write a new Ed25519 bundle signing key: PREFIX.key (private, 0600) and PREFIX.pub",
		Args:  Args(0),
		RunE: func(*cobra.Command, []string) error {
			return Keygen(stdout, out)
		},
	}
	c.Flags().StringVar(&out, "out", "", "path prefix of the key files (required)")
	return c
}

// Keygen writes PREFIX.key and PREFIX.pub and says where they are.
func Keygen(stdout io.Writer, prefix string) error {
	if prefix == "" {
		return Usage(errors.New("keygen: --out PREFIX is required"))
	}
	priv, pub, err := packaging.GenerateKey()
	if err != nil {
		return err
	}
	keyPath, pubPath, err := packaging.WriteKeyFiles(prefix, priv)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (private: keep it offline) and %s (public), key id %s\n", keyPath, pubPath, pub.ID())
	return nil
}

// BundleCommand is `bundle` with its build, verify and inspect commands.
func BundleCommand(stdout io.Writer) *cobra.Command {
	c := &cobra.Command{
		Use:   "bundle",
		Short: "Build, verify and inspect signed update bundles",
		Args:  Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Usage(fmt.Errorf("bundle: say build, verify or inspect (see %s --help)", cmd.CommandPath()))
		},
	}
	c.AddCommand(bundleBuildCommand(stdout), bundleVerifyCommand(stdout), bundleInspectCommand(stdout))
	return c
}

// BuildFlags are the flags of `bundle build`.
type BuildFlags struct {
	Out     string
	Key     string
	Version uint64
	Expires string
	Devices []string
	Labels  []string
	Include []string
	Gzip    bool
}

func bundleBuildCommand(stdout io.Writer) *cobra.Command {
	var f BuildFlags
	c := &cobra.Command{
		Use:   "build FLOW -o FILE",
		Short: "Bundle a flow and every file it refers to, signed with --key",
		Args:  Args(1),
		RunE: func(_ *cobra.Command, a []string) error {
			return BuildBundle(stdout, a[0], f, time.Now())
		},
	}
	fl := c.Flags()
	fl.StringVarP(&f.Out, "out", "o", "", "bundle file to write (required)")
	fl.StringVar(&f.Key, "key", "", "private key file (PREFIX.key) to sign with; without it the bundle is unsigned")
	fl.Uint64Var(&f.Version, "version", 0, "release version, at least 1 (default: the current Unix time in seconds)")
	fl.StringVar(&f.Expires, "expires", "", "expiry: a duration from now (90m, 72h, 30d) or an RFC 3339 time")
	fl.StringArrayVar(&f.Devices, "device", nil, "device id the bundle is for (repeatable; default: any)")
	fl.StringArrayVar(&f.Labels, "label", nil, "K=V label a device must have (repeatable)")
	fl.StringArrayVar(&f.Include, "include", nil, "extra file or directory, relative to the flow's directory (repeatable)")
	fl.BoolVar(&f.Gzip, "gzip", false, "gzip-compress the bundle")
	return c
}

// BuildBundle builds the bundle the flags describe. Bad flags, an invalid
// flow or a file it names that cannot be bundled are usage errors; the
// output is written to a temporary file and renamed into place.
func BuildBundle(stdout io.Writer, flowPath string, f BuildFlags, now time.Time) (err error) {
	if f.Out == "" {
		return Usage(errors.New("bundle build: -o FILE is required"))
	}
	opts := packaging.Options{Version: f.Version, Created: now, Gzip: f.Gzip, Devices: f.Devices, Include: f.Include}
	if opts.Version == 0 {
		opts.Version = uint64(now.Unix())
	}
	if f.Expires != "" {
		if opts.Expires, err = ParseExpiry(f.Expires, now); err != nil {
			return Usage(err)
		}
	}
	if opts.Labels, err = parseLabels(f.Labels); err != nil {
		return Usage(err)
	}
	if f.Key != "" {
		if opts.Key, err = packaging.LoadPrivateKey(f.Key); err != nil {
			return Usage(err)
		}
	}
	plan, err := packaging.Collect(flowPath, opts)
	if err != nil {
		return Usage(err)
	}
	outAbs, err := filepath.Abs(f.Out)
	if err != nil {
		return err
	}
	for _, src := range plan.Files() {
		if same(src, outAbs) {
			return Usage(fmt.Errorf("bundle build: -o %s would overwrite a file the bundle holds", f.Out))
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(outAbs), "."+filepath.Base(outAbs)+".tmp-")
	if err != nil {
		return fmt.Errorf("bundle build: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = plan.Write(tmp); err != nil {
		return err
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("bundle build: %w", err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("bundle build: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("bundle build: %w", err)
	}
	if err = os.Rename(tmp.Name(), outAbs); err != nil {
		return fmt.Errorf("bundle build: %w", err)
	}
	m := plan.Manifest
	signed := "unsigned"
	if m.KeyID != "" {
		signed = "signed by key " + m.KeyID
	}
	fmt.Fprintf(stdout, "wrote %s: flow %q version %d, %d entries, %d bytes of payload, %s\n",
		f.Out, m.Flow, m.Version, len(m.Entries), m.TotalSize(), signed)
	return nil
}

func same(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// ParseExpiry reads an expiry: a duration from now (Go syntax, or whole
// days as 30d) or an RFC 3339 time.
func ParseExpiry(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n > 0 {
			return now.Add(time.Duration(n) * 24 * time.Hour), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("--expires %q: want a positive duration (72h, 30d) or an RFC 3339 time", s)
	}
	return now.Add(d), nil
}

func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want K=V", kv)
		}
		m[k] = v
	}
	return m, nil
}

// VerifyFlags are the flags of `bundle verify`.
type VerifyFlags struct {
	PubKeys        []string
	Device         string
	Labels         []string
	Installed      uint64
	AllowReinstall bool
}

func bundleVerifyCommand(stdout io.Writer) *cobra.Command {
	var f VerifyFlags
	c := &cobra.Command{
		Use:   "verify FILE --pubkey PUB",
		Short: "Check a bundle as a device would: exit 0 valid, 1 refused (with the reason), 2 bad usage",
		Args:  Args(1),
		RunE: func(_ *cobra.Command, a []string) error {
			return VerifyBundle(stdout, a[0], f, time.Now())
		},
	}
	fl := c.Flags()
	fl.StringArrayVar(&f.PubKeys, "pubkey", nil, "trusted public key file (PREFIX.pub; repeatable; required)")
	fl.StringVar(&f.Device, "device", "", "check the bundle is for this device id")
	fl.StringArrayVar(&f.Labels, "label", nil, "K=V label of the device (repeatable)")
	fl.Uint64Var(&f.Installed, "installed", 0, "version installed on the device; older or equal bundles are refused")
	fl.BoolVar(&f.AllowReinstall, "allow-reinstall", false, "accept a bundle whose version equals --installed")
	return c
}

// VerifyBundle verifies the bundle file against the trusted keys and the
// device the flags describe. A refusal is returned as is (exit 1).
func VerifyBundle(stdout io.Writer, file string, f VerifyFlags, now time.Time) error {
	if len(f.PubKeys) == 0 {
		return Usage(errors.New("bundle verify: --pubkey PUB is required (the public key the bundle must be signed with)"))
	}
	opts := packaging.VerifyOptions{Now: now, DeviceID: f.Device, Installed: f.Installed, AllowReinstall: f.AllowReinstall}
	for _, p := range f.PubKeys {
		k, err := packaging.LoadPublicKey(p)
		if err != nil {
			return Usage(err)
		}
		opts.Trusted = append(opts.Trusted, k)
	}
	var err error
	if opts.Labels, err = parseLabels(f.Labels); err != nil {
		return Usage(err)
	}
	r, err := os.Open(file)
	if err != nil {
		return Usage(fmt.Errorf("bundle verify: %w", err))
	}
	defer r.Close()
	m, err := packaging.Verify(r, opts)
	if err != nil {
		return fmt.Errorf("%s: refused: %w", file, err)
	}
	fmt.Fprintf(stdout, "%s: valid: flow %q version %d, %d entries, signed by key %s\n", file, m.Flow, m.Version, len(m.Entries), m.KeyID)
	return nil
}

func bundleInspectCommand(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect FILE",
		Short: "Print a bundle's manifest (without verifying it)",
		Args:  Args(1),
		RunE: func(_ *cobra.Command, a []string) error {
			return InspectBundle(stdout, a[0])
		},
	}
}

// InspectBundle prints what the bundle's manifest says. It checks no
// signature and no payload; `bundle verify` does.
func InspectBundle(stdout io.Writer, file string) error {
	r, err := os.Open(file)
	if err != nil {
		return Usage(fmt.Errorf("bundle inspect: %w", err))
	}
	defer r.Close()
	b, err := packaging.Inspect(r, packaging.Limits{})
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	m := b.Manifest
	expires := "never"
	if m.Expires != nil {
		expires = m.Expires.UTC().Format(time.RFC3339)
	}
	signed := "no"
	if b.Signed {
		signed = "yes (not verified here; use bundle verify)"
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "flow:\t%s\n", m.Flow)
	fmt.Fprintf(w, "flow file:\t%s\n", m.FlowFile)
	fmt.Fprintf(w, "version:\t%d\n", m.Version)
	fmt.Fprintf(w, "created:\t%s\n", m.Created.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "expires:\t%s\n", expires)
	fmt.Fprintf(w, "key id:\t%s\n", orNone(m.KeyID))
	fmt.Fprintf(w, "signed:\t%s\n", signed)
	if len(m.Devices) > 0 {
		fmt.Fprintf(w, "devices:\t%s\n", strings.Join(m.Devices, ", "))
	}
	for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
		fmt.Fprintf(w, "label:\t%s=%s\n", k, m.Labels[k])
	}
	fmt.Fprintf(w, "entries:\t%d, %d bytes\n", len(m.Entries), m.TotalSize())
	if err := w.Flush(); err != nil {
		return err
	}
	for _, e := range m.Entries {
		fmt.Fprintf(stdout, "  %12d  %s  %s\n", e.Size, e.SHA256, e.Path)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
