package fleettest

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/edgeflow/edgeflow/controller/api"
	"github.com/edgeflow/edgeflow/transport"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestFleet: a controller and an agent come up; the CLI lists the device;
// the agent goes offline when stopped and online when started again; the
// controller, stopped and started again, is back on the same address and
// still knows the device; a restarted agent is a new process that comes
// online again.
func TestFleet(t *testing.T) {
	f := New(t, Options{Devices: []Device{{ID: "dev-1", Labels: map[string]string{"role": "test"}}}})
	if !f.Controller.Embedded() || !strings.HasPrefix(f.Controller.BrokerURL(), "tcp://127.0.0.1:") {
		t.Fatalf("controller broker %q, want the embedded one on loopback", f.Controller.BrokerURL())
	}
	devices := func() map[string]api.Device {
		t.Helper()
		r := f.CLI("devices", "-o", "json")
		if r.Code != 0 {
			t.Fatalf("devices: %s", r)
		}
		var list api.DeviceList
		if err := json.Unmarshal([]byte(r.Stdout), &list); err != nil {
			t.Fatalf("devices -o json: %v\n%s", err, r)
		}
		m := map[string]api.Device{}
		for _, d := range list.Devices {
			m[d.ID] = d
		}
		return m
	}
	if d := devices()["dev-1"]; d.Status != transport.Online || d.Labels["role"] != "test" || d.Agent != "fleettest" {
		t.Fatalf("devices lists dev-1 as %+v, want online, role=test, agent fleettest", d)
	}

	a := f.Agent("dev-1")
	a.Stop()
	if a.Running() || a.Pid() != 0 {
		t.Fatal("the agent runs after Stop")
	}
	WaitFor(t, "dev-1 offline", func() error {
		if s := devices()["dev-1"].Status; s != transport.Offline {
			return fmt.Errorf("dev-1 is %q", s)
		}
		return nil
	})
	a.Start()
	f.WaitOnline("dev-1")

	api := f.Controller.API()
	f.Controller.Stop()
	if r := f.CLI("devices"); r.Code != 1 || !strings.Contains(r.Stderr, api) {
		t.Errorf("devices with the controller stopped: %s\nwant exit 1 naming %s", r, api)
	}
	f.Controller.Start()
	if f.Controller.API() != api {
		t.Errorf("restarted controller on %s, want %s", f.Controller.API(), api)
	}
	f.WaitOnline("dev-1")
	if r := f.CLI("deployment", "show", "dep-nope"); r.Code != 1 || !strings.Contains(r.Stderr, "not found") {
		t.Errorf("deployment show of an unknown id: %s\nwant exit 1, not found", r)
	}
	pid := a.Pid()
	a.Restart()
	if a.Pid() == pid || a.Pid() == 0 {
		t.Errorf("agent pid %d after Restart, was %d", a.Pid(), pid)
	}
	f.WaitOnline("dev-1")
}
