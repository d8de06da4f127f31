package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/forge-ci/forge/coordinator"
)

// PutUser records a person who signed in, replacing their GitHub token.
func (s *Store) PutUser(ctx context.Context, u coordinator.User) error {
	if u.Login == "" {
		return errors.New("store: user: empty login")
	}
	if u.Updated.IsZero() {
		u.Updated = now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO users (login, github_id, token, updated) VALUES (?, ?, ?, ?)
		ON CONFLICT (login) DO UPDATE SET github_id = excluded.github_id, token = excluded.token, updated = excluded.updated`,
		u.Login, u.GitHubID, u.Token, u.Updated.UnixNano())
	if err != nil {
		return fmt.Errorf("store: user %s: %w", u.Login, err)
	}
	return nil
}

// User returns the person with login; ErrNotFound when never seen.
func (s *Store) User(ctx context.Context, login string) (coordinator.User, error) {
	u := coordinator.User{}
	var updated sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT login, github_id, token, updated FROM users WHERE login = ?`, login).
		Scan(&u.Login, &u.GitHubID, &u.Token, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("store: user %s: %w", login, ErrNotFound)
	}
	if err != nil {
		return u, fmt.Errorf("store: user %s: %w", login, err)
	}
	u.Updated = goTime(updated)
	return u, nil
}

// CreateSession stores a browser session.
func (s *Store) CreateSession(ctx context.Context, se coordinator.Session) error {
	if se.ID == "" || se.Login == "" || se.CSRF == "" || se.Expires.IsZero() {
		return errors.New("store: session: id, login, csrf and expiry are required")
	}
	if se.Created.IsZero() {
		se.Created = now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO sessions (id, login, csrf, created, expires) VALUES (?, ?, ?, ?, ?)`,
		se.ID, se.Login, se.CSRF, se.Created.UnixNano(), se.Expires.UnixNano())
	if err != nil {
		return fmt.Errorf("store: session: %w", err)
	}
	return nil
}

// Session returns the session with id, expired or not (the caller
// decides); ErrNotFound when there is none.
func (s *Store) Session(ctx context.Context, id string) (coordinator.Session, error) {
	var se coordinator.Session
	var created, expires sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT id, login, csrf, created, expires FROM sessions WHERE id = ?`, id).
		Scan(&se.ID, &se.Login, &se.CSRF, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return se, fmt.Errorf("store: session: %w", ErrNotFound)
	}
	if err != nil {
		return se, fmt.Errorf("store: session: %w", err)
	}
	se.Created, se.Expires = goTime(created), goTime(expires)
	return se, nil
}

// DeleteSession ends a session (sign-out); a missing one is no error.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, id); err != nil {
		return fmt.Errorf("store: session: %w", err)
	}
	return nil
}

// PruneSessions deletes the sessions that expired before t.
func (s *Store) PruneSessions(ctx context.Context, t time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE expires < ?`, t.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("store: prune sessions: %w", err)
	}
	return res.RowsAffected()
}

// CreateAPIToken stores a personal token (its hash only).
func (s *Store) CreateAPIToken(ctx context.Context, t coordinator.APIToken) error {
	if t.ID == "" || t.Login == "" || t.Hash == "" {
		return errors.New("store: api token: id, login and hash are required")
	}
	if t.Created.IsZero() {
		t.Created = now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO api_tokens (id, login, name, hash, created) VALUES (?, ?, ?, ?, ?)`,
		t.ID, t.Login, t.Name, t.Hash, t.Created.UnixNano())
	if err != nil {
		return fmt.Errorf("store: api token: %w", err)
	}
	return nil
}

const tokenColumns = `id, login, name, hash, created, last_used`

func scanToken(sc scanner) (coordinator.APIToken, error) {
	var t coordinator.APIToken
	var created, used sql.NullInt64
	err := sc.Scan(&t.ID, &t.Login, &t.Name, &t.Hash, &created, &used)
	t.Created, t.LastUsed = goTime(created), goTime(used)
	return t, err
}

// APITokenByHash finds the token with that hash and notes its use;
// ErrNotFound when none has it (unknown or revoked).
func (s *Store) APITokenByHash(ctx context.Context, hash string) (coordinator.APIToken, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx, `UPDATE api_tokens SET last_used = ? WHERE hash = ? RETURNING `+tokenColumns,
		now().UnixNano(), hash))
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("store: api token: %w", ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("store: api token: %w", err)
	}
	return t, nil
}

// APITokens lists login's tokens, newest first.
func (s *Store) APITokens(ctx context.Context, login string) ([]coordinator.APIToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE login = ? ORDER BY created DESC, id`, login)
	if err != nil {
		return nil, fmt.Errorf("store: api tokens: %w", err)
	}
	defer rows.Close()
	var out []coordinator.APIToken
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("store: api tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: api tokens: %w", err)
	}
	return out, nil
}

// DeleteAPIToken revokes login's token id; ErrNotFound when login has no
// such token (another's token is not theirs to revoke).
func (s *Store) DeleteAPIToken(ctx context.Context, login, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM api_tokens WHERE id = ? AND login = ?`, id, login)
	if err != nil {
		return fmt.Errorf("store: api token %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: api token %s: %w", id, ErrNotFound)
	}
	return nil
}
