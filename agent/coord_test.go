package agent

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/internal/syncbuf"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// testCoord is the coordinator's side of the protocol (PROTOCOL.md §6), as
// little of it as the tests of the session loop need, on loopback with
// real TLS and wire sessions: it welcomes every agent whose Hello names
// its certificate's node, hands each session to the test, keeps a copy of
// each build's log and counts what the agent sends, so tests can check
// that nothing is lost, repeated or reported twice. It also signs
// certificates for agents that join with its token or renew (§6.6, §6.7).
type testCoord struct {
	t   *testing.T
	pki *wiretest.PKI
	ln  net.Listener

	sessions chan *coordSession // welcomed sessions, Holding received
	wg       sync.WaitGroup     // the coordinator's goroutines

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change of builds
	builds   map[string]*coordBuild
	open     []*wire.Session
	n        int
	onAttach func(at *wire.Attach, b *coordBuild) wire.Message // nil: the default answer
	gate     chan struct{}                                     // while not nil, new connections wait for it

	// Identity (§6.6, §6.7).
	token   string                    // the join token; "" refuses every join (signs nothing)
	ttl     time.Duration             // validity of the certificates it signs
	joins   int                       // join requests received
	renews  int                       // renew requests received
	issued  []issuedCert              // every certificate signed, in order
	onRenew func(n int) *wire.Refused // the answer to the n-th renew; nil or a nil result: sign
	onHello func(n int) *wire.Refused // the answer to the n-th Hello; nil or a nil result: welcome
	hellos  int                       // Hellos received
	conns   int                       // connections accepted
}

// issuedCert is a certificate testCoord signed.
type issuedCert struct {
	how     string // "join" or "renew"
	session string // the session a renewal was asked on
	at      time.Time
	cert    *x509.Certificate
}

// coordBuild is the coordinator's copy of a build.
type coordBuild struct {
	out      map[string][]byte // stored output, per stream
	nextSeq  uint64
	attaches int
	ended    int          // log streams the agent closed (its pump had returned)
	repeats  int          // log frames carrying only bytes already stored
	exits    []wire.Exit  // every Exit received
	faults   []string     // breaks of the protocol the agent committed
	caches   []savedCache // every CacheSave received, in order
}

// savedCache is a CacheSave and its tar, and how many exits had come
// before it.
type savedCache struct {
	save        wire.CacheSave
	tar         []byte
	exitsBefore int
}

// coordSession is one session with the agent, as the test sees it.
type coordSession struct {
	id      string
	ws      *wire.Session
	peer    *x509.Certificate // the agent's certificate
	holding *wire.Holding
	landed  chan wire.Landed
}

func startCoord(t *testing.T) *testCoord {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(wiretest.ServerName, "0"))
	if err != nil {
		t.Fatal(err)
	}
	c := &testCoord{t: t, pki: wiretest.MustPKI(t), ln: ln, sessions: make(chan *coordSession, 64),
		changed: make(chan struct{}), builds: map[string]*coordBuild{}, ttl: time.Hour}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.serve(conn)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		c.mu.Lock()
		for _, ws := range c.open {
			ws.Close()
		}
		c.mu.Unlock()
		c.wg.Wait()
	})
	return c
}

// serve runs one session: Hello, Welcome, Holding, then Landed frames on
// the control stream and the agent's log streams.
func (c *testCoord) serve(conn net.Conn) {
	c.mu.Lock()
	gate := c.gate
	c.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-time.After(wiretest.Timeout):
		}
	}
	c.mu.Lock()
	c.conns++
	c.notify()
	c.mu.Unlock()
	ws, err := wire.Server(tls.Server(conn, wire.AllowJoin(c.pki.ServerTLS())), nil)
	if err != nil {
		return
	}
	c.mu.Lock()
	c.open = append(c.open, ws)
	c.mu.Unlock()
	defer ws.Close()
	if ws.Peer() == nil {
		c.serveJoin(ws)
		return
	}
	c.mu.Lock()
	c.n++
	cs := &coordSession{id: fmt.Sprintf("s%d", c.n), ws: ws, peer: ws.Peer(), landed: make(chan wire.Landed, 64)}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	ctl, err := ws.Accept(ctx)
	cancel()
	if err != nil {
		return
	}
	ctl.SetDeadline(time.Now().Add(wire.HelloTimeout))
	codec := wire.NewCodec(ctl)
	hello, err := wire.Expect[*wire.Hello](codec)
	if err != nil {
		return
	}
	c.mu.Lock()
	c.hellos++
	var refusal *wire.Refused
	if c.onHello != nil {
		refusal = c.onHello(c.hellos)
	}
	c.notify()
	c.mu.Unlock()
	if node, err := wire.NodeOf(cs.peer); err != nil || node != hello.NodeID {
		refusal = wire.NewRefused(wire.RefusedIdentity, "hello names node %s, the certificate %v (%v)", hello.NodeID, node, err)
	}
	if refusal != nil {
		c.refuse(ws, codec, refusal)
		return
	}
	if err := codec.Send(&wire.Welcome{Protocol: wire.ProtocolVersion, CoordinatorVersion: "test", SessionID: cs.id}); err != nil {
		return
	}
	if cs.holding, err = wire.Expect[*wire.Holding](codec); err != nil {
		return
	}
	ctl.SetDeadline(time.Time{})
	c.sessions <- cs

	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			st, err := ws.Accept(context.Background())
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.serveStream(cs, st)
			}()
		}
	}()
	for {
		m, err := codec.Recv()
		if err != nil {
			return
		}
		if l, ok := m.(*wire.Landed); ok {
			select {
			case cs.landed <- *l:
			default: // no test waits for that many
			}
		}
	}
}

