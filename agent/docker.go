// Package agent is the Forge agent: it runs on every swarm node, dials the
// coordinator, and on request injects the executor into a build container
// on its own node and starts it through the node's local Docker socket.
//
// The agent is not a Docker proxy: it only touches containers that carry
// forge labels, and only in the few ways a build needs (inject and start a
// never-run container, stop it, read its logs and artifacts).
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/system"

	"github.com/forge-ci/forge/wire"
)

// Labels the coordinator puts on build services and their containers
// (PROTOCOL.md §6.2).
const (
	LabelBuild = wire.LabelBuild
	LabelRepo  = wire.LabelRepo
)

// Docker is the part of the Engine API the agent uses, always against its
// own node's local socket. *client.Client satisfies it.
type Docker interface {
	Info(ctx context.Context) (system.Info, error)
	Events(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error)
	ContainerList(ctx context.Context, opts container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	CopyToContainer(ctx context.Context, id, dstPath string, content io.Reader, opts container.CopyToContainerOptions) error
	CopyFromContainer(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error)
	ContainerStart(ctx context.Context, id string, opts container.StartOptions) error
	ContainerStop(ctx context.Context, id string, opts container.StopOptions) error
	ContainerWait(ctx context.Context, id string, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerLogs(ctx context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error)
	ContainerStatPath(ctx context.Context, id, path string) (container.PathStat, error)
}

// injector is the subset Inject needs, so its tests can fake less.
type injector interface {
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	CopyToContainer(ctx context.Context, id, dstPath string, content io.Reader, opts container.CopyToContainerOptions) error
	CopyFromContainer(ctx context.Context, id, srcPath string) (io.ReadCloser, container.PathStat, error)
	ContainerStart(ctx context.Context, id string, opts container.StartOptions) error
}

// Refusal errors of a Launch's checks (PROTOCOL.md §6.2); ErrNotFailedYet
// is why WaitLaunchable waits.
var (
	ErrNotForge     = errors.New("container has no forge.build label")
	ErrWrongBuild   = errors.New("container belongs to another build")
	ErrAlreadyRan   = errors.New("container has already run")
	ErrNotFailedYet = errors.New("container's own start has not failed yet")
	// ErrNotStopped refuses artifacts of a container that has not run, or
	// runs still (PROTOCOL.md §6.5).
	ErrNotStopped = errors.New("container has not run and stopped")
)

var errCopyEnded = errors.New("copy to container ended")

// neverStarted is how the engine reports a zero StartedAt.
const neverStarted = "0001-01-01T00:00:00Z"

// checkBuild says whether c carries buildID's forge.build label; what
// names the request, for the refusal.
func checkBuild(c container.InspectResponse, buildID, what string) error {
	if c.Config == nil {
		return fmt.Errorf("container %s: incomplete inspect data", c.ID)
	}
	got, ok := c.Config.Labels[LabelBuild]
	switch {
	case !ok || got == "":
		return ErrNotForge
	case got != buildID:
		return fmt.Errorf("%w: label %s=%s, %s is for %s", ErrWrongBuild, LabelBuild, got, what, buildID)
	}
	return nil
}

// CheckLaunchable applies a Launch's checks for buildID to c (PROTOCOL.md
// §6.2). Swarm's own start of it must also have failed already
// (State.Error set): injecting earlier would race that start, and the
// executor could be exec'd half-written.
func CheckLaunchable(c container.InspectResponse, buildID string) error {
	if c.Config == nil || c.State == nil {
		return fmt.Errorf("container %s: incomplete inspect data", c.ID)
	}
	if err := checkBuild(c, buildID, "launch"); err != nil {
		return err
	}
	switch {
	case c.State.Running || c.State.Paused || c.State.Restarting,
		c.State.StartedAt != "" && c.State.StartedAt != neverStarted,
		c.State.Status != "created":
		return fmt.Errorf("%w (status %s, started %s)", ErrAlreadyRan, c.State.Status, c.State.StartedAt)
	case c.State.Error == "":
		return ErrNotFailedYet
	}
	return nil
}

// pollInterval paces the wait for swarm's failed start: the engine emits no
// event for it (only "create"), so inspecting is the only way to see it.
const pollInterval = 20 * time.Millisecond

// WaitLaunchable inspects the container until CheckLaunchable passes or
// fails for good, or ctx ends. ErrNotFailedYet is the only reason to wait.
func WaitLaunchable(ctx context.Context, d injector, id, buildID string) error {
	_, err := waitLaunchable(ctx, d, id, buildID)
	return err
}

// waitLaunchable is WaitLaunchable, with the inspect that passed.
func waitLaunchable(ctx context.Context, d injector, id, buildID string) (container.InspectResponse, error) {
	for {
		c, err := d.ContainerInspect(ctx, id)
		if err != nil {
			return c, fmt.Errorf("inspect container %s: %w", id, err)
		}
		err = CheckLaunchable(c, buildID)
		if !errors.Is(err, ErrNotFailedYet) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return c, fmt.Errorf("container %s: %w: %w", id, err, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// Inject checks the container, puts p into it as one archive, and starts
// it; the check comes first (PROTOCOL.md §6.2).
func Inject(ctx context.Context, d injector, id, buildID string, p Payload) error {
	c, err := waitLaunchable(ctx, d, id, buildID)
	if err != nil {
		return err
	}
	if p.Secrets != nil {
		// Readable by the executor, which runs as the image's user.
		p.Owner, err = ownerOf(c.Config.User, func(path string) ([]byte, error) {
			return readAccountFile(ctx, d, id, path)
		})
		if err != nil {
			return fmt.Errorf("the owner of the secrets file, the image's user %q: %w", c.Config.User, err)
		}
	}
	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		err := WriteArchive(pw, p)
		pw.CloseWithError(err)
		written <- err
	}()
	err = d.CopyToContainer(ctx, id, "/", pr, container.CopyToContainerOptions{})
	pr.CloseWithError(errCopyEnded) // stops the writer if the copy failed early
	if werr := <-written; werr != nil && !errors.Is(werr, errCopyEnded) {
		return fmt.Errorf("archive for %s: %w", id, werr)
	}
	if err != nil {
		return fmt.Errorf("put archive into %s: %w", id, err)
	}
	if err := d.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	return nil
}
