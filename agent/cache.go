package agent

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/forge-ci/forge/internal/safetar"
	"github.com/forge-ci/forge/wire"
)

// Caches (PROTOCOL.md §6.8): a Launch may carry a tar of the build's cache,
// put into the container with the executor and the source, and may ask for
// the cache paths back after a successful exit. The container is
// untrusted: what it holds is filtered by wire.CheckCacheEntry's rules on
// the way out, and the coordinator's tar again on the way in.

// cacheSave is what a launched build's Launch asked to save.
type cacheSave struct {
	containerID string
	paths       []string
	maxBytes    int64
}

// cacheSaves holds the saves due, by build, until the build is reported.
// The launch handler puts, the build's log pump takes: different
// goroutines, hence the lock.
type cacheSaves struct {
	mu sync.Mutex
	m  map[string]cacheSave
}

func (c *cacheSaves) put(buildID string, s cacheSave) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]cacheSave{}
	}
	c.m[buildID] = s
}

// putNew puts s unless the build has a save due already (its launch's,
// on this agent).
func (c *cacheSaves) putNew(buildID string, s cacheSave) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[buildID]; ok {
		return
	}
	if c.m == nil {
		c.m = map[string]cacheSave{}
	}
	c.m[buildID] = s
}

func (c *cacheSaves) take(buildID string) (cacheSave, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[buildID]
	delete(c.m, buildID)
	return s, ok
}

func (c *cacheSaves) drop(buildID string) { c.take(buildID) }

// cacheTimeout bounds reading the cache out of a container; the transfer
// has its own (wire.TransferTimeout).
const cacheTimeout = 10 * time.Minute

// copyCache writes the entries of the Launch's cache tar into tw, each
// checked against paths (PROTOCOL.md §6.2, §6.8) and rewritten with
// wire.CacheHeader, then reads whatever r holds after the tar's end, so
// the stream is at the source.
func copyCache(tw *tar.Writer, r io.Reader, paths []string) error {
	tr := tar.NewReader(r)
	buf := make([]byte, fileBuffer) // one for every file (copyN)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if _, err := wire.CheckCacheEntry(paths, h); err != nil {
			return err
		}
		if err := tw.WriteHeader(cacheHeader(h)); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := copyN(tw, tr, h.Size, buf); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		}
	}
	_, err := io.Copy(io.Discard, r)
	return err
}

// cacheHeader is wire.CacheHeader in PAX, like the rest of the archive.
func cacheHeader(h *tar.Header) *tar.Header {
	out := wire.CacheHeader(h)
	out.Format = tar.FormatPAX
	return out
}

// saveCache reads the build's cache paths out of its stopped container and
// sends them on a cache stream (PROTOCOL.md §6.8). It returns an error
// only when the session failed, so the caller tries again on the next one;
// everything else is logged, and the build's log gets the notes.
func (a *Agent) saveCache(ctx context.Context, s *session, b heldBuild, save cacheSave) error {
	f, err := os.CreateTemp(a.cfg.TempDir, "forge-cache-*.tar")
	if err != nil {
		return a.sendCache(ctx, s, b, nil, 0, []string{fmt.Sprintf("cache: not saved: the agent cannot make a temporary file: %v", err)})
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	cctx, cancel := context.WithTimeout(ctx, cacheTimeout)
	size, notes, err := collectCache(cctx, a.cfg.Docker, save.containerID, save.paths, save.maxBytes, f)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.log.Warn("cache not saved", "build", b.buildID, "err", err)
		return a.sendCache(ctx, s, b, nil, 0, append(notes, fmt.Sprintf("cache: not saved: %v", err)))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return a.sendCache(ctx, s, b, nil, 0, append(notes, fmt.Sprintf("cache: not saved: %v", err)))
	}
	return a.sendCache(ctx, s, b, f, size, notes)
}

