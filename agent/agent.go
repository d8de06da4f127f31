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

// Config is what Run needs. Coordinator, TLS and Docker are required.
type Config struct {
	// Coordinator is the host:port of the coordinator's agent listener.
	Coordinator string
	// TLS is the client configuration (wire.ClientConfig): the agent's
	// certificate, the forge CA and the coordinator's expected host name.
	TLS *tls.Config
	// Docker is this node's local engine.
	Docker Docker
	// Session tunes yamux; nil takes wire's defaults.
	Session *wire.SessionConfig
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between connection attempts
	// (defaults 250 ms and 30 s); each failure doubles it, with jitter, and
	// a successful Hello resets it.
	MinBackoff, MaxBackoff time.Duration
	// Dial opens the connection to the coordinator; nil uses net.Dialer.
	// Tests put proxies in the middle with it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnSession, when set, is called with each session's id after Welcome
	// and with "" when the session ends; tests and logs use it.
	OnSession func(id string)
}

// Timeouts of the agent's own steps. Each request stream carries a
// deadline, so a coordinator that goes quiet cannot hold a goroutine.
const (
	dialTimeout      = 10 * time.Second
	helloTimeout     = wire.HelloTimeout
	launchTimeout    = wire.LaunchTimeout // covers the transfer of source trees
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

	mu       sync.Mutex
	acked    map[string]bool  // builds whose Exit the coordinator acknowledged
	pumping  map[string]bool  // builds with a log stream in the current session
	launches map[string]bool  // containers with a Launch in progress
	current  *session         // nil between sessions
	landed   chan wire.Landed // from the events watcher to the session loop
	started  chan heldBuild   // from Launch handlers to the session loop
}

// New checks cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Coordinator == "":
		return nil, errors.New("agent: no coordinator address")
	case cfg.TLS == nil:
		return nil, errors.New("agent: no TLS configuration")
	case cfg.Docker == nil:
		return nil, errors.New("agent: no Docker client")
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
	return &Agent{
		cfg:      cfg,
		log:      log,
		acked:    map[string]bool{},
		pumping:  map[string]bool{},
		launches: map[string]bool{},
		landed:   make(chan wire.Landed, 64),
		started:  make(chan heldBuild, 16),
	}, nil
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
// session with the coordinator until ctx ends: connect, serve until the
// session dies, wait a jittered back-off, connect again. Builds keep
// running while there is no session; the next session reports them.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.identify(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped before the engine answered
		}
		return err
	}
	a.log.Info("agent starting", "node", a.nodeID, "hostname", a.hostname, "engine", a.engine, "coordinator", a.cfg.Coordinator)

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
			bo.reset() // only a completed Hello counts as success
			err = a.serve(ctx, s)
		}
		if ctx.Err() != nil {
			return nil
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

// connect dials, completes TLS and yamux, and exchanges Hello and Welcome
// on the control stream.
func (a *Agent) connect(ctx context.Context) (*session, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	raw, err := a.cfg.Dial(dctx, "tcp", a.cfg.Coordinator)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", a.cfg.Coordinator, err)
	}
	ys, err := wire.Client(tls.Client(raw, a.cfg.TLS), a.cfg.Session)
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
		AgentVersion: version.Version, EngineVersion: a.engine,
	})
	// Read the answer even when the send failed: a coordinator that refuses
	// this agent closes the session right after its Refused, which can
	// fail the send of a Hello it has already read, and the refusal is what
	// the operator needs to see.
	w, rerr := wire.Expect[*wire.Welcome](codec)
	var refused *wire.RefusedError
	if err == nil || errors.As(rerr, &refused) {
		err = rerr
	}
	if err != nil {
		ys.Close()
		if errors.As(err, &refused) {
			a.log.Error("coordinator refused this agent", "code", refused.Code, "message", refused.Message)
		}
		return nil, fmt.Errorf("hello: %w", err)
	}
	ctl.SetDeadline(time.Time{})
	a.log.Info("session up", "session", w.SessionID, "coordinator_version", w.CoordinatorVersion)
	return &session{id: w.SessionID, ys: ys, ctl: codec}, nil
}

// session is one yamux session with the coordinator and what runs on it.
type session struct {
	id  string
	ys  *wire.Session
	ctl *wire.Codec
}

// heldBuild is a build whose container this agent started and whose Exit
// the coordinator has not acknowledged.
type heldBuild struct {
	buildID, containerID string
}

