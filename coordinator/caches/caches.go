// Package caches keeps the repositories' build caches (README, Caches;
// PROTOCOL.md §6.8): archives stored by their SHA-256 under the data
// folder, an index in the store naming them by repository, scope and key,
// a bound on their total size with the least recently used going first,
// and the rules of who reads and writes what (coordinator.CacheScopes).
package caches

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-units"

	"github.com/forge-ci/forge/coordinator"
	"github.com/forge-ci/forge/coordinator/config"
	"github.com/forge-ci/forge/coordinator/store"
	"github.com/forge-ci/forge/wire"
)

// DefaultSize bounds the archives kept, all repositories together, when
// --cache-size is not given: GitHub Actions gives each repository 10 GB.
const DefaultSize = 10 << 30

// Notes is where a build's log takes Forge's own lines (logs.Store).
type Notes interface {
	Note(buildID, line string) error
}

// Store keeps the caches. Make it with Open.
type Store struct {
	dir string
	max int64
	db  *store.Store
	log *slog.Logger
	// notes, when set, gets the lines builds' logs show about their cache.
	notes Notes
	now   func() time.Time

	// mu orders storing and evicting: an archive is written and named by
	// an entry before an eviction may count it unused.
	mu sync.Mutex
}

var _ coordinator.Caches = (*Store)(nil)

// Open opens the caches under dir, bounded to max bytes (> 0), indexed in
// db. It removes what a crash left: partial archives, and archives no
// entry names.
func Open(ctx context.Context, dir string, max int64, db *store.Store, notes Notes, log *slog.Logger) (*Store, error) {
	if max <= 0 {
		return nil, fmt.Errorf("caches: bound %d, want > 0", max)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: dir, max: max, db: db, log: log, notes: notes, now: func() time.Time { return time.Now().UTC() }}
	if err := os.RemoveAll(s.tmpDir()); err != nil {
		return nil, fmt.Errorf("caches: %w", err)
	}
	for _, d := range []string{s.blobDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("caches: %w", err)
		}
	}
	if err := s.collect(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) blobDir() string { return filepath.Join(s.dir, "sha256") }
func (s *Store) tmpDir() string  { return filepath.Join(s.dir, "tmp") }

// blobPath is where the archive of digest ("sha256:<hex>") lives.
func (s *Store) blobPath(digest string) (string, error) {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
		return "", fmt.Errorf("caches: bad digest %q", digest)
	}
	return filepath.Join(s.blobDir(), hexPart), nil
}

// collect evicts down to the bound (it may have shrunk since the last
// run) and removes archives no entry names.
func (s *Store) collect(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.evict(ctx); err != nil {
		return err
	}
	named, err := s.db.CacheDigests(ctx)
	if err != nil {
		return fmt.Errorf("caches: %w", err)
	}
	files, err := os.ReadDir(s.blobDir())
	if err != nil {
		return fmt.Errorf("caches: %w", err)
	}
	for _, f := range files {
		if !named["sha256:"+f.Name()] {
			os.Remove(filepath.Join(s.blobDir(), f.Name()))
		}
	}
	return nil
}

// evict removes the least recently used entries until the archives fit
// the bound, and the archives no entry names any more; s.mu is held.
func (s *Store) evict(ctx context.Context) error {
	evicted, orphans, err := s.db.EvictCaches(ctx, s.max)
	if err != nil {
		return fmt.Errorf("caches: %w", err)
	}
	for _, e := range evicted {
		s.log.Info("cache evicted", "repo", e.Owner+"/"+e.Repo, "scope", e.Scope, "key", e.Key, "size", e.Size, "used", e.Used)
	}
	for _, d := range orphans {
		if p, err := s.blobPath(d); err == nil {
			os.Remove(p)
		}
	}
	return nil
}

// note adds a line to a build's log; a failure only goes to the log of the
// coordinator.
func (s *Store) note(buildID, line string) {
	if s.notes == nil {
		return
	}
	if err := s.notes.Note(buildID, line); err != nil {
		s.log.Warn("note in build log", "build", buildID, "err", err)
	}
}

