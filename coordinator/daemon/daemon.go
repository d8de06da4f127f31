// Package daemon wires a whole coordinator from one Config: the store,
// the logs, the agent hub, the build lifecycle, GitHub and the HTTP API.
// It is the one place that knows them all; `forge coordinator`,
// `forge run` and the tests use it.
package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/system"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/artifacts"
	"github.com/forge-ci/forge/coordinator/auth"
	"github.com/forge-ci/forge/coordinator/caches"
	"github.com/forge-ci/forge/coordinator/github"
	"github.com/forge-ci/forge/coordinator/lifecycle"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/coordinator/secrets"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/coordinator/web"
	"github.com/forge-ci/forge/wire"
)

// Docker is the part of the manager's Engine API the coordinator uses,
// through the manager's local socket. *client.Client satisfies it.
type Docker interface {
	coordinator.Swarm
	agents.SwarmNodes
	lifecycle.Nodes
	Info(ctx context.Context) (system.Info, error)
}

// Config is the coordinator's configuration (the flags of `forge
// coordinator`, already loaded).
type Config struct {
	// TLS is the agent listener's configuration (wire.ServerConfig).
	TLS *tls.Config
	// Session tunes the agents' sessions; nil takes wire's defaults.
	Session *wire.SessionConfig
	// DataDir holds the database and the logs.
	DataDir string
	// Executor is the forgexec binary sent to agents.
	Executor []byte
	// AllowPorts lets configs publish ports.
	AllowPorts bool
	// Sandbox is what builds are allowed (the --build-* flags); zero
	// fields take plan.DefaultSandbox's values.
	Sandbox plan.Sandbox
	// RequireApproval is which pull requests wait for approval
	// (--require-approval; "" is coordinator.ApproveForks).
	RequireApproval coordinator.ApprovalMode
	// MaxBuilds and MaxBuildsPerRepo bound the builds that run at once
	// (--max-builds, --max-builds-per-repo; 0: no bound).
	MaxBuilds, MaxBuildsPerRepo int
	Logger                      *slog.Logger
	// Lifecycle settings; zero values take the lifecycle's defaults.
	LandTimeout, AgentWait time.Duration
	// GitHub, when set, takes webhooks and reports to GitHub; without it
	// webhooks are answered 503.
	GitHub *GitHub
	// OnChange, when set, is told of every state change of a build, after
	// GitHub; OnDispatch of every build's create -> started time, after
	// the metrics (tests and benchmarks watch with them).
	OnChange   func(b *coordinator.Build)
	OnDispatch func(d time.Duration)
	// Access is the front door: who may use the HTTP API and pages.
	Access Access
	// Identity is how agents get and keep their certificates.
	Identity Identity
	// Bounds limit what the coordinator keeps (issue 15).
	Bounds Bounds
	// SecretsKey seals repositories' secrets and people's GitHub tokens
	// (--secrets-key-file, secrets.KeySize bytes); nil disables secrets:
	// none can be set, a trusted build that names some ends as error
	// saying so, and tokens are stored in clear.
	SecretsKey []byte
	// SecretsPreviousKey, with SecretsKey, is the key it replaces: New
	// seals again under SecretsKey whatever was sealed with it
	// (secrets.Keeper.Rekey), or fails naming a secret neither opens.
	SecretsPreviousKey []byte
}

// Bounds limit what the coordinator keeps; zero values bound nothing.
type Bounds struct {
	// MaxLogSize cuts each build's log past this many bytes
	// (--max-log-size).
	MaxLogSize int64
	// Retain is how long final builds' logs and artifacts are kept
	// (--retain).
	Retain time.Duration
	// MaxArtifactsSize bounds each build's artifacts
	// (--max-artifacts-size; 0: lifecycle.DefaultMaxArtifactsSize).
	MaxArtifactsSize int64
	// CacheSize bounds the builds' caches, all repositories together
	// (--cache-size); 0 takes caches.DefaultSize, < 0 keeps no caches.
	CacheSize int64
}

