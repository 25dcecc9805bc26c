// Command edgeflow is the operator's CLI. Today it validates flows, makes
// signing keys (keygen) and builds, verifies and inspects signed update
// bundles (bundle); the controller (serve) and the fleet commands (deploy,
// watch, …) come with the transport work.
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
		Short:   "Operate edgeflow: check flows, build signed bundles (and soon deploy them to fleets)",
		Version: version,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(append([]*cobra.Command{cli.ValidateCommand(stdout), cli.KeygenCommand(stdout), cli.BundleCommand(stdout)}, cli.FleetCommands(stdout, stderr)...)...)
	root.AddCommand(serveCmd(stdout, stderr))
	return cli.Run(root, args, stderr)
}
