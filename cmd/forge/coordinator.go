package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	units "github.com/docker/go-units"
	"github.com/urfave/cli/v2"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/daemon"
	"github.com/forge-ci/forge/coordinator/github"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/secrets"
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
			&cli.StringFlag{Name: "listen", Usage: "HTTP address: webhooks, API, UI", Value: ":8080", EnvVars: env("listen")},
			&cli.StringFlag{Name: "agent-listen", Usage: "address agents dial (mutual TLS)", Value: ":7443", EnvVars: env("agent-listen")},
			&cli.StringFlag{Name: "metrics-listen", Usage: "address of GET /metrics (Prometheus); \"\" serves none", Value: "127.0.0.1:9090", EnvVars: env("metrics-listen")},
			&cli.PathFlag{Name: "webhook-secret-file", Usage: "file holding the GitHub webhook secret (required)", EnvVars: env("webhook-secret-file")},
			&cli.Int64Flag{Name: "github-app-id", Usage: "the GitHub App's id (App settings, About)", EnvVars: env("github-app-id")},
			&cli.PathFlag{Name: "github-key-file", Usage: "the GitHub App's private key (PEM)", EnvVars: env("github-key-file")},
			&cli.StringFlag{Name: "github-api", Usage: "GitHub API base URL (GitHub Enterprise: https://HOST/api/v3/)", Value: github.DefaultAPI, EnvVars: env("github-api")},
			&cli.PathFlag{Name: "data", Usage: "state folder (database, logs)", Value: "./forge-data", EnvVars: env("data")},
			&cli.StringFlag{Name: "public-url", Usage: "base URL of this coordinator as browsers and GitHub see it: links in statuses, the sign-in callback", EnvVars: env("public-url")},
			&cli.StringFlag{Name: "github-web", Usage: "GitHub's web base, for sign-in (GitHub Enterprise: https://HOST)", Value: github.DefaultWeb, EnvVars: env("github-web")},
			&cli.StringFlag{Name: "github-client-id", Usage: "the GitHub App's client id, for sign-in with GitHub (App settings, About)", EnvVars: env("github-client-id")},
			&cli.PathFlag{Name: "github-client-secret-file", Usage: "file holding the GitHub App's client secret, for sign-in", EnvVars: env("github-client-secret-file")},
			&cli.StringSliceFlag{Name: "admins", Usage: "GitHub logins of Forge admins (agents, metrics), comma-separated", EnvVars: env("admins")},
			&cli.PathFlag{Name: "admin-token-file", Usage: "file holding a bearer token with every right, for scripts and the CLI", EnvVars: env("admin-token-file")},
			&cli.PathFlag{Name: "session-key-file", Usage: "file holding the key that signs sign-in cookies (64 hex characters); default: made in --data", EnvVars: env("session-key-file")},
			&cli.BoolFlag{Name: "require-sign-in", Usage: "show nothing, not even public repositories' builds, without a credential", EnvVars: env("require-sign-in")},
			forgexecFlag(),
			dockerHostFlag(),
			&cli.BoolFlag{Name: "allow-ports", Usage: "let .forge.yml publish ports", EnvVars: env("allow-ports")},
			&cli.StringFlag{Name: "build-memory", Usage: "memory limit of every build that asks for none (4GiB, 512m)", Value: config.FormatMemory(plan.DefaultMemory), EnvVars: env("build-memory")},
			&cli.StringFlag{Name: "build-cpus", Usage: "CPU limit of every build that asks for none (2, 0.5)", Value: config.FormatCPUs(plan.DefaultNanoCPUs), EnvVars: env("build-cpus")},
			&cli.Int64Flag{Name: "build-pids", Usage: "process limit of every build (a fork bomb stops there)", Value: plan.DefaultPids, EnvVars: env("build-pids")},
			&cli.StringFlag{Name: "build-max-memory", Usage: "most memory a .forge.yml may ask for (resources.memory)", Value: config.FormatMemory(plan.DefaultMaxMemory), EnvVars: env("build-max-memory")},
			&cli.StringFlag{Name: "build-max-cpus", Usage: "most CPUs a .forge.yml may ask for (resources.cpus)", Value: config.FormatCPUs(plan.DefaultMaxNanoCPUs), EnvVars: env("build-max-cpus")},
			&cli.DurationFlag{Name: "build-max-timeout", Usage: "longest timeout a .forge.yml may ask for (1h to 24h)", Value: plan.DefaultMaxTimeout, EnvVars: env("build-max-timeout")},
			&cli.BoolFlag{Name: "builds-on-managers", Usage: "let builds run on manager nodes even when the swarm has a ready worker", EnvVars: env("builds-on-managers")},
			&cli.StringFlag{Name: "require-approval", Usage: "which pull requests wait for a person with write permission to approve them: forks (from a fork, or by an author who is not an owner, member or collaborator), all, or none", Value: string(coordinator.ApproveForks), EnvVars: env("require-approval")},
			&cli.IntFlag{Name: "max-builds", Usage: "builds that run at once, all repositories; the others stay queued, in order (0: no bound)", Value: 10, EnvVars: env("max-builds")},
			&cli.IntFlag{Name: "max-builds-per-repo", Usage: "builds of one repository that run at once (0: no bound)", EnvVars: env("max-builds-per-repo")},
			&cli.PathFlag{Name: "tls-ca-key", Usage: "the forge CA's key: sign certificates for agents that join with the token, and renew them", EnvVars: env("tls-ca-key")},
			&cli.PathFlag{Name: "join-token-file", Usage: "file holding the join token agents present to get their first certificate (forge certs join-token); read again at every join, so a new file rotates it", EnvVars: env("join-token-file")},
			&cli.DurationFlag{Name: "agent-cert-ttl", Usage: "how long the certificates signed for agents are valid; agents renew at two thirds", Value: wire.DefaultAgentCertTTL, EnvVars: env("agent-cert-ttl")},
			&cli.BoolFlag{Name: "debug", Usage: "log more", EnvVars: env("debug")},
			&cli.StringFlag{Name: "max-log-size", Usage: "cut each build's log past this size (64MiB, 1GiB); 0 keeps all", Value: "64MiB", EnvVars: env("max-log-size")},
			&cli.StringFlag{Name: "retain", Usage: "delete final builds' logs and artifacts older than this (90d, 720h); 0 keeps them forever", Value: "90d", EnvVars: env("retain")},
			&cli.StringFlag{Name: "max-artifacts-size", Usage: "most bytes of artifacts kept per build (1GiB, 256MiB); the file that passes it is cut", Value: "1GiB", EnvVars: env("max-artifacts-size")},
			&cli.PathFlag{Name: "secrets-key-file", Usage: "file holding the key that seals repositories' secrets and people's GitHub tokens: 64 hex characters (openssl rand -hex 32); without it secrets are disabled and tokens are stored in clear", EnvVars: env("secrets-key-file")},
			&cli.PathFlag{Name: "secrets-previous-key-file", Usage: "the key --secrets-key-file replaces: at start every secret and GitHub token sealed with it is sealed again with the new key, in one transaction (then drop this flag)", EnvVars: env("secrets-previous-key-file")},
			&cli.BoolFlag{Name: "github-statuses", Usage: "report builds to GitHub as commit statuses even where the App may write checks (check runs)", EnvVars: env("github-statuses")},
			&cli.StringFlag{Name: "cache-size", Usage: "bound of the builds' caches kept under --data, all repositories together (10GiB, 500MiB); the least recently used go first; 0 keeps none", Value: "10GiB", EnvVars: env("cache-size")},
		}, tlsFlags("coordinator")...),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("coordinator takes no arguments (got %q)", c.Args().First())
			}
			sandbox, err := sandboxFlags(c)
			if err != nil {
				return err
			}
			mode, err := coordinator.ParseApprovalMode(c.String("require-approval"))
			if err != nil {
				return err
			}
			for _, f := range []string{"max-builds", "max-builds-per-repo"} {
				if c.Int(f) < 0 {
					return fmt.Errorf("--%s %d: want 0 (no bound) or more", f, c.Int(f))
				}
			}
			secret, err := readSecret(c.Path("webhook-secret-file"))
			if err != nil {
				return err
			}
			secretsKey, err := readSecretsKey("secrets-key-file", c.Path("secrets-key-file"))
			if err != nil {
				return err
			}
			previousKey, err := readSecretsKey("secrets-previous-key-file", c.Path("secrets-previous-key-file"))
			if err != nil {
				return err
			}
			if previousKey != nil && secretsKey == nil {
				return errors.New("--secrets-previous-key-file needs --secrets-key-file: the new key to seal the secrets with")
			}
			app, err := githubApp(c)
			if err != nil {
				return err
			}
			access, err := accessFlags(c)
			if err != nil {
				return err
			}
			pool, pair, err := loadTLS(c)
			if err != nil {
				return err
			}
			identity, err := identityFlags(c)
			if err != nil {
				return err
			}
			bounds, err := boundsFlags(c)
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
				AllowPorts: c.Bool("allow-ports"), Sandbox: sandbox, Logger: log, Access: access, Identity: identity,
				RequireApproval: mode, MaxBuilds: c.Int("max-builds"), MaxBuildsPerRepo: c.Int("max-builds-per-repo")}
			cfg.Bounds, cfg.SecretsKey, cfg.SecretsPreviousKey = bounds, secretsKey, previousKey
			if identity.Signer == nil {
				log.Warn("no CA key (--tls-ca-key): agents cannot join with a token nor renew; each needs a certificate from forge certs issue --role agent --node")
			}
			if secretsKey == nil {
				log.Warn("no secrets key (--secrets-key-file): secrets are disabled; builds that name secrets end as error")
			}
			if access.SignIn == nil {
				log.Warn("sign-in with GitHub is not configured (--github-client-id, --github-client-secret-file): only public repositories' builds are shown, and only the admin token acts")
			}
			if app == nil {
				log.Warn("no GitHub App configured (--github-app-id, --github-key-file): webhooks are answered 503 and no builds come from GitHub; forge run and the API work")
			} else {
				cfg.GitHub = &daemon.GitHub{App: app, Secret: secret, PublicURL: c.String("public-url"),
					AppID: c.Int64("github-app-id"), Statuses: c.Bool("github-statuses")}
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

// sandboxFlags reads the --build-* flags; a bad value or an inconsistent
// pair is an error naming the flags.
func sandboxFlags(c *cli.Context) (plan.Sandbox, error) {
	s := plan.DefaultSandbox()
	s.BuildsOnManagers = c.Bool("builds-on-managers")
	for _, f := range []struct {
		name string
		dst  *int64
		pars func(string) (int64, error)
	}{
		{"build-memory", &s.Memory, config.ParseMemory},
		{"build-max-memory", &s.MaxMemory, config.ParseMemory},
		{"build-cpus", &s.NanoCPUs, config.ParseCPUs},
		{"build-max-cpus", &s.MaxNanoCPUs, config.ParseCPUs},
	} {
		n, err := f.pars(c.String(f.name))
		if err != nil {
			return s, fmt.Errorf("--%s: %w", f.name, err)
		}
		*f.dst = n
	}
	switch {
	case s.Memory > s.MaxMemory:
		return s, fmt.Errorf("--build-memory %s is above --build-max-memory %s", config.FormatMemory(s.Memory), config.FormatMemory(s.MaxMemory))
	case s.NanoCPUs > s.MaxNanoCPUs:
		return s, fmt.Errorf("--build-cpus %s is above --build-max-cpus %s", config.FormatCPUs(s.NanoCPUs), config.FormatCPUs(s.MaxNanoCPUs))
	}
	if s.Pids = c.Int64("build-pids"); s.Pids < 1 {
		return s, fmt.Errorf("--build-pids %d: must be at least 1", s.Pids)
	}
	// A config without a timeout gets the config's default, which the
	// maximum must allow.
	if s.MaxTimeout = c.Duration("build-max-timeout"); s.MaxTimeout < config.DefaultTimeout || s.MaxTimeout > config.MaxTimeout {
		return s, fmt.Errorf("--build-max-timeout %v: must be from %v (a config's default timeout) to %v", s.MaxTimeout, config.DefaultTimeout, config.MaxTimeout)
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("--build-*: %w", err)
	}
	return s, nil
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

// accessFlags reads who may use the HTTP edge; half a sign-in
// configuration is an error naming the missing flag.
func accessFlags(c *cli.Context) (daemon.Access, error) {
	a := daemon.Access{PublicURL: strings.TrimRight(c.String("public-url"), "/"), RequireSignIn: c.Bool("require-sign-in")}
	for _, l := range c.StringSlice("admins") {
		for _, l := range strings.Split(l, ",") {
			if l = strings.TrimSpace(l); l != "" {
				a.Admins = append(a.Admins, l)
			}
		}
	}
	if f := c.Path("admin-token-file"); f != "" {
		tok, err := readFileFlag("admin-token-file", f)
		if err != nil {
			return a, err
		}
		if len(tok) < 16 {
			return a, fmt.Errorf("--admin-token-file %s: the token is shorter than 16 characters", f)
		}
		a.AdminToken = tok
	}
	if f := c.Path("session-key-file"); f != "" {
		k, err := daemon.SessionKey(f)
		if err != nil {
			return a, fmt.Errorf("--session-key-file: %w", err)
		}
		a.SessionKey = k
	}
	id, secretFile := c.String("github-client-id"), c.Path("github-client-secret-file")
	switch {
	case id == "" && secretFile == "":
		return a, nil
	case id == "":
		return a, errors.New("--github-client-secret-file is set but --github-client-id is not")
	case secretFile == "":
		return a, errors.New("--github-client-id is set but --github-client-secret-file is not")
	case a.PublicURL == "":
		return a, errors.New("sign-in with GitHub (--github-client-id) needs --public-url: GitHub sends browsers back to <public-url>/login/callback")
	}
	secret, err := readFileFlag("github-client-secret-file", secretFile)
	if err != nil {
		return a, err
	}
	si, err := github.NewSignIn(id, secret, c.String("github-web"), c.String("github-api"), nil)
	if err != nil {
		return a, err
	}
	a.SignIn = si
	return a, nil
}

// readFileFlag reads a one-line secret from the file of flag name.
func readFileFlag(name, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", name, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("--%s %s is empty", name, path)
	}
	return s, nil
}

// readSecretsKey reads a key file given with --flag; nil without one
// (for --secrets-key-file: secrets are disabled). A bad file is refused,
// naming the flag: a coordinator that started with a wrong key could not
// open the secrets it sealed.
func readSecretsKey(flag, path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	k, err := secrets.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, path, err)
	}
	return k, nil
}

