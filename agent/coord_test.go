package agent

import (
	"bytes"
	"context"
	"crypto/tls"
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
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// testCoord is the coordinator's side of the protocol (PROTOCOL.md §6), as
// little of it as the tests of the session loop need, on loopback with
// real TLS and wire sessions: it welcomes every agent, hands each session
// to the test, keeps a copy of each build's log and counts what the agent
// sends, so tests can check that nothing is lost, repeated or reported
// twice.
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
}

// coordBuild is the coordinator's copy of a build.
type coordBuild struct {
	out      map[string][]byte // stored output, per stream
	nextSeq  uint64
	attaches int
	ended    int         // log streams the agent closed (its pump had returned)
	repeats  int         // log frames carrying only bytes already stored
	exits    []wire.Exit // every Exit received
	faults   []string    // breaks of the protocol the agent committed
}

// coordSession is one session with the agent, as the test sees it.
type coordSession struct {
	id      string
	ws      *wire.Session
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
		changed: make(chan struct{}), builds: map[string]*coordBuild{}}
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
	ws, err := wire.Server(tls.Server(conn, c.pki.ServerTLS()), nil)
	if err != nil {
		return
	}
	c.mu.Lock()
	c.open = append(c.open, ws)
	c.n++
	cs := &coordSession{id: fmt.Sprintf("s%d", c.n), ws: ws, landed: make(chan wire.Landed, 64)}
	c.mu.Unlock()
	defer ws.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	ctl, err := ws.Accept(ctx)
	cancel()
	if err != nil {
		return
	}
	ctl.SetDeadline(time.Now().Add(wire.HelloTimeout))
	codec := wire.NewCodec(ctl)
	if _, err := wire.Expect[*wire.Hello](codec); err != nil {
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
				c.serveLog(st)
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

// serveLog is the coordinator's side of a log stream (§6.4).
func (c *testCoord) serveLog(st *wire.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(wiretest.Timeout))
	codec := wire.NewCodec(st)
	at, err := wire.Expect[*wire.Attach](codec)
	if err != nil {
		return
	}
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
	out.exits, out.faults = slices.Clone(b.exits), slices.Clone(b.faults)
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
func (cs *coordSession) launch(t *testing.T, buildID, containerID string, src []byte) (started *wire.Started, needExecutor bool, err error) {
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
		Spec: []byte(`{"build_id":"` + buildID + `"}`), SourceSize: int64(len(src)), Workdir: "/forge/src"}
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
	ids  chan string // what OnSession reports: session ids, "" for a session's end
	stop func()      // ends Run's context and checks that Run returns soon
}

// runAgent runs Run against c with docker until the test ends or stop is
// called.
func runAgent(t *testing.T, c *testCoord, docker Docker) *agentRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &agentRun{ids: make(chan string, 64)}
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Coordinator: c.ln.Addr().String(), TLS: c.pki.ClientTLS(), Docker: docker,
			Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
			MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			OnSession: func(id string) { r.ids <- id },
		})
	}()
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
