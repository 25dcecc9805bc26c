package containers

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Defaults of Options.
const (
	DefaultInterval    = 500 * time.Millisecond
	DefaultMaxRestarts = 3
	DefaultSettle      = 3 * time.Second
	// DefaultWindow is the wait when a step sets no waitHealthy.
	DefaultWindow = 60 * time.Second
)

// Options tune a wait; zero values take the defaults.
type Options struct {
	// Window is the step's waitHealthy: how long the containers have to
	// become ready.
	Window time.Duration
	// Interval is the time between polls.
	Interval time.Duration
	// MaxRestarts is how many restarts during the wait are tolerated.
	MaxRestarts int
	// Settle is how long every container must have been ready, without a
	// restart, before the wait succeeds. It is capped at half the Window.
	Settle time.Duration
	// Expect names what must be present, by Service when set, else by
	// Name. Empty: every container the poll returns, and at least one.
	Expect []string
}

func (o Options) withDefaults() Options {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MaxRestarts <= 0 {
		o.MaxRestarts = DefaultMaxRestarts
	}
	if o.Settle <= 0 {
		o.Settle = DefaultSettle
	}
	if o.Settle > o.Window/2 {
		o.Settle = o.Window / 2
	}
	return o
}

// Poll returns the containers to wait for, as they are now.
type Poll func(ctx context.Context) ([]Container, error)

// Wait polls until the containers are ready, one fails, or the window
// runs out. An error of poll ends the wait with that error. now is the
// clock (nil: time.Now); tests inject their own.
func Wait(ctx context.Context, poll Poll, o Options, now func() time.Time) error {
	o = o.withDefaults()
	if now == nil {
		now = time.Now
	}
	start := now()
	deadline := start.Add(o.Window)
	baseline := map[string]int{}         // restart count at first sight, by container id
	readySince := map[string]time.Time{} // by container id
	lastRestarts := map[string]int{}
	var pending string
	for {
		cs, err := poll(ctx)
		if err != nil {
			return err
		}
		t := now()
		pending, err = judge(cs, o, t, baseline, readySince, lastRestarts)
		if err != nil {
			return err
		}
		if pending == "" {
			return nil
		}
		if !t.Before(deadline) {
			return onfailure.Errorf(onfailure.Timeout, "not healthy within %s: %s", o.Window, pending)
		}
		timer := time.NewTimer(min(o.Interval, deadline.Sub(t)))
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("waiting for health (%s): %w", pending, context.Cause(ctx))
		case <-timer.C:
		}
	}
}

// judge applies the rule to one poll. It returns what is not ready yet
// ("" when all is), or the error that fails the wait.
func judge(cs []Container, o Options, t time.Time, baseline map[string]int, readySince map[string]time.Time, lastRestarts map[string]int) (string, error) {
	var notReady []string
	seen := map[string]bool{}
	for _, c := range cs {
		key := c.Name
		if c.Service != "" {
			key = c.Service
		}
		seen[key] = true
		base, ok := baseline[c.ID]
		if !ok {
			base = c.RestartCount
			baseline[c.ID] = base
			lastRestarts[c.ID] = c.RestartCount
		}
		if n := c.RestartCount - base; n > o.MaxRestarts {
			return "", onfailure.Errorf(onfailure.Verification,
				"%s restarted %d times while waiting (more than %d): crash loop, last exit code %d", c.label(), n, o.MaxRestarts, c.ExitCode)
		}
		if c.Health == "unhealthy" {
			return "", onfailure.Errorf(onfailure.Verification,
				"%s is unhealthy%s", c.label(), lastOutput(c.HealthLog))
		}
		if c.Status == "exited" || c.Status == "dead" {
			return "", onfailure.Errorf(onfailure.Verification,
				"%s %s with code %d and is not restarting", c.label(), c.Status, c.ExitCode)
		}
		restarted := c.RestartCount != lastRestarts[c.ID]
		lastRestarts[c.ID] = c.RestartCount
		ready := c.Status == "running" && (c.Health == "" || c.Health == "healthy")
		if !ready || restarted {
			delete(readySince, c.ID)
		}
		if !ready {
			state := c.Status
			if c.Health != "" {
				state += ", " + c.Health
			}
			notReady = append(notReady, fmt.Sprintf("%s is %s", c.label(), state))
			continue
		}
		since, ok := readySince[c.ID]
		if !ok {
			readySince[c.ID] = t
			since = t
		}
		if t.Sub(since) < o.Settle {
			notReady = append(notReady, fmt.Sprintf("%s settling", c.label()))
		}
	}
	for _, want := range o.Expect {
		if !seen[want] {
			notReady = append(notReady, want+" has no container")
		}
	}
	if len(o.Expect) == 0 && len(cs) == 0 {
		notReady = append(notReady, "no containers")
	}
	sort.Strings(notReady)
	return strings.Join(notReady, "; "), nil
}

func lastOutput(log string) string {
	log = strings.TrimSpace(log)
	if log == "" {
		return ""
	}
	if len(log) > 200 {
		log = "..." + log[len(log)-200:]
	}
	return ": " + log
}
