// Package agents is the coordinator's side of the wire: it accepts the
// agents' sessions, binds each to its node when swarm agrees, stores what
// they report, and is the way to the agent of a node (coordinator.Agents).
package agents

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/internal/version"
	"github.com/forge-ci/forge/wire"
)

// NodeVerifier decides whether a connection may speak for a swarm node.
// The coordinator binds a node id to a session only when it passes.
type NodeVerifier interface {
	VerifyAgent(ctx context.Context, nodeID string, remote net.Addr) error
}

// BuildLogs stores what agents report about builds (logs.Store), by the
// rules of a log stream (PROTOCOL.md §6.4). Calls for one build come from
// one log stream at a time, in order; calls for different builds are
// concurrent.
type BuildLogs interface {
	// Attach says what is stored for the build. An unknown build is an
	// error wrapping coordinator.ErrUnknownBuild.
	Attach(ctx context.Context, nodeID string, a *wire.Attach) (*wire.Attached, error)
	// Log stores one chunk and returns when it is stored; a gap is an error.
	Log(ctx context.Context, buildID string, l *wire.Log) error
	// Exit records the build's exit durably, once; a repeat is accepted.
	Exit(ctx context.Context, buildID string, e *wire.Exit) error
	// Exited returns the recorded exit, or nil while the build runs.
	Exited(buildID string) (*wire.Exit, error)
}

// Recorder keeps a record of the agents that connected (store.Store).
type Recorder interface {
	AgentConnected(ctx context.Context, a store.AgentSeen) error
}

// AgentInfo describes a connected agent (GET /api/agents).
type AgentInfo struct {
	NodeID         string    `json:"node_id"`
	Hostname       string    `json:"hostname"`
	AgentVersion   string    `json:"agent_version"`
	EngineVersion  string    `json:"engine_version"`
	Protocol       int       `json:"protocol"`
	Address        string    `json:"address"`
	ConnectedSince time.Time `json:"connected_since"`
	SessionID      string    `json:"session_id"`
	// CertSerial and CertExpires are the session's latest certificate:
	// the one it connected with, or the last one renew gave it.
	CertSerial  string    `json:"cert_serial"`
	CertExpires time.Time `json:"cert_expires"`
}

// Builds says where each build was launched (store.Store): its log, exit
// and landing belong to that node and container only.
type Builds interface {
	Build(ctx context.Context, id string) (*coordinator.Build, error)
}

// Config is what a Hub needs.
type Config struct {
	TLS     *tls.Config // wire.ServerConfig
	Session *wire.SessionConfig
	Verify  NodeVerifier
	Logs    BuildLogs
	// Builds binds each build's log stream to the node and container it
	// was launched on (PROTOCOL.md §6.4).
	Builds Builds
	// Issuer, when set, signs certificates for joining and renewing
	// agents; the listener then also takes sessions without a client
	// certificate, for joining only (PROTOCOL.md §6.6).
	Issuer *Issuer
	// Revocations records revoked nodes; nil refuses Revoke.
	Revocations Revocations
	// Record, when set, keeps a record of each agent bound to its node.
	Record Recorder
	Log    *slog.Logger
	// MaxStreams bounds the streams an agent's session may have open at
	// once (0: DefaultMaxStreams); past it the session is closed.
	MaxStreams int
	// Caches, when set, takes the caches agents send (PROTOCOL.md §6.8);
	// nil refuses them.
	Caches CacheReceiver
}

// DefaultMaxStreams is the streams an agent may have open at once: one log
// stream per build it holds and a rare renew, so a node may run up to
// about 250 builds at once; beyond that an agent is misbehaving.
const DefaultMaxStreams = 256