// build returns the copy of build id; c.mu is held.
func (c *testCoord) build(id string) *coordBuild {
	b := c.builds[id]
	if b == nil {
		b = &coordBuild{out: map[string][]byte{}, nextSeq: 1}
		c.builds[id] = b
	}
	return b
}

// seed gives the coordinator a copy of build id's output made in an
// earlier session, frames numbered up to nextSeq-1.
func (c *testCoord) seed(id, stdout string, nextSeq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.build(id)
	b.out[wire.StreamStdout], b.nextSeq = []byte(stdout), nextSeq
}

// hold makes new connections wait until release is called.
func (c *testCoord) hold() (release func()) {
	gate := make(chan struct{})
	c.mu.Lock()
	c.gate = gate
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		c.gate = nil
		c.mu.Unlock()
		close(gate)
	}
}

// answerAttach sets how Attach is answered; nil restores the default.
func (c *testCoord) answerAttach(f func(at *wire.Attach, b *coordBuild) wire.Message) {
	c.mu.Lock()
	c.onAttach = f
	c.mu.Unlock()
}

func (c *testCoord) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// refuse sends the refusal that ends a session and waits, a while, for
// the agent to close it: closing first could reset the connection before
// the agent has read why.
func (c *testCoord) refuse(ws *wire.Session, codec *wire.Codec, r *wire.Refused) {
	if codec.Send(r) != nil {
		return
	}
	select {
	case <-ws.Done():
	case <-time.After(wiretest.Timeout):
	}
}

// serveJoin is the coordinator's side of a join (§6.6), on a session
// without a client certificate.
func (c *testCoord) serveJoin(ws *wire.Session) {
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	st, err := ws.Accept(ctx)
	cancel()
	if err != nil {
		return
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(wire.HelloTimeout))
	codec := wire.NewCodec(st)
	j, err := wire.Expect[*wire.Join](codec)
	if err != nil {
		return
	}
	c.mu.Lock()
	c.joins++
	token := c.token
	c.notify()
	c.mu.Unlock()
	var answer wire.Message
	switch {
	case token == "":
		answer = wire.NewRefused(wire.RefusedForbidden, "this coordinator signs no certificates")
	case subtle.ConstantTimeCompare([]byte(j.Token), []byte(token)) != 1:
		answer = wire.NewRefused(wire.RefusedIdentity, "wrong join token")
	default:
		cert, err := c.sign(j.CSR, j.NodeID, "join", "")
		if err != nil {
			answer = wire.NewRefused(wire.RefusedBadRequest, "%v", err)
		} else {
			answer = &wire.Issued{Certificate: cert.Raw}
		}
	}
	if refusal, ok := answer.(*wire.Refused); ok {
		c.refuse(ws, codec, refusal)
		return
	}
	if codec.Send(answer) == nil {
		select { // as refuse: the agent closes the join session
		case <-ws.Done():
		case <-time.After(wiretest.Timeout):
		}
	}
}

// sign signs an agent's request for node with the CA and records it.
func (c *testCoord) sign(csr []byte, node, how, session string) (*x509.Certificate, error) {
	c.mu.Lock()
	ttl := c.ttl
	c.mu.Unlock()
	cert, err := c.pki.CA.SignAgent(csr, node, node, ttl)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.issued = append(c.issued, issuedCert{how: how, session: session, at: time.Now(), cert: cert})
	c.notify()
	c.mu.Unlock()
	return cert, nil
}