// Identity configures the agents' certificates (DESIGN §7, PROTOCOL.md
// §6.6, §6.7).
type Identity struct {
	// CA is the forge CA's certificate, watched for expiry.
	CA *x509.Certificate
	// Signer, the CA with its key (--tls-ca-key), signs certificates for
	// joining and renewing agents; nil: agents bring certificates made by
	// hand, and cannot renew them.
	Signer *wire.CA
	// JoinTokenFile holds the join token, read again at every join so
	// that writing a new one rotates it; "" refuses joins.
	JoinTokenFile string
	// AgentCertTTL is how long signed certificates are valid
	// (wire.DefaultAgentCertTTL when zero).
	AgentCertTTL time.Duration
}

// Access configures who may use the coordinator's HTTP edge (DESIGN §3).
// Its zero value serves only public repositories' builds, to anyone.
type Access struct {
	// SignIn, when set, lets people sign in with GitHub (github.SignIn).
	SignIn auth.GitHub
	// PublicURL is the coordinator's base URL for browsers; needed with
	// SignIn (the callback is under it).
	PublicURL string
	// SessionKey signs cookies; nil takes (and on first start makes) the
	// data folder's session-key file.
	SessionKey []byte
	// AdminToken is a bearer token with every right; "" for none.
	AdminToken string
	// Admins are the GitHub logins of Forge admins.
	Admins        []string
	RequireSignIn bool
}

// GitHub is the GitHub App side of a coordinator.
type GitHub struct {
	App       github.GitHub
	Secret    []byte // the webhook secret
	PublicURL string // base of the links in check runs and statuses
	// AppID is the App's id: GitHub's re-runs of other apps' check runs
	// are ignored. 0 takes every app's.
	AppID int64
	// Statuses reports with commit statuses even where the App may write
	// checks (--github-statuses).
	Statuses bool
}

// Coordinator is a whole coordinator.
type Coordinator struct {
	Store     *store.Store
	Logs      *logs.Store
	Artifacts *artifacts.Store
	Agents    *agents.Hub
	Builds    *lifecycle.Runner
	Metrics   *web.Metrics
	API       *web.API
	Caches    *caches.Store // nil when the coordinator keeps none
	LocalNode string        // the swarm node the coordinator runs on

	forge    *github.Forge // nil without GitHub
	bounds   Bounds
	reporter *github.Reporter
	log      *slog.Logger
	certs    []watchedCert

	closeOnce sync.Once
	closeErr  error
}

