package coordinator

import (
	"context"
	"errors"
	"io"
	"strconv"

	"github.com/forge-ci/forge/coordinator/config"
)

// Cache scopes: a build's caches are kept per repository and scope, and a
// scope is a branch or a pull request, as GitHub Actions scopes its cache.
const (
	ScopeBranch = "branch/"
	ScopePull   = "pull/"
)

// CacheScopes says which caches a build of s may read, best first, and
// which one it writes ("" for none). Against poisoning, as GitHub Actions
// does: a pull request reads its own scope, then its base branch's, and
// writes only its own; a push reads its branch's, then the default
// branch's, and writes its branch's (so a push to the default branch
// writes the default branch's); an untrusted build writes nothing.
func (s Subject) CacheScopes() (read []string, write string) {
	var own, fallback string
	switch {
	case s.PullRequest > 0:
		own = ScopePull + strconv.Itoa(s.PullRequest)
		if s.BaseBranch != "" {
			fallback = ScopeBranch + s.BaseBranch
		}
	case s.Branch != "":
		own = ScopeBranch + s.Branch
		if s.DefaultBranch != "" {
			fallback = ScopeBranch + s.DefaultBranch
		}
	default:
		return nil, ""
	}
	read = []string{own}
	if fallback != "" && fallback != own {
		read = append(read, fallback)
	}
	if !s.Untrusted {
		write = own
	}
	return read, write
}

// CacheLaunch is the cache part of a LaunchRequest: the container paths,
// the archive to restore before the source, and whether the agent sends
// the paths back after a successful exit.
type CacheLaunch struct {
	Paths    []string      // absolute container paths
	Archive  io.ReadCloser // tar of Size bytes to restore; nil for none
	Size     int64
	Save     bool
	MaxBytes int64 // the largest archive taken back
}

// Caches keeps the repositories' caches (caches.Store); the lifecycle
// asks it what a build restores and may save.
type Caches interface {
	// Prepare picks the cache of a build with cfg.Cache (nil: none) and
	// says whether it may save one. src, the source tar, is read when the
	// key hashes files, and left at its start. The caller closes the
	// archive of a non-nil result.
	Prepare(ctx context.Context, b *Build, cfg *config.Config, src io.ReadSeeker) (*CacheLaunch, error)
	// Forget drops what Prepare kept for a build that has ended.
	Forget(ctx context.Context, buildID string)
}

var (
	// ErrCacheRefused: a cache was sent for a build that may not save one
	// now (untrusted, not asked to save, already saved, over).
	ErrCacheRefused = errors.New("this build may not save a cache")
	// ErrCacheTooLarge: a cache archive exceeds the bound (--cache-size).
	ErrCacheTooLarge = errors.New("the cache is larger than the bound")
	// ErrUnsafeArchive: an archive read back from a build container breaks
	// a rule (absolute or climbing names, links that leave, devices).
	ErrUnsafeArchive = errors.New("unsafe archive")
)