// serveStream serves a stream the agent opened: a log stream or a renewal.
func (c *testCoord) serveStream(cs *coordSession, st *wire.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(wiretest.Timeout))
	codec := wire.NewCodec(st)
	m, err := codec.Recv()
	if err != nil {
		return
	}
	switch m := m.(type) {
	case *wire.Attach:
		c.serveLog(st, codec, m)
	case *wire.Renew:
		c.serveRenew(cs, codec, m)
	case *wire.CacheSave:
		var buf bytes.Buffer
		if m.Size > 0 {
			if codec.Send(&wire.CacheReady{}) != nil || codec.RecvBlob(&buf, m.Size) != nil {
				return
			}
		}
		c.mu.Lock()
		b := c.build(m.BuildID)
		b.caches = append(b.caches, savedCache{save: *m, tar: buf.Bytes(), exitsBefore: len(b.exits)})
		c.notify()
		c.mu.Unlock()
		codec.Send(&wire.CacheSaved{Size: m.Size})
	default:
		codec.Send(wire.NewRefused(wire.RefusedBadRequest, "unexpected %s", m.MessageType()))
	}
}

// serveRenew is the coordinator's side of a renewal (§6.7): a certificate
// for the session's node.
func (c *testCoord) serveRenew(cs *coordSession, codec *wire.Codec, m *wire.Renew) {
	c.mu.Lock()
	c.renews++
	var refusal *wire.Refused
	if c.onRenew != nil {
		refusal = c.onRenew(c.renews)
	}
	c.notify()
	c.mu.Unlock()
	if refusal != nil {
		codec.Send(refusal)
		return
	}
	node, _ := wire.NodeOf(cs.peer)
	cert, err := c.sign(m.CSR, node, "renew", cs.id)
	if err != nil {
		codec.Send(wire.NewRefused(wire.RefusedBadRequest, "%v", err))
		return
	}
	codec.Send(&wire.Issued{Certificate: cert.Raw})
}

// wait waits until cond holds; it runs under c.mu.
func (c *testCoord) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(wiretest.Timeout)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		ok, changed := cond(), c.changed
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("%s: not within %s", what, wiretest.Timeout)
		}
	}
}

// serveLog is the coordinator's side of a log stream (§6.4) after its
// Attach.
func (c *testCoord) serveLog(st *wire.Stream, codec *wire.Codec, at *wire.Attach) {
	c.mu.Lock()
	b := c.build(at.BuildID)
	defer func() {
		// The agent closes its side when its pump returns: the build's
		// fate is then settled in the agent, which tests wait for.
		st.SetReadDeadline(time.Now().Add(wiretest.Timeout))
		io.Copy(io.Discard, st)
		c.mu.Lock()
		b.ended++
		c.notify()
		c.mu.Unlock()
	}()
	b.attaches++
	var answer wire.Message = &wire.Attached{NextSeq: b.nextSeq,
		StdoutOffset: int64(len(b.out[wire.StreamStdout])), StderrOffset: int64(len(b.out[wire.StreamStderr])),
		Done: len(b.exits) > 0}
	if c.onAttach != nil {
		if m := c.onAttach(at, b); m != nil {
			answer = m
		}
	}
	c.notify()
	c.mu.Unlock()
	if err := codec.Send(answer); err != nil {
		return
	}
	if a, ok := answer.(*wire.Attached); !ok || a.Done {
		return
	}
	st.SetDeadline(time.Time{}) // the build runs as long as the test wants
	for {
		m, err := codec.Recv()
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *wire.Log:
			c.mu.Lock()
			b.store(m)
			c.notify()
			c.mu.Unlock()
		case *wire.Exit:
			c.mu.Lock()
			if m.LastSeq != b.nextSeq-1 {
				b.faults = append(b.faults, fmt.Sprintf("exit: last_seq %d, stored up to %d", m.LastSeq, b.nextSeq-1))
			}
			b.exits = append(b.exits, *m)
			c.notify()
			c.mu.Unlock()
			codec.Send(&wire.ExitAck{})
			return
		default:
			c.mu.Lock()
			b.faults = append(b.faults, "unexpected "+m.MessageType())
			c.mu.Unlock()
		}
	}
}

