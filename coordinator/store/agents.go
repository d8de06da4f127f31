package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// AgentSeen is the history of one agent (one swarm node), not the live
// registry of connected agents.
type AgentSeen struct {
	NodeID, Hostname, AgentVersion, EngineVersion, Address string
	FirstSeen, LastSeen                                    time.Time
}

// AgentConnected records that an agent connected: a new node is inserted,
// a known one keeps its FirstSeen and has everything else replaced. A zero
// LastSeen means now; a zero FirstSeen means LastSeen.
func (s *Store) AgentConnected(ctx context.Context, a AgentSeen) error {
	if a.NodeID == "" {
		return errors.New("store: agent connected: empty node id")
	}
	if a.LastSeen.IsZero() {
		a.LastSeen = now()
	}
	if a.FirstSeen.IsZero() {
		a.FirstSeen = a.LastSeen
	}
	first, err := dbTime("first seen", a.FirstSeen)
	if err != nil {
		return fmt.Errorf("store: agent %s: %w", a.NodeID, err)
	}
	last, err := dbTime("last seen", a.LastSeen)
	if err != nil {
		return fmt.Errorf("store: agent %s: %w", a.NodeID, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO agents
		(node_id, hostname, agent_version, engine_version, address, first_seen, last_seen)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (node_id) DO UPDATE SET
			hostname = excluded.hostname,
			agent_version = excluded.agent_version,
			engine_version = excluded.engine_version,
			address = excluded.address,
			last_seen = excluded.last_seen`,
		a.NodeID, a.Hostname, a.AgentVersion, a.EngineVersion, a.Address, first, last)
	if err != nil {
		return fmt.Errorf("store: agent %s: %w", a.NodeID, err)
	}
	return nil
}

// AgentsSeen returns every agent ever recorded, most recently seen first.
func (s *Store) AgentsSeen(ctx context.Context) ([]AgentSeen, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT node_id, hostname, agent_version, engine_version,
		address, first_seen, last_seen FROM agents ORDER BY last_seen DESC, node_id`)
	if err != nil {
		return nil, fmt.Errorf("store: agents seen: %w", err)
	}
	defer rows.Close()
	var out []AgentSeen
	for rows.Next() {
		var (
			a           AgentSeen
			first, last sql.NullInt64
		)
		if err := rows.Scan(&a.NodeID, &a.Hostname, &a.AgentVersion, &a.EngineVersion,
			&a.Address, &first, &last); err != nil {
			return nil, fmt.Errorf("store: agents seen: %w", err)
		}
		a.FirstSeen, a.LastSeen = goTime(first), goTime(last)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: agents seen: %w", err)
	}
	return out, nil
}

// Revocation is what the coordinator holds against a node's agent
// certificates. The zero value: never revoked.
type Revocation struct {
	// Revoked: the node's certificates are refused and it gets no new one
	// (forge agents revoke), until it is allowed again.
	Revoked bool
	// RevokedAt is the last revocation; certificates issued before it stay
	// refused after an allow, so the node must join again.
	RevokedAt time.Time
}

// RevokeAgent revokes node's agent certificates as of at.
func (s *Store) RevokeAgent(ctx context.Context, node string, at time.Time) error {
	if node == "" {
		return errors.New("store: revoke agent: empty node id")
	}
	t, err := dbTime("revoked at", at)
	if err != nil {
		return fmt.Errorf("store: revoke agent %s: %w", node, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO agent_revocations (node_id, revoked, revoked_at) VALUES (?, 1, ?)
		ON CONFLICT (node_id) DO UPDATE SET revoked = 1, revoked_at = excluded.revoked_at`, node, t)
	if err != nil {
		return fmt.Errorf("store: revoke agent %s: %w", node, err)
	}
	return nil
}

// AllowAgent lifts node's revocation; it reports whether there was one.
func (s *Store) AllowAgent(ctx context.Context, node string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE agent_revocations SET revoked = 0 WHERE node_id = ? AND revoked = 1`, node)
	if err != nil {
		return false, fmt.Errorf("store: allow agent %s: %w", node, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: allow agent %s: %w", node, err)
	}
	return n > 0, nil
}

// AgentRevocation returns what is held against node; the zero value when
// it was never revoked.
func (s *Store) AgentRevocation(ctx context.Context, node string) (Revocation, error) {
	var (
		r  Revocation
		at sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, `SELECT revoked, revoked_at FROM agent_revocations WHERE node_id = ?`, node).Scan(&r.Revoked, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return Revocation{}, nil
	}
	if err != nil {
		return Revocation{}, fmt.Errorf("store: revocation of agent %s: %w", node, err)
	}
	r.RevokedAt = goTime(at)
	return r, nil
}
