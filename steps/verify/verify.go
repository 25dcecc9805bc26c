package verify

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/edgeflow/edgeflow/flow"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/steps"
)

// MinProbeTimeout is the shortest deadline a probe gets while the step's
// time left allows it, whatever the interval.
const MinProbeTimeout = time.Second

// minProbeLeft is the least time left for which a probe after the first
// starts: a shorter deadline measures the agent's scheduler, not the target.
const minProbeLeft = 10 * time.Millisecond

// MaxBody is how much of an http response body is read to look for the
// expected text.
const MaxBody = 1 << 20

// Runner runs verify steps. The zero value is ready to use.
type Runner struct {
	// Grace is the time a command probe's process group has between
	// SIGTERM and SIGKILL when its deadline passes or the step is stopped;
	// zero means script.DefaultGrace.
	Grace time.Duration
}

var _ steps.Runner = (*Runner)(nil)

// Run probes until a probe passes (nil) or the step's Timeout runs out (an
// error of kind onfailure.Verification or onfailure.Timeout, as the package
// doc says). When ctx ends first it returns an error wrapping
// context.Cause(ctx).
func (r *Runner) Run(ctx context.Context, s *flow.Step, env *steps.Env) error {
	v := s.Verify
	if v == nil {
		return onfailure.Errorf(onfailure.Unknown, "step %q is not a verify step", s.Name)
	}
	var logw io.Writer = io.Discard
	if env != nil && env.Log != nil {
		logw = env.Log
	}
	p, err := r.prober(v, env, logw)
	if err != nil {
		return err
	}
	interval, timeout := v.Interval, v.Timeout
	if interval <= 0 {
		interval = flow.DefaultVerifyInterval
	}
	if timeout <= 0 {
		timeout = flow.DefaultVerifyTimeout
	}
	log := &probeLog{w: logw}
	defer log.flush()

	start := time.Now()
	deadline := start.Add(timeout)
	next := start
	var (
		n        int      // probes run
		latest   *failure // the latest failed probe
		answer   *failure // the latest probe that gave a verdict
		answerAt int      // its number
	)
	for {
		if wait := time.Until(next); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return stopped(ctx, n)
			}
		}
		if ctx.Err() != nil {
			return stopped(ctx, n)
		}
		began := time.Now()
		left := deadline.Sub(began)
		if n > 0 && left < minProbeLeft {
			break
		}
		n++
		d := probeTimeout(interval, left)
		pctx, cancel := context.WithTimeout(ctx, d)
		f, err := p.probe(pctx, shown(d))
		cancel()
		if ctx.Err() != nil {
			return stopped(ctx, n)
		}
		if err != nil {
			return err
		}
		if f == nil {
			log.flush()
			fmt.Fprintf(logw, "probe %d: passed\n", n)
			return nil
		}
		latest = f
		if f.verdict {
			answer, answerAt = f, n
			log.probe(n, f.msg)
		} else {
			log.probe(n, "no answer: "+f.msg)
		}
		next = began.Add(interval)
		if now := time.Now(); next.Before(now) {
			next = now
		}
		if deadline.Sub(next) < minProbeLeft {
			break
		}
	}

	if answer == nil {
		return onfailure.E(onfailure.Timeout,
			fmt.Sprintf("no answer from %s within %s (%s)", p.target(), timeout, probes(n)), latest)
	}
	why := fmt.Errorf("%s: %w", answer.op, answer)
	if answer.op == "" {
		why = answer
	}
	if answerAt != n {
		why = fmt.Errorf("%w (the latest answer, probe %d; probe %d: no answer: %s)", why, answerAt, n, latest.msg)
	}
	return onfailure.E(onfailure.Verification, fmt.Sprintf("verify failed after %s", probes(n)), why)
}

// probeTimeout is the deadline of a probe: the interval, but at least
// MinProbeTimeout, and never more than the time left.
func probeTimeout(interval, left time.Duration) time.Duration {
	return min(max(interval, MinProbeTimeout), left)
}

// shown rounds a probe's deadline for messages: a deadline cut to the time
// left is a few microseconds short of a round number.
func shown(d time.Duration) time.Duration {
	if r := d.Round(time.Millisecond); r > 0 {
		return r
	}
	return d
}

func probes(n int) string {
	if n == 1 {
		return "1 probe"
	}
	return fmt.Sprintf("%d probes", n)
}

// stopped is the error of a step whose context ended before it finished.
func stopped(ctx context.Context, n int) error {
	return fmt.Errorf("verify stopped after %s: %w", probes(n), context.Cause(ctx))
}

// prober is one kind of probe.
type prober interface {
	// probe runs one probe with deadline d (ctx carries it; d is for
	// messages). It returns nil,
	// nil when the probe passes, a failure when it does not, and an error
	// when the probe cannot run at all.
	probe(ctx context.Context, d time.Duration) (*failure, error)
	// target names what is probed, for "no answer from ...".
	target() string
}

// prober builds the probe of v.
func (r *Runner) prober(v *flow.Verify, env *steps.Env, log io.Writer) (prober, error) {
	switch {
	case v.HTTP != nil:
		raw := v.HTTP.URL
		if env != nil && env.Expand != nil {
			x, err := env.Expand(raw)
			if err != nil {
				return nil, onfailure.Wrap("verify: expand url", err)
			}
			raw = x
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, onfailure.E(onfailure.Unknown, "verify", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, onfailure.Errorf(onfailure.Unknown, "verify: url %q is not an http:// or https:// URL", u.Redacted())
		}
		want := v.HTTP.ExpectStatus
		if want == 0 {
			want = 200
		}
		return newHTTPProbe(u, want, v.HTTP.Body), nil
	case v.TCP != nil:
		return &tcpProbe{address: v.TCP.Address}, nil
	case v.Command != "":
		dir := ""
		if env != nil {
			dir = env.Root
		}
		return &commandProbe{text: v.Command, dir: dir, grace: r.Grace, log: log}, nil
	}
	return nil, onfailure.Errorf(onfailure.Unknown, "verify needs exactly one of http, tcp, command")
}

// failure is a probe that did not pass.
type failure struct {
	// verdict is true when the target answered and said no.
	verdict bool
	// op is what the probe did, such as "GET http://host/health"; the
	// message of a verdict is op + ": " + msg, or msg alone when op is "".
	op string
	// msg says why, such as "status 503, want 200".
	msg string
	// err is the error behind msg, if any.
	err error
}

func (f *failure) Error() string { return f.msg }
func (f *failure) Unwrap() error { return f.err }
