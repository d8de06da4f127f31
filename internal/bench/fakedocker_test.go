package bench

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"

	"github.com/forge-ci/forge/agent"
)

// fakeDocker implements agent.Docker with a function per call, so a
// thousand agents fit in one process without an engine. newFakeDocker
// fills every field with the behaviour of an idle node whose build
// containers are always ready for a Launch.
type fakeDocker struct {
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
}

var _ agent.Docker = (*fakeDocker)(nil)

// fakeContainerPrefix starts the id of every fake build container; the
// rest of the id is the build id, so the fake knows the label to show.
const fakeContainerPrefix = "ctr-"

func newFakeDocker(nodeID string) *fakeDocker {
	return &fakeDocker{
		InfoFn: func(ctx context.Context) (system.Info, error) {
			return system.Info{Name: "bench-" + nodeID, ServerVersion: "fake",
				Swarm: swarm.Info{NodeID: nodeID, LocalNodeState: swarm.LocalNodeStateActive}}, nil
		},
		EventsFn: func(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error) {
			errs := make(chan error, 1)
			go func() { <-ctx.Done(); errs <- ctx.Err() }()
			return nil, errs
		},
		ContainerListFn: func(ctx context.Context, opts container.ListOptions) ([]container.Summary, error) {
			return nil, nil
		},
		ContainerInspectFn: func(ctx context.Context, id string) (container.InspectResponse, error) {
			build, ok := strings.CutPrefix(id, fakeContainerPrefix)
			if !ok {
				return container.InspectResponse{}, errors.New("no such container")
			}
			return container.InspectResponse{
				ContainerJSONBase: &container.ContainerJSONBase{ID: id, State: &container.State{
					Status: "created", ExitCode: 127, StartedAt: "0001-01-01T00:00:00Z",
					Error: `exec: "/forgexec": stat /forgexec: no such file or directory`,
				}},
				Config: &container.Config{Labels: map[string]string{agent.LabelBuild: build}},
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

func (f *fakeDocker) Info(ctx context.Context) (system.Info, error) { return f.InfoFn(ctx) }
func (f *fakeDocker) Events(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error) {
	return f.EventsFn(ctx, opts)
}
func (f *fakeDocker) ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error) {
	return f.ContainerListFn(ctx, opts)
}
func (f *fakeDocker) ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error) {
	return f.ContainerInspectFn(ctx, id)
}
func (f *fakeDocker) CopyToContainer(ctx context.Context, id, dstPath string, content io.Reader, opts container.CopyToContainerOptions) error {
	return f.CopyToContainerFn(ctx, id, dstPath, content, opts)
}
func (f *fakeDocker) CopyFromContainer(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error) {
	return f.CopyFromContainerFn(ctx, id, srcPath)
}
func (f *fakeDocker) ContainerStart(ctx context.Context, id string, opts container.StartOptions) error {
	return f.ContainerStartFn(ctx, id, opts)
}
func (f *fakeDocker) ContainerStop(ctx context.Context, id string, opts container.StopOptions) error {
	return f.ContainerStopFn(ctx, id, opts)
}
func (f *fakeDocker) ContainerWait(ctx context.Context, id string, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	return f.ContainerWaitFn(ctx, id, cond)
}
func (f *fakeDocker) ContainerLogs(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error) {
	return f.ContainerLogsFn(ctx, id, opts)
}
