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