// Hub accepts agents' sessions on the agent listener and is the
// coordinator's way to reach the agent of a node.
type Hub struct {
	cfg     Config
	log     *slog.Logger
	reports *Reports // landings and exits, to the lifecycle

	tls *tls.Config

	mu         sync.Mutex
	agents     map[string]*agentConn // by node id
	waiters    map[string][]chan struct{}
	logStreams map[string]*wire.Stream // the one log stream of each build
	revoked    map[string]bool         // revoked since start; the store has all
	launched   map[string]binding      // builds launched by this hub, until their exit
}

// binding is the node and container a build was launched on.
type binding struct{ node, container string }

// New returns a hub; Serve accepts the agents.
func New(cfg Config) *Hub {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Hub{reports: NewReports(cfg.Logs.Exited), cfg: cfg, log: log, agents: map[string]*agentConn{},
		waiters: map[string][]chan struct{}{}, logStreams: map[string]*wire.Stream{},
		revoked: map[string]bool{}, launched: map[string]binding{}, tls: cfg.TLS}
	if cfg.Issuer != nil {
		h.tls = wire.AllowJoin(cfg.TLS)
	}
	return h
}

var _ coordinator.Agents = (*Hub)(nil)

type agentConn struct {
	info    AgentInfo // certificate fields under Hub.mu
	ys      *wire.Session
	remote  net.Addr
	life    time.Duration // of the latest certificate, under Hub.mu
	renewed chan struct{} // a renewal changed the certificate (buffered 1)
	caches  bool          // the agent takes Launch.Cache (Hello.Features)
}

// Timeouts of the coordinator's side of the wire.
const (
	helloTimeout   = wire.HelloTimeout
	requestTimeout = wire.RequestTimeout
	launchTimeout  = wire.LaunchTimeout
	logAckEvery    = 32 // Log frames between LogAcks (PROTOCOL.md §6.4)
)

// Serve accepts agent connections on ln until ctx ends, then closes every
// session and returns after their goroutines have stopped.
func (s *Hub) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept agents: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, conn)
		}()
	}
}