// store keeps the part of l beyond what is stored, as the coordinator
// does, and notes gaps, repeats and out-of-order sequence numbers.
func (b *coordBuild) store(l *wire.Log) {
	if l.Seq != b.nextSeq {
		b.faults = append(b.faults, fmt.Sprintf("log seq %d, want %d", l.Seq, b.nextSeq))
	}
	b.nextSeq = l.Seq + 1
	have := int64(len(b.out[l.Stream]))
	switch end := l.Offset + int64(len(l.Data)); {
	case l.Offset > have:
		b.faults = append(b.faults, fmt.Sprintf("%s gap: offset %d, stored %d", l.Stream, l.Offset, have))
	case end <= have:
		b.repeats++
	default:
		b.out[l.Stream] = append(b.out[l.Stream], l.Data[have-l.Offset:]...)
	}
}

// waitBuild waits until cond holds for build id's copy; it runs under
// c.mu.
func (c *testCoord) waitBuild(t *testing.T, id, what string, cond func(b *coordBuild) bool) *coordBuild {
	t.Helper()
	timeout := time.NewTimer(wiretest.Timeout)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		b := c.build(id)
		ok, changed, snap := cond(b), c.changed, b.copy()
		c.mu.Unlock()
		if ok {
			return snap
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("build %s: %s: not within %s (stdout %q, stderr %q, attaches %d, exits %v, faults %v)",
				id, what, wiretest.Timeout, snap.out[wire.StreamStdout], snap.out[wire.StreamStderr], snap.attaches, snap.exits, snap.faults)
		}
	}
}

// waitExit waits for build id's Exit, acknowledged, and the end of every
// log stream of the build; it checks that the agent broke no rule on its
// way.
func (c *testCoord) waitExit(t *testing.T, id string) *coordBuild {
	t.Helper()
	b := c.waitBuild(t, id, "exit", func(b *coordBuild) bool { return len(b.exits) > 0 && b.ended == b.attaches })
	if len(b.faults) > 0 {
		t.Errorf("build %s: the agent broke the protocol: %v", id, b.faults)
	}
	return b
}

// snapshot returns a copy of build id's state.
func (c *testCoord) snapshot(id string) *coordBuild {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.build(id).copy()
}

func (b *coordBuild) copy() *coordBuild {
	out := *b
	out.out = map[string][]byte{}
	for k, v := range b.out {
		out.out[k] = bytes.Clone(v)
	}
	out.exits, out.faults, out.caches = slices.Clone(b.exits), slices.Clone(b.faults), slices.Clone(b.caches)
	return &out
}

// next returns the next welcomed session.
func (c *testCoord) next(t *testing.T) *coordSession {
	t.Helper()
	select {
	case cs := <-c.sessions:
		return cs
	case <-time.After(wiretest.Timeout):
		t.Fatalf("no session within %s", wiretest.Timeout)
		return nil
	}
}

// waitLanded waits for the Landed of container id.
func (cs *coordSession) waitLanded(t *testing.T, id string) wire.Landed {
	t.Helper()
	timeout := time.After(wiretest.Timeout)
	for {
		select {
		case l := <-cs.landed:
			if l.ContainerID == id {
				return l
			}
		case <-timeout:
			t.Fatalf("no landed for %s within %s", id, wiretest.Timeout)
		}
	}
}

// testExecutor is the executor the tests launch with.
var testExecutor = []byte("#!/forgexec stand-in\n")

// launch sends a Launch (§6.2) with testExecutor and src, and returns the
// agent's answer: Started, or a *wire.RefusedError; needExecutor tells
// whether the agent asked for the executor.
func (cs *coordSession) launch(t *testing.T, buildID, containerID string, src []byte, secrets ...wire.Secret) (started *wire.Started, needExecutor bool, err error) {
	t.Helper()
	return cs.launchCache(t, buildID, containerID, src, nil, nil, secrets...)
}

