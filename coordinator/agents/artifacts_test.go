package agents

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/wire"
	"github.com/forge-ci/forge/wire/wiretest"
)

// TestHubArtifacts: the hub asks the agent of the node the build was
// launched on, for its container, and no other, with the request it is
// given; put reads exactly the announced bytes; a header over max_bytes
// is refused unread; a refusal is an error.
func TestHubArtifacts(t *testing.T) {
	p := wiretest.MustPKI(t)
	s, addr, _ := serveHub(t, Config{TLS: p.ServerTLS(), Builds: startedOn("n1"),
		Verify: verifyFunc(func(string, net.Addr) error { return nil })})
	n1, _, err := rawAgent(t, p, addr, hello("n1"))
	if err != nil {
		t.Fatal(err)
	}
	n2, _, err := rawAgent(t, p, addr, hello("n2"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both agents bound", func() bool { return len(s.Agents()) == 2 })
	// n2 answers nothing: it must not be asked.
	asked2 := make(chan struct{}, 1)
	go func() {
		if st, err := n2.Accept(context.Background()); err == nil {
			asked2 <- struct{}{}
			st.Close()
		}
	}()
	answers := make(chan func(*wire.ArtifactsRequest, *wire.Codec), 1)
	got := make(chan *wire.ArtifactsRequest, 4)
	go func() {
		for {
			st, err := n1.Accept(context.Background())
			if err != nil {
				return
			}
			c := wire.NewCodec(st)
			m, err := wire.Expect[*wire.ArtifactsRequest](c)
			if err != nil {
				t.Errorf("agent: %v", err)
				st.Close()
				continue
			}
			got <- m
			(<-answers)(m, c)
			st.Close()
		}
	}()
	req := coordinator.ArtifactsRequest{BuildID: "b1", ContainerID: "c1", Workdir: "/forge/src", Paths: []string{"out/*"}, MaxBytes: 1 << 10}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	collect := func() ([]string, string, error) {
		var body []byte
		notes, err := s.Artifacts(ctx, "n1", req, func(r io.Reader) error {
			var err error
			body, err = io.ReadAll(io.LimitReader(r, 10))
			return err
		})
		return notes, string(body), err
	}

	answers <- func(_ *wire.ArtifactsRequest, c *wire.Codec) {
		c.Send(&wire.ArtifactsHeader{Size: 13, Notes: []string{"x matches nothing"}})
		c.SendBlob(strings.NewReader("0123456789abc"), 13)
	}
	notes, body, err := collect()
	if err != nil || body != "0123456789" || len(notes) != 1 || notes[0] != "x matches nothing" {
		t.Errorf("artifacts: %q, %q, %v", notes, body, err)
	}
	if m := <-got; m.BuildID != "b1" || m.ContainerID != "c1" || m.Workdir != "/forge/src" || m.Paths[0] != "out/*" || m.MaxBytes != 1<<10 {
		t.Errorf("request %+v", m)
	}

	answers <- func(_ *wire.ArtifactsRequest, c *wire.Codec) {
		c.Send(&wire.ArtifactsHeader{Size: 2 << 10})
		c.SendBlob(strings.NewReader(strings.Repeat("x", 2<<10)), 2<<10)
	}
	if _, body, err := collect(); err == nil || body != "" || !strings.Contains(err.Error(), "more than the 1024 asked for") {
		t.Errorf("over max_bytes: %q, %v", body, err)
	}
	<-got

	answers <- func(_ *wire.ArtifactsRequest, c *wire.Codec) {
		c.Send(&wire.ArtifactsHeader{Size: 13})
		c.SendBlob(strings.NewReader("0123"), 4)
	}
	if _, err := s.Artifacts(ctx, "n1", req, func(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err }); !errors.Is(err, wire.ErrShortBlob) {
		t.Errorf("short: %v", err)
	}
	<-got

	answers <- func(_ *wire.ArtifactsRequest, c *wire.Codec) {
		c.Send(wire.NewRefused(wire.RefusedForbidden, "container has not run and stopped"))
	}
	var refused *wire.RefusedError
	if _, _, err := collect(); !errors.As(err, &refused) || refused.Code != wire.RefusedForbidden {
		t.Errorf("refused: %v", err)
	}
	<-got

	// Builds b1, b2... started on n1 in c1, c2...: asking another node,
	// or for another container, is refused before anything is sent.
	for _, tc := range []struct {
		node string
		req  coordinator.ArtifactsRequest
	}{
		{"n2", req},
		{"n1", coordinator.ArtifactsRequest{BuildID: "b1", ContainerID: "c2", Workdir: "/forge/src", Paths: []string{"a"}, MaxBytes: 1}},
	} {
		if _, err := s.Artifacts(ctx, tc.node, tc.req, func(io.Reader) error { return nil }); !errors.Is(err, errNotBound) {
			t.Errorf("%s %+v: %v, want refused as not bound", tc.node, tc.req, err)
		}
	}
	select {
	case m := <-got:
		t.Errorf("asked %+v", m)
	default:
	}
	if _, err := s.Artifacts(ctx, "n3", coordinator.ArtifactsRequest{BuildID: "b3", ContainerID: "c3"}, func(io.Reader) error { return nil }); !errors.Is(err, errNotBound) {
		t.Errorf("no agent: %v", err)
	}
	select {
	case <-asked2:
		t.Error("the agent of another node was asked")
	default:
	}
}
