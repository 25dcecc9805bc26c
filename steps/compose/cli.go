package compose

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
	"github.com/edgeflow/edgeflow/steps/script"
)

// CLI is one Compose command line interface.
type CLI struct {
	// Name is "v2" for the docker compose plugin, "v1" for docker-compose.
	Name string
	// Argv is the argv prefix that runs it.
	Argv []string
}

// Known lists the Compose CLIs Detect looks for, in order of preference.
var Known = []CLI{
	{Name: "v2", Argv: []string{"docker", "compose"}},
	{Name: "v1", Argv: []string{"docker-compose"}},
}

// detectTimeout bounds each "version" probe of Variants.
const detectTimeout = 30 * time.Second

// Variants returns the CLIs of Known that are present, in order of
// preference: those whose "version" command exits 0.
func Variants(ctx context.Context) []CLI {
	var out []CLI
	for _, c := range Known {
		if present(ctx, c.Argv) {
			out = append(out, c)
		}
	}
	return out
}

// present reports whether "argv version" exits 0.
func present(ctx context.Context, argv []string) bool {
	ctx, cancel := context.WithTimeout(ctx, detectTimeout)
	defer cancel()
	code, err := script.Exec(ctx, script.Command{
		Argv:  append(slices.Clone(argv), "version"),
		Grace: time.Second,
	})
	return err == nil && code == 0
}

// Detect returns the preferred Compose CLI present on the device, or an
// error of kind Unknown saying that neither is installed.
func Detect(ctx context.Context) (CLI, error) {
	for _, c := range Known {
		if present(ctx, c.Argv) {
			return c, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return CLI{}, fmt.Errorf("detect the Compose CLI: %w", context.Cause(ctx))
	}
	return CLI{}, onfailure.Errorf(onfailure.Unknown,
		"no Compose CLI on this device: neither \"docker compose version\" (the v2 plugin) nor \"docker-compose version\" (v1) runs; install one of them")
}

// command returns the CLI argv prefix: Runner.Command, else the detected
// CLI, detected once.
func (r *Runner) command(ctx context.Context) ([]string, error) {
	if len(r.Command) > 0 {
		return r.Command, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.detected == nil {
		c, err := Detect(ctx)
		if err != nil {
			return nil, err
		}
		r.detected = c.Argv
	}
	return r.detected, nil
}

// project is one compose project as the CLI sees it: its name, file and
// project directory.
type project struct {
	cli  []string
	name string
	file string
	dir  string
}

// argv returns the command line of the subcommand args for p.
func (p project) argv(args ...string) []string {
	argv := slices.Clone(p.cli)
	argv = append(argv, "-p", p.name, "-f", p.file, "--project-directory", p.dir)
	return append(argv, args...)
}

// run runs a CLI subcommand of p. Its output goes to env.Log; with stdout
// set, stdout goes there instead (and stderr to the log). A non-zero exit
// is an *script.ExitError classified by ping: Connectivity when the
// daemon does not answer, else Unknown.
func (r *Runner) run(ctx context.Context, env *steps.Env, p project, stdout io.Writer, args ...string) error {
	argv := p.argv(args...)
	op := strings.Join(append(slices.Clone(p.cli), args...), " ") + " (project " + p.name + ")"
	logf(env, "$ %s", strings.Join(argv, " "))
	last := &script.LastLine{}
	errTail := &tail{}
	var log io.Writer = io.Discard
	if env != nil && env.Log != nil {
		log = env.Log
	}
	c := script.Command{Argv: argv, Grace: r.Grace, Output: io.MultiWriter(log, last, errTail)}
	if stdout != nil {
		c.Output = stdout
		c.Stderr = io.MultiWriter(log, last, errTail)
	}
	code, err := script.Exec(ctx, c)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return onfailure.Wrap(op, err)
	}
	if code == 0 {
		return nil
	}
	exit := &script.ExitError{Code: code, LastLine: last.Line()}
	if stdout != nil {
		// Only stderr was kept: a validation message is worth more
		// than its last line.
		exit.LastLine = errTail.lines(3)
	}
	if perr := r.Engine.Ping(ctx); perr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", op, context.Cause(ctx))
		}
		return onfailure.E(onfailure.Connectivity, op, fmt.Errorf("%w (docker daemon: %v)", exit, perr))
	}
	return onfailure.E(onfailure.Unknown, op, exit)
}

// config is the part of "config" output the step reads.
type config struct {
	Services map[string]struct {
		Image    string   `yaml:"image"`
		Profiles []string `yaml:"profiles"`
	} `yaml:"services"`
}

// services is a project's services, by name, with their images.
type services map[string]string

// names returns the service names, sorted.
func (s services) names() []string {
	out := make([]string, 0, len(s))
	for n := range s {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// images returns the distinct images, sorted.
func (s services) images() []string {
	var out []string
	for _, img := range s {
		if img != "" && !slices.Contains(out, img) {
			out = append(out, img)
		}
	}
	sort.Strings(out)
	return out
}

// needConfig reports whether the services, read from a file as written,
// need "config" to tell their images: an image uses variables, or a
// service has none (it may take one from extends).
func (s services) needConfig() bool {
	for _, img := range s {
		if img == "" || strings.Contains(img, "$") {
			return true
		}
	}
	return false
}

// parseConfig reads the services and their images from a compose file or
// the output of "config". Services that "up" does not start, those in
// profiles that COMPOSE_PROFILES does not enable, are left out (v2's
// config leaves them out too, v1's does not).
func parseConfig(data []byte) (services, error) {
	var c config
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	enabled := strings.Split(os.Getenv("COMPOSE_PROFILES"), ",")
	out := make(services, len(c.Services))
	for name, s := range c.Services {
		if len(s.Profiles) > 0 && !slices.ContainsFunc(s.Profiles, func(p string) bool {
			return slices.Contains(enabled, p) || slices.Contains(enabled, "*")
		}) {
			continue
		}
		out[name] = s.Image
	}
	return out, nil
}

// config validates p's file with "config" and returns its services.
func (r *Runner) config(ctx context.Context, env *steps.Env, p project) (services, error) {
	var out bytes.Buffer
	if err := r.run(ctx, env, p, &out, "config"); err != nil {
		return nil, err
	}
	svcs, err := parseConfig(out.Bytes())
	if err != nil {
		return nil, onfailure.E(onfailure.Unknown, "read the output of compose config", err)
	}
	return svcs, nil
}

// tail keeps the last few KiB written to it.
type tail struct{ buf []byte }

const tailKeep = 4096

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailKeep {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailKeep:]...)
	}
	return len(p), nil
}

// lines returns the last n non-empty lines, trimmed, joined with " / " and
// clipped to about 400 bytes.
func (t *tail) lines(n int) string {
	var keep []string
	all := strings.Split(string(t.buf), "\n")
	for i := len(all) - 1; i >= 0 && len(keep) < n; i-- {
		if l := strings.TrimSpace(all[i]); l != "" {
			keep = append(keep, l)
		}
	}
	slices.Reverse(keep)
	s := strings.Join(keep, " / ")
	if len(s) > 400 {
		s = "..." + strings.ToValidUTF8(s[len(s)-400:], "")
	}
	return s
}

func logf(env *steps.Env, format string, args ...any) {
	if env != nil && env.Log != nil {
		fmt.Fprintf(env.Log, format+"\n", args...)
	}
}
