// Package fakedocker is the node's Docker Engine for tests of the agent,
// without an engine. Docker has a function field per call of agent.Docker,
// so a test replaces one behaviour and keeps the rest. Idle fills them for
// an idle node whose build containers are always ready for a Launch (the
// scale benchmark's thousand agents); Node is a node with build containers
// that start, write output and exit, for the tests of the agent's session
// loop.
//
// It imports nothing of the agent, so the agent's own tests can use it.
package fakedocker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"

	"github.com/forge-ci/forge/wire"
)

// Docker implements agent.Docker with a function per call. A nil function
// fails its call with ErrNotFaked.
type Docker struct {
	InfoFn              func(ctx context.Context) (system.Info, error)
	EventsFn            func(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error)
	ContainerListFn     func(ctx context.Context, opts container.ListOptions) ([]container.Summary, error)
	ContainerInspectFn  func(ctx context.Context, id string) (container.InspectResponse, error)
	CopyToContainerFn   func(ctx context.Context, id, dstPath string, content io.Reader, opts container.CopyToContainerOptions) error
	CopyFromContainerFn func(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error)
	ContainerStartFn    func(ctx context.Context, id string, opts container.StartOptions) error
	ContainerStopFn     func(ctx context.Context, id string, opts container.StopOptions) error
	ContainerWaitFn     func(ctx context.Context, id string, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerLogsFn     func(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error)
	ContainerStatPathFn func(ctx context.Context, id, path string) (container.PathStat, error)
}

// ErrNotFaked is the error of a call whose function is nil.
var ErrNotFaked = errors.New("fakedocker: call not faked")

func notFaked(call string) error { return fmt.Errorf("%w: %s", ErrNotFaked, call) }

// failed is the error channel of a streaming call that fails at once.
func failed(err error) <-chan error {
	errs := make(chan error, 1)
	errs <- err
	return errs
}

func (f *Docker) Info(ctx context.Context) (system.Info, error) {
	if f.InfoFn == nil {
		return system.Info{}, notFaked("Info")
	}
	return f.InfoFn(ctx)
}

func (f *Docker) Events(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error) {
	if f.EventsFn == nil {
		return nil, failed(notFaked("Events"))
	}
	return f.EventsFn(ctx, opts)
}

func (f *Docker) ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error) {
	if f.ContainerListFn == nil {
		return nil, notFaked("ContainerList")
	}
	return f.ContainerListFn(ctx, opts)
}

func (f *Docker) ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error) {
	if f.ContainerInspectFn == nil {
		return container.InspectResponse{}, notFaked("ContainerInspect")
	}
	return f.ContainerInspectFn(ctx, id)
}

func (f *Docker) CopyToContainer(ctx context.Context, id, dstPath string, content io.Reader, opts container.CopyToContainerOptions) error {
	if f.CopyToContainerFn == nil {
		return notFaked("CopyToContainer")
	}
	return f.CopyToContainerFn(ctx, id, dstPath, content, opts)
}

func (f *Docker) CopyFromContainer(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error) {
	if f.CopyFromContainerFn == nil {
		return nil, container.PathStat{}, notFaked("CopyFromContainer")
	}
	return f.CopyFromContainerFn(ctx, id, srcPath)
}

func (f *Docker) ContainerStart(ctx context.Context, id string, opts container.StartOptions) error {
	if f.ContainerStartFn == nil {
		return notFaked("ContainerStart")
	}
	return f.ContainerStartFn(ctx, id, opts)
}

func (f *Docker) ContainerStop(ctx context.Context, id string, opts container.StopOptions) error {
	if f.ContainerStopFn == nil {
		return notFaked("ContainerStop")
	}
	return f.ContainerStopFn(ctx, id, opts)
}

func (f *Docker) ContainerWait(ctx context.Context, id string, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	if f.ContainerWaitFn == nil {
		return nil, failed(notFaked("ContainerWait"))
	}
	return f.ContainerWaitFn(ctx, id, cond)
}

func (f *Docker) ContainerLogs(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error) {
	if f.ContainerLogsFn == nil {
		return nil, notFaked("ContainerLogs")
	}
	return f.ContainerLogsFn(ctx, id, opts)
}

func (f *Docker) ContainerStatPath(ctx context.Context, id, path string) (container.PathStat, error) {
	if f.ContainerStatPathFn == nil {
		return container.PathStat{}, notFaked("ContainerStatPath")
	}
	return f.ContainerStatPathFn(ctx, id, path)
}

// Engine's marks of a container that never ran, and of swarm's failed
// start of a build container (its command, /forgexec, is not there yet).
const (
	NeverStarted = "0001-01-01T00:00:00Z"
	StartFailed  = `exec: "/forgexec": stat /forgexec: no such file or directory`
)

// IdleContainerPrefix starts the id of every build container of an Idle
// node; the rest of the id is the build id, so the fake knows the label to
// show without keeping anything.
const IdleContainerPrefix = "ctr-"

// IdleContainerID is the id of build's container on an Idle node.
func IdleContainerID(build string) string { return IdleContainerPrefix + build }

// Idle is a node that keeps no state: it is a swarm node, sends no
// events, lists no containers, and shows every container named by
// IdleContainerID as a build container whose start by swarm failed, ready
// for a Launch. It accepts any archive and start, and the build then has
// no output and has exited (inspect keeps showing it created).
func Idle(nodeID string) *Docker {
	return &Docker{
		InfoFn: func(ctx context.Context) (system.Info, error) {
			return system.Info{Name: "bench-" + nodeID, ServerVersion: "fake",
				Swarm: swarm.Info{NodeID: nodeID, LocalNodeState: swarm.LocalNodeStateActive}}, nil
		},
		EventsFn: func(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error) {
			errs := make(chan error, 1)
			go func() { <-ctx.Done(); errs <- ctx.Err() }() // owner: the caller's ctx
			return nil, errs
		},
		ContainerListFn: func(ctx context.Context, opts container.ListOptions) ([]container.Summary, error) {
			return nil, nil
		},
		ContainerInspectFn: func(ctx context.Context, id string) (container.InspectResponse, error) {
			build, ok := strings.CutPrefix(id, IdleContainerPrefix)
			if !ok {
				return container.InspectResponse{}, errors.New("no such container")
			}
			return container.InspectResponse{
				ContainerJSONBase: &container.ContainerJSONBase{ID: id, State: &container.State{
					Status: "created", ExitCode: 127, StartedAt: NeverStarted, Error: StartFailed,
				}},
				Config: &container.Config{Labels: map[string]string{wire.LabelBuild: build}},
			}, nil
		},
		CopyToContainerFn: func(ctx context.Context, id, dstPath string, content io.Reader, opts container.CopyToContainerOptions) error {
			_, err := io.Copy(io.Discard, content)
			return err
		},
		CopyFromContainerFn: func(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error) {
			return nil, container.PathStat{}, errors.New("no artifacts here")
		},
		ContainerStartFn: func(ctx context.Context, id string, opts container.StartOptions) error { return nil },
		ContainerStopFn:  func(ctx context.Context, id string, opts container.StopOptions) error { return nil },
		ContainerWaitFn: func(ctx context.Context, id string, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
			res := make(chan container.WaitResponse, 1)
			res <- container.WaitResponse{StatusCode: 0}
			return res, make(chan error)
		},
		ContainerLogsFn: func(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("")), nil
		},
	}
}
