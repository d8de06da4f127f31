package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/forge-ci/forge/coordinator"
)

// Repository secrets are kept sealed (secrets.Keeper): the store sees
// only the sealed bytes, never a value. Owners and repositories are
// matched without regard to case, as GitHub does.

// PutSecret stores s's sealed value, replacing an earlier one.
func (s *Store) PutSecret(ctx context.Context, sec coordinator.Secret, sealed []byte) error {
	if sec.Owner == "" || sec.Repo == "" || sec.Name == "" || len(sealed) == 0 {
		return errors.New("store: secret: owner, repo, name and a sealed value are required")
	}
	if sec.Updated.IsZero() {
		sec.Updated = now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO secrets (owner, repo, name, sealed, updated, updated_by) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (owner, repo, name) DO UPDATE SET sealed = excluded.sealed, updated = excluded.updated, updated_by = excluded.updated_by`,
		sec.Owner, sec.Repo, sec.Name, sealed, sec.Updated.UnixNano(), sec.UpdatedBy)
	if err != nil {
		return fmt.Errorf("store: secret %s of %s/%s: %w", sec.Name, sec.Owner, sec.Repo, err)
	}
	return nil
}

// DeleteSecret removes a secret; ErrNotFound when there is none.
func (s *Store) DeleteSecret(ctx context.Context, owner, repo, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM secrets WHERE owner = ? AND repo = ? AND name = ?`, owner, repo, name)
	if err != nil {
		return fmt.Errorf("store: secret %s of %s/%s: %w", name, owner, repo, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: secret %s of %s/%s: %w", name, owner, repo, ErrNotFound)
	}
	return nil
}

// Secrets lists owner/repo's secrets by name, without their values.
func (s *Store) Secrets(ctx context.Context, owner, repo string) ([]coordinator.Secret, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT owner, repo, name, updated, updated_by FROM secrets
		WHERE owner = ? AND repo = ? ORDER BY name`, owner, repo)
	if err != nil {
		return nil, fmt.Errorf("store: secrets of %s/%s: %w", owner, repo, err)
	}
	defer rows.Close()
	var out []coordinator.Secret
	for rows.Next() {
		var sec coordinator.Secret
		var updated sql.NullInt64
		if err := rows.Scan(&sec.Owner, &sec.Repo, &sec.Name, &updated, &sec.UpdatedBy); err != nil {
			return nil, fmt.Errorf("store: secrets of %s/%s: %w", owner, repo, err)
		}
		sec.Updated = goTime(updated)
		out = append(out, sec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: secrets of %s/%s: %w", owner, repo, err)
	}
	return out, nil
}

// SealedSecrets gives the sealed values of the named secrets of
// owner/repo that exist.
func (s *Store) SealedSecrets(ctx context.Context, owner, repo string, names []string) (map[string][]byte, error) {
	out := map[string][]byte{}
	if len(names) == 0 {
		return out, nil
	}
	args := []any{owner, repo}
	for _, n := range names {
		args = append(args, n)
	}
	q := `SELECT name, sealed FROM secrets WHERE owner = ? AND repo = ? AND name IN (?` + strings.Repeat(", ?", len(names)-1) + `)`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: secrets of %s/%s: %w", owner, repo, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var sealed []byte
		if err := rows.Scan(&name, &sealed); err != nil {
			return nil, fmt.Errorf("store: secrets of %s/%s: %w", owner, repo, err)
		}
		out[name] = sealed
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: secrets of %s/%s: %w", owner, repo, err)
	}
	return out, nil
}

// Reseal rewrites, in one transaction, every secret's sealed value with
// what secret returns for it, and every person's GitHub token with what
// token returns for it (a new secrets key: secrets.Keeper.Rekey). A row
// whose value comes back unchanged is left as it is; an error from either
// function changes nothing. It returns how many rows of each changed.
func (s *Store) Reseal(ctx context.Context, secret func(owner, repo, name string, sealed []byte) ([]byte, error),
	token func(login, token string) (string, error)) (secrets, tokens int, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("store: reseal: %w", err)
	}
	defer tx.Rollback() // no-op after Commit

	type secretRow struct {
		owner, repo, name string
		sealed            []byte
	}
	var ss []secretRow
	if err := eachRow(ctx, tx, `SELECT owner, repo, name, sealed FROM secrets ORDER BY owner, repo, name`, func(rows *sql.Rows) error {
		var r secretRow
		err := rows.Scan(&r.owner, &r.repo, &r.name, &r.sealed)
		ss = append(ss, r)
		return err
	}); err != nil {
		return 0, 0, fmt.Errorf("store: reseal secrets: %w", err)
	}
	for _, r := range ss {
		out, err := secret(r.owner, r.repo, r.name, r.sealed)
		if err != nil {
			return 0, 0, err
		}
		if bytes.Equal(out, r.sealed) {
			continue
		}
		if len(out) == 0 {
			return 0, 0, fmt.Errorf("store: reseal secret %s of %s/%s: empty sealed value", r.name, r.owner, r.repo)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE secrets SET sealed = ? WHERE owner = ? AND repo = ? AND name = ?`,
			out, r.owner, r.repo, r.name); err != nil {
			return 0, 0, fmt.Errorf("store: reseal secret %s of %s/%s: %w", r.name, r.owner, r.repo, err)
		}
		secrets++
	}

	type userRow struct{ login, token string }
	var us []userRow
	if err := eachRow(ctx, tx, `SELECT login, token FROM users ORDER BY login`, func(rows *sql.Rows) error {
		var u userRow
		err := rows.Scan(&u.login, &u.token)
		us = append(us, u)
		return err
	}); err != nil {
		return 0, 0, fmt.Errorf("store: reseal tokens: %w", err)
	}
	for _, u := range us {
		out, err := token(u.login, u.token)
		if err != nil {
			return 0, 0, err
		}
		if out == u.token {
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE users SET token = ? WHERE login = ?`, out, u.login); err != nil {
			return 0, 0, fmt.Errorf("store: reseal %s's token: %w", u.login, err)
		}
		tokens++
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("store: reseal: %w", err)
	}
	return secrets, tokens, nil
}

// eachRow runs query in tx and scan on each row, reading them all before
// it returns (so the transaction may write next).
func eachRow(ctx context.Context, tx *sql.Tx, query string, scan func(*sql.Rows) error) error {
	rows, err := tx.QueryContext(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
