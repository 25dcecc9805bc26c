// Command edgeflow is the controller (serve) and the operator's CLI: the
// fleet commands against a controller (devices, deploy, deployments,
// deployment show, watch, logs, cancel, promote, interventions, guide,
// mark-failed, retry), and the offline ones that check
// flows (validate), make signing keys (keygen) and build, verify and
// inspect signed update bundles (bundle).
package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/edgeflow/edgeflow/internal/cli"
)

var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:     "edgeflow",
		Short:   "Operate edgeflow: run the controller, deploy flows to fleets and watch them, build signed bundles",
		Version: version,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(append([]*cobra.Command{cli.ValidateCommand(stdout), cli.KeygenCommand(stdout), cli.BundleCommand(stdout)}, cli.FleetCommands(stdout, stderr)...)...)
	root.AddCommand(serveCmd(stdout, stderr))
	return cli.Run(root, args, stderr)
}
