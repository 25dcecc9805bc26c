package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// FileConfig is the daemon's configuration file (edgeflow-agent run
// --config FILE), YAML. Flags given on the command line override it.
//
//	deviceId: edge-berlin-042
//	broker: tls://controller.example:8883
//	username: edge-berlin-042
//	passwordFile: /etc/edgeflow/mqtt.pass
//	stateDir: /var/lib/edgeflow
//	labels: {site: berlin, role: kiosk}
//	trustedKeys: [/etc/edgeflow/release.pub]
type FileConfig struct {
	DeviceID       string            `yaml:"deviceId"`
	Broker         string            `yaml:"broker"`
	Username       string            `yaml:"username"`
	PasswordFile   string            `yaml:"passwordFile"`
	Prefix         string            `yaml:"prefix"`
	StateDir       string            `yaml:"stateDir"`
	Labels         map[string]string `yaml:"labels"`
	TrustedKeys    []string          `yaml:"trustedKeys"`
	AllowUnsigned  bool              `yaml:"allowUnsigned"`
	AllowPaths     []string          `yaml:"allowPaths"`
	ComposeDir     string            `yaml:"composeDir"`
	ComposeCommand string            `yaml:"composeCommand"`
	KillGrace      time.Duration     `yaml:"killGrace"`
	RebootCommand  string            `yaml:"rebootCommand"`
}

// LoadConfigFile reads a FileConfig. An unknown key, a value of the wrong
// type or a second document is refused with the file's name and line.
func LoadConfigFile(path string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("config file: %w", err)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c FileConfig
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, &UsageError{Err: fmt.Errorf("config file %s: %w", path, err)}
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &UsageError{Err: fmt.Errorf("config file %s: holds more than one YAML document", path)}
	}
	return &c, nil
}
