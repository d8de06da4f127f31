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
	"path/filepath"
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

// agentTLSFlags are the agent's TLS and identity flags. Unlike the
// coordinator's, its certificate is optional: it can join for one.
func agentTLSFlags() []cli.Flag {
	return []cli.Flag{
		&cli.PathFlag{Name: "tls-ca", Usage: "the forge CA certificate (forge certs init)", EnvVars: env("tls-ca"), Required: true},
		&cli.PathFlag{Name: "tls-cert", Usage: "this node's agent certificate, made by hand (forge certs issue --role agent --node <swarm node id>); with --tls-key. Not needed with --join-token-file", EnvVars: env("tls-cert")},
		&cli.PathFlag{Name: "tls-key", Usage: "the private key of --tls-cert", EnvVars: env("tls-key")},
		&cli.PathFlag{Name: "join-token-file", Usage: "file holding the cluster's join token (forge certs join-token): the agent joins with it for a short-lived certificate of its node, and renews that; read again at every join", EnvVars: env("join-token-file")},
		&cli.PathFlag{Name: "state-dir", Usage: "folder that keeps the agent's key and certificate (" + agent.StateFile + ", mode 0600), so a restart needs no join token", EnvVars: env("state-dir")},
	}
}

// agentIdentity reads the agent's TLS and identity flags: the TLS
// configuration that verifies the coordinator at serverName (with the
// certificate of --tls-cert, if given), the join token's reader, and the
// state folder. It needs a way to a certificate: --tls-cert and
// --tls-key, --join-token-file, or a --state-dir that holds one.
func agentIdentity(c *cli.Context, serverName string) (*tls.Config, func() (string, error), string, error) {
	pool, err := wire.LoadCAPool(c.Path("tls-ca"))
	if err != nil {
		return nil, nil, "", fmt.Errorf("--tls-ca: %w", err)
	}
	cfg := wire.JoinConfig(pool, serverName)
	certFile, keyFile := c.Path("tls-cert"), c.Path("tls-key")
	switch {
	case certFile != "" && keyFile == "":
		return nil, nil, "", errors.New("--tls-cert needs --tls-key, the certificate's private key")
	case certFile == "" && keyFile != "":
		return nil, nil, "", errors.New("--tls-key needs --tls-cert, the certificate of that key")
	case certFile != "":
		pair, err := wire.LoadKeyPair(certFile, keyFile)
		if err != nil {
			return nil, nil, "", fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	var token func() (string, error)
	if path := c.Path("join-token-file"); path != "" {
		// Read now to report a bad flag at once, and at every join,
		// so that a rotated token is the one sent.
		if _, err := readFileFlag("join-token-file", path); err != nil {
			return nil, nil, "", err
		}
		token = func() (string, error) { return readFileFlag("join-token-file", path) }
	}
	stateDir := c.Path("state-dir")
	if certFile == "" && token == nil {
		if stateDir == "" {
			return nil, nil, "", errors.New("the agent needs a certificate: give --join-token-file (with --state-dir to keep it across restarts), or --tls-cert and --tls-key")
		}
		if _, err := os.Stat(filepath.Join(stateDir, agent.StateFile)); err != nil {
			return nil, nil, "", fmt.Errorf("--state-dir %s holds no certificate (%v); give --join-token-file, or --tls-cert and --tls-key", stateDir, err)
		}
	}
	return cfg, token, stateDir, nil
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
			"It touches only containers that carry forge labels, and never exposes Docker.\n\n" +
			"Each node's agent has a certificate of its own, naming its node. With --join-token-file\n" +
			"the agent makes its key and trades the join token for a short-lived certificate (24 h\n" +
			"by default), which it renews over its session at two thirds of its life; --state-dir\n" +
			"keeps key and certificate so a restart needs no token. Or give a certificate made by\n" +
			"hand with --tls-cert and --tls-key (forge certs issue --role agent --node <node id>).",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "coordinator", Usage: "host:port of the coordinator's agent listener", EnvVars: env("coordinator"), Required: true},
			&cli.StringFlag{Name: "server-name", Usage: "name to verify in the coordinator's certificate (default: the host of --coordinator)", EnvVars: env("server-name")},
			dockerHostFlag(),
			&cli.BoolFlag{Name: "debug", Usage: "log more", EnvVars: env("debug")},
		}, agentTLSFlags()...),
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
			tlsConfig, token, stateDir, err := agentIdentity(c, serverName)
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
				TLS:         tlsConfig,
				JoinToken:   token,
				StateDir:    stateDir,
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
