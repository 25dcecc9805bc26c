package script

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// MaxOutputFile is the largest output file (EDGEFLOW_OUTPUT) a script may
// write; a larger one fails the step.
const MaxOutputFile = 1 << 20

// Runner runs script steps, and the command and script rollback actions.
// The zero value is ready to use.
type Runner struct {
	// Grace is the time the script's process group has between SIGTERM and
	// SIGKILL when it is stopped; zero means DefaultGrace.
	Grace time.Duration
}

var _ steps.Runner = (*Runner)(nil)

// Run runs the script of a script step (see the package doc).
func (r *Runner) Run(ctx context.Context, s *flow.Step, env *steps.Env) error {
	if s.Script == nil {
		return onfailure.Errorf(onfailure.Unknown, "step %q is not a script step", s.Name)
	}
	return r.RunScript(ctx, s.Script, env)
}

// RunCommand runs text with the default shell, in Env.Root, as a script
// with no other keys set: the command rollback action (spec 6).
func (r *Runner) RunCommand(ctx context.Context, text string, env *steps.Env) error {
	return r.RunScript(ctx, &flow.Script{Run: text}, env)
}

// RunScript runs sc and waits for it. It returns nil when the script exits
// 0 and its output file is well formed, having added the outputs to
// env.Outputs. Otherwise it returns an error carrying an onfailure kind, as
// the package doc says; when ctx ends first, one wrapping
// context.Cause(ctx).
func (r *Runner) RunScript(ctx context.Context, sc *flow.Script, env *steps.Env) error {
	if sc == nil {
		return onfailure.Errorf(onfailure.Unknown, "no script to run")
	}
	if env == nil {
		env = &steps.Env{}
	}
	text, err := expand(env, sc.Run)
	if err != nil {
		return &onfailure.Error{Kind: onfailure.Unknown, Op: "expand run", Err: err}
	}
	vars := make([]string, 0, len(sc.Env)+7)
	for _, k := range slices.Sorted(maps.Keys(sc.Env)) {
		v, err := expand(env, sc.Env[k])
		if err != nil {
			return &onfailure.Error{Kind: onfailure.Unknown, Op: "expand env " + k, Err: err}
		}
		vars = append(vars, k+"="+v)
	}
	dir, err := workdir(env.Root, sc.Workdir)
	if err != nil {
		return err
	}
	outPath, err := freshOutput(env)
	if err != nil {
		return err
	}
	vars = append(vars,
		"EDGEFLOW_OUTPUT="+outPath,
		"EDGEFLOW_DEVICE_ID="+env.DeviceID,
		"EDGEFLOW_EXECUTION="+env.Execution,
		"EDGEFLOW_FLOW="+env.Flow,
		"EDGEFLOW_STEP="+env.Step,
		"EDGEFLOW_GROUP="+env.Group,
		"EDGEFLOW_ATTEMPT="+strconv.Itoa(env.Attempt),
	)

	if sc.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, sc.Timeout,
			onfailure.Errorf(onfailure.Timeout, "script timed out after %s", sc.Timeout))
		defer cancel()
	}

	last := &LastLine{}
	var out io.Writer = last
	if env.Log != nil {
		out = io.MultiWriter(env.Log, last)
	}
	code, err := Exec(ctx, Command{
		Shell: sc.Shell, Text: text, Env: vars, Dir: dir, Output: out, Grace: r.Grace,
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return &onfailure.Error{
			Kind: exitKind(sc.ErrorTypes, code),
			Err:  &ExitError{Code: code, LastLine: last.Line()},
		}
	}
	outputs, err := readOutputs(outPath)
	if err != nil {
		return err
	}
	if len(outputs) > 0 {
		if env.Outputs == nil {
			env.Outputs = make(map[string]string, len(outputs))
		}
		maps.Copy(env.Outputs, outputs)
	}
	return nil
}

// ExitError is a script that exited non-zero.
type ExitError struct {
	// Code is the exit status; 128+signal for a process killed by a signal.
	Code int
	// LastLine is the last non-empty line of the output, trimmed and
	// clipped to about 200 bytes.
	LastLine string
}

