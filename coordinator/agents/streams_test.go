package agents

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// An agent that opens one stream more than the bound, and sends nothing
// on them, loses its session (logged with its node); another agent's
// session carries on and still serves streams.
func TestTooManyStreamsClosesTheSession(t *testing.T) {
	const bound = 4
	p := wiretest.MustPKI(t)
	s, addr, out := serveHub(t, Config{TLS: p.ServerTLS(), Builds: startedOn("n1"), MaxStreams: bound,
		Verify: verifyFunc(func(string, net.Addr) error { return nil })})
	good, _, err := rawAgent(t, p, addr, hello("n1"))
	if err != nil {
		t.Fatal(err)
	}
	bad, _, err := rawAgent(t, p, addr, hello("n2"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both agents bound", func() bool { return len(s.Agents()) == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range bound + 1 {
		if _, err := bad.Open(ctx); err != nil {
			t.Fatalf("open stream %d: %v", i, err)
		}
	}
	select {
	case <-bad.Done():
	case <-ctx.Done():
		t.Fatalf("the session of an agent with %d open streams (bound %d) was not closed", bound+1, bound)
	}
	waitFor(t, "n2 unbound", func() bool { return len(s.Agents()) == 1 && s.Agents()[0].NodeID == "n1" })
	if log := out.String(); !strings.Contains(log, "too many open streams") || !strings.Contains(log, "node=n2") {
		t.Errorf("the hub's log does not name the closed session's node:\n%s", log)
	}

	// n1's session may hold the bound's number of open streams, and still
	// serves: with bound-1 streams held (each waiting for its first frame,
	// so each still counted), an attach on the bound-th is answered. Streams
	// are accepted in the order they were opened, so the attach is counted
	// last; no wait for a count to drop.
	var held []*wire.Stream
	for range bound - 1 {
		st, err := good.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, st)
	}
	defer func() {
		for _, st := range held {
			st.Close()
		}
	}()
	st, err := good.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewCodec(st)
	if err := c.Send(&wire.Attach{BuildID: "nope", ContainerID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(); err != nil {
		t.Fatalf("the other session no longer serves: %v", err)
	}
	if len(s.Agents()) != 1 {
		t.Errorf("agents %+v, want n1 alone", s.Agents())
	}
}
