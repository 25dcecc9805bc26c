package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

var strategySetNameRE = regexp.MustCompile(api.StrategySetNamePattern)

// strategiesFlag reads --strategies FILE|NAME: an existing file is read
// and checked (its problems with their line and column in it) and sent
// inline; anything else must be a strategy set name.
func strategiesFlag(v string) (json.RawMessage, string, error) {
	if v = strings.TrimSpace(v); v == "" {
		return nil, "", nil
	}
	st, err := os.Stat(v)
	switch {
	case err == nil && st.IsDir():
		return nil, "", fmt.Errorf("--strategies %s: a directory; want a file of failure strategies or a strategy set name", v)
	case err == nil:
		list, err := readStrategies(v)
		if err != nil {
			return nil, "", fmt.Errorf("--strategies: %w", err)
		}
		data, err := json.Marshal(transport.StrategiesOf(list))
		return data, "", err
	case !errors.Is(err, fs.ErrNotExist):
		return nil, "", fmt.Errorf("--strategies: %w", err)
	case !strategySetNameRE.MatchString(v):
		return nil, "", fmt.Errorf("--strategies %s: no such file, and not a strategy set name (%s)", v, api.StrategySetNamePattern)
	}
	return nil, v, nil
}

// readStrategies reads and checks a file of failure strategies.
func readStrategies(file string) ([]onfailure.Strategy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return flow.ParseStrategies(file, data)
}

func strategySetsCommand(stdout, stderr io.Writer) *cobra.Command {
	var cf connFlags
	c := &cobra.Command{
		Use:   "strategy-sets",
		Short: "List the strategy sets stored in the controller",
		Args:  Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return f.StrategySets(cmd.Context())
		},
	}
	cf.add(c)
	return c
}

func strategySetCommand(stdout, stderr io.Writer) *cobra.Command {
	c := &cobra.Command{
		Use:   "strategy-set",
		Short: "Show, store or delete a named set of failure strategies (for deploy --strategies NAME)",
		Long: `A strategy set is a named list of failure strategies stored in the
controller, for flows that say "failureStrategies: input" (docs/flows.md):
"edgeflow deploy FLOW --strategies NAME" copies it into the deployment, so a
later put or delete does not change a deployment made with it.

A name is 1 to 63 lowercase letters, digits, '.', '_' and '-', starting
with a letter or digit.`,
		Args: cobra.NoArgs,
	}
	run := func(cf *connFlags, fn func(*Fleet, context.Context, []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, a []string) error {
			f, err := cf.fleet(stdout, stderr)
			if err != nil {
				return err
			}
			return fn(f, cmd.Context(), a)
		}
	}
	var showFlags, putFlags, deleteFlags connFlags
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a strategy set",
		Args:  Args(1),
		RunE:  run(&showFlags, func(f *Fleet, ctx context.Context, a []string) error { return f.ShowStrategySet(ctx, a[0]) }),
	}
	showFlags.add(show)
	put := &cobra.Command{
		Use:   "put NAME FILE",
		Short: "Store FILE (a YAML or JSON list of failure strategies) as the strategy set NAME, replacing one of that name",
		Args:  Args(2),
		RunE:  run(&putFlags, func(f *Fleet, ctx context.Context, a []string) error { return f.PutStrategySet(ctx, a[0], a[1]) }),
	}
	putFlags.add(put)
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a strategy set (deployments made with it keep their copy)",
		Args:  Args(1),
		RunE:  run(&deleteFlags, func(f *Fleet, ctx context.Context, a []string) error { return f.DeleteStrategySet(ctx, a[0]) }),
	}
	deleteFlags.add(del)
	c.AddCommand(show, put, del)
	return c
}

// StrategySets prints the stored strategy sets: NAME, STRATEGIES (a
// summary), UPDATED.
func (f *Fleet) StrategySets(ctx context.Context) error {
	sets, err := f.Client.StrategySets(ctx)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, api.StrategySetList{StrategySets: nonNil(sets)})
	}
	if len(sets) == 0 {
		fmt.Fprintln(f.Err, "no strategy sets yet: edgeflow strategy-set put NAME FILE stores one")
		return nil
	}
	now := f.Now()
	tw := table(f.Out, "NAME", "STRATEGIES", "UPDATED")
	for _, s := range sets {
		row(tw, s.Name, truncate(strategiesText(s.Strategies), 80), age(now, s.Updated))
	}
	return tw.Flush()
}