// sendCache runs one cache stream: CacheSave, size bytes of r, the answer.
func (a *Agent) sendCache(ctx context.Context, s *session, b heldBuild, r io.Reader, size int64, notes []string) error {
	if len(notes) > wire.MaxCacheNotes {
		notes = append(notes[:wire.MaxCacheNotes-1], fmt.Sprintf("cache: and %d more notes", len(notes)-wire.MaxCacheNotes+1))
	}
	for i := range notes {
		notes[i] = wire.CacheNote(notes[i])
	}
	st, err := s.ws.Open(ctx)
	if err != nil {
		return fmt.Errorf("open cache stream: %w", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(wire.TransferTimeout(size)))
	c := wire.NewCodec(st)
	if err := c.Send(&wire.CacheSave{BuildID: b.buildID, ContainerID: b.containerID, Size: size, Notes: notes}); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	var saved *wire.CacheSaved
	if size > 0 {
		_, err = wire.Expect[*wire.CacheReady](c)
		if err == nil {
			err = c.SendBlob(r, size)
		}
	}
	if err == nil {
		saved, err = wire.Expect[*wire.CacheSaved](c)
	}
	var refused *wire.RefusedError
	switch {
	case errors.As(err, &refused):
		// The coordinator's decision: asking again would not change it.
		a.log.Warn("coordinator refused the cache", "build", b.buildID, "code", refused.Code, "message", refused.Message)
		return nil
	case err != nil:
		return fmt.Errorf("cache: %w", err)
	}
	a.log.Info("cache saved", "build", b.buildID, "size", saved.Size, "digest", saved.Digest)
	return nil
}

// collectCache writes one tar of the container's cache paths to w: entry
// names are the container paths without the leading "/", every entry
// passes wire.CheckCacheEntry (others are skipped, and counted in a
// note), and the tar stays within max bytes. A path that is missing or a
// symbolic link gets a note. A tar over max is an error naming the bound;
// w then holds a part of it.
func collectCache(ctx context.Context, d Docker, id string, paths []string, max int64, w io.Writer) (size int64, notes []string, err error) {
	cw := &countWriter{w: w, max: max}
	tw := tar.NewWriter(cw)
	for _, p := range paths {
		skipped, note, err := collectPath(ctx, d, id, p, paths, tw)
		if note != "" {
			notes = append(notes, note)
		}
		// tar.Writer keeps its writer's first error: a write past max
		// fails every later one too.
		if errors.Is(err, errOverBound) {
			return 0, notes, fmt.Errorf("the cache is over the bound of %s (--cache-size) at %s", sizeText(max), p)
		}
		if err != nil {
			return 0, notes, err
		}
		if len(skipped) > 0 {
			notes = append(notes, skippedNote(p, skipped))
		}
	}
	if err := tw.Close(); err != nil {
		if errors.Is(err, errOverBound) {
			err = fmt.Errorf("the cache is over the bound of %s (--cache-size)", sizeText(max))
		}
		return 0, notes, err
	}
	return cw.n, notes, nil
}

var errOverBound = errors.New("over the bound")

// collectPath adds one cache path of the container to tw. skipped counts
// the entries left out, by why.
func collectPath(ctx context.Context, d Docker, id, p string, paths []string, tw *tar.Writer) (skipped map[string]int, note string, err error) {
	rc, stat, err := d.CopyFromContainer(ctx, id, p)
	switch {
	case errdefs.IsNotFound(err):
		return nil, fmt.Sprintf("cache: %s does not exist in the container; not saved", p), nil
	case err != nil:
		return nil, "", fmt.Errorf("read %s out of the container: %w", p, err)
	}
	defer rc.Close()
	if stat.Mode&os.ModeSymlink != 0 {
		return nil, fmt.Sprintf("cache: %s is a symbolic link (to %s); not saved: name the folder it points to", p, safetar.Quote(stat.LinkTarget)), nil
	}
	// The engine names entries after the path's last element: they sit
	// under its parent.
	parent := path.Dir(p)
	rename := func(n string) string { return strings.TrimPrefix(path.Join(parent, n), "/") } // a hard link's target
	skipped = map[string]int{}
	tr := tar.NewReader(rc)
	buf := make([]byte, fileBuffer) // one for every file (copyN)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return skipped, "", nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("read %s out of the container: %w", p, err)
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
		case tar.TypeRegA:
			h.Typeflag = tar.TypeReg
		default:
			skipped["devices, FIFOs and sockets"]++
			continue
		}
		name, err := underDir(parent, h.Name)
		if err != nil {
			skipped["entries with unsafe names"]++
			continue
		}
		h.Name = name
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if h.Typeflag == tar.TypeLink {
			h.Linkname = rename(h.Linkname)
		}
		if _, err := wire.CheckCacheEntry(paths, h); err != nil {
			if h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink {
				skipped["links that leave "+p]++
			} else {
				skipped["entries outside "+p]++
			}
			continue
		}
		if err := tw.WriteHeader(wire.CacheHeader(h)); err != nil {
			return nil, "", err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := copyN(tw, tr, h.Size, buf); err != nil {
				return nil, "", fmt.Errorf("read %s out of the container: %w", h.Name, err)
			}
		}
	}
}

func skippedNote(p string, skipped map[string]int) string {
	var kinds []string
	total := 0
	for k, n := range skipped {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
		total += n
	}
	sort.Strings(kinds)
	what := "entries"
	if total == 1 {
		what = "entry"
	}
	return fmt.Sprintf("cache: %s: %d %s left out (%s)", p, total, what, strings.Join(kinds, ", "))
}
