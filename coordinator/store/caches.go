package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// CacheEntry is one stored cache: a repository's archive for a scope
// (coordinator.Subject.CacheScopes) and key, by its digest.
type CacheEntry struct {
	Owner, Repo, Scope, Key string
	Digest                  string // "sha256:<hex>" of the archive
	Size                    int64
	Created, Used           time.Time
}

// BuildCache is what a launched build may save: where its cache goes,
// and the container paths it holds.
type BuildCache struct {
	BuildID, Owner, Repo, Scope, Key string
	Paths                            []string
	MaxBytes                         int64
}

const cacheColumns = `owner, repo, scope, cache_key, digest, size, created, used`

func scanCache(sc scanner) (*CacheEntry, error) {
	var e CacheEntry
	var created, used sql.NullInt64
	if err := sc.Scan(&e.Owner, &e.Repo, &e.Scope, &e.Key, &e.Digest, &e.Size, &created, &used); err != nil {
		return nil, err
	}
	e.Created, e.Used = goTime(created), goTime(used)
	return &e, nil
}

// FindCache returns the cache a build of owner/repo restores: the entry of
// key in the first of scopes that has one (exact), else the newest entry
// of any key in the first scope that has any; nil when there is none.
func (s *Store) FindCache(ctx context.Context, owner, repo string, scopes []string, key string) (e *CacheEntry, exact bool, err error) {
	for _, scope := range scopes {
		e, err = scanCache(s.db.QueryRowContext(ctx, `SELECT `+cacheColumns+` FROM caches
			WHERE owner = ? AND repo = ? AND scope = ? AND cache_key = ?`, owner, repo, scope, key))
		if err == nil {
			return e, true, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, false, fmt.Errorf("store: find cache: %w", err)
		}
	}
	for _, scope := range scopes {
		e, err = scanCache(s.db.QueryRowContext(ctx, `SELECT `+cacheColumns+` FROM caches
			WHERE owner = ? AND repo = ? AND scope = ? ORDER BY created DESC LIMIT 1`, owner, repo, scope))
		if err == nil {
			return e, false, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, false, fmt.Errorf("store: find cache: %w", err)
		}
	}
	return nil, false, nil
}

// TouchCache marks an entry used at t, for eviction's order.
func (s *Store) TouchCache(ctx context.Context, e *CacheEntry, t time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE caches SET used = ? WHERE owner = ? AND repo = ? AND scope = ? AND cache_key = ?`,
		t.UnixNano(), e.Owner, e.Repo, e.Scope, e.Key)
	if err != nil {
		return fmt.Errorf("store: touch cache: %w", err)
	}
	return nil
}

// PutCache stores e, replacing the entry of its scope and key. It returns
// the digest that entry had ("" when new, or the same digest).
func (s *Store) PutCache(ctx context.Context, e *CacheEntry) (replaced string, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("store: put cache: %w", err)
	}
	defer tx.Rollback()
	err = tx.QueryRowContext(ctx, `SELECT digest FROM caches WHERE owner = ? AND repo = ? AND scope = ? AND cache_key = ?`,
		e.Owner, e.Repo, e.Scope, e.Key).Scan(&replaced)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("store: put cache: %w", err)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO caches (`+cacheColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (owner, repo, scope, cache_key) DO UPDATE SET digest = excluded.digest, size = excluded.size,
		created = excluded.created, used = excluded.used`,
		e.Owner, e.Repo, e.Scope, e.Key, e.Digest, e.Size, e.Created.UnixNano(), e.Used.UnixNano())
	if err != nil {
		return "", fmt.Errorf("store: put cache: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("store: put cache: %w", err)
	}
	if replaced == e.Digest {
		replaced = ""
	}
	return replaced, nil
}

// rowQueryer is a database or a transaction.
type rowQueryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// digestNamed reports whether any entry names digest.
func digestNamed(ctx context.Context, q rowQueryer, digest string) (bool, error) {
	var n int
	err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM caches WHERE digest = ?`, digest).Scan(&n)
	return n > 0, err
}

// cacheUsage is the bytes of the archives the entries name, each counted
// once.
func cacheUsage(ctx context.Context, q rowQueryer) (int64, error) {
	var n int64
	err := q.QueryRowContext(ctx, `SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size) AS size FROM caches GROUP BY digest)`).Scan(&n)
	return n, err
}

// CacheDigestUsed reports whether any entry names digest.
func (s *Store) CacheDigestUsed(ctx context.Context, digest string) (bool, error) {
	used, err := digestNamed(ctx, s.db, digest)
	if err != nil {
		return false, fmt.Errorf("store: cache digest: %w", err)
	}
	return used, nil
}