// ShowStrategySet prints a strategy set: its name and times, then a table
// of its strategies (ERRORS, ACTION, RETRY, MANUAL), in order.
func (f *Fleet) ShowStrategySet(ctx context.Context, name string) error {
	s, err := f.Client.StrategySet(ctx, name)
	if err != nil {
		return apiErr(err)
	}
	if f.Format != FormatTable {
		return f.Format.Encode(f.Out, s)
	}
	return f.strategySetTable(*s)
}

func (f *Fleet) strategySetTable(s api.StrategySet) error {
	now := f.Now()
	tw := table(f.Out, "strategy set:", s.Name)
	fmt.Fprintf(tw, "created:\t%s (%s)\n", s.Created.UTC().Format(time.RFC3339), age(now, s.Created))
	fmt.Fprintf(tw, "updated:\t%s (%s)\n", s.Updated.UTC().Format(time.RFC3339), age(now, s.Updated))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(f.Out)
	tw = table(f.Out, "#", "ERRORS", "ACTION", "RETRY", "MANUAL")
	for i, x := range s.Strategies {
		retry, manual := "", ""
		if r := x.Retry; r != nil {
			retry = fmt.Sprintf("count %d", r.Count)
			if len(r.Intervals) > 0 {
				retry += ", intervals " + strings.Join(r.Intervals, ",")
			}
			if r.OnExhausted != "" {
				retry += ", then " + string(r.OnExhausted)
			}
		}
		if m := x.Manual; m != nil {
			manual = fmt.Sprintf("%s, then %s", m.Timeout, m.OnTimeout)
		}
		row(tw, fmt.Sprint(i+1), kindsText(x), string(x.Action), retry, manual)
	}
	return tw.Flush()
}

// PutStrategySet checks the file here (problems with their line and
// column in it, nothing sent), then stores it as the set name; it prints
// the set (its name in table format) and a note on Err.
func (f *Fleet) PutStrategySet(ctx context.Context, name, file string) error {
	if !strategySetNameRE.MatchString(name) {
		return Usage(fmt.Errorf("strategy-set put: name %q: want 1 to 63 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit", name))
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return Usage(fmt.Errorf("strategy-set put: %w", err))
	}
	if _, err := flow.ParseStrategies(file, data); err != nil {
		return Usage(err)
	}
	s, created, err := f.Client.PutStrategySet(ctx, name, data)
	if err != nil {
		return apiErr(err)
	}
	what := "replaced"
	if created {
		what = "created"
	}
	if f.Format != FormatTable {
		if err := f.Format.Encode(f.Out, s); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(f.Out, s.Name)
	}
	fmt.Fprintf(f.Err, "strategy set %s %s: %s\n", s.Name, what, strategiesText(s.Strategies))
	return nil
}

// DeleteStrategySet deletes a strategy set.
func (f *Fleet) DeleteStrategySet(ctx context.Context, name string) error {
	if err := f.Client.DeleteStrategySet(ctx, name); err != nil {
		return apiErr(err)
	}
	fmt.Fprintf(f.Err, "strategy set %s deleted (deployments made with it keep their copy)\n", name)
	return nil
}

// strategiesText summarizes a list of strategies on one line:
// "Connectivity,Timeout: Retry 2; AllErrors: RollbackFlow".
func strategiesText(list []transport.Strategy) string {
	parts := make([]string, len(list))
	for i, s := range list {
		p := kindsText(s) + ": " + string(s.Action)
		if s.Retry != nil {
			p += fmt.Sprintf(" %d", s.Retry.Count)
			if s.Retry.OnExhausted != "" {
				p += " then " + string(s.Retry.OnExhausted)
			}
		}
		if s.Manual != nil {
			p += " " + s.Manual.Timeout + " then " + string(s.Manual.OnTimeout)
		}
		parts[i] = p
	}
	return strings.Join(parts, "; ")
}

func kindsText(s transport.Strategy) string {
	ks := make([]string, len(s.Errors))
	for i, k := range s.Errors {
		ks[i] = string(k)
	}
	return strings.Join(ks, ",")
}
