package docker

import (
	"context"
	"math"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/edgeflow/edgeflow/steps/containers"
)

// Compose labels, as docker compose v1 and v2 write them.
const (
	labelProject = "com.docker.compose.project"
	labelService = "com.docker.compose.service"
	labelOneOff  = "com.docker.compose.oneoff"
)

// Inspect returns the container with that name or id, or an error wrapping
// containers.ErrNotFound.
func (c *Client) Inspect(ctx context.Context, nameOrID string) (containers.Container, error) {
	res, err := c.api.ContainerInspect(ctx, nameOrID, client.ContainerInspectOptions{})
	if err != nil {
		return containers.Container{}, wrap(ctx, "inspect container "+nameOrID, err)
	}
	return fromInspect(res.Container), nil
}

// ProjectContainers returns every container of compose project project,
// running or not, with its health and restart count; one-off containers
// (docker compose run) are left out. The list is sorted by service, then
// name.
func (c *Client) ProjectContainers(ctx context.Context, project string) ([]containers.Container, error) {
	op := "list containers of compose project " + project
	list, err := c.api.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", labelProject+"="+project),
	})
	if err != nil {
		return nil, wrap(ctx, op, err)
	}
	var out []containers.Container
	for _, s := range list.Items {
		if strings.EqualFold(s.Labels[labelOneOff], "true") {
			continue
		}
		res, err := c.api.ContainerInspect(ctx, s.ID, client.ContainerInspectOptions{})
		if cerrdefs.IsNotFound(err) && ctx.Err() == nil {
			continue // removed since the list
		}
		if err != nil {
			return nil, wrap(ctx, op, err)
		}
		out = append(out, fromInspect(res.Container))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// fromInspect reads what containers.Container holds from an inspection.
func fromInspect(r container.InspectResponse) containers.Container {
	ct := containers.Container{
		ID:           r.ID,
		Name:         strings.TrimPrefix(r.Name, "/"),
		Image:        r.Image,
		RestartCount: r.RestartCount,
	}
	ct.RestartPolicy.Name = "no"
	if h := r.HostConfig; h != nil && !h.RestartPolicy.IsNone() {
		ct.RestartPolicy = containers.RestartPolicy{Name: string(h.RestartPolicy.Name), MaxRetries: h.RestartPolicy.MaximumRetryCount}
	}
	if r.Config != nil {
		ct.ImageRef = r.Config.Image
		ct.Service = r.Config.Labels[labelService]
	}
	if s := r.State; s != nil {
		ct.Status = string(s.Status)
		ct.ExitCode = s.ExitCode
		if t, err := time.Parse(time.RFC3339Nano, s.StartedAt); err == nil && t.Year() > 1 {
			ct.StartedAt = t
		}
		if h := s.Health; h != nil && h.Status != container.NoHealthcheck {
			ct.Health = string(h.Status)
			if n := len(h.Log); n > 0 && h.Log[n-1] != nil {
				ct.HealthLog = h.Log[n-1].Output
			}
		}
	}
	return ct
}

// Rename renames container id to name; a container that already has that
// name is left alone.
func (c *Client) Rename(ctx context.Context, id, name string) error {
	op := "rename container " + id + " to " + name
	res, err := c.api.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return wrap(ctx, op, err)
	}
	if strings.TrimPrefix(res.Container.Name, "/") == strings.TrimPrefix(name, "/") {
		return nil
	}
	_, err = c.api.ContainerRename(ctx, id, client.ContainerRenameOptions{NewName: name})
	return wrap(ctx, op, err)
}

// Start starts a container; starting a running one is no error.
func (c *Client) Start(ctx context.Context, id string) error {
	_, err := c.api.ContainerStart(ctx, id, client.ContainerStartOptions{})
	return wrap(ctx, "start container "+id, err)
}

// Stop stops a container: its stop signal, then SIGKILL after grace
// (rounded up to whole seconds; zero or less kills at once). Stopping a
// stopped container is no error.
func (c *Client) Stop(ctx context.Context, id string, grace time.Duration) error {
	secs := max(0, int(math.Ceil(grace.Seconds())))
	_, err := c.api.ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &secs})
	return wrap(ctx, "stop container "+id, err)
}

// Remove removes a container, killing it first if it runs, with its
// anonymous volumes unless another container uses them. Removing one that
// is gone is no error.
func (c *Client) Remove(ctx context.Context, id string) error {
	_, err := c.api.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if cerrdefs.IsNotFound(err) && ctx.Err() == nil {
		return nil
	}
	return wrap(ctx, "remove container "+id, err)
}

// SetRestartPolicy sets a container's restart policy with the engine's
// update call, which the daemon persists and applies at once (and on its
// own restart). Name "" is "no"; MaxRetries is sent only with
// "on-failure", the one policy the daemon takes it with.
func (c *Client) SetRestartPolicy(ctx context.Context, id string, p containers.RestartPolicy) error {
	rp := container.RestartPolicy{Name: container.RestartPolicyMode(p.Name)}
	switch {
	case p.IsNone():
		rp.Name = container.RestartPolicyDisabled
	case rp.IsOnFailure():
		rp.MaximumRetryCount = p.MaxRetries
	}
	_, err := c.api.ContainerUpdate(ctx, id, client.ContainerUpdateOptions{RestartPolicy: &rp})
	return wrap(ctx, "set restart policy of container "+id+" to "+p.String(), err)
}