// CacheUsage is the bytes of the archives the entries name, each counted
// once.
func (s *Store) CacheUsage(ctx context.Context) (int64, error) {
	n, err := cacheUsage(ctx, s.db)
	if err != nil {
		return 0, fmt.Errorf("store: cache usage: %w", err)
	}
	return n, nil
}

// EvictCaches deletes the least recently used entries until the archives
// left take at most max bytes. It returns the entries deleted and the
// digests no entry names any more, whose archives may go.
func (s *Store) EvictCaches(ctx context.Context, max int64) (evicted []CacheEntry, orphans []string, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("store: evict caches: %w", err)
	}
	defer tx.Rollback()
	for {
		used, err := cacheUsage(ctx, tx)
		if err != nil {
			return nil, nil, fmt.Errorf("store: evict caches: %w", err)
		}
		if used <= max {
			break
		}
		e, err := scanCache(tx.QueryRowContext(ctx, `SELECT `+cacheColumns+` FROM caches ORDER BY used, created LIMIT 1`))
		if err != nil {
			return nil, nil, fmt.Errorf("store: evict caches: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM caches WHERE owner = ? AND repo = ? AND scope = ? AND cache_key = ?`,
			e.Owner, e.Repo, e.Scope, e.Key); err != nil {
			return nil, nil, fmt.Errorf("store: evict caches: %w", err)
		}
		evicted = append(evicted, *e)
		named, err := digestNamed(ctx, tx, e.Digest)
		if err != nil {
			return nil, nil, fmt.Errorf("store: evict caches: %w", err)
		}
		if !named {
			orphans = append(orphans, e.Digest)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, fmt.Errorf("store: evict caches: %w", err)
	}
	return evicted, orphans, nil
}

// CacheDigests lists every digest an entry names.
func (s *Store) CacheDigests(ctx context.Context) (map[string]bool, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT digest FROM caches`)
	if err != nil {
		return nil, fmt.Errorf("store: cache digests: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, fmt.Errorf("store: cache digests: %w", err)
		}
		out[d] = true
	}
	return out, rows.Err()
}

// Caches lists a repository's entries, newest first.
func (s *Store) Caches(ctx context.Context, owner, repo string) ([]CacheEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+cacheColumns+` FROM caches WHERE owner = ? AND repo = ? ORDER BY created DESC`, owner, repo)
	if err != nil {
		return nil, fmt.Errorf("store: caches: %w", err)
	}
	defer rows.Close()
	var out []CacheEntry
	for rows.Next() {
		e, err := scanCache(rows)
		if err != nil {
			return nil, fmt.Errorf("store: caches: %w", err)
		}
		out = append(out, *e)
	}
	return out, rows.Err()
}

// SetBuildCache records what a launched build may save.
func (s *Store) SetBuildCache(ctx context.Context, bc BuildCache) error {
	for _, p := range bc.Paths {
		if p == "" || strings.ContainsRune(p, '\n') {
			return fmt.Errorf("store: build cache %s: path %q", bc.BuildID, p)
		}
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO build_caches (build_id, owner, repo, scope, cache_key, paths, max_bytes, created)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (build_id) DO UPDATE SET owner = excluded.owner, repo = excluded.repo,
		scope = excluded.scope, cache_key = excluded.cache_key, paths = excluded.paths, max_bytes = excluded.max_bytes`,
		bc.BuildID, bc.Owner, bc.Repo, bc.Scope, bc.Key, strings.Join(bc.Paths, "\n"), bc.MaxBytes, now().UnixNano())
	if err != nil {
		return fmt.Errorf("store: build cache %s: %w", bc.BuildID, err)
	}
	return nil
}

// BuildCacheOf returns what a build may save, or ErrNotFound (wrapped)
// when nothing.
func (s *Store) BuildCacheOf(ctx context.Context, buildID string) (*BuildCache, error) {
	bc := BuildCache{BuildID: buildID}
	var paths string
	err := s.db.QueryRowContext(ctx, `SELECT owner, repo, scope, cache_key, paths, max_bytes FROM build_caches WHERE build_id = ?`, buildID).
		Scan(&bc.Owner, &bc.Repo, &bc.Scope, &bc.Key, &paths, &bc.MaxBytes)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: build cache %s: %w", buildID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: build cache %s: %w", buildID, err)
	}
	bc.Paths = strings.Split(paths, "\n")
	return &bc, nil
}

// DeleteBuildCache forgets what a build may save.
func (s *Store) DeleteBuildCache(ctx context.Context, buildID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM build_caches WHERE build_id = ?`, buildID); err != nil {
		return fmt.Errorf("store: build cache %s: %w", buildID, err)
	}
	return nil
}