// Prepare implements coordinator.Caches.
func (s *Store) Prepare(ctx context.Context, b *coordinator.Build, cfg *config.Config, src io.ReadSeeker) (*coordinator.CacheLaunch, error) {
	c := cfg.Cache
	if c == nil {
		return nil, nil
	}
	read, write := b.CacheScopes()
	if len(read) == 0 {
		s.note(b.ID, "cache: none: this build has no branch to keep a cache for")
		return nil, nil
	}
	key, err := s.key(c, b.Branch, src)
	if err != nil {
		s.note(b.ID, fmt.Sprintf("cache: none: %v", err))
		return nil, err
	}
	workdir := cfg.Workdir
	if workdir == "" {
		workdir = config.DefaultWorkdir
	}
	out := &coordinator.CacheLaunch{Paths: c.ContainerPaths(workdir), MaxBytes: s.max}
	e, exact, err := s.db.FindCache(ctx, b.Owner, b.Repo, read, key)
	if err != nil {
		return nil, fmt.Errorf("caches: %w", err)
	}
	if e != nil {
		out.Archive, out.Size, err = s.open(e)
		if err != nil {
			s.log.Warn("cache archive unreadable", "repo", b.Owner+"/"+b.Repo, "digest", e.Digest, "err", err)
			e = nil
		} else if err := s.db.TouchCache(ctx, e, s.now()); err != nil {
			s.log.Warn("mark cache used", "err", err)
		}
	}
	switch {
	case e == nil:
		s.note(b.ID, fmt.Sprintf("cache: none yet for %s", describe(key, read[0])))
	case exact:
		s.note(b.ID, fmt.Sprintf("cache: restoring %s of %s", sizeText(e.Size), describe(e.Key, e.Scope)))
	default:
		s.note(b.ID, fmt.Sprintf("cache: restoring %s of %s (no cache has key %q yet)", sizeText(e.Size), describe(e.Key, e.Scope), key))
	}
	switch {
	case write == "":
		s.note(b.ID, "cache: not saved after this build: untrusted builds never write caches")
	case e != nil && exact && e.Scope == write && c.Key != "":
		// As GitHub Actions: an entry is kept as written; a new key (a
		// changed go.sum) makes a new one.
		s.note(b.ID, fmt.Sprintf("cache: not saved after this build: key %q is stored already", key))
	default:
		bc := store.BuildCache{BuildID: b.ID, Owner: b.Owner, Repo: b.Repo, Scope: write, Key: key, Paths: out.Paths, MaxBytes: s.max}
		if err := s.db.SetBuildCache(ctx, bc); err != nil {
			if out.Archive != nil {
				out.Archive.Close()
			}
			return nil, fmt.Errorf("caches: %w", err)
		}
		out.Save = true
	}
	return out, nil
}

// open opens e's archive; it checks the size the index has.
func (s *Store) open(e *store.CacheEntry) (io.ReadCloser, int64, error) {
	p, err := s.blobPath(e.Digest)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("archive %s: %w", e.Digest, err)
	}
	if fi.Size() != e.Size {
		f.Close()
		return nil, 0, fmt.Errorf("archive %s: size %d, index says %d", e.Digest, fi.Size(), e.Size)
	}
	return f, e.Size, nil
}

// key renders c's key for a build of branch, hashing src's files when the
// key asks; src is left at its start.
func (s *Store) key(c *config.Cache, branch string, src io.ReadSeeker) (string, error) {
	if !c.HashesFiles() {
		return c.ResolveKey(branch, nil)
	}
	if src == nil {
		return "", errors.New("the key hashes the source's files, and this build has no source to read them from")
	}
	var patterns []string
	for _, p := range c.KeyParts {
		patterns = append(patterns, p.Args...)
	}
	files, err := HashFiles(src, patterns)
	if _, serr := src.Seek(0, io.SeekStart); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return "", fmt.Errorf("hash the source's files for the key: %w", err)
	}
	return c.ResolveKey(branch, func(ps []string) (string, error) { return files.Sum(ps), nil })
}

