package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

// ErrFinal is returned, wrapped, by UpdateBuild when the change would alter
// the outcome (State, ExitCode, Finished) of a build already in a final
// state: a late or repeated report never rewrites a finished build.
var ErrFinal = errors.New("build is final")

// buildColumns is the column list of every SELECT and of the INSERT; scan
// and args follow the same order.
const buildColumns = `id, owner, repo, pull_request, branch, sha, ref, action,
	commit_count, fork, trigger_event, supersede_key, installation_id, config,
	state, reason, exit_code, node_id, container_id, service_id, service_name,
	created, started, finished, public,
	author, untrusted, needs_approval, approved_by, approved,
	rerun_of, rerun_by, ending,
	base_branch, default_branch`

// updateBuildSQL sets every column but id (args[0] of buildArgs) and takes
// the id last, for the WHERE.
var updateBuildSQL = func() string {
	cols := strings.Split(buildColumns, ",")[1:]
	for i := range cols {
		cols[i] = strings.TrimSpace(cols[i]) + " = ?"
	}
	return `UPDATE builds SET ` + strings.Join(cols, ", ") + ` WHERE id = ?`
}()

var insertBuildSQL = `INSERT INTO builds (` + buildColumns + `) VALUES (?` +
	strings.Repeat(", ?", len(strings.Split(buildColumns, ","))-1) + `)`

type scanner interface{ Scan(dest ...any) error }

func scanBuild(sc scanner) (*coordinator.Build, error) {
	var (
		b                          coordinator.Build
		state                      string
		exit                       sql.NullInt64
		created, started, finished sql.NullInt64
		approved                   sql.NullInt64
	)
	err := sc.Scan(&b.ID, &b.Owner, &b.Repo, &b.PullRequest, &b.Branch, &b.SHA, &b.Ref, &b.Action,
		&b.CommitCount, &b.Fork, &b.Trigger, &b.Key, &b.InstallationID, &b.Config,
		&state, &b.Reason, &exit, &b.NodeID, &b.ContainerID, &b.ServiceID, &b.ServiceName,
		&created, &started, &finished, &b.Public,
		&b.Author, &b.Untrusted, &b.NeedsApproval, &b.ApprovedBy, &approved,
		&b.RerunOf, &b.RerunBy, &b.Ending,
		&b.BaseBranch, &b.DefaultBranch)
	if err != nil {
		return nil, err
	}
	b.State = coordinator.State(state)
	if exit.Valid {
		e := int(exit.Int64)
		b.ExitCode = &e
	}
	b.Created, b.Started, b.Finished = goTime(created), goTime(started), goTime(finished)
	b.Approved = goTime(approved)
	return &b, nil
}

// buildArgs are b's values in buildColumns order, checked.
func buildArgs(b *coordinator.Build) ([]any, error) {
	if b.ID == "" {
		return nil, errors.New("build has no id")
	}
	if !b.State.Valid() {
		return nil, fmt.Errorf("build %s: unknown state %q", b.ID, b.State)
	}
	if b.Created.IsZero() {
		return nil, fmt.Errorf("build %s: no created time", b.ID)
	}
	var times [4]any
	for i, t := range []struct {
		name string
		t    time.Time
	}{{"created", b.Created}, {"started", b.Started}, {"finished", b.Finished}, {"approved", b.Approved}} {
		v, err := dbTime(t.name, t.t)
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", b.ID, err)
		}
		times[i] = v
	}
	var exit any
	if b.ExitCode != nil {
		exit = int64(*b.ExitCode)
	}
	return []any{b.ID, b.Owner, b.Repo, b.PullRequest, b.Branch, b.SHA, b.Ref, b.Action,
		b.CommitCount, b.Fork, b.Trigger, b.Key, b.InstallationID, b.Config,
		string(b.State), b.Reason, exit, b.NodeID, b.ContainerID, b.ServiceID, b.ServiceName,
		times[0], times[1], times[2], b.Public,
		b.Author, b.Untrusted, b.NeedsApproval, b.ApprovedBy, times[3],
		b.RerunOf, b.RerunBy, string(b.Ending),
		b.BaseBranch, b.DefaultBranch}, nil
}

