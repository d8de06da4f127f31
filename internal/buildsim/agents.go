package buildsim

import (
	"bytes"
	"context"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/agents"
	"github.com/forge-ci/forge/coordinator/logs"
	"github.com/forge-ci/forge/wire"
)

// LaunchCall is one Launch the lifecycle made.
type LaunchCall struct {
	Node   string
	Req    coordinator.LaunchRequest
	Source []byte // what Req.Source held
	// RemovedBefore counts ServiceRemove calls of the build's service
	// before the launch.
	RemovedBefore int
}

// CancelCall is one Cancel the lifecycle made.
type CancelCall struct {
	Node, Build, Container string
	Grace                  time.Duration
}

// Agents simulates the agents of every node (coordinator.Agents). By
// default an agent is there on every node, starts every build and never
// reports an exit, and a Cancel stops the container, which exits 143;
// the function fields say otherwise. Set them before the lifecycle uses
// the agents, or later with the Set methods. What an agent reports
// (Report) goes into the real logs.Store and then to WaitExit's waiters,
// as agents.Hub does.
type Agents struct {
	// WaitAgentFunc, when set, replaces "the agent is there".
	WaitAgentFunc func(ctx context.Context, node string) error
	// LaunchFunc, when set, is what the agent does with a Launch (after
	// it is recorded); nil: started, no exit yet.
	LaunchFunc func(ctx context.Context, node string, req coordinator.LaunchRequest) (*coordinator.LaunchResult, error)
	// CancelFunc, when set, is what the agent does with a Cancel (after it
	// is recorded); nil: the container is stopped and exits 143.
	CancelFunc func(ctx context.Context, c CancelCall) (*wire.Cancelled, error)
	// ArtifactsFunc, when set, is what the agent does with an artifacts
	// request (after it is recorded); nil: it sends an empty archive.
	ArtifactsFunc func(ctx context.Context, node string, req coordinator.ArtifactsRequest, put func(io.Reader) error) ([]string, error)

	t    testing.TB
	logs *logs.Store
	sw   *Swarm
	bg   sync.WaitGroup // Report's writers

	mu       sync.Mutex
	waits    []string
	launches []LaunchCall
	cancels  []CancelCall
	arts     []ArtifactsCall
	// Landings and exits reach the lifecycle as through the hub.
	*agents.Reports
}

var _ coordinator.Agents = (*Agents)(nil)

// NewAgents returns agents that report into ls and see sw's services; the
// end of the test waits for their reports to be written.
func NewAgents(t testing.TB, ls *logs.Store, sw *Swarm) *Agents {
	a := &Agents{t: t, logs: ls, sw: sw, Reports: agents.NewReports(ls.Exited)}
	t.Cleanup(a.bg.Wait)
	return a
}

// WaitAgent implements coordinator.Agents.
func (a *Agents) WaitAgent(ctx context.Context, node string) error {
	a.mu.Lock()
	a.waits = append(a.waits, node)
	wait := a.WaitAgentFunc
	a.mu.Unlock()
	if wait != nil {
		return wait(ctx, node)
	}
	return nil
}

// Launch implements coordinator.Agents: it reads the source whole.
func (a *Agents) Launch(ctx context.Context, node string, req coordinator.LaunchRequest) (*coordinator.LaunchResult, error) {
	var src []byte
	if req.Source != nil {
		var err error
		if src, err = io.ReadAll(req.Source); err != nil {
			a.t.Errorf("read the source of %s: %v", req.BuildID, err)
		}
	}
	removed := 0
	if svc := a.sw.Service(req.BuildID); svc != nil {
		removed = a.sw.Removals(svc.ID)
	}
	a.mu.Lock()
	a.launches = append(a.launches, LaunchCall{Node: node, Req: req, Source: src, RemovedBefore: removed})
	launch := a.LaunchFunc
	a.mu.Unlock()
	if launch != nil {
		return launch(ctx, node, req)
	}
	return started(req), nil
}

func started(req coordinator.LaunchRequest) *coordinator.LaunchResult {
	return &coordinator.LaunchResult{Started: wire.Started{ContainerID: req.ContainerID, StartedAt: time.Now()}}
}

// Cancel implements coordinator.Agents.
func (a *Agents) Cancel(ctx context.Context, node, build, container string, grace time.Duration) (*wire.Cancelled, error) {
	c := CancelCall{Node: node, Build: build, Container: container, Grace: grace}
	a.mu.Lock()
	a.cancels = append(a.cancels, c)
	cancel := a.CancelFunc
	a.mu.Unlock()
	if cancel != nil {
		return cancel(ctx, c)
	}
	code := 143
	a.Report(build, "terminated\n", &wire.Exit{ExitCode: code})
	return &wire.Cancelled{ExitCode: &code}, nil
}

// ArtifactsCall is one artifacts request the lifecycle made.
type ArtifactsCall struct {
	Node string
	Req  coordinator.ArtifactsRequest
}

// Artifacts implements coordinator.Agents.
func (a *Agents) Artifacts(ctx context.Context, node string, req coordinator.ArtifactsRequest, put func(io.Reader) error) ([]string, error) {
	a.mu.Lock()
	a.arts = append(a.arts, ArtifactsCall{Node: node, Req: req})
	fn := a.ArtifactsFunc
	a.mu.Unlock()
	if fn != nil {
		return fn(ctx, node, req, put)
	}
	return nil, put(bytes.NewReader(make([]byte, 1024))) // an empty archive: its end only
}

// ArtifactsCalls returns the artifacts requests so far.
func (a *Agents) ArtifactsCalls() []ArtifactsCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.arts)
}

// Report writes, in the background, what an agent reports of a build: an
// output chunk (if out is set) and then, if x is set, the exit, which
// WaitExit's waiters then receive.
func (a *Agents) Report(buildID, out string, x *wire.Exit) {
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		ctx := context.Background()
		var seq uint64
		if out != "" {
			seq = 1
			if err := a.logs.Log(ctx, buildID, &wire.Log{Seq: seq, Stream: wire.StreamStdout, Data: []byte(out)}); err != nil {
				a.t.Errorf("log of %s: %v", buildID, err)
			}
		}
		if x == nil {
			return
		}
		e := *x
		e.LastSeq, e.FinishedAt = seq, time.Now().UTC()
		if err := a.logs.Exit(ctx, buildID, &e); err != nil {
			a.t.Errorf("exit of %s: %v", buildID, err)
			return
		}
		a.Exited(buildID, e)
	}()
}

// ExitAfterLaunch is a LaunchFunc: the container starts, prints "hello"
// and exits with x.
func (a *Agents) ExitAfterLaunch(x wire.Exit) func(context.Context, string, coordinator.LaunchRequest) (*coordinator.LaunchResult, error) {
	return func(_ context.Context, _ string, req coordinator.LaunchRequest) (*coordinator.LaunchResult, error) {
		a.Report(req.BuildID, "hello\n", &x)
		return started(req), nil
	}
}

// SetLaunch sets LaunchFunc while the lifecycle may be using the agents.
func (a *Agents) SetLaunch(fn func(context.Context, string, coordinator.LaunchRequest) (*coordinator.LaunchResult, error)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.LaunchFunc = fn
}

// LaunchCalls returns the Launch calls so far.
func (a *Agents) LaunchCalls() []LaunchCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.launches)
}

// CancelCalls returns the Cancel calls so far.
func (a *Agents) CancelCalls() []CancelCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.cancels)
}

// WaitCalls returns the nodes of the WaitAgent calls so far.
func (a *Agents) WaitCalls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.waits)
}
