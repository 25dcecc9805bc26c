package docker

import (
	"context"
	"fmt"

	"github.com/moby/moby/client"

	"github.com/edgeflow/edgeflow/steps/containers"
)

// Client is a connection to the Docker engine. It implements
// containers.Engine and is safe for concurrent use.
type Client struct {
	api *client.Client
}

var _ containers.Engine = (*Client)(nil)

// Option changes how New connects.
type Option func(*config)

type config struct {
	host string
}

// WithHost connects to host ("unix:///var/run/docker.sock",
// "tcp://10.0.0.1:2375") instead of DOCKER_HOST or the default socket.
func WithHost(host string) Option {
	return func(c *config) { c.host = host }
}

// New returns a client configured from the environment (DOCKER_HOST and
// friends, see the package doc) and opts. It does not contact the daemon;
// the API version is negotiated on the first request.
func New(opts ...Option) (*Client, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	copts := []client.Opt{client.FromEnv}
	if cfg.host != "" {
		copts = append(copts, client.WithHost(cfg.host))
	}
	api, err := client.New(copts...)
	if err != nil {
		return nil, wrap(context.Background(), "docker client", err)
	}
	return &Client{api: api}, nil
}

// Close releases the client's idle connections.
func (c *Client) Close() error {
	return c.api.Close()
}

// Ping checks that the daemon answers, negotiating the API version.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.api.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	return wrap(ctx, "ping docker daemon", err)
}

// APIVersion returns the API version the client speaks, as negotiated by
// the first request ("" before it).
func (c *Client) APIVersion() string {
	return c.api.ClientVersion()
}

// String names the daemon the client talks to.
func (c *Client) String() string {
	return fmt.Sprintf("docker engine at %s", c.api.DaemonHost())
}
