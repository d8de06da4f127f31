package buildsim

import (
	"context"
	"errors"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/coordinator/plan"
	"github.com/forge-ci/forge/wire"
)

const wait = 10 * time.Second

func newAgents(t *testing.T) (*Agents, *logs.Store) {
	ls := &logs.Store{Dir: t.TempDir()}
	t.Cleanup(func() { ls.Close() })
	return NewAgents(t, ls, NewSwarm(t)), ls
}

func recv(t *testing.T, ch <-chan wire.Exit) (wire.Exit, bool) {
	t.Helper()
	select {
	case x, ok := <-ch:
		return x, ok
	case <-time.After(wait):
		t.Fatal("no exit delivered and the channel is still open")
		return wire.Exit{}, false
	}
}

// WaitExit behaves as agents.Hub's: a recorded exit at once, a reported
// one when it comes, none when ctx ends, an error without a log.
func TestWaitExit(t *testing.T) {
	a, ls := newAgents(t)
	ctx := context.Background()
	if _, err := a.WaitExit(ctx, "20260101T000000-n0l0g0"); !errors.Is(err, coordinator.ErrUnknownBuild) {
		t.Errorf("WaitExit of a build without a log: %v, want ErrUnknownBuild", err)
	}

	const before, after, never = "20260101T000000-bef0re", "20260101T000000-af7e00", "20260101T000000-ne4e00"
	for _, id := range []string{before, after, never} {
		if err := ls.Create(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := ls.Exit(ctx, before, &wire.Exit{ExitCode: 2}); err != nil {
		t.Fatal(err)
	}
	ch, err := a.WaitExit(ctx, before)
	if err != nil {
		t.Fatal(err)
	}
	if x, ok := recv(t, ch); !ok || x.ExitCode != 2 {
		t.Errorf("recorded exit: %+v %v, want code 2", x, ok)
	}

	ch, err = a.WaitExit(ctx, after)
	if err != nil {
		t.Fatal(err)
	}
	a.Report(after, "out\n", &wire.Exit{ExitCode: 3})
	if x, ok := recv(t, ch); !ok || x.ExitCode != 3 || x.LastSeq != 1 {
		t.Errorf("reported exit: %+v %v, want code 3 after seq 1", x, ok)
	}
	if rec, err := ls.Exited(after); err != nil || rec == nil || rec.ExitCode != 3 {
		t.Errorf("the log store has %+v, %v", rec, err)
	}

	cctx, cancel := context.WithCancel(ctx)
	ch, err = a.WaitExit(cctx, never)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if x, ok := recv(t, ch); ok {
		t.Errorf("exit %+v after ctx ended", x)
	}
}

// A landing reaches the build's watcher, and nobody once it stopped.
func TestLanded(t *testing.T) {
	a, _ := newAgents(t)
	a.Landed("node-a", wire.Landed{BuildID: "b", ContainerID: "c"}) // nobody watches: dropped
	ch, stop := a.Landings("b")
	a.Landed("node-a", wire.Landed{BuildID: "b", ContainerID: "c-a"})
	if l := <-ch; l != (coordinator.Landing{Node: "node-a", Container: "c-a"}) {
		t.Errorf("landing %+v", l)
	}
	stop()
	a.Landed("node-a", wire.Landed{BuildID: "b", ContainerID: "c-b"})
	select {
	case l := <-ch:
		t.Errorf("landing %+v after stop", l)
	default:
	}
}

// A service is removed once; the second removal is not found.
func TestSwarmRemove(t *testing.T) {
	s := NewSwarm(t)
	ctx := context.Background()
	spec := swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "forge-x", Labels: map[string]string{plan.LabelBuild: "b"}}}
	resp, err := s.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ServiceRemove(ctx, resp.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.ServiceRemove(ctx, resp.ID); !cerrdefs.IsNotFound(err) {
		t.Errorf("second removal: %v, want not found", err)
	}
	if n := s.Removals(resp.ID); n != 2 {
		t.Errorf("%d removals counted", n)
	}
}
