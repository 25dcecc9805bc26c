package docker_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/edgeflow/edgeflow/internal/dockertest"
)

func fmtSscanf(s string, major, minor *int) (int, error) {
	return fmt.Sscanf(s, "%d.%d", major, minor)
}

// inspectJSON is what the tests read of `docker inspect`, decoded
// independently of the SDK's types.
type inspectJSONT struct {
	ID     string `json:"Id"`
	Config struct {
		Hostname     string
		Env          []string
		Cmd          []string
		Entrypoint   []string
		User         string
		WorkingDir   string
		Labels       map[string]string
		ExposedPorts map[string]struct{}
		Healthcheck  *struct{ Test []string }
	}
	HostConfig struct {
		RestartPolicy struct{ Name string }
		PortBindings  map[string][]struct {
			HostIP   string `json:"HostIp"`
			HostPort string
		}
	}
	Mounts          []mountJSON
	NetworkSettings struct {
		Networks map[string]struct {
			IPAddress string
			Aliases   []string
		}
	}
}

type mountJSON struct {
	Type        string
	Name        string
	Source      string
	Destination string
	RW          bool
}

func inspectJSON(t *testing.T, id string) inspectJSONT {
	t.Helper()
	var out []inspectJSONT
	if err := json.Unmarshal([]byte(dockertest.Docker(t, "inspect", id)), &out); err != nil || len(out) != 1 {
		t.Fatalf("docker inspect %s: %v", id, err)
	}
	return out[0]
}
