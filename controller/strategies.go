package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/transport"
)

var strategySetNameRE = regexp.MustCompile(api.StrategySetNamePattern)

// checkSetName refuses a strategy set name that does not match
// api.StrategySetNamePattern.
func checkSetName(name string) error {
	if !strategySetNameRE.MatchString(name) {
		return invalid("strategy set name %q: want 1 to 63 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

// parseStrategies checks a list of failure strategies (YAML or JSON) as
// flow.ParseStrategies does, naming file in its problems, and returns
// its wire form. A refusal is an *Error with code invalid carrying every
// problem with its line and column.
func parseStrategies(file string, data []byte) ([]transport.Strategy, error) {
	list, err := flow.ParseStrategies(file, data)
	if err != nil {
		var probs flow.Problems
		if errors.As(err, &probs) {
			return nil, invalid("invalid failure strategies:\n%v", err)
		}
		return nil, invalid("failure strategies: %v", err)
	}
	if len(list) > transport.MaxStrategies {
		return nil, invalid("%s: %d failure strategies, over the limit of %d", file, len(list), transport.MaxStrategies)
	}
	return transport.StrategiesOf(list), nil
}

// PutStrategySet stores the strategy set name from data, a YAML or JSON
// list of failure strategies, replacing the set of that name. A set that
// does not parse is refused (invalid) with each problem's line and
// column, and nothing is stored. Deployments made with an earlier version
// keep their copy.
func (c *Controller) PutStrategySet(ctx context.Context, name string, data []byte) (api.StrategySet, bool, error) {
	if err := checkSetName(name); err != nil {
		return api.StrategySet{}, false, err
	}
	list, err := parseStrategies(name, data)
	if err != nil {
		return api.StrategySet{}, false, err
	}
	now := c.now().UTC()
	set, created, err := c.st.PutStrategySet(ctx, api.StrategySet{Name: name, Strategies: list, Created: now, Updated: now})
	if err != nil {
		return api.StrategySet{}, false, err
	}
	c.log.Info("strategy set stored", "set", name, "strategies", len(list), "created", created)
	return set, created, nil
}

// StrategySet returns a strategy set.
func (c *Controller) StrategySet(ctx context.Context, name string) (api.StrategySet, error) {
	if err := checkSetName(name); err != nil {
		return api.StrategySet{}, err
	}
	set, err := c.st.StrategySet(ctx, name)
	return set, lookup(err, "strategy set %s not found", name)
}

// StrategySets returns every strategy set, by name.
func (c *Controller) StrategySets(ctx context.Context) ([]api.StrategySet, error) {
	sets, err := c.st.StrategySets(ctx)
	if sets == nil {
		sets = []api.StrategySet{}
	}
	return sets, err
}

// DeleteStrategySet deletes a strategy set. The deployments made with it
// keep their copy of its strategies.
func (c *Controller) DeleteStrategySet(ctx context.Context, name string) error {
	if err := checkSetName(name); err != nil {
		return err
	}
	if err := c.st.DeleteStrategySet(ctx, name); err != nil {
		return lookup(err, "strategy set %s not found", name)
	}
	c.log.Info("strategy set deleted", "set", name)
	return nil
}

// requestStrategies resolves a deployment request's failure strategies:
// the inline list, or a copy of the named set (with its name), or none.
func (c *Controller) requestStrategies(ctx context.Context, req api.CreateDeployment) ([]transport.Strategy, string, error) {
	raw := bytes.TrimSpace(req.FailureStrategies)
	if bytes.Equal(raw, []byte("null")) {
		raw = nil
	}
	switch {
	case len(raw) > 0 && req.StrategySet != "":
		return nil, "", invalid("give at most one of failureStrategies (a list) and strategySet (the name of a stored set)")
	case len(raw) > 0:
		list, err := parseStrategies("failureStrategies", raw)
		return list, "", err
	case req.StrategySet != "":
		if err := checkSetName(req.StrategySet); err != nil {
			return nil, "", err
		}
		set, err := c.st.StrategySet(ctx, req.StrategySet)
		if errors.Is(err, store.ErrNotFound) {
			return nil, "", invalid("strategy set %s does not exist (PUT it to %s first)", req.StrategySet, api.PathStrategySets+"/"+req.StrategySet)
		}
		if err != nil {
			return nil, "", fmt.Errorf("create deployment: %w", err)
		}
		return set.Strategies, set.Name, nil
	}
	return nil, "", nil
}

// rawStrategies is list as a request's failureStrategies (nil: none).
func rawStrategies(list []transport.Strategy) json.RawMessage {
	if len(list) == 0 {
		return nil
	}
	data, _ := json.Marshal(list) // plain data: cannot fail
	return data
}