// FileHashes are the SHA-256 of the source files some pattern matched, by
// name.
type FileHashes map[string][sha256.Size]byte

// HashFiles reads a source tar (names relative to the repository's root)
// and hashes the regular files that match any of patterns.
func HashFiles(src io.Reader, patterns []string) (FileHashes, error) {
	out := FileHashes{}
	tr := tar.NewReader(src)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name := strings.TrimPrefix(h.Name, "./")
		for _, p := range patterns {
			if config.MatchFiles(p, name) {
				d := sha256.New()
				if _, err := io.Copy(d, tr); err != nil {
					return nil, err
				}
				out[name] = [sha256.Size]byte(d.Sum(nil))
				break
			}
		}
	}
}

// Sum is hashFiles of patterns, as GitHub Actions computes it: the
// SHA-256 of the SHA-256s of the matching files, in the order of their
// names; "" when none matches.
func (f FileHashes) Sum(patterns []string) string {
	var names []string
	for n := range f {
		for _, p := range patterns {
			if config.MatchFiles(p, n) {
				names = append(names, n)
				break
			}
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		d := f[n]
		h.Write(d[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Upload is a cache Accept took: Store reads its bytes.
type Upload struct {
	s       *Store
	buildID string
	size    int64
	bc      *store.BuildCache
}

// Accept is the first half of storing the cache a build's agent sends
// (PROTOCOL.md §6.8): it puts notes into the build's log and says whether
// size bytes will be taken, before any is sent. Refusals wrap
// coordinator.ErrCacheRefused (the build may not save) or
// ErrCacheTooLarge. A nil Upload with no error: nothing to store (size 0).
func (s *Store) Accept(ctx context.Context, buildID string, size int64, notes []string) (*Upload, error) {
	for _, n := range notes {
		s.note(buildID, n)
	}
	bc, err := s.db.BuildCacheOf(ctx, buildID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("build %s: %w", buildID, coordinator.ErrCacheRefused)
	}
	if err != nil {
		return nil, fmt.Errorf("caches: %w", err)
	}
	if bound := min(bc.MaxBytes, s.max); size > bound {
		s.note(buildID, fmt.Sprintf("cache: not saved: %s is over the bound of %s (--cache-size)", sizeText(size), sizeText(bound)))
		return nil, fmt.Errorf("%s: %w of %s", sizeText(size), coordinator.ErrCacheTooLarge, sizeText(bound))
	}
	if size == 0 {
		return nil, nil // nothing sent: the notes said why
	}
	return &Upload{s: s, buildID: buildID, size: size, bc: bc}, nil
}

// Store reads the upload's bytes from r, all of them whatever it finds,
// checks every entry of the tar against the build's cache paths, and
// keeps it as the entry of the build's scope and key. A tar that breaks a
// rule is ErrUnsafeArchive, and nothing is stored.
func (u *Upload) Store(ctx context.Context, r io.Reader) (string, error) {
	s := u.s
	tmp, digest, err := s.receive(r, u.size, u.bc.Paths)
	if err != nil {
		if tmp != "" {
			os.Remove(tmp)
		}
		if errors.Is(err, coordinator.ErrUnsafeArchive) {
			s.note(u.buildID, fmt.Sprintf("cache: not saved: %v", err))
		}
		return "", err
	}
	if err := s.put(ctx, u.bc, tmp, digest, u.size); err != nil {
		return "", err
	}
	s.note(u.buildID, fmt.Sprintf("cache: saved %s as %s", sizeText(u.size), describe(u.bc.Key, u.bc.Scope)))
	s.Forget(ctx, u.buildID) // saved once: an agent that attaches again is not asked again (Pending)
	return digest, nil
}

// receive copies size bytes of tar from r into a temporary file, checking
// every entry against paths and hashing the bytes. It reads all size bytes
// whatever it finds (PROTOCOL.md §4.2).
func (s *Store) receive(r io.Reader, size int64, paths []string) (tmp, digest string, err error) {
	f, err := os.CreateTemp(s.tmpDir(), "cache-*")
	if err != nil {
		return "", "", fmt.Errorf("caches: %w", err)
	}
	tmp = f.Name()
	defer f.Close()
	h := sha256.New()
	// A short stream is ErrShortBlob (from the drain), whatever the tar
	// check made of it.
	tee := io.TeeReader(wire.BlobReader(r, size), io.MultiWriter(f, h))
	checkErr := checkTar(tee, paths)
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return tmp, "", fmt.Errorf("receive cache: %w", err)
	}
	if checkErr != nil {
		return tmp, "", checkErr
	}
	if err := f.Sync(); err != nil {
		return tmp, "", fmt.Errorf("caches: %w", err)
	}
	return tmp, digestOf(h), nil
}

// checkTar reads a tar to its end, checking every entry (PROTOCOL.md
// §6.8).
func checkTar(r io.Reader, paths []string) error {
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: entry %d: %w", coordinator.ErrUnsafeArchive, n+1, err)
		}
		if _, err := wire.CheckCacheEntry(paths, h); err != nil {
			return fmt.Errorf("%w: %w", coordinator.ErrUnsafeArchive, err)
		}
	}
}

// put names the received archive by its digest, makes it the entry of the
// build's scope and key, and evicts down to the bound.
func (s *Store) put(ctx context.Context, bc *store.BuildCache, tmp, digest string, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	final, err := s.blobPath(digest)
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("caches: %w", err)
	}
	now := s.now()
	replaced, err := s.db.PutCache(ctx, &store.CacheEntry{Owner: bc.Owner, Repo: bc.Repo, Scope: bc.Scope, Key: bc.Key,
		Digest: digest, Size: size, Created: now, Used: now})
	if err != nil {
		return fmt.Errorf("caches: %w", err)
	}
	if replaced != "" {
		if used, err := s.db.CacheDigestUsed(ctx, replaced); err == nil && !used {
			if p, err := s.blobPath(replaced); err == nil {
				os.Remove(p)
			}
		}
	}
	return s.evict(ctx)
}

// Pending is the cache build buildID's launch asked it to save, while the
// coordinator still waits for it (until the build ends), or nil: what an
// agent that restarted since the launch is told again (PROTOCOL.md §6.8).
func (s *Store) Pending(ctx context.Context, buildID string) (*wire.LaunchCache, error) {
	bc, err := s.db.BuildCacheOf(ctx, buildID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("caches: %w", err)
	}
	return &wire.LaunchCache{Paths: bc.Paths, Save: true, MaxBytes: min(bc.MaxBytes, s.max)}, nil
}

// Forget implements coordinator.Caches.
func (s *Store) Forget(ctx context.Context, buildID string) {
	if err := s.db.DeleteBuildCache(ctx, buildID); err != nil {
		s.log.Warn("forget build cache", "build", buildID, "err", err)
	}
}

// Usage is the bytes of the archives kept.
func (s *Store) Usage(ctx context.Context) (int64, error) { return s.db.CacheUsage(ctx) }

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// describe names a cache for a build's log: its key and scope.
func describe(key, scope string) string {
	where := scope
	if n, ok := strings.CutPrefix(scope, coordinator.ScopePull); ok {
		where = "pull request #" + n
	} else if b, ok := strings.CutPrefix(scope, coordinator.ScopeBranch); ok {
		where = "branch " + b
	}
	if key == "" {
		return where
	}
	return "key " + strconv.Quote(key) + " of " + where
}

// sizeText writes n bytes for people: 10GiB, 12.5MiB, 500B.
func sizeText(n int64) string { return units.BytesSize(float64(n)) }
