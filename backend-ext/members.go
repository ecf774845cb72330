package backendext

import (
	"context"
	"fmt"
	"time"
)

// Member is a row of hafe.members: one front-end.
type Member struct {
	ID          string
	Incarnation string // random per run of the front-end
	HTTPAddr    string
	MTCPAddr    string
	PeerAddr    string
	Load        float64
	Draining    bool
	StartedAt   time.Time
	HeartbeatAt time.Time
	Alive       bool // heartbeat fresher than the liveness asked for
	// HeartbeatAge is how long ago the last heartbeat was, by the
	// database's clock, when the row was read.
	HeartbeatAge time.Duration
}

// Heartbeat inserts or refreshes the member's row.
func Heartbeat(ctx context.Context, db DB, m Member) error {
	_, err := db.Exec(ctx, `INSERT INTO hafe.members (id, incarnation, http_addr, mtcp_addr, peer_addr, load, draining)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (id) DO UPDATE SET incarnation = EXCLUDED.incarnation, http_addr = EXCLUDED.http_addr, mtcp_addr = EXCLUDED.mtcp_addr,
			peer_addr = EXCLUDED.peer_addr, load = EXCLUDED.load, draining = EXCLUDED.draining, heartbeat_at = now()`,
		m.ID, m.Incarnation, m.HTTPAddr, m.MTCPAddr, m.PeerAddr, m.Load, m.Draining)
	if err != nil {
		return fmt.Errorf("heartbeat %s: %w", m.ID, err)
	}
	return nil
}

// Leave removes the member's row, so its batches count as unowned at once.
func Leave(ctx context.Context, db DB, id string) error {
	_, err := db.Exec(ctx, "DELETE FROM hafe.members WHERE id = $1", id)
	return err
}

// ListMembers returns all members, alive first.
func ListMembers(ctx context.Context, db DB, liveness time.Duration) ([]Member, error) {
	rows, err := db.Query(ctx, `SELECT id, incarnation, http_addr, mtcp_addr, peer_addr, load, draining, started_at, heartbeat_at,
			heartbeat_at > now() - make_interval(secs => $1::float8) AS alive,
			greatest(extract(epoch FROM now() - heartbeat_at)::float8, 0)
		FROM hafe.members ORDER BY alive DESC, id`, liveness.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	defer rows.Close()
	var ms []Member
	for rows.Next() {
		var m Member
		var age float64
		if err := rows.Scan(&m.ID, &m.Incarnation, &m.HTTPAddr, &m.MTCPAddr, &m.PeerAddr, &m.Load, &m.Draining, &m.StartedAt, &m.HeartbeatAt, &m.Alive, &age); err != nil {
			return nil, err
		}
		m.HeartbeatAge = time.Duration(age * float64(time.Second))
		ms = append(ms, m)
	}
	return ms, rows.Err()
}