// readSecret reads the webhook secret; the coordinator does not start
// without one, since unsigned webhooks would let anyone start builds.
func readSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("--webhook-secret-file is required: the coordinator checks every webhook's signature with it (GitHub App settings, Webhook secret)")
	}
	s, err := readFileFlag("webhook-secret-file", path)
	return []byte(s), err
}

// identityFlags reads how agents get their certificates: the CA (and its
// key, to sign them), the join token and their lifetime.
func identityFlags(c *cli.Context) (daemon.Identity, error) {
	var id daemon.Identity
	caPEM, err := os.ReadFile(c.Path("tls-ca"))
	if err != nil {
		return id, fmt.Errorf("--tls-ca: %w", err)
	}
	if id.CA, err = wire.ParseCertPEM(caPEM); err != nil {
		return id, fmt.Errorf("--tls-ca %s: %w", c.Path("tls-ca"), err)
	}
	id.AgentCertTTL = c.Duration("agent-cert-ttl")
	if id.AgentCertTTL < time.Minute/2 {
		return id, fmt.Errorf("--agent-cert-ttl %s: want at least 30s (agents renew at two thirds of it)", id.AgentCertTTL)
	}
	keyFile, tokenFile := c.Path("tls-ca-key"), c.Path("join-token-file")
	if keyFile == "" {
		if tokenFile != "" {
			return id, errors.New("--join-token-file needs --tls-ca-key: the coordinator signs the certificates of agents that join")
		}
		return id, nil
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return id, fmt.Errorf("--tls-ca-key: %w", err)
	}
	if id.Signer, err = wire.LoadCA(caPEM, keyPEM); err != nil {
		return id, fmt.Errorf("--tls-ca-key %s with --tls-ca %s: %w", keyFile, c.Path("tls-ca"), err)
	}
	if tokenFile != "" {
		tok, err := readFileFlag("join-token-file", tokenFile)
		if err != nil {
			return id, err
		}
		if len(tok) < 32 {
			return id, fmt.Errorf("--join-token-file %s: the token is shorter than 32 characters (forge certs join-token makes one)", tokenFile)
		}
		id.JoinTokenFile = tokenFile
	}
	return id, nil
}

