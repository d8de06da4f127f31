package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/internal/local"
)

func forgexecFlag() *cli.PathFlag {
	return &cli.PathFlag{Name: "forgexec", Usage: "path of the forgexec executor binary (default: forgexec beside this forge binary)", EnvVars: env("forgexec")}
}

// readForgexec reads the executor: the flag's path, or the forgexec that
// `make build` puts beside forge.
func readForgexec(path string) ([]byte, error) {
	if path == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("--forgexec: %w", err)
		}
		path = filepath.Join(filepath.Dir(self), "forgexec")
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--forgexec: %s does not exist; `make build` puts forgexec beside forge, or name it with --forgexec", path)
	}
	if err != nil {
		return nil, fmt.Errorf("--forgexec: %w", err)
	}
	return b, nil
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run DIR's .forge.yml on this machine, through the real path, and exit with the build's code",
		ArgsUsage: "[DIR]",
		Description: "forge run starts a coordinator and an agent in this process (with certificates made for\n" +
			"this run, over mutual TLS on loopback), creates the build's swarm service pinned to this\n" +
			"node, sends DIR's files as the source, and streams the log as it comes. Ctrl-C cancels the\n" +
			"build and removes its service. The Docker engine must be in swarm mode.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "action", Usage: "the action to run", Value: "execute", EnvVars: env("action")},
			forgexecFlag(),
			dockerHostFlag(),
			&cli.BoolFlag{Name: "debug", Usage: "show the coordinator's and agent's logs", EnvVars: env("debug")},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return fmt.Errorf("run takes one folder (got %d arguments)", c.NArg())
			}
			dir := c.Args().First()
			if dir == "" {
				dir = "."
			}
			exe, err := readForgexec(c.Path("forgexec"))
			if err != nil {
				return err
			}
			docker, err := localDocker(c.String("docker-host"))
			if err != nil {
				return err
			}
			defer docker.Close()
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			o := local.Options{Dir: dir, Action: c.String("action"), Docker: docker, Executor: exe,
				Stdout: c.App.Writer, Stderr: c.App.ErrWriter}
			if c.Bool("debug") {
				o.Logger = newLogger(c)
			}
			code, err := local.Run(ctx, o)
			if err != nil {
				return err
			}
			if code != 0 {
				return cli.Exit("", code)
			}
			return nil
		},
	}
}
