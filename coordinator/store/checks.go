package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/forge-ci/forge/coordinator"
)

// AddCheckRun records a check run Forge created for a build. A zero
// Created becomes now.
func (s *Store) AddCheckRun(ctx context.Context, cr coordinator.CheckRun) error {
	if cr.ID <= 0 || cr.BuildID == "" {
		return fmt.Errorf("store: add check run %d: no id or no build", cr.ID)
	}
	if cr.Created.IsZero() {
		cr.Created = now()
	}
	created, err := dbTime("created", cr.Created)
	if err != nil {
		return fmt.Errorf("store: add check run %d: %w", cr.ID, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO check_runs (id, build_id, owner, repo, status, created) VALUES (?, ?, ?, ?, ?, ?)`,
		cr.ID, cr.BuildID, cr.Owner, cr.Repo, cr.Status, created)
	if err != nil {
		return fmt.Errorf("store: add check run %d of build %s: %w", cr.ID, cr.BuildID, err)
	}
	return nil
}

// SetCheckRunStatus records the status last sent for check run id.
func (s *Store) SetCheckRunStatus(ctx context.Context, id int64, status string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE check_runs SET status = ? WHERE id = ?`, status, id)
	if err != nil {
		return fmt.Errorf("store: check run %d: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return fmt.Errorf("store: check run %d: %w", id, errors.Join(ErrNotFound, err))
	}
	return nil
}

const checkRunColumns = `id, build_id, owner, repo, status, created`

func scanCheckRun(sc scanner) (*coordinator.CheckRun, error) {
	var (
		cr      coordinator.CheckRun
		created sql.NullInt64
	)
	if err := sc.Scan(&cr.ID, &cr.BuildID, &cr.Owner, &cr.Repo, &cr.Status, &created); err != nil {
		return nil, err
	}
	cr.Created = goTime(created)
	return &cr, nil
}

// LatestCheckRun is the build's newest check run, or ErrNotFound
// (wrapped) when Forge made none for it.
func (s *Store) LatestCheckRun(ctx context.Context, buildID string) (*coordinator.CheckRun, error) {
	cr, err := scanCheckRun(s.db.QueryRowContext(ctx, `SELECT `+checkRunColumns+` FROM check_runs
		WHERE build_id = ? ORDER BY created DESC, id DESC LIMIT 1`, buildID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: check run of build %s: %w", buildID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: check run of build %s: %w", buildID, err)
	}
	return cr, nil
}

// CheckRun is check run id of owner/repo as Forge recorded it, or
// ErrNotFound (wrapped): Forge did not create it, or not on that
// repository.
func (s *Store) CheckRun(ctx context.Context, owner, repo string, id int64) (*coordinator.CheckRun, error) {
	cr, err := scanCheckRun(s.db.QueryRowContext(ctx, `SELECT `+checkRunColumns+` FROM check_runs
		WHERE id = ? AND owner = ? COLLATE NOCASE AND repo = ? COLLATE NOCASE`, id, owner, repo))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: check run %d of %s/%s: %w", id, owner, repo, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: check run %d of %s/%s: %w", id, owner, repo, err)
	}
	return cr, nil
}

// CommitBuilds are the builds of owner/repo at sha, newest first.
func (s *Store) CommitBuilds(ctx context.Context, owner, repo, sha string) ([]*coordinator.Build, error) {
	return s.queryBuilds(ctx, "builds of a commit", `SELECT `+buildColumns+` FROM builds
		WHERE owner = ? AND repo = ? AND sha = ? ORDER BY created DESC, id DESC`, owner, repo, sha)
}

// LatestByKey is the newest build of supersede key, whatever its state,
// or ErrNotFound (wrapped).
func (s *Store) LatestByKey(ctx context.Context, key string) (*coordinator.Build, error) {
	b, err := scanBuild(s.db.QueryRowContext(ctx, `SELECT `+buildColumns+` FROM builds
		WHERE supersede_key = ? AND supersede_key <> '' ORDER BY created DESC, id DESC LIMIT 1`, key))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: latest build of key %q: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: latest build of key %q: %w", key, err)
	}
	return b, nil
}

// Reruns are the ids of the builds that re-run build id, oldest first.
func (s *Store) Reruns(ctx context.Context, id string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM builds WHERE rerun_of = ? AND rerun_of <> '' ORDER BY created, id`, id)
	if err != nil {
		return nil, fmt.Errorf("store: re-runs of %s: %w", id, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			return nil, fmt.Errorf("store: re-runs of %s: %w", id, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: re-runs of %s: %w", id, err)
	}
	return out, nil
}
