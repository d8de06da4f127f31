// Package store keeps the coordinator's durable state in one SQLite file
// under --data: builds, webhook deliveries, the agents seen, people and
// repositories' secrets, sealed (DESIGN.md §6).
// Logs and artifacts are files beside it and are not kept here.
//
// It uses modernc.org/sqlite, a pure Go SQLite, so that the forge binary
// stays static and cgo-free.
//
// Concurrency: the database/sql pool is limited to one connection
// (SetMaxOpenConns(1)), so every call, reads included, runs on that
// connection one after another. That is what makes UpdateBuild's
// read-modify-write free of lost updates without retry loops, and what
// makes SQLITE_BUSY impossible between the goroutines of one process. The
// cost, no parallel readers, does not matter at a CI coordinator's rate
// (a few writes per build). The consequence for callers: the function given
// to UpdateBuild runs while that one connection is held, so it must not call
// the Store (it would wait for itself forever) and should not block.
// Another process opening the same file (an operator's sqlite3 shell) is
// handled by busy_timeout and by transactions that take the write lock at
// BEGIN (_txlock=immediate), so they wait for each other instead of failing.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// ErrNotFound is returned, wrapped with what was looked for, when a build
// (or a ListBuilds cursor) does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned, wrapped with the id, by CreateBuild when a build
// with that id is already stored.
var ErrExists = errors.New("already exists")

// Store is the coordinator's SQLite database. It is safe for concurrent use.
type Store struct {
	db   *sql.DB
	path string

	// Statements of the hottest calls, prepared once on the one
	// connection: parsing them each time was a third of UpdateBuild's CPU
	// (docs/benchmarks.md, queue.*).
	buildByID, updateBuild *sql.Stmt
}

// pragmas applied by the driver to every connection it opens.
//   - busy_timeout: wait up to 5 s for another process's lock rather than
//     fail with SQLITE_BUSY at once.
//   - journal_mode(WAL): readers do not block the writer, and a commit is one
//     append to the -wal file rather than a rewrite of the journal.
//   - foreign_keys(1): SQLite leaves them off by default; on, so that any
//     reference a later migration adds is enforced.
//
// synchronous is left at SQLite's default (FULL): a recorded delivery must
// survive a power cut, or GitHub's redelivery would build a second time.
const pragmas = "_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate"

// Open opens the database at path, creating the file, its folder and the
// schema if needed, and upgrading an older schema. path ":memory:" gives a
// private in-memory database (for tests of other packages).
// Every error names the path.
func Open(path string) (*Store, error) {
	dsn, err := dataSourceName(path)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// One connection: see the package comment. It is also never closed
	// while idle, which an in-memory database needs to keep its content.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)

	s := &Store{db: db, path: path}
	ctx := context.Background()
	if err := s.checkJournal(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := s.prepare(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return s, nil
}

// dataSourceName makes the driver's DSN for path. A file path becomes a
// file: URI so that characters such as '?' or '#' in it cannot be taken
// for the start of the parameters (the driver cuts at the first '?').
// Creating the folder and the file here, rather than letting SQLite do it,
// gives a plain error naming the failing path (SQLite only says "unable to
// open database file") and a file mode of 0600; SQLite gives its -wal and
// -shm files the mode of the database file.
func dataSourceName(path string) (string, error) {
	if path == "" {
		return "", errors.New("no path given")
	}
	if path == ":memory:" {
		return ":memory:?" + pragmas, nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return "", err
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: pragmas}
	return u.String(), nil
}

// checkJournal makes the first connection (so any open error shows here
// rather than at the first query) and confirms WAL is in force: SQLite
// silently keeps another mode when it cannot switch (e.g. a file system
// without shared memory), and we would rather know at start.
func (s *Store) checkJournal(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if s.path == ":memory:" {
		return nil // an in-memory database has journal mode "memory"
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, want wal", mode)
	}
	return nil
}

// DB is the database itself, for tests that check what is (not) stored.
func (s *Store) DB() *sql.DB { return s.db }

// prepare makes the Store's prepared statements, after the migrations.
func (s *Store) prepare(ctx context.Context) (err error) {
	if s.buildByID, err = s.db.PrepareContext(ctx, `SELECT `+buildColumns+` FROM builds WHERE id = ?`); err != nil {
		return err
	}
	s.updateBuild, err = s.db.PrepareContext(ctx, updateBuildSQL)
	return err
}

// Close closes the database. Calls after Close fail.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.path, err)
	}
	return nil
}

