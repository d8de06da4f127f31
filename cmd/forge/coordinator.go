package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/github"
	"github.com/forge-ci/forge/wire"
)

func coordinatorCommand() *cli.Command {
	return &cli.Command{
		Name:  "coordinator",
		Usage: "run the coordinator: webhooks in, swarm services out, agents dial in",
		Description: "The coordinator runs on a swarm manager and reaches Docker only through that manager's\n" +
			"local socket. It receives GitHub webhooks on --listen, accepts the agents' mutually\n" +
			"authenticated sessions on --agent-listen, creates one swarm service per build and has the\n" +
			"agent of the node where the task landed start it. State lives under --data.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "HTTP address: webhooks, API, UI, metrics", Value: ":8080", EnvVars: env("listen")},
			&cli.StringFlag{Name: "agent-listen", Usage: "address agents dial (mutual TLS)", Value: ":7443", EnvVars: env("agent-listen")},
			&cli.StringFlag{Name: "metrics-listen", Usage: "address of GET /metrics (Prometheus); \"\" serves none", Value: "127.0.0.1:9090", EnvVars: env("metrics-listen")},
			&cli.PathFlag{Name: "webhook-secret-file", Usage: "file holding the GitHub webhook secret (required)", EnvVars: env("webhook-secret-file")},
			&cli.Int64Flag{Name: "github-app-id", Usage: "the GitHub App's id (App settings, About)", EnvVars: env("github-app-id")},
			&cli.PathFlag{Name: "github-key-file", Usage: "the GitHub App's private key (PEM)", EnvVars: env("github-key-file")},
			&cli.StringFlag{Name: "github-api", Usage: "GitHub API base URL (GitHub Enterprise: https://HOST/api/v3/)", Value: github.DefaultAPI, EnvVars: env("github-api")},
			&cli.PathFlag{Name: "data", Usage: "state folder (database, logs)", Value: "./forge-data", EnvVars: env("data")},
			&cli.StringFlag{Name: "public-url", Usage: "base URL of this coordinator, for links in commit statuses", EnvVars: env("public-url")},
			forgexecFlag(),
			dockerHostFlag(),
			&cli.BoolFlag{Name: "allow-ports", Usage: "let .forge.yml publish ports", EnvVars: env("allow-ports")},
			&cli.BoolFlag{Name: "debug", Usage: "log more", EnvVars: env("debug")},
		}, tlsFlags("coordinator")...),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("coordinator takes no arguments (got %q)", c.Args().First())
			}
			secret, err := readSecret(c.Path("webhook-secret-file"))
			if err != nil {
				return err
			}
			app, err := githubApp(c)
			if err != nil {
				return err
			}
			pool, pair, err := loadTLS(c)
			if err != nil {
				return err
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
			log := newLogger(c)
			cfg := daemon.Config{TLS: wire.ServerConfig(pool, pair), DataDir: c.Path("data"), Executor: exe,
				AllowPorts: c.Bool("allow-ports"), Logger: log}
			if app == nil {
				log.Warn("no GitHub App configured (--github-app-id, --github-key-file): webhooks are answered 503 and no builds come from GitHub; forge run and the API work")
			} else {
				cfg.GitHub = &daemon.GitHub{App: app, Secret: secret, PublicURL: c.String("public-url")}
			}
			srv, err := daemon.New(ctx, cfg, docker)
			if err != nil {
				return err
			}
			httpLn, err := net.Listen("tcp", c.String("listen"))
			if err != nil {
				srv.Close()
				return fmt.Errorf("--listen: %w", err)
			}
			agentLn, err := net.Listen("tcp", c.String("agent-listen"))
			if err != nil {
				httpLn.Close()
				srv.Close()
				return fmt.Errorf("--agent-listen: %w", err)
			}
			var metricsLn net.Listener
			if addr := c.String("metrics-listen"); addr != "" {
				if metricsLn, err = net.Listen("tcp", addr); err != nil {
					httpLn.Close()
					agentLn.Close()
					srv.Close()
					return fmt.Errorf("--metrics-listen: %w", err)
				}
			}
			err = srv.Serve(ctx, daemon.Listeners{HTTP: httpLn, Agents: agentLn, Metrics: metricsLn})
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
}

// githubApp makes the GitHub App client, or nil when no App is
// configured; half a configuration is an error naming the missing flag.
func githubApp(c *cli.Context) (*github.App, error) {
	id, keyFile := c.Int64("github-app-id"), c.Path("github-key-file")
	switch {
	case id == 0 && keyFile == "":
		return nil, nil
	case id == 0:
		return nil, errors.New("--github-key-file is set but --github-app-id is not")
	case keyFile == "":
		return nil, errors.New("--github-app-id is set but --github-key-file is not")
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--github-key-file: %w", err)
	}
	app, err := github.NewApp(id, key, c.String("github-api"), nil)
	if err != nil {
		return nil, fmt.Errorf("GitHub App: %w", err)
	}
	return app, nil
}

// readSecret reads the webhook secret; the coordinator does not start
// without one, since unsigned webhooks would let anyone start builds.
func readSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("--webhook-secret-file is required: the coordinator checks every webhook's signature with it (GitHub App settings, Webhook secret)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--webhook-secret-file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, fmt.Errorf("--webhook-secret-file %s is empty", path)
	}
	return []byte(s), nil
}
