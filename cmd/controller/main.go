// Command edgeflow is the operator's CLI. Today it validates flows; the
// controller (serve) and the fleet commands (deploy, watch, …) come with
// the transport work.
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
		Short:   "Operate edgeflow: check flows (and soon deploy them to fleets)",
		Version: version,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(cli.ValidateCommand(stdout))
	return cli.Run(root, args, stderr)
}
