package agents

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/wire"
)

// Artifacts runs an artifacts stream with the agent of nodeID (PROTOCOL.md
// §6.5): put reads the tar, which is untrusted and at most req.MaxBytes.
// A refusal comes back as a *wire.RefusedError.
func (s *Hub) Artifacts(ctx context.Context, nodeID string, req coordinator.ArtifactsRequest, put func(io.Reader) error) ([]string, error) {
	// Only the node and container the build was launched on, as for its
	// log (PROTOCOL.md §6.4).
	if err := s.bound(ctx, nodeID, &wire.Attach{BuildID: req.BuildID, ContainerID: req.ContainerID}); err != nil {
		return nil, fmt.Errorf("artifacts of %s: %w", req.BuildID, err)
	}
	st, err := s.open(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(wire.ArtifactsTimeout(req.MaxBytes)))
	c := wire.NewCodec(st)
	err = c.Send(&wire.ArtifactsRequest{BuildID: req.BuildID, ContainerID: req.ContainerID, Workdir: req.Workdir,
		Paths: req.Paths, MaxBytes: req.MaxBytes})
	if err != nil {
		return nil, err
	}
	h, err := wire.Expect[*wire.ArtifactsHeader](c)
	if err != nil {
		return nil, fmt.Errorf("artifacts of %s on %s: %w", req.BuildID, nodeID, err)
	}
	if h.Size > req.MaxBytes {
		// Closed unread: reading more than was allowed is what the
		// bound is there to prevent.
		return h.Notes, fmt.Errorf("artifacts of %s on %s: the agent announced %d bytes, more than the %d asked for", req.BuildID, nodeID, h.Size, req.MaxBytes)
	}
	blob := wire.BlobReader(c.Stream(), h.Size)
	if err := put(blob); err != nil {
		// The rest is read all the same (PROTOCOL.md §4.2), at most
		// max_bytes: the agent's send then ends now, not at its deadline.
		io.Copy(io.Discard, blob)
		return h.Notes, fmt.Errorf("artifacts of %s on %s: %w", req.BuildID, nodeID, err)
	}
	// What the archive reader left (padding after its end): read, so the
	// transfer is known whole.
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return h.Notes, fmt.Errorf("artifacts of %s on %s: %w", req.BuildID, nodeID, err)
	}
	return h.Notes, nil
}