// migrations are applied in order; the database's user_version pragma holds
// how many have been. Append only: never edit or reorder a released one,
// since files in the field have recorded it as done.
var migrations = [][]string{
	// 1: the first schema.
	{
		// Times are INTEGER unix nanoseconds, UTC, and NULL for a zero
		// time.Time: integers sort and compare correctly (RFC3339Nano text
		// does not, as it drops trailing zeros) and keep every nanosecond.
		// State is checked in Go, not by a CHECK constraint, so that a
		// later state needs no table rebuild.
		// Column names avoid SQL keywords: key -> supersede_key,
		// trigger -> trigger_event.
		`CREATE TABLE builds (
			id              TEXT    NOT NULL PRIMARY KEY,
			owner           TEXT    NOT NULL DEFAULT '',
			repo            TEXT    NOT NULL DEFAULT '',
			pull_request    INTEGER NOT NULL DEFAULT 0,
			branch          TEXT    NOT NULL DEFAULT '',
			sha             TEXT    NOT NULL DEFAULT '',
			ref             TEXT    NOT NULL DEFAULT '',
			action          TEXT    NOT NULL DEFAULT '',
			commit_count    INTEGER NOT NULL DEFAULT 0,
			fork            INTEGER NOT NULL DEFAULT 0,
			trigger_event   TEXT    NOT NULL DEFAULT '',
			supersede_key   TEXT    NOT NULL DEFAULT '',
			installation_id INTEGER NOT NULL DEFAULT 0,
			config          TEXT    NOT NULL DEFAULT '',
			state           TEXT    NOT NULL,
			reason          TEXT    NOT NULL DEFAULT '',
			exit_code       INTEGER,
			node_id         TEXT    NOT NULL DEFAULT '',
			container_id    TEXT    NOT NULL DEFAULT '',
			service_id      TEXT    NOT NULL DEFAULT '',
			service_name    TEXT    NOT NULL DEFAULT '',
			created         INTEGER NOT NULL,
			started         INTEGER,
			finished        INTEGER
		)`,
		// Supersede: "the queued or running builds with this key" is asked
		// for every new build (ActiveByKey).
		`CREATE INDEX builds_key_state ON builds (supersede_key, state)`,
		// The build list (UI, API) is newest first, paged by a
		// (created, id) cursor: this index serves both the order and the
		// cursor without a sort. id is in it because created can tie.
		`CREATE INDEX builds_created ON builds (created, id)`,
		// A repository's builds, newest first (ListBuilds with Owner/Repo).
		`CREATE INDEX builds_owner_repo ON builds (owner, repo, created, id)`,
		// Active() at every restart and CountByState for /metrics: the
		// table only grows, while active builds stay few.
		`CREATE INDEX builds_state ON builds (state, created, id)`,

		// One row per X-GitHub-Delivery id, so a redelivery is recognised.
		`CREATE TABLE deliveries (
			id       TEXT    NOT NULL PRIMARY KEY,
			event    TEXT    NOT NULL DEFAULT '',
			received INTEGER NOT NULL
		)`,
		// PruneDeliveries deletes by age.
		`CREATE INDEX deliveries_received ON deliveries (received)`,

		// History of agents that connected, one row per swarm node.
		`CREATE TABLE agents (
			node_id        TEXT    NOT NULL PRIMARY KEY,
			hostname       TEXT    NOT NULL DEFAULT '',
			agent_version  TEXT    NOT NULL DEFAULT '',
			engine_version TEXT    NOT NULL DEFAULT '',
			address        TEXT    NOT NULL DEFAULT '',
			first_seen     INTEGER NOT NULL,
			last_seen      INTEGER NOT NULL
		)`,
	},
	// 2: the front door (issue 13): public repositories, people, their
	// browser sessions and personal API tokens.
	{
		// Builds recorded before are taken as private: closed by default.
		`ALTER TABLE builds ADD COLUMN public INTEGER NOT NULL DEFAULT 0`,
		// The GitHub user token stays here, never in a cookie.
		`CREATE TABLE users (
			login     TEXT    NOT NULL PRIMARY KEY COLLATE NOCASE,
			github_id INTEGER NOT NULL DEFAULT 0,
			token     TEXT    NOT NULL DEFAULT '',
			updated   INTEGER NOT NULL
		)`,
		`CREATE TABLE sessions (
			id      TEXT    NOT NULL PRIMARY KEY,
			login   TEXT    NOT NULL,
			csrf    TEXT    NOT NULL,
			created INTEGER NOT NULL,
			expires INTEGER NOT NULL
		)`,
		`CREATE INDEX sessions_expires ON sessions (expires)`,
		`CREATE TABLE api_tokens (
			id        TEXT    NOT NULL PRIMARY KEY,
			login     TEXT    NOT NULL COLLATE NOCASE,
			name      TEXT    NOT NULL DEFAULT '',
			hash      TEXT    NOT NULL UNIQUE,
			created   INTEGER NOT NULL,
			last_used INTEGER
		)`,
		`CREATE INDEX api_tokens_login ON api_tokens (login, created)`,
	},
	// 3: per-node agent identity (issue 14): revoked nodes. A row stays
	// after allow: revoked_at still refuses certificates issued before it.
	{
		`CREATE TABLE agent_revocations (
			node_id    TEXT    NOT NULL PRIMARY KEY,
			revoked    INTEGER NOT NULL,
			revoked_at INTEGER NOT NULL
		)`,
	},
	// 4: admission (issue 15): who opened a pull request, whether it is
	// trusted, and its approval. Builds recorded before count as trusted
	// and needing none: they were let run already.
	{
		`ALTER TABLE builds ADD COLUMN author TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE builds ADD COLUMN untrusted INTEGER NOT NULL DEFAULT 0`,
		`ALTER TABLE builds ADD COLUMN needs_approval INTEGER NOT NULL DEFAULT 0`,
		`ALTER TABLE builds ADD COLUMN approved_by TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE builds ADD COLUMN approved INTEGER`,
	},
	// 5: a bounded coordinator (issue 15): deliveries are also told apart
	// by the SHA-256 of their body (hex), so a signed body re-sent under a
	// new delivery id is refused. '' for deliveries recorded before.
	{
		`ALTER TABLE deliveries ADD COLUMN body_sha256 TEXT NOT NULL DEFAULT ''`,
		`CREATE UNIQUE INDEX deliveries_body ON deliveries (body_sha256) WHERE body_sha256 <> ''`,
	},
	// 6: repository secrets (issue 16), sealed with the coordinator's
	// --secrets-key-file bound to owner/repo/name (secrets.Keeper): the
	// file never holds a value in clear.
	{
		`CREATE TABLE secrets (
			owner      TEXT    NOT NULL COLLATE NOCASE,
			repo       TEXT    NOT NULL COLLATE NOCASE,
			name       TEXT    NOT NULL,
			sealed     BLOB    NOT NULL,
			updated    INTEGER NOT NULL,
			updated_by TEXT    NOT NULL DEFAULT '',
			PRIMARY KEY (owner, repo, name)
		)`,
	},
	// 7: GitHub check runs and re-runs (issue 17).
	// A build may re-run another (rerun_of, and who asked), and records
	// why it ended as error when GitHub tells it apart (ending). Each check
	// run Forge creates is kept with its build, so that its updates go to
	// it and a "Re-run" of it on GitHub finds the build.
	{
		`ALTER TABLE builds ADD COLUMN rerun_of TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE builds ADD COLUMN rerun_by TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE builds ADD COLUMN ending TEXT NOT NULL DEFAULT ''`,
		`CREATE INDEX builds_rerun_of ON builds (rerun_of) WHERE rerun_of <> ''`,
		// A check_suite "rerequested" names a commit: its builds.
		`CREATE INDEX builds_commit ON builds (owner, repo, sha)`,
		// id is GitHub's check run id. status is the last one sent:
		// a completed check run is not reopened, a new one is made.
		`CREATE TABLE check_runs (
			id       INTEGER NOT NULL PRIMARY KEY,
			build_id TEXT    NOT NULL,
			owner    TEXT    NOT NULL,
			repo     TEXT    NOT NULL,
			status   TEXT    NOT NULL,
			created  INTEGER NOT NULL
		)`,
		`CREATE INDEX check_runs_build ON check_runs (build_id, created)`,
	},
	// 8: caches (issue 16). A build's base and default branches widen what
	// caches it reads. caches holds each repository's entries by scope and
	// key, naming a content-addressed archive under --data (several
	// entries may share one); used orders eviction. build_caches holds
	// what a launched build may save, until it has.
	{
		`ALTER TABLE builds ADD COLUMN base_branch TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE builds ADD COLUMN default_branch TEXT NOT NULL DEFAULT ''`,
		`CREATE TABLE caches (
			owner     TEXT    NOT NULL,
			repo      TEXT    NOT NULL,
			scope     TEXT    NOT NULL,
			cache_key TEXT    NOT NULL,
			digest    TEXT    NOT NULL,
			size      INTEGER NOT NULL,
			created   INTEGER NOT NULL,
			used      INTEGER NOT NULL,
			PRIMARY KEY (owner, repo, scope, cache_key)
		)`,
		`CREATE INDEX caches_used ON caches (used)`,
		`CREATE INDEX caches_digest ON caches (digest)`,
		`CREATE TABLE build_caches (
			build_id  TEXT    NOT NULL PRIMARY KEY,
			owner     TEXT    NOT NULL,
			repo      TEXT    NOT NULL,
			scope     TEXT    NOT NULL,
			cache_key TEXT    NOT NULL,
			paths     TEXT    NOT NULL,
			max_bytes INTEGER NOT NULL,
			created   INTEGER NOT NULL
		)`,
	},
}

// migrate brings the schema up to date in one transaction per migration.
// The version is read inside the transaction, which holds the write lock
// from BEGIN, so two processes opening a new file at once cannot both run
// a migration.
func (s *Store) migrate(ctx context.Context) error {
	for {
		done, err := s.migrateOne(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

func (s *Store) migrateOne(ctx context.Context) (done bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return false, err
	}
	switch {
	case v == len(migrations):
		return true, nil
	case v > len(migrations) || v < 0:
		return false, fmt.Errorf("schema version %d is newer than this forge knows (%d): downgrade refused", v, len(migrations))
	}
	for _, stmt := range migrations[v] {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return false, fmt.Errorf("migration %d: %w", v+1, err)
		}
	}
	// user_version lives in the database header and is written as part of
	// this transaction: the schema and its version commit together.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
		return false, fmt.Errorf("migration %d: %w", v+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("migration %d: %w", v+1, err)
	}
	return false, nil
}
