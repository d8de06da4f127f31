package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Seen says whether a webhook delivery was recorded before.
type Seen int

const (
	// SeenFirst: neither its id nor its body was recorded; it is now.
	SeenFirst Seen = iota
	// SeenID: a redelivery, the same X-GitHub-Delivery id.
	SeenID
	// SeenBody: a new id with a body already recorded under another: a
	// replay of a captured body.
	SeenBody
)

// RecordDeliveryBody records a delivery by its id and the SHA-256 of its
// body (bodySHA256, hex) in one statement, so of concurrent calls with
// one id or one body exactly one gets SeenFirst. The others are told
// which of the two was seen. A zero at means now.
func (s *Store) RecordDeliveryBody(ctx context.Context, id, event, bodySHA256 string, at time.Time) (Seen, error) {
	if id == "" || bodySHA256 == "" {
		return 0, errors.New("store: record delivery: empty delivery id or body hash")
	}
	if at.IsZero() {
		at = now()
	}
	received, err := dbTime("received", at)
	if err != nil {
		return 0, fmt.Errorf("store: record delivery %s: %w", id, err)
	}
	// No conflict target: either unique key (id, body) does nothing.
	res, err := s.db.ExecContext(ctx, `INSERT INTO deliveries (id, event, received, body_sha256) VALUES (?, ?, ?, ?)
		ON CONFLICT DO NOTHING`, id, event, received, bodySHA256)
	if err != nil {
		return 0, fmt.Errorf("store: record delivery %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: record delivery %s: %w", id, err)
	}
	if n == 1 {
		return SeenFirst, nil
	}
	var one int
	switch err := s.db.QueryRowContext(ctx, `SELECT 1 FROM deliveries WHERE id = ?`, id).Scan(&one); {
	case err == nil:
		return SeenID, nil
	case errors.Is(err, sql.ErrNoRows):
		return SeenBody, nil
	default:
		return 0, fmt.Errorf("store: record delivery %s: %w", id, err)
	}
}

// RecordDelivery records a webhook delivery by its X-GitHub-Delivery id and
// reports whether this is the first time the id is seen. A redelivery (the
// same id) gives first=false and must not be built again. The check and the
// record are one statement (INSERT ... ON CONFLICT DO NOTHING), so of any
// number of concurrent calls with one id exactly one gets first=true. A
// zero at means now.
func (s *Store) RecordDelivery(ctx context.Context, id, event string, at time.Time) (first bool, err error) {
	if id == "" {
		// Recording "" would make every later delivery without an id a
		// "redelivery" of the first one.
		return false, errors.New("store: record delivery: empty delivery id")
	}
	if at.IsZero() {
		at = now()
	}
	received, err := dbTime("received", at)
	if err != nil {
		return false, fmt.Errorf("store: record delivery %s: %w", id, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO deliveries (id, event, received) VALUES (?, ?, ?)
		ON CONFLICT (id) DO NOTHING`, id, event, received)
	if err != nil {
		return false, fmt.Errorf("store: record delivery %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: record delivery %s: %w", id, err)
	}
	return n == 1, nil
}

// PruneDeliveries forgets deliveries (ids and body hashes) received
// before olderThan and returns how many. GitHub redelivers only recent deliveries, so ids older than a
// few days are no longer needed to recognise one.
func (s *Store) PruneDeliveries(ctx context.Context, olderThan time.Time) (int64, error) {
	if olderThan.IsZero() {
		return 0, nil // nothing is older than the beginning of time
	}
	t, err := dbTime("olderThan", olderThan)
	if err != nil {
		return 0, fmt.Errorf("store: prune deliveries: %w", err)
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM deliveries WHERE received < ?`, t)
	if err != nil {
		return 0, fmt.Errorf("store: prune deliveries: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: prune deliveries: %w", err)
	}
	return n, nil
}
