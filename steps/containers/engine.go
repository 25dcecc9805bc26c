package containers

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// ErrNotFound is wrapped by Engine errors about a container or image that
// does not exist.
var ErrNotFound = errors.New("not found")

// Engine is the Docker engine as the compose and container steps use it.
// Errors carry an onfailure kind, classified from the engine's error types
// (a refused registry login is Authentication, an unreachable daemon or
// registry Connectivity, no space ResourceExhausted), and wrap ErrNotFound
// when what was named does not exist.
type Engine interface {
	// Ping checks that the daemon answers.
	Ping(ctx context.Context) error

	// ImageID returns the id (sha256:...) of the local image ref, or an
	// error wrapping ErrNotFound.
	ImageID(ctx context.Context, ref string) (string, error)
	// LoadImage loads an image archive (docker save format, optionally
	// gzipped) from path, streaming it.
	LoadImage(ctx context.Context, path string) error
	// PullImage pulls ref from its registry.
	PullImage(ctx context.Context, ref string) error
	// TagImage points ref at the local image id.
	TagImage(ctx context.Context, id, ref string) error

	// Inspect returns the container with that name or id, or an error
	// wrapping ErrNotFound.
	Inspect(ctx context.Context, nameOrID string) (Container, error)
	// ProjectContainers returns every container, running or not, of a
	// compose project (by its com.docker.compose.project label).
	ProjectContainers(ctx context.Context, project string) ([]Container, error)
	// Clone creates, without starting it, a container called name with
	// the configuration of container from (its command, environment,
	// mounts, ports, networks, restart policy, labels), but running image:
	// what from had only because its image had it (the old image's
	// environment, command, health check, labels) is left to the new
	// image. It returns the new container's id.
	Clone(ctx context.Context, from, name, image string) (string, error)
	// Rename renames a container; renaming it to the name it has is no
	// error.
	Rename(ctx context.Context, id, name string) error
	// Start starts a container; starting a running one is no error.
	Start(ctx context.Context, id string) error
	// Stop stops a container, killing it after grace; stopping a stopped
	// one is no error.
	Stop(ctx context.Context, id string, grace time.Duration) error
	// Remove removes a container, killing it first if it runs, with its
	// anonymous volumes; removing one that is gone is no error.
	Remove(ctx context.Context, id string) error
	// SetRestartPolicy sets a container's restart policy, running or not,
	// as docker update --restart does: the daemon keeps it, and applies
	// it from then on, also when the daemon itself restarts. A policy
	// with Name "" is "no"; MaxRetries counts only for "on-failure".
	// Setting the policy a container has is no error.
	SetRestartPolicy(ctx context.Context, id string, policy RestartPolicy) error
}

// RestartPolicy is a container's restart policy (docker run --restart).
type RestartPolicy struct {
	// Name is "no", "always", "on-failure" or "unless-stopped".
	Name string
	// MaxRetries caps the restarts of "on-failure"; zero is no cap.
	MaxRetries int
}

// IsNone reports whether the policy never restarts the container: "no",
// or "" (no policy given).
func (p RestartPolicy) IsNone() bool {
	return p.Name == "" || p.Name == "no"
}

// String is the policy as docker run --restart takes it: "always",
// "on-failure:3".
func (p RestartPolicy) String() string {
	switch {
	case p.IsNone():
		return "no"
	case p.Name == "on-failure" && p.MaxRetries > 0:
		return p.Name + ":" + strconv.Itoa(p.MaxRetries)
	}
	return p.Name
}

// Container is one container as the engine reports it.
type Container struct {
	ID   string
	Name string
	// Service is the compose service the container belongs to, if any.
	Service string
	// Image is the id of the image the container runs (sha256:...);
	// ImageRef the reference it was created from, as written.
	Image    string
	ImageRef string
	// Status is the engine's state: created, running, restarting, paused,
	// exited, removing or dead.
	Status string
	// Health is "" when the container has no health check, else starting,
	// healthy or unhealthy.
	Health string
	// HealthLog is the output of the latest health check, if any.
	HealthLog    string
	RestartCount int
	ExitCode     int
	// StartedAt is when the container last started.
	StartedAt time.Time
	// RestartPolicy is the container's restart policy; Name is "no" when
	// it has none.
	RestartPolicy RestartPolicy
}

// label names the container in messages: its service, or its name.
func (c Container) label() string {
	if c.Service != "" {
		return "service " + c.Service + " (container " + c.Name + ")"
	}
	return "container " + c.Name
}
