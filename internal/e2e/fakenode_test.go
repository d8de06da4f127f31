package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/agent"
	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/internal/fakedocker"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// The tests in this file run the real agent against the real agents.Hub
// and log store, on a fake node (internal/fakedocker) instead of the
// engine: the agent's session loop against the coordinator's own side of
// the protocol, on any machine.

// anyNode binds every agent to the node it claims.
type anyNode struct{}

func (anyNode) VerifyAgent(context.Context, string, net.Addr) error { return nil }

// startFakeAgent runs a real agent on node, dialling addr.
func startFakeAgent(t testing.TB, p *wiretest.PKI, addr string, node *fakedocker.Node) {
	t.Helper()
	a, err := agent.New(agent.Config{
		Coordinator: addr, TLS: p.MustAgentTLS(t, node.ID()), Docker: node.Docker(), Session: fastSession,
		Logger: testLogger(t, "agent"), MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
}

// waitStored waits until the store holds want in build id's output.
func waitStored(t testing.TB, c *coord, id, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	defer cancel()
	w := &untilWriter{want: want, found: cancel}
	c.logs.Follow(ctx, id, w, true)
	if !strings.Contains(w.buf.String(), want) {
		t.Fatalf("build %s: %q not stored within %s (stored %q)", id, want, wiretest.Timeout, w.buf.String())
	}
}

// untilWriter keeps what is written and calls found once it holds want.
type untilWriter struct {
	buf   bytes.Buffer
	want  string
	found func()
}

func (w *untilWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.found()
	}
	return len(p), nil
}

// TestFakeNodeSessionCuts: the session of an agent on a fake node is cut
// twice while a build writes; each cut's agent comes back, the Hub's log
// holds every part once, in order, and the exit is recorded once.
func TestFakeNodeSessionCuts(t *testing.T) {
	p := wiretest.MustPKI(t)
	c := startCoord(t, p, anyNode{}, "")
	px := startProxy(t, c.addr)
	node := fakedocker.NewNode("n1")
	startFakeAgent(t, p, px.addr(), node)
	waitAgent(t, c, "n1", wiretest.Timeout)

	const buildID = "b1"
	if err := c.logs.Create(buildID); err != nil {
		t.Fatal(err)
	}
	landed, stop := c.server.Landings(buildID)
	defer stop()
	cid := node.Create(buildID)
	select {
	case l := <-landed:
		if l.Container != cid {
			t.Fatalf("landed in %s, want %s", l.Container, cid)
		}
	case <-time.After(wiretest.Timeout):
		t.Fatal("no Landed report")
	}
	exe, err := coordinator.NewExecutor([]byte("forgexec stand-in"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wiretest.Timeout)
	defer cancel()
	res, err := c.server.Launch(ctx, "n1", coordinator.LaunchRequest{
		BuildID: buildID, ContainerID: cid, Executor: exe, Spec: spec(t, buildID, "true"), Workdir: "/forge/src",
	})
	if err != nil || !res.ExecutorSent {
		t.Fatalf("launch: %+v, %v; want started, the executor sent", res, err)
	}

	var want strings.Builder
	for i := 1; i <= 3; i++ {
		part := fmt.Sprintf("part %d\n", i)
		want.WriteString(part)
		node.Output(cid, wire.StreamStdout, part)
		waitStored(t, c, buildID, want.String())
		if i < 3 {
			px.cut()
			waitAgent(t, c, "n1", wiretest.Timeout)
		}
	}
	node.Exit(cid, 7)
	out, x := output(t, c, buildID)
	if out != want.String() || x.ExitCode != 7 {
		t.Errorf("output %q, exit %d; want %q, 7", out, x.ExitCode, want.String())
	}
	c.exits.mu.Lock()
	defer c.exits.mu.Unlock()
	if n := c.exits.recorded[buildID]; n != 1 {
		t.Errorf("exit recorded %d times, want once", n)
	}
}
