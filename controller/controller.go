package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/transport"
)

// Defaults of Options.
const (
	// DefaultMaxBundleSize caps a bundle upload: 1 GiB.
	DefaultMaxBundleSize = 1 << 30
	// DefaultHeartbeat is the interval of the SSE heartbeat comment.
	DefaultHeartbeat = 15 * time.Second
	// DefaultPublishTimeout bounds one publish.
	DefaultPublishTimeout = 10 * time.Second
	// DefaultMaxBatch is the most messages Run commits in one transaction.
	DefaultMaxBatch = 256
)

// Publisher publishes MQTT messages (QoS 1) and returns once the broker
// acknowledged them. *mqtt.Client (transport/mqtt) satisfies it.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, retained bool) error
}

// connectedReporter is what a Publisher may also do: say whether it is
// connected now (for /v1/health). *mqtt.Client does.
type connectedReporter interface {
	Connected() bool
}

// Options configure a Controller.
type Options struct {
	// Data is the data dir: bundles are kept in Data/bundles.
	Data string
	// Store holds the controller's state; the caller opens and closes it.
	Store store.Store
	// Client publishes commands and acks.
	Client Publisher
	// Topics are the MQTT topics (the zero value: the default prefix).
	Topics transport.Topics
	// PublicURL is the base URL agents download bundles from, such as
	// "http://controller.example:8080"; dispatches carry
	// PublicURL/v1/bundles/SHA256.
	PublicURL string
	// Token, when set, is the API token: every /v1 path but the bundle
	// download and /v1/health requires "Authorization: Bearer TOKEN".
	Token string
	// MaxBundleSize caps a bundle upload in bytes (0: DefaultMaxBundleSize).
	MaxBundleSize int64
	// Heartbeat is the SSE heartbeat interval (0: DefaultHeartbeat).
	Heartbeat time.Duration
	// PublishTimeout bounds each publish (0: DefaultPublishTimeout).
	PublishTimeout time.Duration
	// MaxBatch is the most messages committed together (0: DefaultMaxBatch).
	MaxBatch int
	// AllowMarkFailed lets operators stop running steps as failed (POST
	// .../mark-failed); without it that request is refused (403).
	AllowMarkFailed bool
	// GuidedFailure, when set, asks every dispatch to a device whose
	// labels match its selector for guided failure.
	GuidedFailure *GuidedFailureSetting
	// Logger receives the controller's logs; nil discards them.
	Logger *slog.Logger
	// Now returns the current time (nil: time.Now).
	Now func() time.Time
	// AfterFunc arms the rollouts' timers (nil: time.AfterFunc); a test
	// gives a fake clock's, with Now.
	AfterFunc AfterFunc
}

// Controller is the controller's logic. Its methods are safe for
// concurrent use, but Run must run once at a time: it is the one reader of
// the agents' messages.
type Controller struct {
	opts      Options
	st        store.Store
	client    Publisher
	topics    transport.Topics
	log       *slog.Logger
	now       func() time.Time
	publicURL string
	bundleDir string

	// mu serializes every read-modify-commit of the state.
	mu sync.Mutex
	// pubMu serializes the publishing of commands, so that a device always
	// gets a deployment's dispatch before its cancel.
	pubMu sync.Mutex

	feed      *hub
	resends   *resendQueue
	timers    rolloutTimers
	afterFunc AfterFunc
}

// New checks opts and returns a controller. It removes upload leftovers
// from Data/bundles; it publishes nothing until Run.
func New(opts Options) (*Controller, error) {
	switch {
	case opts.Data == "":
		return nil, errors.New("new controller: no data dir")
	case opts.Store == nil:
		return nil, errors.New("new controller: no store")
	case opts.Client == nil:
		return nil, errors.New("new controller: no MQTT client")
	}
	u, err := url.Parse(opts.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("new controller: public URL %q: want an absolute http or https URL such as http://controller.example:8080", opts.PublicURL)
	}
	if opts.MaxBundleSize <= 0 {
		opts.MaxBundleSize = DefaultMaxBundleSize
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = DefaultPublishTimeout
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AfterFunc == nil {
		opts.AfterFunc = realAfterFunc
	}
	if g := opts.GuidedFailure; g != nil {
		a, err := CheckGuidedFailure("guided failure:", g.Timeout, g.OnTimeout)
		if err != nil {
			return nil, fmt.Errorf("new controller: %w", err)
		}
		if len(g.Selector) == 0 {
			return nil, errors.New("new controller: guided failure: an empty selector (it would match every device; give K=V labels)")
		}
		opts.GuidedFailure = &GuidedFailureSetting{Selector: g.Selector, Timeout: g.Timeout, OnTimeout: a}
	}
	c := &Controller{
		opts: opts, st: opts.Store, client: opts.Client, topics: opts.Topics,
		log: opts.Logger, now: opts.Now,
		publicURL: strings.TrimRight(opts.PublicURL, "/"),
		bundleDir: filepath.Join(opts.Data, "bundles"),
		feed:      newHub(),
		resends:   newResendQueue(),
		afterFunc: opts.AfterFunc,
	}
	if err := os.MkdirAll(c.bundleDir, 0o700); err != nil {
		return nil, fmt.Errorf("new controller: create %s: %w", c.bundleDir, err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(c.bundleDir, uploadPattern))
	for _, f := range leftovers {
		_ = os.Remove(f)
	}
	return c, nil
}

// BundleURL returns where agents download the bundle with this sha256.
func (c *Controller) BundleURL(sha256 string) string {
	return c.publicURL + "/v1/bundles/" + sha256
}

// Error is a request the controller refuses. Code is one of the api.Code
// constants; Message says what and where.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

func invalid(format string, args ...any) error {
	return &Error{Code: api.CodeInvalid, Message: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{Code: api.CodeNotFound, Message: fmt.Sprintf(format, args...)}
}

func forbidden(format string, args ...any) error {
	return &Error{Code: api.CodeForbidden, Message: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{Code: api.CodeConflict, Message: fmt.Sprintf(format, args...)}
}

// lookup maps the store's ErrNotFound to a not_found Error.
func lookup(err error, format string, args ...any) error {
	if errors.Is(err, store.ErrNotFound) {
		return notFound(format, args...)
	}
	return err
}
