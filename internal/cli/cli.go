// Package cli holds what edgeflow's two commands share: running a cobra
// root with a signal-aware context, mapping errors to exit codes, and the
// validate command.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/flow"
)

// Exit codes (spec 11). ExitTimeout is for commands that wait (deploy
// --wait, watch): their --timeout elapsed before the outcome was known.
const (
	ExitOK      = 0
	ExitFailed  = 1
	ExitInvalid = 2
	ExitTimeout = 3
)

// ExitError ends a command with Code, having already said why.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit %d", e.Code) }

// UsageError is bad input: an invalid flow, a wrong flag, a variable the
// flow does not declare. It exits with ExitInvalid; nothing has run.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// IsUsage marks the error as bad input.
func (e *UsageError) IsUsage() bool { return true }

// usage is any error that says it is bad input (this package's UsageError,
// agent.UsageError).
type usage interface {
	error
	IsUsage() bool
}

// Usage wraps err as a *UsageError.
func Usage(err error) error { return &UsageError{Err: err} }

// Run executes root with args under a context that ends on SIGINT or
// SIGTERM, and returns the exit code.
func Run(root *cobra.Command, args []string, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root.SilenceUsage, root.SilenceErrors = true, true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return Usage(err) })
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var ee *ExitError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee):
		return ee.Code
	}
	var ps flow.Problems
	if errors.As(err, &ps) {
		// FILE:LINE:COL: message, one a line, as compilers print them.
		fmt.Fprintln(stderr, ps.Error())
	} else {
		fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
	}
	var u usage
	if errors.As(err, &u) && u.IsUsage() {
		return ExitInvalid
	}
	return ExitFailed
}

// Args requires exactly n positional arguments, as a usage error.
func Args(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := cobra.ExactArgs(n)(cmd, a); err != nil {
			return Usage(err)
		}
		return nil
	}
}

// Logger returns a text logger on w at the named level.
func Logger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, Usage(fmt.Errorf("--log-level %q: want debug, info, warn or error", level))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// ValidateCommand checks a flow document and prints every problem with
// its line and column.
func ValidateCommand(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FLOW",
		Short: "Check a flow document; print every problem with its line and column",
		Args:  Args(1),
		RunE: func(_ *cobra.Command, a []string) error {
			f, err := flow.Load(a[0])
			if err != nil {
				return Usage(err)
			}
			fmt.Fprintf(stdout, "%s: flow %q is valid\n", a[0], f.Name)
			return nil
		},
	}
}
