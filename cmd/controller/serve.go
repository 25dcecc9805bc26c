package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/controller"
	"github.com/edgeflow/edgeflow/internal/cli"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/transport"
)

func serveCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		cfg                     controller.ServeConfig
		passwordFile, tokenFile string
		level                   string
		gfSelector              []string
		gfTimeout               time.Duration
		gfOnTimeout             string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the controller: REST API, MQTT broker (embedded by default) and deployments",
		Long: `Run the controller until SIGINT or SIGTERM: the REST API (docs/api.md) on
--listen, the embedded MQTT broker on --mqtt-listen (or a connection to the
external broker --broker names), and the deployments, kept in --data.

Agents connect to the broker and download bundles from --public-url, which
defaults to http://HOST:PORT of --listen (this machine's hostname when it
listens on every address).

With --token-file, every API call but /v1/health and the bundle download
needs "Authorization: Bearer TOKEN".

--allow-mark-failed lets operators stop running steps as failed
(edgeflow mark-failed); without it the controller refuses (403).

--guided-failure-selector K=V,... turns on guided failure for every
dispatch to a device whose labels include all of them (such as env=prod):
a failure that would end the device's flow pauses it for guidance
instead, for --guided-failure-timeout, after which
--guided-failure-on-timeout applies (docs/rollouts.md).`,
		Args: cli.Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := cli.Logger(stderr, level)
			if err != nil {
				return err
			}
			if cfg.MQTTPassword, err = readSecret("--mqtt-password-file", passwordFile); err != nil {
				return err
			}
			if cfg.Token, err = readSecret("--token-file", tokenFile); err != nil {
				return err
			}
			if len(gfSelector) > 0 {
				sel, err := cli.LabelSelector("--guided-failure-selector", gfSelector)
				if err != nil {
					return cli.Usage(err)
				}
				a, err := controller.CheckGuidedFailure("--guided-failure:", gfTimeout, onfailure.Action(gfOnTimeout))
				if err != nil {
					return cli.Usage(err)
				}
				cfg.GuidedFailure = &controller.GuidedFailureSetting{Selector: sel, Timeout: gfTimeout, OnTimeout: a}
			} else if cmd.Flags().Changed("guided-failure-timeout") || cmd.Flags().Changed("guided-failure-on-timeout") {
				return cli.Usage(errors.New("--guided-failure-timeout and --guided-failure-on-timeout need --guided-failure-selector K=V (the devices they apply to)"))
			}
			cfg.Logger = log
			cfg.Ready = func(i controller.ServeInfo) {
				broker := i.Broker
				if i.Embedded {
					broker += " (embedded)"
				}
				fmt.Fprintf(stdout, "edgeflow controller: API on %s, MQTT broker %s, agents download bundles from %s\n", i.API, broker, i.PublicURL)
			}
			return controller.Serve(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Data, "data", "", "data directory: the controller's store and the uploaded bundles (required)")
	f.StringVar(&cfg.Listen, "listen", ":8080", "address of the REST API")
	f.StringVar(&cfg.Broker, "broker", controller.BrokerEmbedded, `"embedded", or the URL of an external MQTT broker (tcp://HOST:1883, ssl://HOST:8883)`)
	f.StringVar(&cfg.MQTTListen, "mqtt-listen", ":1883", "address of the embedded MQTT broker")
	f.StringVar(&cfg.PublicURL, "public-url", "", "base URL agents download bundles from (default http://HOST:PORT of --listen)")
	f.StringVar(&cfg.Prefix, "prefix", transport.DefaultPrefix, "MQTT topic prefix")
	f.StringVar(&cfg.MQTTUsername, "mqtt-username", "", "user name with an external broker")
	f.StringVar(&passwordFile, "mqtt-password-file", "", "file holding the password with an external broker")
	f.StringVar(&tokenFile, "token-file", "", "file holding the API token (default: no token, the API is open)")
	f.Int64Var(&cfg.MaxBundleSize, "max-bundle-size", controller.DefaultMaxBundleSize, "largest bundle upload, in bytes")
	f.BoolVar(&cfg.AllowMarkFailed, "allow-mark-failed", false, "let operators stop running steps as failed (edgeflow mark-failed)")
	f.StringArrayVar(&gfSelector, "guided-failure-selector", nil, "turn on guided failure for devices with these labels: K=V,K=V (repeatable)")
	f.DurationVar(&gfTimeout, "guided-failure-timeout", time.Hour, "how long a device paused by guided failure waits for guidance")
	f.StringVar(&gfOnTimeout, "guided-failure-on-timeout", string(controller.DefaultGuidedFailureOnTimeout), "what applies when no guidance came in time: Ignore, MarkAsSuccess, MarkAsFailure, Abort, RollbackGroup or RollbackFlow")
	f.StringVar(&level, "log-level", "info", "log level on stderr: debug, info, warn, error")
	return cmd
}

// readSecret returns the first line of the file at path ("" when path is
// ""), refusing an empty one.
func readSecret(flag, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", cli.Usage(fmt.Errorf("%s: %w", flag, err))
	}
	s, _, _ := strings.Cut(string(data), "\n")
	s = strings.TrimRight(s, "\r")
	if s == "" {
		return "", cli.Usage(fmt.Errorf("%s %s: the file is empty", flag, path))
	}
	return s, nil
}
