package agents

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/internal/syncbuf"

	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// verifyFunc is a NodeVerifier made of a function.
type verifyFunc func(nodeID string, remote net.Addr) error

func (f verifyFunc) VerifyAgent(_ context.Context, nodeID string, remote net.Addr) error {
	return f(nodeID, remote)
}

// buildsFunc is a Builds made of a function.
type buildsFunc func(id string) (*coordinator.Build, error)

func (f buildsFunc) Build(_ context.Context, id string) (*coordinator.Build, error) { return f(id) }

// startedOn is a Builds where every build has started on node, in
// container "c-<build id>"... unless the test says otherwise.
func startedOn(node string) buildsFunc {
	return func(id string) (*coordinator.Build, error) {
		return &coordinator.Build{ID: id, State: coordinator.Running, NodeID: node, ContainerID: "c" + strings.TrimPrefix(id, "b"),
			Started: time.Now()}, nil
	}
}

// serveAgents runs a Hub on loopback until the test ends; builds b1, b2...
// have started on node n1 in containers c1, c2...
func serveAgents(t *testing.T, p *wiretest.PKI, v NodeVerifier) (*Hub, string, *syncbuf.Buffer) {
	t.Helper()
	return serveHub(t, Config{TLS: p.ServerTLS(), Verify: v, Builds: startedOn("n1")})
}

// serveHub runs a Hub of cfg (with a log store and a logger of its own)
// on loopback until the test ends.
func serveHub(t *testing.T, cfg Config) (*Hub, string, *syncbuf.Buffer) {
	t.Helper()
	out := &syncbuf.Buffer{}
	if cfg.Logs == nil {
		cfg.Logs = &logs.Store{Dir: t.TempDir()}
	}
	cfg.Log = slog.New(slog.NewTextHandler(out, nil))
	s := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s, ln.Addr().String(), out
}

// rawAgent speaks the wire by hand, with a certificate for hello's node:
// Hello, then whatever the test wants.
func rawAgent(t *testing.T, p *wiretest.PKI, addr string, hello wire.Hello) (*wire.Session, *wire.Codec, error) {
	t.Helper()
	return rawAgentTLS(t, p.MustAgentTLS(t, hello.NodeID), addr, hello)
}

// rawAgentTLS is rawAgent with the TLS configuration (the certificate) the
// test chooses.
func rawAgentTLS(t *testing.T, tc *tls.Config, addr string, hello wire.Hello) (*wire.Session, *wire.Codec, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ys, err := wire.Client(tls.Client(conn, tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ys.Close() })
	st, err := ys.Open(context.Background())
	if err != nil {
		return ys, nil, err // TLS 1.3: the coordinator's refusal of the certificate shows here
	}
	st.SetDeadline(time.Now().Add(10 * time.Second))
	c := wire.NewCodec(st)
	// As the real agent does: the answer is read even when the send
	// failed, since a refusing coordinator may close the session first.
	serr := c.Send(&hello)
	if _, err := wire.Expect[*wire.Welcome](c); err != nil {
		return ys, c, err
	}
	if serr != nil {
		return ys, c, serr
	}
	return ys, c, c.Send(&wire.Holding{Builds: []wire.Held{}})
}