func (s *Hub) serveConn(ctx context.Context, conn net.Conn) {
	log := s.log.With("remote", conn.RemoteAddr().String())
	ys, err := wire.Server(tls.Server(conn, s.tls), s.cfg.Session)
	if err != nil {
		log.Warn("agent connection refused", "err", err)
		return
	}
	defer ys.Close()
	stop := context.AfterFunc(ctx, func() { ys.Close() })
	defer stop()
	cert := ys.Peer()
	if cert == nil { // AllowJoin let it in: it may only join
		s.serveJoin(ctx, ys, conn.RemoteAddr(), log)
		return
	}

	// The control stream and its hello exchange (PROTOCOL.md §6.1).
	hctx, hcancel := context.WithTimeout(ctx, helloTimeout)
	ctl, err := ys.Accept(hctx)
	hcancel()
	if err != nil {
		log.Warn("agent opened no control stream", "err", err)
		return
	}
	ctl.SetDeadline(time.Now().Add(helloTimeout))
	c := wire.NewCodec(ctl)
	hello, err := wire.Expect[*wire.Hello](c)
	if err != nil {
		log.Warn("agent hello", "err", err)
		return
	}
	log = log.With("node", hello.NodeID, "hostname", hello.Hostname)
	if r := wire.ProtocolRefusal(hello.Protocol); r != nil {
		log.Error("agent refused", "code", r.Code, "message", r.Message)
		c.Send(r)
		return
	}
	vctx, cancel := context.WithTimeout(ctx, requestTimeout)
	err = s.checkHello(vctx, cert, hello.NodeID, conn.RemoteAddr())
	cancel()
	if err != nil {
		log.Error("agent refused", "code", wire.RefusedIdentity, "serial", serialOf(cert), "err", err)
		c.Send(wire.NewRefused(wire.RefusedIdentity, "%v", err))
		return
	}
	ac := &agentConn{ys: ys, remote: conn.RemoteAddr(), renewed: make(chan struct{}, 1), caches: slices.Contains(hello.Features, wire.FeatureCache),
		life: cert.NotAfter.Sub(issuedAt(cert)), info: AgentInfo{
			NodeID: hello.NodeID, Hostname: hello.Hostname, AgentVersion: hello.AgentVersion,
			EngineVersion: hello.EngineVersion, Protocol: hello.Protocol,
			Address: conn.RemoteAddr().String(), ConnectedSince: time.Now().UTC(), SessionID: newSessionID(),
			CertSerial: serialOf(cert), CertExpires: cert.NotAfter.UTC(),
		}}
	if err := c.Send(&wire.Welcome{Protocol: wire.ProtocolVersion, CoordinatorVersion: version.Version, SessionID: ac.info.SessionID}); err != nil {
		log.Warn("welcome", "err", err)
		return
	}
	holding, err := wire.Expect[*wire.Holding](c)
	if err != nil {
		log.Warn("agent holding report", "err", err)
		return
	}
	ctl.SetDeadline(time.Time{})
	if err := s.bind(ac); err != nil {
		log.Error("agent refused", "code", wire.RefusedIdentity, "err", err)
		return
	}
	defer s.unbind(ac)
	log.Info("agent connected", "session", ac.info.SessionID, "holding", len(holding.Builds),
		"serial", ac.info.CertSerial, "cert_expires", ac.info.CertExpires)
	s.record(ac.info)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer ys.Close() // runs before wg.Wait: stops the stream goroutines
	wg.Go(func() { s.watchCert(ctx, ac) })
	maxStreams := cmp.Or(s.cfg.MaxStreams, DefaultMaxStreams)
	var open atomic.Int64 // streams being served
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := ys.Accept(ctx)
			if err != nil {
				return
			}
			if open.Add(1) > int64(maxStreams) {
				// Each open stream holds a goroutine and buffers: an agent
				// past the bound loses its session, others carry on.
				log.Warn("agent session closed: too many open streams", "session", ac.info.SessionID, "max", maxStreams)
				st.Close()
				ys.Close()
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer open.Add(-1)
				s.serveStream(ctx, ac, st)
			}()
		}
	}()
	for {
		m, err := c.Recv()
		if err != nil {
			log.Info("agent disconnected", "session", ac.info.SessionID, "err", err)
			return
		}
		switch m := m.(type) {
		case *wire.Landed:
			s.reports.Landed(hello.NodeID, *m)
		default:
			log.Warn("unexpected message on control stream", "type", m.MessageType())
		}
	}
}

// bind makes ac the session of its node, closing an older session of the
// same node (PROTOCOL.md §6.1), unless the node was revoked meanwhile.
func (s *Hub) bind(ac *agentConn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revoked[ac.info.NodeID] {
		return fmt.Errorf("%w: %s", ErrRevoked, ac.info.NodeID)
	}
	if old := s.agents[ac.info.NodeID]; old != nil {
		s.log.Info("agent session replaced", "node", ac.info.NodeID, "old", old.info.SessionID, "new", ac.info.SessionID)
		old.ys.Close()
	}
	s.agents[ac.info.NodeID] = ac
	for _, w := range s.waiters[ac.info.NodeID] {
		close(w)
	}
	delete(s.waiters, ac.info.NodeID)
	return nil
}

func (s *Hub) unbind(ac *agentConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agents[ac.info.NodeID] == ac {
		delete(s.agents, ac.info.NodeID)
	}
}