// launchCache is launch with a cache part and the tar it announces.
func (cs *coordSession) launchCache(t *testing.T, buildID, containerID string, src []byte, cache *wire.LaunchCache, cacheTar []byte, secrets ...wire.Secret) (started *wire.Started, needExecutor bool, err error) {
	t.Helper()
	ref, err := wire.BlobRefOf(bytes.NewReader(testExecutor))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	defer cancel()
	st, err := cs.ws.Open(ctx)
	if err != nil {
		return nil, false, err
	}
	defer st.Close()
	c := wire.NewCodec(st)
	m := &wire.Launch{BuildID: buildID, ContainerID: containerID, Executor: ref,
		Spec: []byte(`{"build_id":"` + buildID + `"}`), SourceSize: int64(len(src)), Workdir: "/forge/src", Cache: cache, Secrets: secrets}
	if err := c.Send(m); err != nil {
		return nil, false, err
	}
	ready, err := wire.Expect[*wire.LaunchReady](c)
	if err != nil {
		return nil, false, err
	}
	if ready.NeedExecutor {
		if err := c.SendBlob(bytes.NewReader(testExecutor), ref.Size); err != nil {
			return nil, true, err
		}
	}
	if cache != nil && cache.Size > 0 {
		if err := c.SendBlob(bytes.NewReader(cacheTar), cache.Size); err != nil {
			return nil, ready.NeedExecutor, err
		}
	}
	if err := c.SendBlob(bytes.NewReader(src), int64(len(src))); err != nil {
		return nil, ready.NeedExecutor, err
	}
	started, err = wire.Expect[*wire.Started](c)
	return started, ready.NeedExecutor, err
}

// cancel sends a Cancel (§6.3) and returns the agent's answer.
func (cs *coordSession) cancel(buildID, containerID string, grace int) (*wire.Cancelled, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	defer cancel()
	st, err := cs.ws.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	c := wire.NewCodec(st)
	if err := c.Send(&wire.Cancel{BuildID: buildID, ContainerID: containerID, GraceSeconds: grace}); err != nil {
		return nil, err
	}
	return wire.Expect[*wire.Cancelled](c)
}

// refusedCode is the code of a *wire.RefusedError, or "" for another error.
func refusedCode(err error) string {
	var r *wire.RefusedError
	if errors.As(err, &r) {
		return r.Code
	}
	return ""
}

// agentRun is an agent that Run runs against a testCoord.
type agentRun struct {
	ids  chan string     // what OnSession reports: session ids, "" for a session's end
	log  *syncbuf.Buffer // the agent's log
	stop func()          // ends Run's context and checks that Run returns soon
}

// runAgent runs Run against c with docker, with a certificate for docker's
// node, until the test ends or stop is called.
func runAgent(t *testing.T, c *testCoord, docker Docker) *agentRun {
	t.Helper()
	return runAgentWith(t, c, docker, func(cfg *Config) { cfg.TLS = c.pki.MustAgentTLS(t, nodeOf(t, docker)) })
}

// nodeOf is the node id docker's engine reports.
func nodeOf(t *testing.T, docker Docker) string {
	t.Helper()
	info, err := docker.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.Swarm.NodeID
}

// agentConfig is the configuration runAgentWith starts from: c's CA and
// address, no certificate of the agent's own.
func agentConfig(t *testing.T, c *testCoord, docker Docker, log io.Writer) Config {
	return Config{
		Coordinator: c.ln.Addr().String(), TLS: wire.JoinConfig(c.pki.Pool, wiretest.ServerName), Docker: docker,
		Logger:     slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), log), &slog.HandlerOptions{Level: slog.LevelDebug})),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
}

// runAgentWith is runAgent with the configuration agentConfig, changed by
// edit.
func runAgentWith(t *testing.T, c *testCoord, docker Docker, edit func(*Config)) *agentRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &agentRun{ids: make(chan string, 64), log: &syncbuf.Buffer{}}
	cfg := agentConfig(t, c, docker, r.log)
	cfg.OnSession = func(id string) { r.ids <- id }
	edit(&cfg)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	r.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(wiretest.Timeout):
			t.Errorf("Run did not return within %s of its context's end", wiretest.Timeout)
		}
	})
	t.Cleanup(r.stop)
	return r
}

// start starts a testCoord and an agent on docker, and returns them with
// the first session, whose start OnSession has reported.
func start(t *testing.T, docker Docker) (*testCoord, *coordSession, *agentRun) {
	t.Helper()
	c := startCoord(t)
	r := runAgent(t, c, docker)
	cs := c.next(t)
	if id := r.next(t); id != cs.id {
		t.Fatalf("OnSession(%q), want %q", id, cs.id)
	}
	return c, cs, r
}

// next waits for OnSession's next report.
func (r *agentRun) next(t *testing.T) string {
	t.Helper()
	select {
	case id := <-r.ids:
		return id
	case <-time.After(wiretest.Timeout):
		t.Fatalf("no OnSession call within %s", wiretest.Timeout)
		return ""
	}
}

var _ Docker = (*fakedocker.Docker)(nil)
