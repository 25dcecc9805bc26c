package docker

import (
	"context"
	"maps"
	"slices"
	"strings"

	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/edgeflow/edgeflow/onfailure"
)

// Clone creates, without starting it, a container called name with the
// configuration of container from but running image, as the package doc
// describes. It returns the new container's id.
func (c *Client) Clone(ctx context.Context, from, name, image string) (string, error) {
	op := "create container " + name + " from " + from + " with image " + image
	old, err := c.api.ContainerInspect(ctx, from, client.ContainerInspectOptions{})
	if err != nil {
		return "", wrap(ctx, op, err)
	}
	o := old.Container
	if o.Config == nil || o.HostConfig == nil {
		return "", onfailure.Errorf(onfailure.Unknown, "%s: the engine returned no configuration for %s", op, from)
	}
	oldImage, err := c.api.ImageInspect(ctx, o.Image)
	if err != nil {
		return "", wrap(ctx, op+": inspect the old image "+o.Image, err)
	}
	var imgCfg dockerspec.DockerOCIImageConfig
	if oldImage.Config != nil {
		imgCfg = *oldImage.Config
	}

	cfg, hostCfg := cloneConfig(o, imgCfg, image)
	primary, others := endpoints(o)

	created, err := c.api.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:             name,
		Config:           cfg,
		HostConfig:       hostCfg,
		NetworkingConfig: primary,
	})
	if err != nil {
		return "", wrap(ctx, op, err)
	}
	for _, netName := range slices.Sorted(maps.Keys(others)) {
		_, err := c.api.NetworkConnect(ctx, netName, client.NetworkConnectOptions{
			Container:      created.ID,
			EndpointConfig: others[netName],
		})
		if err != nil {
			return created.ID, wrap(ctx, op+": connect network "+netName, err)
		}
	}
	return created.ID, nil
}

// cloneConfig returns the configuration and host configuration of a new
// container like o but on image: what o had only from its image (imgCfg)
// is dropped, so the new image's defaults apply.
func cloneConfig(o container.InspectResponse, imgCfg dockerspec.DockerOCIImageConfig, image string) (*container.Config, *container.HostConfig) {
	cfg := *o.Config
	hostCfg := *o.HostConfig
	cfg.Image = image

	if len(o.ID) >= 12 && cfg.Hostname == o.ID[:12] {
		cfg.Hostname = ""
	}
	cfg.Env = slices.DeleteFunc(slices.Clone(cfg.Env), func(e string) bool {
		return slices.Contains(imgCfg.Env, e)
	})
	if slices.Equal(cfg.Cmd, imgCfg.Cmd) {
		cfg.Cmd = nil
	}
	if slices.Equal(cfg.Entrypoint, imgCfg.Entrypoint) {
		cfg.Entrypoint = nil
	}
	if sameHealthcheck(cfg.Healthcheck, imgCfg.Healthcheck) {
		cfg.Healthcheck = nil
	}
	if cfg.WorkingDir == imgCfg.WorkingDir {
		cfg.WorkingDir = ""
	}
	if cfg.User == imgCfg.User {
		cfg.User = ""
	}
	if cfg.StopSignal == imgCfg.StopSignal {
		cfg.StopSignal = ""
	}
	if slices.Equal(cfg.Shell, imgCfg.Shell) {
		cfg.Shell = nil
	}
	if slices.Equal(cfg.OnBuild, imgCfg.OnBuild) {
		cfg.OnBuild = nil
	}
	cfg.ArgsEscaped = false

	cfg.Labels = maps.Clone(cfg.Labels)
	for k, v := range imgCfg.Labels {
		if got, ok := cfg.Labels[k]; ok && got == v {
			delete(cfg.Labels, k)
		}
	}

	cfg.ExposedPorts = maps.Clone(cfg.ExposedPorts)
	for p := range cfg.ExposedPorts {
		if _, ok := imgCfg.ExposedPorts[p.String()]; ok {
			delete(cfg.ExposedPorts, p)
		}
	}
	for p := range hostCfg.PortBindings {
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = network.PortSet{}
		}
		cfg.ExposedPorts[p] = struct{}{}
	}

	cfg.Volumes = maps.Clone(cfg.Volumes)
	for v := range imgCfg.Volumes {
		delete(cfg.Volumes, v)
	}
	// Anonymous volumes (the image's, or "-v /dir") carry over by name.
	hostCfg.Mounts = slices.Clone(hostCfg.Mounts)
	explicit := explicitTargets(&hostCfg)
	for _, m := range o.Mounts {
		if m.Type != mount.TypeVolume || m.Name == "" || explicit[m.Destination] {
			continue
		}
		delete(cfg.Volumes, m.Destination)
		hostCfg.Mounts = append(hostCfg.Mounts, mount.Mount{
			Type:     mount.TypeVolume,
			Source:   m.Name,
			Target:   m.Destination,
			ReadOnly: !m.RW,
		})
	}
	return &cfg, &hostCfg
}

// explicitTargets returns the container paths the user mounted something
// on: by binds ("src:dst[:opts]"), mounts, or tmpfs.
func explicitTargets(h *container.HostConfig) map[string]bool {
	t := map[string]bool{}
	for _, b := range h.Binds {
		parts := strings.Split(b, ":")
		if len(parts) >= 2 {
			t[parts[1]] = true
		} else if len(parts) == 1 {
			t[parts[0]] = true
		}
	}
	for _, m := range h.Mounts {
		t[m.Target] = true
	}
	for dst := range h.Tmpfs {
		t[dst] = true
	}
	return t
}

func sameHealthcheck(a *container.HealthConfig, b *dockerspec.HealthcheckConfig) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return slices.Equal(a.Test, b.Test) && a.Interval == b.Interval && a.Timeout == b.Timeout &&
		a.StartPeriod == b.StartPeriod && a.StartInterval == b.StartInterval && a.Retries == b.Retries
}

// endpoints returns the network endpoints of the new container: the one
// to create it with (its network mode's network), and the others, to
// connect afterwards (engines before API 1.44 take one at creation). A
// container that shares another's network stack, or the host's, has none.
func endpoints(o container.InspectResponse) (*network.NetworkingConfig, map[string]*network.EndpointSettings) {
	mode := o.HostConfig.NetworkMode
	if mode.IsContainer() || mode.IsHost() || mode.IsNone() || o.NetworkSettings == nil {
		return nil, nil
	}
	primaryName := mode.NetworkName()
	if mode.IsDefault() {
		primaryName = "bridge"
	}
	var primary *network.NetworkingConfig
	others := map[string]*network.EndpointSettings{}
	for netName, ep := range o.NetworkSettings.Networks {
		if ep == nil {
			continue
		}
		// Only the configuration; addresses and ids are the engine's.
		cfg := &network.EndpointSettings{
			IPAMConfig: ep.IPAMConfig,
			Links:      ep.Links,
			DriverOpts: ep.DriverOpts,
			GwPriority: ep.GwPriority,
		}
		for _, a := range ep.Aliases {
			// Engines before API 1.45 add the short id as an alias.
			if len(o.ID) >= 12 && a == o.ID[:12] {
				continue
			}
			cfg.Aliases = append(cfg.Aliases, a)
		}
		if netName == primaryName || (ep.NetworkID != "" && ep.NetworkID == string(mode)) {
			primary = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: cfg}}
			continue
		}
		others[netName] = cfg
	}
	return primary, others
}