// New checks that the engine is a swarm manager and assembles a
// coordinator. Close releases it if Serve is never called.
func New(ctx context.Context, cfg Config, docker Docker) (*Coordinator, error) {
	if cfg.TLS == nil {
		return nil, errors.New("coordinator: no TLS configuration for the agent listener")
	}
	if len(cfg.Executor) == 0 {
		return nil, errors.New("coordinator: no executor (forgexec) binary")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	info, err := docker.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("coordinator: docker info: %w", err)
	}
	if !info.Swarm.ControlAvailable {
		return nil, fmt.Errorf("coordinator: %w (swarm is %s); run `docker swarm init` (on one machine: docker swarm init --advertise-addr 127.0.0.1)",
			coordinator.ErrNotManager, orInactive(string(info.Swarm.LocalNodeState)))
	}
	exe, err := coordinator.NewExecutor(cfg.Executor)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("coordinator: data folder: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "forge.db"))
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	instance, err := instanceID(cfg.DataDir)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}

	c := &Coordinator{Store: st, Logs: &logs.Store{Dir: filepath.Join(cfg.DataDir, "logs"), MaxSize: cfg.Bounds.MaxLogSize}, LocalNode: info.Swarm.NodeID, log: log, bounds: cfg.Bounds}
	c.Artifacts = &artifacts.Store{Dir: filepath.Join(cfg.DataDir, "artifacts")}
	if c.Caches, err = openCaches(ctx, cfg, st, c.Logs, log); err != nil {
		st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	ac := agents.Config{TLS: cfg.TLS, Session: cfg.Session, Logs: c.Logs, Record: st, Builds: st, Revocations: st,
		Log: log.With("part", "agents"), Verify: &agents.SwarmVerifier{Docker: docker, LocalNodeID: info.Swarm.NodeID}}
	if c.Caches != nil {
		ac.Caches = c.Caches
	}
	if id := cfg.Identity; id.Signer != nil {
		ac.Issuer = &agents.Issuer{CA: id.Signer, TTL: id.AgentCertTTL}
		if id.JoinTokenFile != "" {
			ac.Issuer.Token = agents.TokenFile(id.JoinTokenFile)
		}
	}
	c.Agents = agents.New(ac)
	var keeper coordinator.Secrets // nil, not a nil *secrets.Keeper, without a key
	if cfg.SecretsKey != nil {
		k, err := secrets.New(cfg.SecretsKey, st)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("coordinator: --secrets-key-file: %w", err)
		}
		keeper = k
		if cfg.SecretsPreviousKey != nil {
			res, err := k.Rekey(ctx, cfg.SecretsPreviousKey)
			if err != nil {
				st.Close()
				return nil, fmt.Errorf("coordinator: --secrets-previous-key-file: %w", err)
			}
			log.Info("sealed again with the new secrets key", "secrets", res.Secrets, "tokens", res.Tokens,
				"tokens_forgotten", strings.Join(res.Dropped, ","))
		}
	} else if cfg.SecretsPreviousKey != nil {
		st.Close()
		return nil, errors.New("coordinator: a previous secrets key without a secrets key to seal with")
	}
	c.Metrics = web.NewMetrics(st, c.Agents)
	c.certs = watchedCerts(cfg)
	if err := c.Metrics.Certificates(c.certOf("CA"), c.certOf("coordinator")); err != nil {
		st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	if err := c.Metrics.LogsBytes(c.Logs.Usage); err != nil {
		st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	var webhook http.Handler = noApp{}
	if cfg.GitHub != nil {
		c.reporter = &github.Reporter{App: cfg.GitHub.App, PublicURL: cfg.GitHub.PublicURL, Log: log.With("part", "github"),
			Checks: st, Logs: c.Logs, Statuses: cfg.GitHub.Statuses}
	}
	c.Builds = lifecycle.New(lifecycle.Config{Swarm: docker, Store: st, Logs: c.Logs, Agents: c.Agents, Executor: exe,
		Instance: instance, Log: log.With("part", "builds"), AllowPorts: cfg.AllowPorts, Sandbox: cfg.Sandbox, Nodes: docker,
		LandTimeout: cfg.LandTimeout, AgentWait: cfg.AgentWait,
		MaxBuilds: cfg.MaxBuilds, MaxBuildsPerRepo: cfg.MaxBuildsPerRepo, Secrets: keeper,
		Artifacts: c.Artifacts, MaxArtifactsSize: cfg.Bounds.MaxArtifactsSize,
		Resume: func(ctx context.Context, b *coordinator.Build) (coordinator.Request, error) {
			if c.forge == nil {
				return coordinator.Request{}, errors.New("no GitHub App configured to fetch its source from")
			}
			return c.forge.Resume(ctx, b)
		},
		OnChange: changes(c.reporter, cfg.OnChange), Caches: buildCaches(c.Caches),
		OnDispatch: func(d time.Duration) {
			c.Metrics.Dispatch.Observe(d.Seconds())
			if cfg.OnDispatch != nil {
				cfg.OnDispatch(d)
			}
		}})
	if cfg.GitHub != nil {
		q := github.NewQueue(0)
		c.forge = &github.Forge{App: cfg.GitHub.App, Builds: c.Builds, Reporter: c.reporter, Queue: q, Log: log.With("part", "github"),
			RequireApproval: cfg.RequireApproval, Records: st}
		webhook = &github.Webhook{Secret: cfg.GitHub.Secret, Deliveries: st, Queue: q, Log: log.With("part", "webhook"),
			AppID: cfg.GitHub.AppID, Records: st}
	}
	front, err := frontDoor(cfg, st, keeper)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	var reruns web.Rerunner // none without GitHub, where sources come from
	if c.forge != nil {
		reruns = c.forge
	}
	c.API, err = web.New(web.Config{Builds: c.Builds, Store: st, Logs: c.Logs, Agents: c.Agents, Webhook: webhook,
		Auth: front, Metrics: c.Metrics.Handler(), Log: log.With("part", "web"), Retain: cfg.Bounds.Retain, Artifacts: c.Artifacts, Secrets: keeper,
		Reruns: reruns})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	return c, nil
}

// openCaches opens the builds' caches under the data folder, unless
// Bounds.CacheSize turns them off.
func openCaches(ctx context.Context, cfg Config, st *store.Store, notes caches.Notes, log *slog.Logger) (*caches.Store, error) {
	size := cfg.Bounds.CacheSize
	switch {
	case size < 0:
		return nil, nil
	case size == 0:
		size = caches.DefaultSize
	}
	return caches.Open(ctx, filepath.Join(cfg.DataDir, "caches"), size, st, notes, log.With("part", "caches"))
}

// buildCaches is the lifecycle's view of the caches: none, not a nil
// *caches.Store in an interface.
func buildCaches(c *caches.Store) coordinator.Caches {
	if c == nil {
		return nil
	}
	return c
}

// frontDoor is the coordinator's sign-in and access rules; keeper, when
// there is a secrets key, also seals people's GitHub tokens.
func frontDoor(cfg Config, st *store.Store, keeper coordinator.Secrets) (*auth.Auth, error) {
	ac := cfg.Access
	if ac.SignIn != nil && ac.PublicURL == "" {
		return nil, errors.New("sign-in with GitHub needs the public URL (--public-url): GitHub sends browsers back to it")
	}
	key := ac.SessionKey
	if key == nil {
		var err error
		if key, err = SessionKey(filepath.Join(cfg.DataDir, "session-key")); err != nil {
			return nil, err
		}
	}
	tokens, _ := keeper.(coordinator.TokenSealer)
	return auth.New(auth.Config{Store: st, GitHub: ac.SignIn, PublicURL: ac.PublicURL, Key: key,
		AdminToken: ac.AdminToken, Admins: ac.Admins, RequireSignIn: ac.RequireSignIn, Tokens: tokens})
}

// SessionKey reads the cookie key kept at path (64 hex characters),
// making it on first use.
func SessionKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		var k [32]byte
		rand.Read(k[:])
		if err := os.WriteFile(path, []byte(hex.EncodeToString(k[:])+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("session key: %w", err)
		}
		return k[:], nil
	}
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) < 32 {
		return nil, fmt.Errorf("session key %s: want at least 64 hex characters", path)
	}
	return k, nil
}

// changes is the lifecycle's OnChange: GitHub's check runs or statuses,
// then the caller's own.
func changes(r *github.Reporter, also func(*coordinator.Build)) func(*coordinator.Build) {
	return func(b *coordinator.Build) {
		if r != nil {
			r.BuildChanged(b)
		}
		if also != nil {
			also(b)
		}
	}
}

// noApp answers webhooks when no GitHub App is configured.
type noApp struct{}

func (noApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "this Forge coordinator has no GitHub App credentials (--github-app-id, --github-key-file): webhooks cannot start builds", http.StatusServiceUnavailable)
}

// instanceID reads the coordinator's instance id from the data folder,
// making one on first start: it survives restarts with the data.
func instanceID(dir string) (string, error) {
	path := filepath.Join(dir, "instance")
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		return string(b), nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var b [8]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	return id, os.WriteFile(path, []byte(id), 0o600)
}

func orInactive(s string) string {
	if s == "" {
		return "inactive"
	}
	return s
}

// Listeners are where a coordinator serves. Agents is required; a nil
// HTTP or Metrics listener serves nothing there.
type Listeners struct {
	// HTTP faces GitHub and people: webhooks, the API, the pages.
	HTTP net.Listener
	// Agents takes the agents' mutually authenticated sessions.
	Agents net.Listener
	// Metrics serves GET /metrics; on loopback by default, since the
	// counts say what the swarm runs.
	Metrics net.Listener
}

