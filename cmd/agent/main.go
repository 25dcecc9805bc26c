// Command edgeflow-agent runs update flows on an edge device: as a daemon
// that receives them from a controller over MQTT (run), or offline with
// apply.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/agent"
	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/internal/cli"
	"github.com/edgeflow/edgeflow/onfailure"
	"github.com/edgeflow/edgeflow/packaging"
	"github.com/edgeflow/edgeflow/steps/compose"
	"github.com/edgeflow/edgeflow/steps/reboot"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:     "edgeflow-agent",
		Short:   "Run edgeflow update flows on this device",
		Version: version,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(runCmd(stderr), applyCmd(stdout, stderr), resumeCmd(stdout, stderr), cli.ValidateCommand(stdout), guideCmd(stdout), markFailedCmd(stdout), statusCmd(stdout))
	return cli.Run(root, args, stderr)
}

func applyCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		opts          agent.ApplyOptions
		output, level string
		labels, vars  []string
		keys          []string
		guided        string
		strategies    string
	)
	cmd := &cobra.Command{
		Use:   "apply FLOW|BUNDLE",
		Short: "Run a flow or a bundle on this device now and print its result",
		Long: `Run a flow, or a bundle made by "edgeflow bundle build", on this device
now and print its result.

A bundle is verified before anything runs: its manifest's hashes and sizes,
its expiry, the devices and labels it is for, that its release is newer
than the one installed, and, with --trusted-key, that one of those keys
signed it. A refused bundle runs nothing and ends Failed with an Integrity
error, journaled like any execution.

With --guided-failure TIMEOUT[:ONTIMEOUT] (such as 30m or 30m:RollbackFlow),
a failure that would abort the flow pauses for guidance instead (answer it
with "edgeflow-agent guide"); with no guidance within TIMEOUT, ONTIMEOUT
applies (default Abort). See docs/failure-handling.md, "Guided failure".

With --strategies FILE (a YAML list of failure strategies), a flow that says
"failureStrategies: input" gets its flow-level strategies from FILE; a flow
that does not say it refuses them. See docs/flows.md, "Failure strategies
as runtime input".

Exit status: 0 when the flow succeeded, 1 for any other end (Failed,
RolledBack, RollbackFailed, a refused bundle), 2 for an invalid flow or bad
usage (nothing ran).`,
		Args: cli.Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			if output != "text" && output != "json" {
				return cli.Usage(fmt.Errorf("--output %q: want text or json", output))
			}
			log, err := cli.Logger(stderr, level)
			if err != nil {
				return err
			}
			opts.Flow, opts.Logger = a[0], log
			if opts.Labels, err = agent.ParsePairs("label", labels); err != nil {
				return err
			}
			if opts.Vars, err = agent.ParsePairs("var", vars); err != nil {
				return err
			}
			for _, k := range keys {
				pub, err := packaging.LoadPublicKey(k)
				if err != nil {
					return cli.Usage(fmt.Errorf("--trusted-key: %w", err))
				}
				opts.TrustedKeys = append(opts.TrustedKeys, pub)
			}
			if guided != "" {
				if opts.GuidedFailure, err = agent.ParseGuidedFailure(guided); err != nil {
					return err
				}
			}
			if strategies != "" {
				if opts.FlowStrategies, err = agent.LoadStrategies(strategies); err != nil {
					return err
				}
			}
			if output == "text" {
				opts.Observe = agent.Progress(stderr)
			}
			res, err := agent.Apply(cmd.Context(), opts)
			return report(stdout, output, res, err)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.StateDir, "state-dir", agent.DefaultStateDir, "directory for the journal and backups")
	f.StringVarP(&output, "output", "o", "text", "result format: text or json")
	f.StringVar(&opts.DeviceID, "device-id", agent.DeviceID(), "this device's id")
	f.StringArrayVar(&labels, "label", nil, "device label K=V (repeatable)")
	f.StringArrayVar(&vars, "var", nil, "set a flow variable K=V (repeatable; must be declared under vars)")
	f.StringArrayVar(&opts.AllowPaths, "allow-path", nil, "file steps may only write below DIR (repeatable; default: anywhere)")
	f.DurationVar(&opts.KillGrace, "kill-grace", 10*time.Second, "time between SIGTERM and SIGKILL when a script is stopped")
	f.StringVar(&opts.RebootCommand, "reboot-command", reboot.DefaultCommand, "command that reboots the device (reboot steps)")
	f.StringVar(&opts.BootIDFile, "boot-id-file", reboot.DefaultBootIDFile, "where the kernel's boot id is read (reboot steps)")
	_ = f.MarkHidden("boot-id-file")
	f.StringArrayVar(&keys, "trusted-key", nil, "public key (PREFIX.pub of edgeflow keygen) that may sign bundles (repeatable; with any, unsigned bundles are refused)")
	f.BoolVar(&opts.AllowReinstall, "allow-reinstall", false, "accept a bundle of the release already installed")
	f.StringVar(&guided, "guided-failure", "", "TIMEOUT[:ONTIMEOUT]: pause a failure that would abort the flow for guidance, up to TIMEOUT, then apply ONTIMEOUT (default Abort)")
	f.StringVar(&strategies, "strategies", "", "FILE: a YAML list of the flow-level failure strategies, for a flow that says failureStrategies: input")
	f.StringVar(&opts.ComposeDir, "compose-dir", compose.DefaultDir, "root of the compose projects' directories (compose steps)")
	f.Var(commandValue{&opts.ComposeCommand}, "compose-command", `the Compose CLI, such as "docker-compose" (default: "docker compose" if present, else "docker-compose")`)
	f.StringVar(&level, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	return cmd
}

