package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/forge-ci/forge/wire"
)

// artifactSlots bounds the artifact requests an agent serves at once: each
// holds a temporary file of up to max_bytes on the node's disk.
const artifactSlots = 2

// CheckStopped applies an artifacts request's checks for buildID to c
// (PROTOCOL.md §6.5): a forge container of that build, which has run and
// stopped.
func CheckStopped(c container.InspectResponse, buildID string) error {
	if err := checkBuild(c, buildID, "artifacts request"); err != nil {
		return err
	}
	switch {
	case c.State == nil:
		return fmt.Errorf("container %s: incomplete inspect data", c.ID)
	case c.State.Running || c.State.Paused || c.State.Restarting:
		return fmt.Errorf("%w: it is %s", ErrNotStopped, c.State.Status)
	case c.State.StartedAt == "" || c.State.StartedAt == neverStarted:
		return fmt.Errorf("%w: it never started", ErrNotStopped)
	}
	return nil
}

// artifacts serves an ArtifactsRequest (PROTOCOL.md §6.5): the tar goes to
// a temporary file, whose size the header states, then over the stream.
// It returns nil once it has sent them, or the refusal.
func (a *Agent) artifacts(ctx context.Context, c *wire.Codec, m *wire.ArtifactsRequest) wire.Message {
	in, err := a.cfg.Docker.ContainerInspect(ctx, m.ContainerID)
	if err != nil {
		return refusal(fmt.Errorf("inspect container %s: %w", m.ContainerID, err))
	}
	if err := CheckStopped(in, m.BuildID); err != nil {
		return refusal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, wire.ArtifactsTimeout(m.MaxBytes))
	defer cancel()
	select {
	case a.artifactSlots <- struct{}{}:
		defer func() { <-a.artifactSlots }()
	case <-wctx.Done():
		return wire.NewRefused(wire.RefusedBusy, "this agent serves %d artifact requests at once already", artifactSlots)
	}
	f, err := os.CreateTemp(a.cfg.TempDir, "forge-artifacts-*.tar")
	if err != nil {
		return wire.NewRefused(wire.RefusedInternal, "temporary file for the artifacts: %v", err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	began := time.Now()
	res, err := ReadPaths(wctx, a.cfg.Docker, m.ContainerID, PathsRequest{Root: m.Workdir, Patterns: m.Paths,
		MaxBytes: m.MaxBytes, ScanAllowance: wire.ArtifactsScanAllowance}, f)
	if err != nil {
		return refusal(fmt.Errorf("artifacts of %s: %w", m.BuildID, err))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return wire.NewRefused(wire.RefusedInternal, "artifacts of %s: %v", m.BuildID, err)
	}
	if err := c.Send(&wire.ArtifactsHeader{Size: res.Size, Notes: res.Notes}); err != nil {
		a.log.Warn("artifacts header", "build", m.BuildID, "err", err)
		return nil
	}
	if err := c.SendBlob(f, res.Size); err != nil {
		a.log.Warn("send artifacts", "build", m.BuildID, "err", err)
		return nil
	}
	a.log.Info("artifacts sent", "build", m.BuildID, "files", res.Files, "bytes", res.Size,
		"notes", len(res.Notes), "took", time.Since(began).Round(time.Millisecond))
	return nil
}
