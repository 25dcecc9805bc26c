package fleettest

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/transport"
)

// Device is a device of a fleet: its id and labels.
type Device struct {
	ID     string
	Labels map[string]string
}

// Options configure New.
type Options struct {
	// Broker is the URL of an external MQTT broker for the controller and
	// the agents; empty means the controller's embedded broker.
	Broker string
	// Devices are the agents to start.
	Devices []Device
	// ControllerArgs are more flags for `edgeflow serve`, such as
	// --allow-mark-failed.
	ControllerArgs []string
}

// Fleet is a controller with its agents, all real processes.
type Fleet struct {
	t testing.TB
	// Bins are the binaries every process runs.
	Bins Binaries
	// Key signs bundles (Key.Private, for `deploy --key`); every agent
	// trusts it.
	Key        Key
	Controller *Controller
	Agents     []*Agent
}

// New builds the binaries (once per test binary), makes a signing key,
// starts a controller and one agent per device, and waits until the
// controller lists every device online.
func New(t testing.TB, opts Options) *Fleet {
	t.Helper()
	f := &Fleet{t: t, Bins: Build(t), Key: NewKey(t)}
	f.Controller = StartController(t, f.Bins, ControllerOptions{Broker: opts.Broker, Args: opts.ControllerArgs})
	ids := make([]string, 0, len(opts.Devices))
	for _, d := range opts.Devices {
		f.AddAgent(d)
		ids = append(ids, d.ID)
	}
	f.WaitOnline(ids...)
	return f
}

// AddAgent starts one more agent, connected to the fleet's broker and
// trusting the fleet's key. It does not wait for it to come online.
func (f *Fleet) AddAgent(d Device) *Agent {
	f.t.Helper()
	a := StartAgent(f.t, f.Bins, AgentOptions{ID: d.ID, Broker: f.Controller.BrokerURL(), TrustedKey: f.Key.Public, Labels: maps.Clone(d.Labels)})
	f.Agents = append(f.Agents, a)
	return a
}

// Agent returns the fleet's agent with this device id.
func (f *Fleet) Agent(id string) *Agent {
	f.t.Helper()
	for _, a := range f.Agents {
		if a.ID == id {
			return a
		}
	}
	f.t.Fatalf("no agent %s in the fleet", id)
	return nil
}

// WaitOnline waits until the controller lists each device online.
func (f *Fleet) WaitOnline(ids ...string) {
	f.t.Helper()
	cl := f.Controller.Client()
	WaitFor(f.t, fmt.Sprintf("devices %v online at the controller", ids), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ds, err := cl.Devices(ctx)
		if err != nil {
			return err
		}
		status := map[string]string{}
		for _, d := range ds {
			status[d.ID] = d.Status
		}
		for _, id := range ids {
			if status[id] != transport.Online {
				return fmt.Errorf("device %s is %q", id, status[id])
			}
		}
		return nil
	})
}

// CLI runs `edgeflow ARGS` against the fleet's controller (Controller.CLI).
func (f *Fleet) CLI(args ...string) Result {
	f.t.Helper()
	return f.Controller.CLI(args...)
}

// ShowDeployment returns the deployment as `edgeflow deployment show ID
// -o json` prints it, failing t unless the command exits 0.
func (c *Controller) ShowDeployment(id string) api.Deployment {
	c.t.Helper()
	r := c.CLI("deployment", "show", id, "-o", "json")
	if r.Code != 0 {
		c.t.Fatalf("deployment show: %s", r)
	}
	var d api.Deployment
	if err := json.Unmarshal([]byte(r.Stdout), &d); err != nil {
		c.t.Fatalf("deployment show -o json: %v\n%s", err, r)
	}
	return d
}

// WaitDeployment polls the controller's API until cond holds for the
// deployment (with its devices) and returns it.
func (c *Controller) WaitDeployment(id, what string, cond func(*api.Deployment) error) *api.Deployment {
	c.t.Helper()
	cl := c.Client()
	var last *api.Deployment
	WaitFor(c.t, fmt.Sprintf("deployment %s: %s", id, what), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d, err := cl.Deployment(ctx, id)
		if err != nil {
			return err
		}
		last = d
		return cond(d)
	})
	return last
}

// DeviceRun returns the deployment's run on device, or nil.
func DeviceRun(d *api.Deployment, device string) *api.DeviceRun {
	for i := range d.Devices {
		if d.Devices[i].Device == device {
			return &d.Devices[i]
		}
	}
	return nil
}