// commandValue is a flag holding a command line split on spaces.
type commandValue struct{ argv *[]string }

func (c commandValue) String() string {
	if c.argv == nil {
		return ""
	}
	return strings.Join(*c.argv, " ")
}
func (c commandValue) Set(s string) error { *c.argv = strings.Fields(s); return nil }
func (c commandValue) Type() string       { return "command" }

// report prints a run's result and maps it to the exit status of spec 11.
func report(stdout io.Writer, output string, res *engine.Result, err error) error {
	if err != nil && res == nil {
		if output == "json" {
			_ = agent.WriteErrorJSON(stdout, err)
		}
		return err
	}
	if output == "json" {
		if werr := agent.WriteJSON(stdout, res); werr != nil {
			return werr
		}
	} else if werr := agent.WriteText(stdout, res); werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if res.Status != engine.Succeeded {
		return &cli.ExitError{Code: cli.ExitFailed}
	}
	return nil
}

func resumeCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		cfg           agent.Config
		output, level string
	)
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "Continue the flow a crash, power cut or restart interrupted, and print its result",
		Long: `Continue the unfinished execution of the state dir and print its result
like apply. A step that was running when the agent stopped has failed with
AgentRestart, and its failure strategies decide. With nothing to resume it
says so and exits 0.`,
		Args: cli.Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return cli.Usage(fmt.Errorf("--output %q: want text or json", output))
			}
			log, err := cli.Logger(stderr, level)
			if err != nil {
				return err
			}
			cfg.Logger = log
			var observe func(engine.Event)
			if output == "text" {
				observe = agent.Progress(stderr)
			}
			res, err := agent.Resume(cmd.Context(), cfg, observe)
			if errors.Is(err, agent.ErrNothingToResume) {
				fmt.Fprintln(stderr, "edgeflow-agent:", err)
				return nil
			}
			return report(stdout, output, res, err)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "directory for the journal and backups")
	f.StringVarP(&output, "output", "o", "text", "result format: text or json")
	f.StringVar(&level, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	return cmd
}

func guideCmd(stdout io.Writer) *cobra.Command {
	var stateDir, note, step string
	cmd := &cobra.Command{
		Use:   "guide ACTION",
		Short: "Answer a paused step: Retry, Ignore, MarkAsSuccess, MarkAsFailure, Abort, RollbackGroup, RollbackFlow or Exclude",
		Args:  cli.Args(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			if !onfailure.Action(a[0]).Guidance() {
				return cli.Usage(fmt.Errorf("%q is not a guidance action (Retry, Ignore, MarkAsSuccess, MarkAsFailure, Abort, RollbackGroup, RollbackFlow, Exclude)", a[0]))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			_, err := agent.Ask(ctx, stateDir, agent.ControlRequest{Op: "guide", Action: onfailure.Action(a[0]), Step: step, Note: note})
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "guidance %s delivered\n", a[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", agent.DefaultStateDir, "the running agent's state directory")
	cmd.Flags().StringVar(&note, "note", "", "why (recorded with the guidance)")
	cmd.Flags().StringVar(&step, "step", "", "the paused step or group, when several are paused")
	return cmd
}

func markFailedCmd(stdout io.Writer) *cobra.Command {
	var stateDir, note, step string
	cmd := &cobra.Command{
		Use:   "mark-failed",
		Short: "Stop the running step with a UserMarkedFailure; its strategies decide what follows",
		Args:  cli.Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			if _, err := agent.Ask(ctx, stateDir, agent.ControlRequest{Op: "mark-failed", Step: step, Note: note}); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "marked as failed")
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", agent.DefaultStateDir, "the running agent's state directory")
	cmd.Flags().StringVar(&note, "note", "", "why (recorded with the mark)")
	cmd.Flags().StringVar(&step, "step", "", "only this running step (default: every running step)")
	return cmd
}

func statusCmd(stdout io.Writer) *cobra.Command {
	var stateDir, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running flow, or the last one this state dir ran",
		Args:  cli.Args(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return cli.Usage(fmt.Errorf("--output %q: want text or json", output))
			}
			res, err := agent.Status(cmd.Context(), stateDir)
			if err != nil {
				return err
			}
			if output == "json" {
				return agent.WriteJSON(stdout, res)
			}
			return agent.WriteText(stdout, res)
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", agent.DefaultStateDir, "the agent's state directory")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}