// CreateBuild stores a new build. An empty State becomes Queued, a zero
// Created becomes now, and a build created already final (a config refused
// before any service) with a zero Finished gets Finished = Created; these
// are written back into b so that the caller holds what was stored. It
// fails with ErrExists (wrapped) if the id is taken.
func (s *Store) CreateBuild(ctx context.Context, b *coordinator.Build) error {
	if b.State == "" {
		b.State = coordinator.Queued
	}
	if b.Created.IsZero() {
		b.Created = now()
	}
	if b.State.Final() && b.Finished.IsZero() {
		b.Finished = b.Created
	}
	args, err := buildArgs(b)
	if err != nil {
		return fmt.Errorf("store: create build: %w", err)
	}
	// ON CONFLICT DO NOTHING + RowsAffected tells "exists" apart from
	// other failures without depending on the driver's error codes.
	res, err := s.db.ExecContext(ctx, insertBuildSQL+` ON CONFLICT (id) DO NOTHING`, args...)
	if err != nil {
		return fmt.Errorf("store: create build %s: %w", b.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("store: create build %s: %w", b.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("store: create build %s: %w", b.ID, ErrExists)
	}
	return nil
}

// Build returns the build with that id, or ErrNotFound (wrapped).
func (s *Store) Build(ctx context.Context, id string) (*coordinator.Build, error) {
	b, err := scanBuild(s.buildByID.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: build %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: build %s: %w", id, err)
	}
	return b, nil
}

// UpdateBuild reads the build, lets fn change it and writes it back, all in
// one transaction, and returns what was stored. An error from fn aborts the
// update and is returned wrapped. fn must not call the Store (see the
// package comment) and should be quick: it holds the database.
//
// Rules kept whatever fn does:
//   - the ID cannot change;
//   - once the stored build is final, its State, ExitCode and Finished
//     cannot change (ErrFinal, wrapped); other fields, such as Reason or
//     the container, may still be filled in;
//   - a build that becomes final with a zero Finished gets Finished = now.
func (s *Store) UpdateBuild(ctx context.Context, id string, fn func(*coordinator.Build) error) (*coordinator.Build, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("store: update build %s: %w", id, err)
	}
	defer tx.Rollback() // no-op after Commit

	old, err := scanBuild(tx.StmtContext(ctx, s.buildByID).QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: update build %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: update build %s: %w", id, err)
	}
	b := old.Clone()
	if err := fn(b); err != nil {
		return nil, fmt.Errorf("store: update build %s: %w", id, err)
	}
	if b.ID != old.ID {
		return nil, fmt.Errorf("store: update build %s: the id cannot change (to %q)", id, b.ID)
	}
	if old.State.Final() {
		if b.State != old.State || !sameExit(b.ExitCode, old.ExitCode) || !b.Finished.Equal(old.Finished) {
			return nil, fmt.Errorf("store: update build %s: %w as %s", id, ErrFinal, old.State)
		}
	} else if b.State.Final() && b.Finished.IsZero() {
		b.Finished = now()
	}
	args, err := buildArgs(b)
	if err != nil {
		return nil, fmt.Errorf("store: update build: %w", err)
	}
	if _, err := tx.StmtContext(ctx, s.updateBuild).ExecContext(ctx, append(args[1:], id)...); err != nil {
		return nil, fmt.Errorf("store: update build %s: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("store: update build %s: %w", id, err)
	}
	// What was stored is b, read back through the same conversions.
	b.Created, b.Started, b.Finished = roundTime(b.Created), roundTime(b.Started), roundTime(b.Finished)
	b.Approved = roundTime(b.Approved)
	return b, nil
}

func sameExit(a, b *int) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// roundTime is t as it comes back from the database: UTC, no monotonic
// reading, zero kept zero.
func roundTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// ListOptions selects builds for ListBuilds.
type ListOptions struct {
	Limit       int // default 50, max 500
	Owner, Repo string
	State       coordinator.State
	Before      string // build id cursor: only builds older than this one
	PublicOnly  bool   // only public repositories' builds
	// Branch and PullRequest (> 0) filter by the build's branch (a pull
	// request's is its head branch) and pull request number.
	Branch      string
	PullRequest int
	// NoPullRequest keeps builds of no pull request (pushes, forge run,
	// the API): a branch's badge is not a fork's pull request's.
	NoPullRequest bool
	// States keeps builds in any of these states (and in State, when
	// set too).
	States []coordinator.State
}

const (
	defaultListLimit = 50
	maxListLimit     = 500
)

// ClampLimit is the page size ListBuilds serves for a ListOptions.Limit.
func ClampLimit(n int) int {
	if n <= 0 {
		return defaultListLimit
	}
	return min(n, maxListLimit)
}

// ListBuilds returns builds newest first (Created, then ID, descending),
// filtered by o. Owner, Repo and State filter independently when set. A
// Before id that does not exist gives ErrNotFound (wrapped).
func (s *Store) ListBuilds(ctx context.Context, o ListOptions) ([]*coordinator.Build, error) {
	limit := ClampLimit(o.Limit)
	var (
		where []string
		args  []any
	)
	if o.Owner != "" {
		where, args = append(where, "owner = ?"), append(args, o.Owner)
	}
	if o.Repo != "" {
		where, args = append(where, "repo = ?"), append(args, o.Repo)
	}
	if o.State != "" {
		if !o.State.Valid() {
			return nil, fmt.Errorf("store: list builds: unknown state %q", o.State)
		}
		where, args = append(where, "state = ?"), append(args, string(o.State))
	}
	if o.PublicOnly {
		where = append(where, "public = 1")
	}
	if o.Branch != "" {
		where, args = append(where, "branch = ?"), append(args, o.Branch)
	}
	switch {
	case o.PullRequest < 0:
		return nil, fmt.Errorf("store: list builds: pull request %d: want a positive number", o.PullRequest)
	case o.PullRequest > 0 && o.NoPullRequest:
		return nil, fmt.Errorf("store: list builds: pull request %d and no pull request at once", o.PullRequest)
	case o.PullRequest > 0:
		where, args = append(where, "pull_request = ?"), append(args, o.PullRequest)
	case o.NoPullRequest:
		where = append(where, "pull_request = 0")
	}
	if len(o.States) > 0 {
		for _, st := range o.States {
			if !st.Valid() {
				return nil, fmt.Errorf("store: list builds: unknown state %q", st)
			}
			args = append(args, string(st))
		}
		where = append(where, "state IN (?"+strings.Repeat(", ?", len(o.States)-1)+")")
	}
	if o.Before != "" {
		// Resolve the cursor first so that a bad one is an error rather
		// than an empty page. Builds are never deleted, so it cannot go
		// away between the two queries.
		var created int64
		err := s.db.QueryRowContext(ctx, `SELECT created FROM builds WHERE id = ?`, o.Before).Scan(&created)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("store: list builds before %s: %w", o.Before, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("store: list builds: %w", err)
		}
		where = append(where, "(created < ? OR (created = ? AND id < ?))")
		args = append(args, created, created, o.Before)
	}
	q := `SELECT ` + buildColumns + ` FROM builds`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created DESC, id DESC LIMIT ?`
	args = append(args, limit)
	return s.queryBuilds(ctx, "list builds", q, args...)
}

// Active returns the coordinator.Queued and coordinator.Running builds, oldest first: what a
// restarted coordinator must find again.
func (s *Store) Active(ctx context.Context) ([]*coordinator.Build, error) {
	return s.queryBuilds(ctx, "active builds", `SELECT `+buildColumns+` FROM builds
		WHERE state IN (?, ?) ORDER BY created, id`, string(coordinator.Queued), string(coordinator.Running))
}

// ActiveByKey returns the coordinator.Queued and coordinator.Running builds with that supersede
// key, oldest first. The empty key means "never supersede" and matches
// nothing.
func (s *Store) ActiveByKey(ctx context.Context, key string) ([]*coordinator.Build, error) {
	if key == "" {
		return nil, nil
	}
	return s.queryBuilds(ctx, "active builds by key", `SELECT `+buildColumns+` FROM builds
		WHERE supersede_key = ? AND state IN (?, ?) ORDER BY created, id`, key, string(coordinator.Queued), string(coordinator.Running))
}

func (s *Store) queryBuilds(ctx context.Context, what, q string, args ...any) ([]*coordinator.Build, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	defer rows.Close()
	var out []*coordinator.Build
	for rows.Next() {
		b, err := scanBuild(rows)
		if err != nil {
			return nil, fmt.Errorf("store: %s: %w", what, err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	return out, nil
}

// CountByState returns how many builds are in each state. Every State is
// in the map, with 0 when none, so that a metrics gauge reports zeros.
func (s *Store) CountByState(ctx context.Context) (map[coordinator.State]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT state, count(*) FROM builds GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("store: count builds: %w", err)
	}
	defer rows.Close()
	m := make(map[coordinator.State]int, len(coordinator.States))
	for _, st := range coordinator.States {
		m[st] = 0
	}
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("store: count builds: %w", err)
		}
		m[coordinator.State(st)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: count builds: %w", err)
	}
	return m, nil
}
