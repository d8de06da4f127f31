package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

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

// PruneDeliveries forgets deliveries received before olderThan and returns
// how many. GitHub redelivers only recent deliveries, so ids older than a
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
