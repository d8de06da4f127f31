package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/docker/docker/client"
	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/internal/redact"
	"github.com/forge-ci/forge/wire"
)

// env names the environment variable that backs a flag: every flag reads
// FORGE_<NAME>.
func env(name string) []string {
	b := []byte("FORGE_" + name)
	for i, c := range b {
		switch {
		case c == '-':
			b[i] = '_'
		case c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		}
	}
	return []string{string(b)}
}

func tlsFlags(role string) []cli.Flag {
	return []cli.Flag{
		&cli.PathFlag{Name: "tls-ca", Usage: "the forge CA certificate (forge certs init)", EnvVars: env("tls-ca"), Required: true},
		&cli.PathFlag{Name: "tls-cert", Usage: "this " + role + "'s certificate (forge certs issue --role " + role + ")", EnvVars: env("tls-cert"), Required: true},
		&cli.PathFlag{Name: "tls-key", Usage: "this " + role + "'s private key", EnvVars: env("tls-key"), Required: true},
	}
}

func dockerHostFlag() cli.Flag {
	return &cli.StringFlag{Name: "docker-host", Usage: "this node's local Docker socket (unix:// only; default: DOCKER_HOST or the standard socket)", EnvVars: env("docker-host")}
}

// localDocker opens the node's local engine. Forge never talks to Docker
// over TCP, so only unix sockets are accepted.
func localDocker(host string) (*client.Client, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, err
	}
	if proto, _, _ := splitHost(cli.DaemonHost()); proto != "unix" {
		cli.Close()
		return nil, fmt.Errorf("--docker-host %s: Forge uses the node's local socket only (unix://...), never Docker over TCP", cli.DaemonHost())
	}
	return cli, nil
}

func splitHost(h string) (proto, addr string, ok bool) {
	for i := 0; i+3 <= len(h); i++ {
		if h[i:i+3] == "://" {
			return h[:i], h[i+3:], true
		}
	}
	return "", h, false
}

// loadTLS reads the --tls-ca, --tls-cert and --tls-key files.
func loadTLS(c *cli.Context) (*x509.CertPool, tls.Certificate, error) {
	pool, err := wire.LoadCAPool(c.Path("tls-ca"))
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("--tls-ca: %w", err)
	}
	pair, err := wire.LoadKeyPair(c.Path("tls-cert"), c.Path("tls-key"))
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	return pool, pair, nil
}

func newLogger(c *cli.Context) *slog.Logger {
	level := slog.LevelInfo
	if c.Bool("debug") {
		level = slog.LevelDebug
	}
	// No secret reaches a log: a failed download's error holds its link.
	return slog.New(redact.Handler(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level})))
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "run the agent of this node: dial the coordinator and run the builds swarm places here",
		Description: "The agent runs on every swarm node (a global service; see deploy/stack.yml). It dials\n" +
			"the coordinator over mutual TLS, and on the coordinator's request puts the executor into\n" +
			"a build container on this node and starts it through this node's local Docker socket.\n" +
			"It touches only containers that carry forge labels, and never exposes Docker.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "coordinator", Usage: "host:port of the coordinator's agent listener", EnvVars: env("coordinator"), Required: true},
			&cli.StringFlag{Name: "server-name", Usage: "name to verify in the coordinator's certificate (default: the host of --coordinator)", EnvVars: env("server-name")},
			dockerHostFlag(),
			&cli.BoolFlag{Name: "debug", Usage: "log more", EnvVars: env("debug")},
		}, tlsFlags("agent")...),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("agent takes no arguments (got %q)", c.Args().First())
			}
			addr := c.String("coordinator")
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return fmt.Errorf("--coordinator %q: want host:port: %w", addr, err)
			}
			serverName := c.String("server-name")
			if serverName == "" {
				serverName = host
			}
			pool, pair, err := loadTLS(c)
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
			err = agent.Run(ctx, agent.Config{
				Coordinator: addr,
				TLS:         wire.ClientConfig(pool, pair, serverName),
				Docker:      docker,
				Logger:      newLogger(c),
			})
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
}