// Agents lists the connected agents, by node id.
func (s *Hub) Agents() []AgentInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]AgentInfo, 0, len(s.agents))
	for _, a := range s.agents { // a copy, taken under mu: renewals change it
		out = append(out, a.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out
}

// WaitAgent returns when an agent session is bound to nodeID, or an error
// wrapping coordinator.ErrNoAgent when ctx ends first.
func (s *Hub) WaitAgent(ctx context.Context, nodeID string) error {
	s.mu.Lock()
	if s.agents[nodeID] != nil {
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.waiters[nodeID] = append(s.waiters[nodeID], ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w %s: %w", coordinator.ErrNoAgent, nodeID, ctx.Err())
	}
}

// open opens a request stream to the agent of nodeID; it ends with ctx.
func (s *Hub) open(ctx context.Context, nodeID string) (*wire.Stream, error) {
	st, _, err := s.openConn(ctx, nodeID)
	return st, err
}

// openConn is open, also returning the agent's session.
func (s *Hub) openConn(ctx context.Context, nodeID string) (*wire.Stream, *agentConn, error) {
	s.mu.Lock()
	ac := s.agents[nodeID]
	s.mu.Unlock()
	if ac == nil {
		return nil, nil, fmt.Errorf("%w %s", coordinator.ErrNoAgent, nodeID)
	}
	st, err := ac.ys.Open(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("open stream to agent of %s: %w", nodeID, err)
	}
	return st, ac, nil
}

// Launch runs a launch stream with the agent of nodeID (PROTOCOL.md §6.2).
// A refusal comes back as a *wire.RefusedError.
func (s *Hub) Launch(ctx context.Context, nodeID string, req coordinator.LaunchRequest) (*coordinator.LaunchResult, error) {
	st, ac, err := s.openConn(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	// From here the build's log, exit and landing belong to this node and
	// container (PROTOCOL.md §6.2).
	s.mu.Lock()
	s.launched[req.BuildID] = binding{node: nodeID, container: req.ContainerID}
	s.mu.Unlock()
	st.SetDeadline(time.Now().Add(launchTimeout))
	c := wire.NewCodec(st)
	cache := s.launchCache(ac, req)
	err = c.Send(&wire.Launch{
		BuildID: req.BuildID, ContainerID: req.ContainerID, Executor: req.Executor.Ref,
		Spec: req.Spec, SourceSize: req.SourceSize, Workdir: req.Workdir, Cache: cache, Secrets: launchSecrets(req.Secrets),
	})
	if err != nil {
		return nil, err
	}
	ready, err := wire.Expect[*wire.LaunchReady](c)
	if err != nil {
		s.mu.Lock()
		delete(s.launched, req.BuildID) // refused: nothing was started
		s.mu.Unlock()
		return nil, fmt.Errorf("launch %s on %s: %w", req.BuildID, nodeID, err)
	}
	if ready.NeedExecutor {
		if err := c.SendBlob(bytes.NewReader(req.Executor.Bytes), req.Executor.Ref.Size); err != nil {
			return nil, fmt.Errorf("launch %s: send executor: %w", req.BuildID, err)
		}
	}
	if cache != nil && cache.Size > 0 {
		if err := c.SendBlob(req.Cache.Archive, cache.Size); err != nil {
			return nil, fmt.Errorf("launch %s: send cache: %w", req.BuildID, err)
		}
	}
	if req.SourceSize > 0 {
		if err := c.SendBlob(req.Source, req.SourceSize); err != nil {
			return nil, fmt.Errorf("launch %s: send source: %w", req.BuildID, err)
		}
	}
	started, err := wire.Expect[*wire.Started](c)
	if err != nil {
		return nil, fmt.Errorf("launch %s on %s: %w", req.BuildID, nodeID, err)
	}
	return &coordinator.LaunchResult{Started: *started, ExecutorSent: ready.NeedExecutor}, nil
}

// launchSecrets are a Launch's secrets, by name (PROTOCOL.md §5.6).
func launchSecrets(m map[string][]byte) []wire.Secret {
	var out []wire.Secret
	for _, name := range slices.Sorted(maps.Keys(m)) {
		out = append(out, wire.Secret{Name: name, Value: m[name]})
	}
	return out
}

// Cancel asks the agent of nodeID to stop the build's container
// (PROTOCOL.md §6.3).
func (s *Hub) Cancel(ctx context.Context, nodeID, buildID, containerID string, grace time.Duration) (*wire.Cancelled, error) {
	st, err := s.open(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(grace + requestTimeout))
	c := wire.NewCodec(st)
	if err := c.Send(&wire.Cancel{BuildID: buildID, ContainerID: containerID, GraceSeconds: int(grace.Seconds())}); err != nil {
		return nil, err
	}
	out, err := wire.Expect[*wire.Cancelled](c)
	if err != nil {
		return nil, fmt.Errorf("cancel %s on %s: %w", buildID, nodeID, err)
	}
	return out, nil
}

// serveStream serves a stream an agent opened: a log stream (PROTOCOL.md
// §6.4) or a renewal (§6.7), told apart by the first frame.
func (s *Hub) serveStream(ctx context.Context, ac *agentConn, st *wire.Stream) {
	defer st.Close()
	log := s.log.With("node", ac.info.NodeID)
	st.SetDeadline(time.Now().Add(requestTimeout))
	c := wire.NewCodec(st)
	m, err := c.Recv()
	if err != nil {
		log.Warn("agent stream", "err", err)
		c.Send(wire.NewRefused(wire.RefusedBadRequest, "%v", err))
		return
	}
	switch m := m.(type) {
	case *wire.Attach:
		s.serveLog(ctx, ac, st, c, m)
	case *wire.Renew:
		s.serveRenew(ctx, ac, c, m, log)
	case *wire.CacheSave:
		s.serveCache(ctx, ac.info.NodeID, st, c, m)
	default:
		log.Warn("agent stream", "err", "unexpected "+m.MessageType())
		c.Send(wire.NewRefused(wire.RefusedBadRequest, "a stream an agent opens starts with %s, %s or %s, not %s",
			wire.TypeAttach, wire.TypeRenew, wire.TypeCacheSave, m.MessageType()))
	}
}

// errNotBound: an agent spoke of a build that is not its node's.
var errNotBound = errors.New("not bound to this node")

// bound decides whether node's session may attach to the build with
// att's container: the build was launched on that node and container, by
// this hub or (it has started, says the record) before a restart. After
// the build ended only its own agent may still hand in the rest of its log
// and its exit, which change no result.
func (s *Hub) bound(ctx context.Context, node string, att *wire.Attach) error {
	s.mu.Lock()
	l, launched := s.launched[att.BuildID]
	s.mu.Unlock()
	if !launched { // launched before a restart, if at all: the record says
		if s.cfg.Builds == nil {
			return fmt.Errorf("build %s was not launched by this coordinator: %w", att.BuildID, errNotBound)
		}
		b, err := s.cfg.Builds.Build(ctx, att.BuildID)
		if err != nil {
			return err
		}
		if b.Started.IsZero() {
			return fmt.Errorf("build %s has not been launched: %w", att.BuildID, errNotBound)
		}
		l = binding{node: b.NodeID, container: b.ContainerID}
	}
	switch {
	case l.node != node:
		return fmt.Errorf("build %s runs on node %s, not %s: %w", att.BuildID, orNone(l.node), node, errNotBound)
	case l.container != att.ContainerID:
		return fmt.Errorf("build %s runs in container %s, not %s: %w", att.BuildID, orNone(l.container), att.ContainerID, errNotBound)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none yet)"
	}
	return s
}

// serveLog serves a log stream whose Attach is att (PROTOCOL.md §6.4).
func (s *Hub) serveLog(ctx context.Context, ac *agentConn, st *wire.Stream, c *wire.Codec, att *wire.Attach) {
	nodeID := ac.info.NodeID
	log := s.log.With("node", nodeID, "build", att.BuildID)
	err := s.bound(ctx, nodeID, att)
	switch {
	case errors.Is(err, errNotBound):
		log.Error("attach refused", "code", wire.RefusedForbidden, "err", err)
		c.Send(wire.NewRefused(wire.RefusedForbidden, "%v", err))
		return
	case errors.Is(err, store.ErrNotFound):
		log.Warn("attach refused", "code", wire.RefusedNotFound, "err", err)
		c.Send(wire.NewRefused(wire.RefusedNotFound, "build %s: %v", att.BuildID, coordinator.ErrUnknownBuild))
		return
	case err != nil:
		log.Error("attach", "err", err)
		c.Send(wire.NewRefused(wire.RefusedInternal, "%v", err))
		return
	}
	// One log stream per build: a new attach replaces the old stream
	// (PROTOCOL.md §6.4).
	s.mu.Lock()
	if old := s.logStreams[att.BuildID]; old != nil {
		old.SetReadDeadline(time.Now()) // its reader ends, and closes it
	}
	s.logStreams[att.BuildID] = st
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.logStreams[att.BuildID] == st {
			delete(s.logStreams, att.BuildID)
		}
		s.mu.Unlock()
	}()
	reply, err := s.cfg.Logs.Attach(ctx, nodeID, att)
	if err != nil {
		code := wire.RefusedInternal
		if errors.Is(err, coordinator.ErrUnknownBuild) {
			code = wire.RefusedNotFound
		}
		c.Send(wire.NewRefused(code, "%v", err))
		log.Warn("attach refused", "err", err)
		return
	}
	if !reply.Done && ac.caches && s.cfg.Caches != nil {
		// The launch's save, again: the agent may have restarted since.
		if reply.Cache, err = s.cfg.Caches.Pending(ctx, att.BuildID); err != nil {
			log.Warn("the build's pending cache save is not repeated", "err", err)
		}
	}
	if err := c.Send(reply); err != nil || reply.Done {
		return
	}
	// A log stream lives as long as the build: no deadline (PROTOCOL.md §4.4).
	st.SetDeadline(time.Time{})
	var unacked int
	for {
		m, err := c.Recv()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) {
				log.Info("log stream ended", "err", err)
			}
			return
		}
		switch m := m.(type) {
		case *wire.Log:
			if err := s.cfg.Logs.Log(ctx, att.BuildID, m); err != nil {
				log.Error("store log", "seq", m.Seq, "err", err)
				c.Send(wire.NewRefused(wire.RefusedBadRequest, "log seq %d: %v", m.Seq, err))
				return
			}
			if unacked++; unacked >= logAckEvery {
				unacked = 0
				if err := c.Send(&wire.LogAck{Seq: m.Seq}); err != nil {
					return
				}
			}
		case *wire.Exit:
			if err := s.cfg.Logs.Exit(ctx, att.BuildID, m); err != nil {
				log.Error("record exit", "err", err)
				c.Send(wire.NewRefused(wire.RefusedInternal, "record exit: %v", err))
				return
			}
			s.mu.Lock()
			delete(s.launched, att.BuildID)
			s.mu.Unlock()
			s.reports.Exited(att.BuildID, *m)
			st.SetDeadline(time.Now().Add(requestTimeout))
			c.Send(&wire.ExitAck{})
			return
		default:
			c.Send(wire.NewRefused(wire.RefusedBadRequest, "unexpected %s on a log stream", m.MessageType()))
			return
		}
	}
}

func newSessionID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// record keeps a record of an agent bound to its node.
func (s *Hub) record(a AgentInfo) {
	if s.cfg.Record == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	err := s.cfg.Record.AgentConnected(ctx, store.AgentSeen{NodeID: a.NodeID, Hostname: a.Hostname,
		AgentVersion: a.AgentVersion, EngineVersion: a.EngineVersion, Address: a.Address, LastSeen: a.ConnectedSince})
	if err != nil {
		s.log.Warn("record agent", "node", a.NodeID, "err", err)
	}
}

// Landings implements coordinator.Agents.
func (s *Hub) Landings(buildID string) (<-chan coordinator.Landing, func()) {
	return s.reports.Landings(buildID)
}

// WaitExit implements coordinator.Agents.
func (s *Hub) WaitExit(ctx context.Context, buildID string) (<-chan wire.Exit, error) {
	return s.reports.WaitExit(ctx, buildID)
}
