// Command forge is Forge's one binary: the coordinator, the agent, the small
// PKI behind their mutual TLS, `forge run` for a build on this machine, and
// `forge deploy` for the stack on a swarm.
// Mains only parse flags and call into the packages, so tests can start the
// real programs.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(os.Stderr, "forge: %s\n", msg)
		}
		os.Exit(exitCode(err))
	}
}

// exitCode lets a command choose the process's exit code (forge run exits
// with the build's code) while other errors exit 1.
func exitCode(err error) int {
	if e, ok := err.(cli.ExitCoder); ok {
		return e.ExitCode()
	}
	return 1
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "forge",
		Usage: "continuous builds on Docker Swarm, without remote Docker sockets",
		Description: "Forge runs each build as a one-task swarm service in the image its .forge.yml names.\n" +
			"The agent on the node where the task lands injects the executor through that node's\n" +
			"local Docker socket. README.md tells how to set it up.",
		HideVersion:    true,
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and exits, once
		Commands: []*cli.Command{
			coordinatorCommand(),
			agentCommand(),
			certsCommand(),
			runCommand(),
			deployCommand(),
			buildsCommand(),
			logsCommand(),
			cancelCommand(),
			approveCommand(),
			agentsCommand(),
			versionCommand(),
			secretsCommand(),
		},
	}
}
