package agents

import (
	"context"
	"errors"
	"time"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/caches"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

// CacheReceiver stores the caches agents send (caches.Store).
type CacheReceiver interface {
	// Accept puts notes into the build's log and says whether size bytes
	// of its cache are taken (nil, nil: nothing to take). Refusals wrap
	// coordinator.ErrCacheRefused or ErrCacheTooLarge.
	Accept(ctx context.Context, buildID string, size int64, notes []string) (*caches.Upload, error)
	// Pending is the cache the build's launch asked for that is still
	// awaited, or nil (a new attach repeats it: PROTOCOL.md §6.8).
	Pending(ctx context.Context, buildID string) (*wire.LaunchCache, error)
}

// launchCache is the cache part of a Launch for ac: none for an agent
// that does not take caches (an older one, PROTOCOL.md §6.8).
func (s *Hub) launchCache(ac *agentConn, req coordinator.LaunchRequest) *wire.LaunchCache {
	if req.Cache == nil {
		return nil
	}
	if !ac.caches {
		s.log.Warn("the agent takes no caches (an older version): the build runs without its cache", "node", ac.info.NodeID,
			"build", req.BuildID, "agent_version", ac.info.AgentVersion)
		return nil
	}
	return &wire.LaunchCache{Paths: req.Cache.Paths, Size: req.Cache.Size, Save: req.Cache.Save, MaxBytes: req.Cache.MaxBytes}
}

// serveCache serves a cache stream (PROTOCOL.md §6.8): only from the node
// and container the build was launched on, before its exit is recorded.
func (s *Hub) serveCache(ctx context.Context, nodeID string, st *wire.Stream, c *wire.Codec, m *wire.CacheSave) {
	log := s.log.With("node", nodeID, "build", m.BuildID)
	refuse := func(code, format string, args ...any) {
		r := wire.NewRefused(code, format, args...)
		log.Warn("cache refused", "code", code, "message", r.Message)
		c.Send(r)
	}
	err := s.bound(ctx, nodeID, &wire.Attach{BuildID: m.BuildID, ContainerID: m.ContainerID})
	switch {
	case errors.Is(err, errNotBound):
		refuse(wire.RefusedForbidden, "%v", err)
		return
	case errors.Is(err, store.ErrNotFound):
		refuse(wire.RefusedNotFound, "build %s: %v", m.BuildID, coordinator.ErrUnknownBuild)
		return
	case err != nil:
		refuse(wire.RefusedInternal, "%v", err)
		return
	case s.cfg.Caches == nil:
		refuse(wire.RefusedForbidden, "this coordinator keeps no caches")
		return
	}
	if x, err := s.cfg.Logs.Exited(m.BuildID); err != nil || x != nil {
		refuse(wire.RefusedForbidden, "build %s is over: its exit is recorded (%v)", m.BuildID, err)
		return
	}
	up, err := s.cfg.Caches.Accept(ctx, m.BuildID, m.Size, m.Notes)
	switch {
	case errors.Is(err, coordinator.ErrCacheRefused), errors.Is(err, coordinator.ErrCacheTooLarge):
		refuse(wire.RefusedForbidden, "%v", err)
		return
	case err != nil:
		refuse(wire.RefusedInternal, "%v", err)
		return
	case up == nil:
		c.Send(&wire.CacheSaved{})
		return
	}
	if err := c.Send(&wire.CacheReady{}); err != nil {
		return
	}
	st.SetDeadline(time.Now().Add(wire.TransferTimeout(m.Size)))
	digest, err := up.Store(ctx, st)
	switch {
	case errors.Is(err, coordinator.ErrUnsafeArchive), errors.Is(err, wire.ErrShortBlob):
		refuse(wire.RefusedBadRequest, "%v", err)
	case err != nil:
		refuse(wire.RefusedInternal, "%v", err)
	default:
		log.Info("cache stored", "size", m.Size, "digest", digest)
		c.Send(&wire.CacheSaved{Digest: digest, Size: m.Size})
	}
}
