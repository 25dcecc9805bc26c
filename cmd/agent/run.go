package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/agent"
	"github.com/edgeflow/edgeflow/internal/cli"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/steps/compose"
	"github.com/edgeflow/edgeflow/steps/reboot"
)

func runCmd(stderr io.Writer) *cobra.Command {
	var (
		opts                       agent.DaemonOptions
		config, passwordFile       string
		level                      string
		labels, keys, composeWords []string
	)
	cmd := &cobra.Command{
		Use:   "run --device-id ID --broker URL [--label K=V]... [--config FILE]",
		Short: "Run as a daemon: receive deployments from a controller over MQTT, run them and report every step",
		Long: `Run as a daemon. The agent connects to the MQTT broker as its device id
(persistent session, QoS 1, a retained presence with a last will), receives
dispatches and commands (docs/protocol.md), downloads and verifies each
bundle, runs one flow at a time (later dispatches wait in order and are
reported queued), and reports every step through an outbox in its journal
that keeps events until the controller acknowledges them.

On start it resumes a flow that an agent restart, a crash or a power cut
interrupted. Flags override the config file.`,
		Args: cli.Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := cli.Logger(stderr, level)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if config != "" {
				fc, err := agent.LoadConfigFile(config)
				if err != nil {
					return err
				}
				fromFile(f.Changed, fc, &opts, &passwordFile, &keys)
			}
			if f.Changed("label") {
				if opts.Labels, err = agent.ParsePairs("label", labels); err != nil {
					return err
				}
			}
			if f.Changed("compose-command") {
				opts.ComposeCommand = composeWords
			}
			if opts.Broker == "" {
				return cli.Usage(fmt.Errorf("--broker is required (or broker: in the config file)"))
			}
			if passwordFile != "" {
				pw, err := os.ReadFile(passwordFile)
				if err != nil {
					return cli.Usage(fmt.Errorf("--password-file: %w", err))
				}
				opts.Password = strings.TrimRight(string(pw), "\r\n")
			}
			for _, k := range keys {
				pub, err := packaging.LoadPublicKey(k)
				if err != nil {
					return cli.Usage(fmt.Errorf("--trusted-key: %w", err))
				}
				opts.TrustedKeys = append(opts.TrustedKeys, pub)
			}
			opts.Logger, opts.Version = log, version
			d, err := agent.NewDaemon(opts)
			if err != nil {
				return err
			}
			return d.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&config, "config", "", "YAML config file (deviceId, broker, username, passwordFile, labels, trustedKeys, ...)")
	f.StringVar(&opts.StateDir, "state-dir", agent.DefaultStateDir, "directory for the journal, outbox, downloads and backups")
	f.StringVar(&opts.DeviceID, "device-id", agent.DeviceID(), "this device's id (its MQTT client id and topic level)")
	f.StringVar(&opts.Broker, "broker", "", "MQTT broker URL: tcp://HOST:1883, ssl://HOST:8883")
	f.StringVar(&opts.Username, "username", "", "MQTT user name")
	f.StringVar(&passwordFile, "password-file", "", "file holding the MQTT password")
	f.StringVar(&opts.Prefix, "prefix", "", "topic prefix (default edgeflow/v1)")
	f.StringArrayVar(&labels, "label", nil, "device label K=V (repeatable)")
	f.StringArrayVar(&keys, "trusted-key", nil, "public key (PREFIX.pub of edgeflow keygen) that may sign bundles (repeatable)")
	f.BoolVar(&opts.AllowUnsigned, "allow-unsigned", false, "run unsigned bundles when no key is trusted (labs only)")
	f.StringArrayVar(&opts.AllowPaths, "allow-path", nil, "file steps may only write below DIR (repeatable; default: anywhere)")
	f.DurationVar(&opts.KillGrace, "kill-grace", 0, "time between SIGTERM and SIGKILL when a script is stopped (default 10s)")
	f.StringVar(&opts.RebootCommand, "reboot-command", reboot.DefaultCommand, "command that reboots the device (reboot steps)")
	f.StringVar(&opts.ComposeDir, "compose-dir", compose.DefaultDir, "root of the compose projects' directories (compose steps)")
	f.Var(commandValue{&composeWords}, "compose-command", `the Compose CLI, such as "docker-compose" (default: "docker compose" if present, else "docker-compose")`)
	f.StringVar(&level, "log-level", "info", "log level on stderr: debug, info, warn, error")
	return cmd
}

// fromFile fills what the config file sets and no flag overrides.
func fromFile(changed func(string) bool, fc *agent.FileConfig, o *agent.DaemonOptions, passwordFile *string, keys *[]string) {
	set := func(flag, v string, dst *string) {
		if v != "" && !changed(flag) {
			*dst = v
		}
	}
	set("device-id", fc.DeviceID, &o.DeviceID)
	set("broker", fc.Broker, &o.Broker)
	set("username", fc.Username, &o.Username)
	set("password-file", fc.PasswordFile, passwordFile)
	set("prefix", fc.Prefix, &o.Prefix)
	set("state-dir", fc.StateDir, &o.StateDir)
	set("compose-dir", fc.ComposeDir, &o.ComposeDir)
	set("reboot-command", fc.RebootCommand, &o.RebootCommand)
	if len(fc.Labels) > 0 {
		o.Labels = fc.Labels
	}
	if !changed("trusted-key") {
		*keys = fc.TrustedKeys
	}
	if !changed("allow-unsigned") {
		o.AllowUnsigned = fc.AllowUnsigned
	}
	if !changed("allow-path") && len(fc.AllowPaths) > 0 {
		o.AllowPaths = fc.AllowPaths
	}
	if !changed("kill-grace") && fc.KillGrace > 0 {
		o.KillGrace = fc.KillGrace
	}
	if fc.ComposeCommand != "" && !changed("compose-command") {
		o.ComposeCommand = strings.Fields(fc.ComposeCommand)
	}
}
