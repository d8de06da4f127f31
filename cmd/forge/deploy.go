package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/deploy"
)

func deployCommand() *cli.Command {
	common := func(timeout int, timeoutEnv string) []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "stack", Usage: "the stack's name", Value: "forge", EnvVars: env("stack")},
			&cli.PathFlag{Name: "state-dir", Usage: "the state folder: CA, certificates, webhook secret, admin token, session key, forge.env", Value: ".forge", EnvVars: env("state-dir")},
			&cli.IntFlag{Name: "timeout", Usage: "seconds to wait, at most", Value: timeout, EnvVars: []string{timeoutEnv}},
			&cli.StringFlag{Name: "http-port", Usage: "the coordinator's published HTTP port (default: forge.env's, else 8080)", EnvVars: env("http-port")},
		}
	}
	return &cli.Command{
		Name:  "deploy",
		Usage: "deploy Forge on this swarm (make up), or remove it (make down)",
		Description: "The stack of deploy/stack.yml: the coordinator on this manager, an agent on every node.\n" +
			"Settings left empty are read from the state folder's forge.env, where up keeps them.\n" +
			"README.md, Deploying on a swarm, tells the rest.",
		Subcommands: []*cli.Command{
			{
				Name:      "up",
				Usage:     "deploy, making what is missing (certificates, secrets), and wait until every node's agent is connected",
				ArgsUsage: " ",
				Flags: append(common(180, "FORGE_UP_TIMEOUT"),
					&cli.StringFlag{Name: "public-url", Usage: "the base URL GitHub and commit statuses use", EnvVars: env("public-url")},
					&cli.StringFlag{Name: "github-app-id", Usage: "the GitHub App's id", EnvVars: env("github-app-id")},
					&cli.PathFlag{Name: "github-key-file", Usage: "the GitHub App's private key, copied into the state folder", EnvVars: env("github-key-file")},
					&cli.StringFlag{Name: "github-api", Usage: "GitHub Enterprise: https://HOST/api/v3/", EnvVars: env("github-api")},
					&cli.StringFlag{Name: "github-client-id", Usage: "sign-in with GitHub: the OAuth client's id", EnvVars: env("github-client-id")},
					&cli.PathFlag{Name: "github-client-secret-file", Usage: "sign-in with GitHub: the OAuth client's secret, copied into the state folder", EnvVars: env("github-client-secret-file")},
					&cli.StringFlag{Name: "github-web", Usage: "sign-in with GitHub Enterprise: https://HOST", EnvVars: env("github-web")},
					&cli.StringFlag{Name: "registry", Usage: "the registry make images pushed the images to", EnvVars: env("registry")},
					&cli.StringFlag{Name: "user", Usage: "uid:gid of the services (default 65532:<gid of /var/run/docker.sock>)", EnvVars: env("user")},
					&cli.StringFlag{Name: "agent-user", Usage: "uid:gid of the agents (default: --user)", EnvVars: env("agent-user")},
					&cli.StringFlag{Name: "version", Usage: "the images' tag (default: git describe --always --dirty)", EnvVars: []string{"FORGE_VERSION", "VERSION"}},
				),
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return fmt.Errorf("deploy up takes no arguments (got %q)", c.Args().First())
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					return reported(deploy.Up(ctx, deploy.UpConfig{
						Config: deployConfig(c),
						Settings: deploy.Settings{
							HTTPPort: c.String("http-port"), PublicURL: c.String("public-url"),
							GitHubAppID: c.String("github-app-id"), GitHubAPI: c.String("github-api"),
							GitHubClientID: c.String("github-client-id"), GitHubWeb: c.String("github-web"),
							Registry: c.String("registry"), User: c.String("user"), AgentUser: c.String("agent-user"),
						},
						GitHubKeyFile:          c.Path("github-key-file"),
						GitHubClientSecretFile: c.Path("github-client-secret-file"),
						Version:                c.String("version"),
					}))
				},
			},
			{
				Name:      "down",
				Usage:     "remove the stack and wait until it is gone; keep the secrets, the data volume and the state folder",
				ArgsUsage: " ",
				Flags: append(common(120, "FORGE_DOWN_TIMEOUT"),
					&cli.BoolFlag{Name: "purge", Usage: "first cancel the builds still queued or running, then remove the secrets, the data volume and the state folder too", EnvVars: []string{"FORGE_PURGE", "PURGE"}},
				),
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return fmt.Errorf("deploy down takes no arguments (got %q)", c.Args().First())
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					return reported(deploy.Down(ctx, deploy.DownConfig{
						Config:   deployConfig(c),
						HTTPPort: c.String("http-port"),
						Purge:    c.Bool("purge"),
					}))
				},
			},
		},
	}
}

func deployConfig(c *cli.Context) deploy.Config {
	return deploy.Config{
		Stack:    c.String("stack"),
		StateDir: c.Path("state-dir"),
		Timeout:  time.Duration(c.Int("timeout")) * time.Second,
		Out:      c.App.Writer,
		Err:      c.App.ErrWriter,
	}
}

// reported: forge deploy has written its failure already, in its own
// words; the process exits 1 without a second line.
func reported(err error) error {
	if err != nil {
		return cli.Exit("", 1)
	}
	return nil
}