// boundsFlags reads --max-log-size, --retain, --max-artifacts-size and
// --cache-size.
func boundsFlags(c *cli.Context) (daemon.Bounds, error) {
	var b daemon.Bounds
	var err error
	if v := strings.TrimSpace(c.String("max-log-size")); v != "0" {
		if b.MaxLogSize, err = sizeFlag("max-log-size", v, "a size such as 64MiB or 1GiB, or 0 for no limit"); err != nil {
			return b, err
		}
	}
	if b.Retain, err = parseRetain(c.String("retain")); err != nil {
		return b, fmt.Errorf("--retain: %w", err)
	}
	if b.MaxArtifactsSize, err = sizeFlag("max-artifacts-size", strings.TrimSpace(c.String("max-artifacts-size")), "a size such as 1GiB or 256MiB"); err != nil {
		return b, err
	}
	b.CacheSize = -1 // 0: none
	if v := strings.TrimSpace(c.String("cache-size")); v != "0" {
		if b.CacheSize, err = sizeFlag("cache-size", v, "a size such as 10GiB or 500MiB, or 0 to keep no caches"); err != nil {
			return b, err
		}
	}
	return b, nil
}

// sizeFlag reads v, the value of --name, as a size above 0; want says
// what the flag takes.
func sizeFlag(name, v, want string) (int64, error) {
	n, err := units.RAMInBytes(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--%s %q: want %s", name, v, want)
	}
	return n, nil
}

// parseRetain reads a duration in days ("90d") or as Go writes it
// ("720h"); "0" keeps forever.
func parseRetain(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "0" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 || n > 100*365 {
			return 0, fmt.Errorf("%q: want a whole number of days such as 90d, or 0 to keep forever", v)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a duration such as 90d or 720h, or 0 to keep forever", v)
	}
	return d, nil
}