func hello(node string) wire.Hello {
	return wire.Hello{Protocol: wire.ProtocolVersion, NodeID: node, Hostname: "h-" + node, AgentVersion: "test", EngineVersion: "20.10"}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestAgentServerRefusesProtocolMismatch(t *testing.T) {
	p := wiretest.MustPKI(t)
	s, addr, logs := serveAgents(t, p, verifyFunc(func(string, net.Addr) error { return nil }))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	h := hello("n1")
	h.Protocol = wire.ProtocolVersion + 1
	_, _, err := rawAgent(t, p, addr, h)
	var r *wire.RefusedError
	if !errors.As(err, &r) || r.Code != wire.RefusedProtocol {
		t.Fatalf("hello with protocol %d: %v, want refused %s", h.Protocol, err, wire.RefusedProtocol)
	}
	want := fmt.Sprintf("agent speaks %d, coordinator speaks %d", h.Protocol, wire.ProtocolVersion)
	if !strings.Contains(r.Message, want) {
		t.Errorf("agent sees %q, want it to name both versions", r.Message)
	}
	if !strings.Contains(logs.String(), want) {
		t.Errorf("coordinator log lacks %q:\n%s", want, logs.String())
	}
	if len(s.Agents()) != 0 {
		t.Errorf("refused agent is bound: %+v", s.Agents())
	}
}

func TestAgentServerIdentity(t *testing.T) {
	p := wiretest.MustPKI(t)
	s, addr, _ := serveAgents(t, p, verifyFunc(func(node string, _ net.Addr) error {
		if node != "good" {
			return fmt.Errorf("node %s is not in this swarm", node)
		}
		return nil
	}))
	_, _, err := rawAgent(t, p, addr, hello("evil"))
	var r *wire.RefusedError
	if !errors.As(err, &r) || r.Code != wire.RefusedIdentity || !strings.Contains(r.Message, "not in this swarm") {
		t.Fatalf("unverifiable node: %v", err)
	}

	first, _, err := rawAgent(t, p, addr, hello("good"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "first session bound", func() bool { return len(s.Agents()) == 1 })
	firstID := s.Agents()[0].SessionID
	// A second valid session for the same node replaces the first.
	if _, _, err := rawAgent(t, p, addr, hello("good")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "second session bound", func() bool { a := s.Agents(); return len(a) == 1 && a[0].SessionID != firstID })
	select {
	case <-first.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the replaced session is still open")
	}
	// Requests go to the bound agent only; other nodes have none.
	_, err = s.Launch(context.Background(), "other", coordinator.LaunchRequest{BuildID: "b", ContainerID: "c", Executor: &coordinator.Executor{}})
	if !errors.Is(err, coordinator.ErrNoAgent) {
		t.Errorf("launch on a node without agent: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.WaitAgent(ctx, "other"); !errors.Is(err, coordinator.ErrNoAgent) {
		t.Errorf("WaitAgent: %v", err)
	}
}

// The agents' list carries what GET /api/agents shows (web serves it as
// JSON): every field set, the address the agent dialled from.
func TestHubAgentsList(t *testing.T) {
	p := wiretest.MustPKI(t)
	s, addr, _ := serveAgents(t, p, verifyFunc(func(string, net.Addr) error { return nil }))
	if _, _, err := rawAgent(t, p, addr, hello("n1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "agent bound", func() bool { return len(s.Agents()) == 1 })
	raw, err := json.Marshal(s.Agents())
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%v", got)
	}
	for _, k := range []string{"node_id", "hostname", "agent_version", "engine_version", "address", "connected_since"} {
		if got[0][k] == nil || got[0][k] == "" {
			t.Errorf("agent lacks %s: %v", k, got[0])
		}
	}
	if got[0]["node_id"] != "n1" || !strings.HasPrefix(got[0]["address"].(string), "127.0.0.1:") {
		t.Errorf("agent %v", got[0])
	}
}

// An agent's Landed reaches whoever watches that build, with the node of
// the session it came on; an Exit on a log stream is recorded and reaches
// WaitExit, before or after the wait began.
func TestHubLandingsAndExits(t *testing.T) {
	p := wiretest.MustPKI(t)
	s, addr, _ := serveAgents(t, p, verifyFunc(func(string, net.Addr) error { return nil }))
	store := s.cfg.Logs.(*logs.Store)
	for _, id := range []string{"b1", "b2"} {
		if err := store.Create(id); err != nil {
			t.Fatal(err)
		}
	}
	landed, stop := s.Landings("b1")
	defer stop()
	ys, ctl, err := rawAgent(t, p, addr, hello("n1"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "agent bound", func() bool { return len(s.Agents()) == 1 })
	if err := ctl.Send(&wire.Landed{BuildID: "b2", ContainerID: "c2", Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Send(&wire.Landed{BuildID: "b1", ContainerID: "c1", Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-landed:
		if l != (coordinator.Landing{Node: "n1", Container: "c1"}) {
			t.Errorf("landing %+v", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no landing for b1")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	exits, err := s.WaitExit(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	st, err := ys.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(10 * time.Second))
	c := wire.NewCodec(st)
	if err := c.Send(&wire.Attach{BuildID: "b1", ContainerID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Expect[*wire.Attached](c); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(&wire.Exit{ExitCode: 3, FinishedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Expect[*wire.ExitAck](c); err != nil {
		t.Fatal(err)
	}
	select {
	case x, ok := <-exits:
		if !ok || x.ExitCode != 3 {
			t.Errorf("exit %+v, %v", x, ok)
		}
	case <-ctx.Done():
		t.Fatal("WaitExit saw no exit")
	}
	// Recorded before the wait: delivered at once.
	again, err := s.WaitExit(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	if x, ok := <-again; !ok || x.ExitCode != 3 {
		t.Errorf("recorded exit %+v, %v", x, ok)
	}
	// No exit: the channel closes when the wait ends.
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer scancel()
	none, err := s.WaitExit(short, "b2")
	if err != nil {
		t.Fatal(err)
	}
	if x, ok := <-none; ok {
		t.Errorf("exit %+v for a build that has none", x)
	}
	if _, err := s.WaitExit(ctx, "nope"); !errors.Is(err, coordinator.ErrUnknownBuild) {
		t.Errorf("WaitExit of an unknown build: %v", err)
	}
}
