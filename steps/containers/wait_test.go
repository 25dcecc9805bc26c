package containers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/onfailure"
)

// script feeds Wait one poll result per tick of a fake clock that advances
// by step at every poll; the last result repeats.
type script struct {
	polls [][]Container
	i     int
	t     time.Time
	step  time.Duration
}

func (s *script) poll(context.Context) ([]Container, error) {
	cs := s.polls[min(s.i, len(s.polls)-1)]
	s.i++
	s.t = s.t.Add(s.step)
	return cs, nil
}

func (s *script) now() time.Time { return s.t }

func run(t *testing.T, o Options, polls ...[]Container) (int, error) {
	t.Helper()
	s := &script{polls: polls, t: time.Unix(1000, 0), step: time.Second}
	o.Interval = time.Microsecond
	err := Wait(context.Background(), s.poll, o, s.now)
	return s.i, err
}

func c(name, status, health string, restarts int) Container {
	return Container{ID: "id-" + name, Name: name, Status: status, Health: health, RestartCount: restarts}
}

func TestWait(t *testing.T) {
	opts := Options{Window: 30 * time.Second, Settle: 3 * time.Second}
	cases := []struct {
		name     string
		opts     Options
		polls    [][]Container
		kind     onfailure.Kind // "" = success
		contains string
		maxPolls int // the verdict came by this poll
	}{
		{name: "running without a health check settles", opts: opts,
			polls: [][]Container{{c("a", "running", "", 0)}}, maxPolls: 5},
		{name: "healthy after starting", opts: opts,
			polls: [][]Container{{c("a", "running", "starting", 0)}, {c("a", "running", "starting", 0)}, {c("a", "running", "healthy", 0)}}, maxPolls: 7},
		{name: "unhealthy fails at once", opts: opts,
			polls: [][]Container{{c("a", "running", "starting", 0)}, {{ID: "id-a", Name: "a", Status: "running", Health: "unhealthy", HealthLog: "GET /health: 500"}}},
			kind:  onfailure.Verification, contains: "container a is unhealthy: GET /health: 500", maxPolls: 2},
		{name: "crash loop fails before the window", opts: opts,
			polls: [][]Container{{c("a", "running", "", 0)}, {c("a", "restarting", "", 1)}, {c("a", "running", "", 2)}, {c("a", "restarting", "", 3)}, {c("a", "running", "", 4)}},
			kind:  onfailure.Verification, contains: "restarted 4 times while waiting", maxPolls: 5},
		{name: "restarts before the wait do not count", opts: opts,
			polls: [][]Container{{c("a", "running", "", 40)}}, maxPolls: 5},
		{name: "a restart resets the settling", opts: opts,
			polls: [][]Container{{c("a", "running", "", 0)}, {c("a", "running", "", 0)}, {c("a", "running", "", 1)}, {c("a", "running", "", 1)}}, maxPolls: 7},
		{name: "exited without restart fails at once", opts: opts,
			polls: [][]Container{{{ID: "x", Name: "a", Status: "exited", ExitCode: 3}}},
			kind:  onfailure.Verification, contains: "container a exited with code 3 and is not restarting", maxPolls: 1},
		{name: "never healthy is a timeout naming what is not ready", opts: opts,
			polls: [][]Container{{c("a", "running", "starting", 0), c("b", "running", "", 0)}},
			kind:  onfailure.Timeout, contains: "not healthy within 30s: container a is running, starting", maxPolls: 31},
		{name: "an expected service without a container is not ready",
			opts:  Options{Window: 10 * time.Second, Settle: time.Second, Expect: []string{"web", "db"}},
			polls: [][]Container{{{ID: "1", Name: "p-web-1", Service: "web", Status: "running"}}},
			kind:  onfailure.Timeout, contains: "db has no container", maxPolls: 11},
		{name: "every expected service ready",
			opts:     Options{Window: 10 * time.Second, Settle: time.Second, Expect: []string{"web", "db"}},
			polls:    [][]Container{{{ID: "1", Name: "p-web-1", Service: "web", Status: "running"}, {ID: "2", Name: "p-db-1", Service: "db", Status: "running", Health: "healthy"}}},
			maxPolls: 3},
		{name: "no containers at all is not ready", opts: Options{Window: 5 * time.Second},
			polls: [][]Container{{}}, kind: onfailure.Timeout, contains: "no containers", maxPolls: 6},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, err := run(t, tc.opts, tc.polls...)
			if got := onfailure.KindOf(err); got != tc.kind {
				t.Fatalf("kind %q (%v), want %q", got, err, tc.kind)
			}
			if tc.contains != "" && !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not say %q", err, tc.contains)
			}
			if n > tc.maxPolls {
				t.Errorf("verdict after %d polls, want at most %d", n, tc.maxPolls)
			}
		})
	}
}

func TestWaitPollErrorAndCancel(t *testing.T) {
	boom := onfailure.Errorf(onfailure.Connectivity, "daemon gone")
	err := Wait(context.Background(), func(context.Context) ([]Container, error) { return nil, boom }, Options{}, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("poll error not returned: %v", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	mark := onfailure.Errorf(onfailure.UserMarkedFailure, "marked")
	polls := 0
	err = Wait(ctx, func(context.Context) ([]Container, error) {
		polls++
		if polls == 2 {
			cancel(mark)
		}
		return []Container{c("a", "running", "starting", 0)}, nil
	}, Options{Interval: time.Millisecond}, nil)
	if onfailure.KindOf(err) != onfailure.UserMarkedFailure {
		t.Fatalf("cancel cause lost: %v", err)
	}
}

func TestSettleCappedAtHalfTheWindow(t *testing.T) {
	o := Options{Window: 4 * time.Second, Settle: time.Minute}.withDefaults()
	if o.Settle != 2*time.Second {
		t.Fatalf("settle %s, want 2s", o.Settle)
	}
}
