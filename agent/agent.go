package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/forge-ci/forge/internal/version"
	"github.com/forge-ci/forge/wire"
)

// Config is what Run needs. Coordinator, TLS and Docker are required, and
// a way to a certificate: TLS.Certificates, JoinToken or StateDir.
type Config struct {
	// Coordinator is the host:port of the coordinator's agent listener.
	Coordinator string
	// TLS is the client configuration (wire.ClientConfig, or
	// wire.JoinConfig for an agent that joins): it verifies the
	// coordinator (RootCAs, ServerName, VerifyConnection). Its
	// Certificates[0], if any, is the agent's first certificate, used
	// when StateDir holds none; it must name this node. The agent
	// presents its current certificate through a copy of TLS of its own.
	TLS *tls.Config
	// JoinToken returns the cluster's join token; it is called each time
	// the agent joins (PROTOCOL.md §6.6), so a rotated token file is read
	// again. Nil: the agent never joins, and needs a certificate from TLS
	// or StateDir.
	JoinToken func() (string, error)
	// StateDir keeps the agent's key and certificate (StateFile, 0600)
	// when it joins or renews, so a restart needs no token. "": they are
	// kept in memory only. Created if missing.
	StateDir string
	// Docker is this node's local engine.
	Docker Docker
	// Session tunes yamux; nil takes wire's defaults.
	Session *wire.SessionConfig
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between connection attempts
	// (defaults 250 ms and 30 s, PROTOCOL.md §9).
	MinBackoff, MaxBackoff time.Duration
	// Dial opens the connection to the coordinator; nil uses net.Dialer.
	// Tests put proxies in the middle with it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnSession, when set, is called with each session's id after Welcome
	// and with "" when the session ends; tests and logs use it.
	OnSession func(id string)
	// TempDir is where artifacts and caches wait, as one tar each, before
	// they are sent (PROTOCOL.md §6.5, §6.8); "" is os.TempDir().
	TempDir string
}

// Timeouts of the agent's steps. Streams carry the deadlines of
// PROTOCOL.md §4.4, so a coordinator that goes quiet cannot hold a goroutine.
const (
	dialTimeout      = 10 * time.Second
	helloTimeout     = wire.HelloTimeout
	launchTimeout    = wire.LaunchTimeout
	cancelExtra      = wire.RequestTimeout
	attachTimeout    = wire.RequestTimeout
	exitAckTimeout   = wire.RequestTimeout
	launchableWait   = 30 * time.Second // swarm's failed start of a fresh container
	identityInterval = 2 * time.Second
)

// Agent is one node's agent. Make it with New; Run runs it.
type Agent struct {
	cfg Config
	log *slog.Logger

	nodeID, hostname, engine string

	exec execCache
	// saves are the caches launched builds are to send back
	// (PROTOCOL.md §6.8).
	saves cacheSaves

	// id is the certificate the agent presents; sessionTLS and joinTLS
	// are cfg.TLS with and without it. storeMu orders writes to StateDir.
	id                  identity
	sessionTLS, joinTLS *tls.Config
	storeMu             sync.Mutex

	// acked holds the builds the coordinator has finished with (Exit
	// acknowledged, or done or unknown at Attach). Only Run's goroutine,
	// in which every session's loop runs, touches it.
	acked map[string]bool
	// landed carries the engine's create events from watchEvents to the
	// session loop; watchEvents drops what does not fit.
	landed chan wire.Landed
	// artifactSlots holds a token per artifacts request being served.
	artifactSlots chan struct{}
}

// New checks cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Coordinator == "":
		return nil, errors.New("agent: no coordinator address")
	case cfg.TLS == nil:
		return nil, errors.New("agent: no TLS configuration (it verifies the coordinator)")
	case cfg.Docker == nil:
		return nil, errors.New("agent: no Docker client")
	case len(cfg.TLS.Certificates) == 0 && cfg.JoinToken == nil && cfg.StateDir == "":
		return nil, errors.New("agent: no way to a certificate: give a certificate (TLS.Certificates), a join token or a state directory that holds one")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
		cfg.Dial = d.DialContext
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:    cfg,
		log:    log,
		acked:  map[string]bool{},
		landed: make(chan wire.Landed, 64),

		artifactSlots: make(chan struct{}, artifactSlots),
	}
	// Sessions present the current certificate; joins present none. Both
	// verify the coordinator as cfg.TLS does, so the token goes only to it.
	a.sessionTLS = cfg.TLS.Clone()
	a.sessionTLS.Certificates, a.sessionTLS.GetClientCertificate = nil, a.id.clientCertificate
	a.joinTLS = cfg.TLS.Clone()
	a.joinTLS.Certificates, a.joinTLS.GetClientCertificate = nil, nil
	return a, nil
}