// serve runs one session: it reports held builds, serves the
// coordinator's requests, pumps logs, forwards Landed events, and returns
// when the session dies or ctx ends. Every goroutine it starts is stopped
// and waited for before it returns. This loop alone writes to the control
// stream.
func (a *Agent) serve(ctx context.Context, s *session) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		s.ys.Close()
		wg.Wait()
		a.mu.Lock()
		a.current = nil
		a.pumping = map[string]bool{}
		a.mu.Unlock()
		if a.cfg.OnSession != nil {
			a.cfg.OnSession("")
		}
	}()

	held, err := a.heldBuilds(ctx)
	if err != nil {
		return fmt.Errorf("list held builds: %w", err)
	}
	report := &wire.Holding{Builds: []wire.Held{}}
	for _, h := range held {
		report.Builds = append(report.Builds, h.wire)
	}
	if err := s.ctl.Send(report); err != nil {
		return err
	}
	a.mu.Lock()
	a.current = s
	a.mu.Unlock()
	if a.cfg.OnSession != nil {
		a.cfg.OnSession(s.id)
	}

	startPump := func(b heldBuild) {
		a.mu.Lock()
		if a.pumping[b.buildID] || a.acked[b.buildID] {
			a.mu.Unlock()
			return
		}
		a.pumping[b.buildID] = true
		a.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				a.mu.Lock()
				delete(a.pumping, b.buildID)
				a.mu.Unlock()
			}()
			// A log stream that fails while the session lives (the
			// coordinator refused a frame, the engine's log broke) is
			// opened again, so the build is not left unreported.
			bo := backoff{min: 500 * time.Millisecond, max: 10 * time.Second}
			for {
				err := a.pump(ctx, s, b)
				if err == nil || ctx.Err() != nil {
					return
				}
				a.mu.Lock()
				acked := a.acked[b.buildID]
				a.mu.Unlock()
				if acked {
					return
				}
				wait := bo.next()
				a.log.Warn("log stream ended; attaching again", "build", b.buildID, "err", err, "retry_in", wait)
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}()
	}
	for _, h := range held {
		startPump(h.build)
	}

	// The coordinator sends nothing more on the control stream; reading it
	// notices the stream's end, which ends the session.
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := s.ctl.Recv()
		a.log.Debug("control stream ended", "err", err)
		cancel()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := s.ys.Accept(ctx)
			if err != nil {
				cancel()
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.handle(ctx, st)
			}()
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ys.Done():
			return errors.New("session closed")
		case l := <-a.landed:
			if err := s.ctl.Send(&l); err != nil {
				return err
			}
		case b := <-a.started:
			startPump(b)
		}
	}
}

type held struct {
	build heldBuild
	wire  wire.Held
}

// heldBuilds asks the engine, the source of truth that survives an agent
// restart, which forge containers have run; those not yet acknowledged by
// the coordinator are held.
func (a *Agent) heldBuilds(ctx context.Context) ([]held, error) {
	cs, err := a.cfg.Docker.ContainerList(ctx, containerListAll(LabelBuild))
	if err != nil {
		return nil, err
	}
	present := map[string]bool{}
	for _, c := range cs {
		present[c.Labels[LabelBuild]] = true
	}
	a.mu.Lock()
	for id := range a.acked {
		if !present[id] {
			delete(a.acked, id) // its container is gone: it cannot be reported again
		}
	}
	a.mu.Unlock()
	var out []held
	for _, c := range cs {
		id := c.Labels[LabelBuild]
		a.mu.Lock()
		acked := a.acked[id]
		a.mu.Unlock()
		if acked {
			continue
		}
		in, err := a.cfg.Docker.ContainerInspect(ctx, c.ID)
		if err != nil || in.State == nil || in.State.StartedAt == "" || in.State.StartedAt == neverStarted {
			continue // gone since the list, or never started by us
		}
		h := held{build: heldBuild{buildID: id, containerID: c.ID}, wire: wire.Held{BuildID: id, ContainerID: c.ID, State: wire.StateRunning}}
		if !in.State.Running {
			code := in.State.ExitCode
			h.wire.State, h.wire.ExitCode = wire.StateExited, &code
		}
		out = append(out, h)
	}
	return out, nil
}

// watchEvents turns the engine's container create events for forge
// containers into Landed messages, so the coordinator learns where a task
// landed as soon as its container exists. The engine's event stream is
// re-opened after errors; events without a session are dropped (the
// coordinator also polls swarm).
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

// backoff is capped exponential back-off with jitter: each wait is drawn
// from [d/2, d], d doubling from min up to max.
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