// Serve recovers the builds a previous run left in swarm, then serves on
// l and handles GitHub's events until ctx ends. It closes the coordinator
// when it returns. Builds keep running in swarm.
func (c *Coordinator) Serve(ctx context.Context, l Listeners) error {
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	if c.reporter != nil {
		// Before Recover: it may finish builds, whose statuses queue.
		wg.Go(func() { c.reporter.Run(ctx) })
	}
	if err := c.Builds.Recover(ctx); err != nil {
		return err
	}
	if c.forge != nil {
		wg.Go(func() { c.forge.Run(ctx) })
	}
	wg.Go(func() { c.watchExpiry(ctx) })
	wg.Go(func() { c.retain(ctx) })
	errs := make(chan error, 3)
	wg.Go(func() {
		errs <- c.Agents.Serve(ctx, l.Agents)
		cancel()
	})
	serveHTTP := func(ln net.Listener, h http.Handler) {
		srv := httpServer(h)
		wg.Go(func() {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errs <- err
			cancel()
		})
		wg.Go(func() {
			<-ctx.Done()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			if err := srv.Shutdown(sctx); err != nil {
				srv.Close() // followers of live logs do not end by themselves
			}
		})
	}
	if l.HTTP != nil {
		serveHTTP(l.HTTP, c.API.Handler())
	}
	if l.Metrics != nil {
		serveHTTP(l.Metrics, c.Metrics.Handler())
	}
	c.log.Info("coordinator serving", "agents", l.Agents.Addr().String(), "http", addrOf(l.HTTP),
		"metrics", addrOf(l.Metrics), "node", c.LocalNode)
	<-ctx.Done()
	c.Builds.Close()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// Close releases the store and the log files.
func (c *Coordinator) Close() error {
	c.closeOnce.Do(func() {
		c.Builds.Close()
		c.closeErr = errors.Join(c.Logs.Close(), c.Store.Close())
	})
	return c.closeErr
}

// watchedCert is a certificate the coordinator warns about before it
// expires, and shows in /metrics.
type watchedCert struct {
	name string
	cert *x509.Certificate
}

// certOf returns the watched certificate called name, nil when none.
func (c *Coordinator) certOf(name string) func() *x509.Certificate {
	return func() *x509.Certificate {
		for _, w := range c.certs {
			if w.name == name {
				return w.cert
			}
		}
		return nil
	}
}

func watchedCerts(cfg Config) []watchedCert {
	var out []watchedCert
	if ca := cfg.Identity.CA; ca != nil {
		out = append(out, watchedCert{"CA", ca})
	} else if cfg.Identity.Signer != nil {
		out = append(out, watchedCert{"CA", cfg.Identity.Signer.Cert})
	}
	if len(cfg.TLS.Certificates) > 0 {
		if leaf := cfg.TLS.Certificates[0].Leaf; leaf != nil {
			out = append(out, watchedCert{"coordinator", leaf})
		} else if leaf, err := x509.ParseCertificate(cfg.TLS.Certificates[0].Certificate[0]); err == nil {
			out = append(out, watchedCert{"coordinator", leaf})
		}
	}
	return out
}

// certWarning is how long before expiry the CA's and the coordinator's
// certificates are warned about.
const certWarning = 30 * 24 * time.Hour

// watchExpiry warns, at start and then daily, about the CA's and the
// coordinator's certificates when they have under 30 days left.
func (c *Coordinator) watchExpiry(ctx context.Context) {
	t := time.NewTicker(24 * time.Hour)
	defer t.Stop()
	for {
		for _, w := range c.certs {
			if left := time.Until(w.cert.NotAfter); left < certWarning {
				c.log.Warn("certificate expires soon: issue a new one (README, Rotating certificates)", "certificate", w.name,
					"subject", w.cert.Subject.CommonName, "expires", w.cert.NotAfter, "left", left.Round(time.Minute))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