// Run is New followed by (*Agent).Run.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// Run learns the node's identity from the local engine, then keeps one
// session with the coordinator until ctx ends, connecting again after a
// back-off when it dies (PROTOCOL.md §9, §6.4), joining first when it has
// no usable certificate (§6.6). It returns an error wrapping
// ErrNoCertificate when it has none and no join token.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.identify(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped before the engine answered
		}
		return err
	}
	a.log.Info("agent starting", "node", a.nodeID, "hostname", a.hostname, "engine", a.engine, "coordinator", a.cfg.Coordinator)
	a.loadIdentity()

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); a.watchEvents(ctx) }()

	bo := backoff{min: a.cfg.MinBackoff, max: a.cfg.MaxBackoff}
	for {
		s, err := a.connect(ctx)
		if err == nil {
			bo.reset() // a Welcome starts the back-off over (PROTOCOL.md §9)
			err = a.serve(ctx, s)
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrNoCertificate) {
			return err
		}
		wait := bo.next()
		a.log.Warn("no session with the coordinator", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// identify reads the node id, host name and engine version. The engine may
// start after the agent (both restart with the machine), so it retries.
func (a *Agent) identify(ctx context.Context) error {
	for {
		info, err := a.cfg.Docker.Info(ctx)
		if err == nil && info.Swarm.NodeID != "" {
			a.nodeID, a.hostname, a.engine = info.Swarm.NodeID, info.Name, info.ServerVersion
			return nil
		}
		if err == nil {
			err = errors.New("this engine is not part of a swarm (docker swarm init or join)")
		}
		a.log.Warn("cannot identify this node", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent: identify node: %w (last: %w)", ctx.Err(), err)
		case <-time.After(identityInterval):
		}
	}
}

// connect makes sure the agent has a certificate (joining if need be),
// dials, completes TLS and yamux, and exchanges Hello and Welcome on the
// control stream (PROTOCOL.md §6.1).
func (a *Agent) connect(ctx context.Context) (*session, error) {
	if err := a.ensureIdentity(ctx); err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	raw, err := a.cfg.Dial(dctx, "tcp", a.cfg.Coordinator)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", a.cfg.Coordinator, err)
	}
	ys, err := wire.Client(tls.Client(raw, a.sessionTLS), a.cfg.Session)
	if err != nil {
		return nil, err
	}
	ctl, err := ys.Open(ctx) // ctx, not dctx: the control stream lives as long as the session
	if err != nil {
		ys.Close()
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	ctl.SetDeadline(time.Now().Add(helloTimeout))
	codec := wire.NewCodec(ctl)
	err = codec.Send(&wire.Hello{
		Protocol: wire.ProtocolVersion, NodeID: a.nodeID, Hostname: a.hostname,
		AgentVersion: version.Version, EngineVersion: a.engine, Features: []string{wire.FeatureCache},
	})
	// Read the answer even if the send failed: a refusing coordinator
	// closes the session at once, and its Refused is what the operator needs.
	w, rerr := wire.Expect[*wire.Welcome](codec)
	var refused *wire.RefusedError
	if err == nil || errors.As(rerr, &refused) {
		err = rerr
	}
	if err != nil {
		ys.Close()
		if errors.As(err, &refused) {
			a.log.Error("coordinator refused this agent", "code", refused.Code, "message", refused.Message)
			if refused.Code == wire.RefusedIdentity && a.cfg.JoinToken != nil {
				// E.g. revoked, then allowed again: only a new
				// certificate, issued after that, will do.
				a.log.Info("dropping the certificate; the agent joins again")
				a.id.drop()
			}
		}
		return nil, fmt.Errorf("hello: %w", err)
	}
	ctl.SetDeadline(time.Time{})
	a.log.Info("session up", "session", w.SessionID, "coordinator_version", w.CoordinatorVersion)
	return newSession(w.SessionID, ys, ctl, codec), nil
}

// watchEvents turns the engine's create events for forge containers into
// Landed hints (PROTOCOL.md §5.5), re-opening the event stream after
// errors. They wait in a.landed for the session loop; what does not fit is
// dropped.
func (a *Agent) watchEvents(ctx context.Context) {
	bo := backoff{min: 100 * time.Millisecond, max: 5 * time.Second}
	for ctx.Err() == nil {
		f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("event", string(events.ActionCreate)), filters.Arg("label", LabelBuild))
		msgs, errs := a.cfg.Docker.Events(ctx, events.ListOptions{Filters: f})
	stream:
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-errs:
				if ctx.Err() == nil {
					a.log.Warn("docker events", "err", err)
				}
				break stream
			case m := <-msgs:
				bo.reset()
				l := wire.Landed{BuildID: m.Actor.Attributes[LabelBuild], ContainerID: m.Actor.ID, Created: time.Unix(0, m.TimeNano)}
				if l.BuildID == "" {
					continue
				}
				select {
				case a.landed <- l:
				default: // the session loop is not keeping up or there is none
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.next()):
		}
	}
}

// backoff is the capped, jittered exponential back-off of PROTOCOL.md §9;
// the agent's other retries use it with bounds of their own.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }
