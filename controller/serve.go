package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/edgeflow/edgeflow/controller/broker"
	"github.com/edgeflow/edgeflow/controller/store"
	"github.com/edgeflow/edgeflow/transport"
	"github.com/edgeflow/edgeflow/transport/mqtt"
)

// ClientID is the MQTT client id of the controller. It is fixed, so that
// the broker keeps the controller's persistent session (the events that
// arrive while it is away) across restarts.
const ClientID = "edgeflow-controller"

// BrokerEmbedded is ServeConfig.Broker for the embedded broker.
const BrokerEmbedded = "embedded"

// ServeConfig configures Serve, the `edgeflow serve` process.
type ServeConfig struct {
	// Data is the data dir: the store (controller.db) and the bundles.
	Data string
	// Listen is the HTTP API's address (":8080").
	Listen string
	// Broker is BrokerEmbedded (or "") to run the embedded broker, or the
	// URL of an external one (tcp://, ssl://, ...).
	Broker string
	// MQTTListen is the embedded broker's address (":1883").
	MQTTListen string
	// MaxClientQueue bounds the embedded broker's per-client queue (0:
	// its default).
	MaxClientQueue int
	// PublicURL is the base URL agents download bundles from; "" means
	// http://HOST:PORT with the API's listen host (or this machine's
	// hostname when it listens on every address) and port.
	PublicURL string
	// Prefix is the MQTT topic prefix ("": transport.DefaultPrefix).
	Prefix string
	// MQTTUsername and MQTTPassword are the controller's credentials with
	// an external broker.
	MQTTUsername, MQTTPassword string
	// Token, when set, is the API token (Options.Token).
	Token string
	// MaxBundleSize caps uploads (0: DefaultMaxBundleSize).
	MaxBundleSize int64
	// AllowMarkFailed lets operators stop running steps as failed
	// (Options.AllowMarkFailed).
	AllowMarkFailed bool
	// GuidedFailure, when set, asks for guided failure on every dispatch
	// to a device whose labels match its selector (Options.GuidedFailure).
	GuidedFailure *GuidedFailureSetting
	// Logger receives every log line; nil discards them.
	Logger *slog.Logger
	// Ready, when set, is called once the API and the broker listen.
	Ready func(ServeInfo)
}

// ServeInfo says where a serving controller listens.
type ServeInfo struct {
	// API is the HTTP API's URL, such as http://[::]:8080.
	API string
	// Broker is the broker's URL; Embedded says whether it is ours.
	Broker   string
	Embedded bool
	// PublicURL is the base URL in dispatches.
	PublicURL string
}

// ConfigError is a ServeConfig that cannot work: bad input, nothing
// started. It counts as a usage error for the CLI.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// IsUsage marks the error as bad input (exit status 2).
func (e *ConfigError) IsUsage() bool { return true }

func configErr(format string, args ...any) error {
	return &ConfigError{Err: fmt.Errorf(format, args...)}
}

// shutdownGrace bounds the HTTP server's shutdown.
const shutdownGrace = 5 * time.Second

// Serve runs a controller until ctx ends: it opens the store in
// cfg.Data, starts the embedded broker (unless cfg.Broker names another),
// connects the MQTT client (ClientID, persistent session, subscribed to
// every device's events and presence), runs the ingestion, and serves the
// API on cfg.Listen. When ctx ends it shuts everything down in reverse
// order and returns nil.
func Serve(ctx context.Context, cfg ServeConfig) (err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Data == "" {
		return configErr("--data: a data directory is required")
	}
	topics, err := transport.NewTopics(cfg.Prefix)
	if err != nil {
		return configErr("--prefix: %w", err)
	}
	embedded := cfg.Broker == "" || cfg.Broker == BrokerEmbedded
	if !embedded {
		if u, perr := url.Parse(cfg.Broker); perr != nil || u.Host == "" {
			return configErr("--broker %q: want %q or a URL such as tcp://broker.example:1883", cfg.Broker, BrokerEmbedded)
		}
	}
	if cfg.PublicURL != "" {
		if u, perr := url.Parse(cfg.PublicURL); perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return configErr("--public-url %q: want an absolute http or https URL, such as http://controller.example:8080", cfg.PublicURL)
		}
	}

	// Each step pushes its undo; they run in reverse on the way out.
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()

	st, err := store.Open(cfg.Data, store.Options{Logger: log})
	if err != nil {
		return err
	}
	undo = append(undo, func() {
		if err := st.Close(); err != nil {
			log.Error("close store", "error", err)
		}
	})

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen for the API on %s: %w", cfg.Listen, err)
	}
	undo = append(undo, func() { _ = ln.Close() })
	publicURL := cfg.PublicURL
	if publicURL == "" {
		if publicURL, err = defaultPublicURL(cfg.Listen, ln.Addr()); err != nil {
			return err
		}
	}

	brokerURL := cfg.Broker
	if embedded {
		b, err := broker.Start(broker.Options{Listen: cfg.MQTTListen, Logger: log, MaxClientQueue: cfg.MaxClientQueue})
		if err != nil {
			return err
		}
		undo = append(undo, func() {
			if err := b.Close(); err != nil {
				log.Error("close the embedded broker", "error", err)
			}
		})
		brokerURL = b.URL()
	}

	// The client's OnConnect needs the controller, which needs the client;
	// the client calls it only after Start.
	var ctrl *Controller
	client, err := mqtt.New(mqtt.Options{
		Broker: brokerURL, ClientID: ClientID, Username: cfg.MQTTUsername, Password: cfg.MQTTPassword,
		Subscriptions: []string{topics.Filter(transport.ChannelEvents), topics.Filter(transport.ChannelPresence)},
		OnConnect:     func() { ctrl.OnConnect() },
		Logger:        log,
	})
	if err != nil {
		return configErr("--broker: %w", err)
	}
	ctrl, err = New(Options{
		Data: cfg.Data, Store: st, Client: client, Topics: topics, PublicURL: publicURL,
		Token: cfg.Token, MaxBundleSize: cfg.MaxBundleSize, Logger: log,
		AllowMarkFailed: cfg.AllowMarkFailed, GuidedFailure: cfg.GuidedFailure,
	})
	if err != nil {
		return configErr("%w", err)
	}
	client.Start()
	undo = append(undo, func() { client.Close(time.Second) })

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	var running sync.WaitGroup
	running.Add(1)
	go func() {
		defer running.Done()
		ctrl.Run(runCtx, client.Messages())
	}()
	undo = append(undo, func() {
		stopRun()
		running.Wait()
	})

	// Requests (SSE streams above all) end when baseCtx is cancelled.
	baseCtx, stopRequests := context.WithCancel(context.WithoutCancel(ctx))
	srv := &http.Server{
		Handler:           ctrl.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	apiURL := "http://" + ln.Addr().String()
	log.Info("controller serving", "api", apiURL, "broker", brokerURL, "embedded", embedded, "public_url", publicURL, "data", cfg.Data)
	if cfg.Ready != nil {
		cfg.Ready(ServeInfo{API: apiURL, Broker: brokerURL, Embedded: embedded, PublicURL: publicURL})
	}

	select {
	case <-ctx.Done():
		err = nil
	case err = <-served:
		err = fmt.Errorf("serve the API on %s: %w", ln.Addr(), err)
	}
	log.Info("controller shutting down")
	stopRequests()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		log.Warn("shut down the API", "error", serr)
	}
	return err
}

// defaultPublicURL is http://HOST:PORT from the API's listen address:
// its host, or this machine's hostname when it names every address.
func defaultPublicURL(listen string, addr net.Addr) (string, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", configErr("--listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if host, err = os.Hostname(); err != nil || host == "" {
			return "", configErr("--public-url is needed: the API listens on every address and the hostname is unknown (%v)", err)
		}
	}
	port := 0
	if ta, ok := addr.(*net.TCPAddr); ok {
		port = ta.Port
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(port)), nil
}