func (e *ExitError) Error() string {
	if e.LastLine == "" {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return fmt.Sprintf("exit status %d: %s", e.Code, e.LastLine)
}

// exitKind is the kind errorTypes gives code, else Unknown. Keys are
// decimal exit codes ("75"; "075" too, as validation accepts it).
func exitKind(types map[string]onfailure.Kind, code int) onfailure.Kind {
	if k, ok := types[strconv.Itoa(code)]; ok && k.Valid() {
		return k
	}
	for key, k := range types {
		if n, err := strconv.Atoi(strings.TrimSpace(key)); err == nil && n == code && k.Valid() {
			return k
		}
	}
	return onfailure.Unknown
}

func expand(env *steps.Env, s string) (string, error) {
	if env.Expand == nil {
		return s, nil
	}
	return env.Expand(s)
}

// workdir resolves a script's workdir (see the package doc).
func workdir(root, wd string) (string, error) {
	if wd == "" {
		return root, nil
	}
	if filepath.IsAbs(wd) {
		return filepath.Clean(wd), nil
	}
	absRoot, err := filepath.Abs(root)
	if err != nil {
		return "", onfailure.Wrap("workdir "+wd, err)
	}
	dir, err := securejoin.SecureJoin(absRoot, wd)
	if err != nil {
		return "", onfailure.Wrap(fmt.Sprintf("workdir %s in %s", wd, absRoot), err)
	}
	return dir, nil
}

// freshOutput creates an empty output file for this run in env.WorkDir and
// returns its path. A file left by an earlier run (or a symbolic link a
// script put in its place) is removed first, never followed.
func freshOutput(env *steps.Env) (string, error) {
	dir := env.WorkDir
	if dir == "" {
		return "", onfailure.Errorf(onfailure.Unknown, "no work directory for the output file")
	}
	path := filepath.Join(dir, fmt.Sprintf("output-%d", env.Attempt))
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", onfailure.Wrap("remove old output file", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", onfailure.Wrap("create output file", err)
	}
	if err := f.Close(); err != nil {
		return "", onfailure.Wrap("create output file", err)
	}
	return path, nil
}

var outputNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// readOutputs parses the NAME=value lines of the output file at path.
func readOutputs(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, onfailure.Wrap("read outputs", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxOutputFile+1))
	if err != nil {
		return nil, onfailure.Wrap("read outputs", err)
	}
	if len(data) > MaxOutputFile {
		return nil, onfailure.Errorf(onfailure.Unknown,
			"output file %s: larger than %d bytes", path, MaxOutputFile)
	}
	outputs := map[string]string{}
	for n, line := range bytes.Split(data, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		name, value, ok := strings.Cut(string(line), "=")
		if !ok {
			return nil, onfailure.Errorf(onfailure.Unknown,
				"output file %s line %d: want NAME=value, found no \"=\"", path, n+1)
		}
		if !outputNameRE.MatchString(name) {
			return nil, onfailure.Errorf(onfailure.Unknown,
				"output file %s line %d: output name %q must match [A-Za-z_][A-Za-z0-9_]*",
				path, n+1, Clip(name, 64))
		}
		outputs[name] = value
	}
	return outputs, nil
}

// LastLine is an io.Writer that keeps the end of what is written to it,
// so an error can quote the last line of a command's output.
type LastLine struct {
	mu  sync.Mutex
	buf []byte
}

const lastLineKeep = 4096

func (l *LastLine) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(p) >= lastLineKeep {
		l.buf = append(l.buf[:0], p[len(p)-lastLineKeep:]...)
		return len(p), nil
	}
	l.buf = append(l.buf, p...)
	if len(l.buf) > lastLineKeep {
		l.buf = append(l.buf[:0], l.buf[len(l.buf)-lastLineKeep:]...)
	}
	return len(p), nil
}

// Line returns the last non-empty line written, trimmed and clipped to
// 200 bytes.
func (l *LastLine) Line() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimRight(string(l.buf), " \t\r\n")
	if i := strings.LastIndexAny(s, "\r\n"); i >= 0 {
		s = s[i+1:]
	}
	return Clip(strings.TrimSpace(s), 200)
}

// Clip shortens s to at most n bytes, marking the cut.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}
