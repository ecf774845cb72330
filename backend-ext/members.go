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
	// Committed and Aborted count the transactions the member executed
	// since it started; MTCPConns the MTCP connections it serves.
	Committed, Aborted int64
	MTCPConns          int
	StartedAt          time.Time
	HeartbeatAt        time.Time
	Alive              bool // heartbeat fresher than the liveness asked for
	// HeartbeatAge is how long ago the last heartbeat was, by the
	// database's clock, when the row was read.
	HeartbeatAge time.Duration
}

// Heartbeat inserts or refreshes the member's row.
func Heartbeat(ctx context.Context, db DB, m Member) error {
	_, err := db.Exec(ctx, `INSERT INTO hafe.members (id, incarnation, http_addr, mtcp_addr, peer_addr, load, draining,
			committed_total, aborted_total, mtcp_connections)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (id) DO UPDATE SET incarnation = EXCLUDED.incarnation, http_addr = EXCLUDED.http_addr, mtcp_addr = EXCLUDED.mtcp_addr,
			peer_addr = EXCLUDED.peer_addr, load = EXCLUDED.load, draining = EXCLUDED.draining, heartbeat_at = now(),
			committed_total = EXCLUDED.committed_total, aborted_total = EXCLUDED.aborted_total, mtcp_connections = EXCLUDED.mtcp_connections`,
		m.ID, m.Incarnation, m.HTTPAddr, m.MTCPAddr, m.PeerAddr, m.Load, m.Draining, m.Committed, m.Aborted, m.MTCPConns)
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
	rows, err := db.Query(ctx, `SELECT id, incarnation, http_addr, mtcp_addr, peer_addr, load, draining,
			committed_total, aborted_total, mtcp_connections, started_at, heartbeat_at,
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
		if err := rows.Scan(&m.ID, &m.Incarnation, &m.HTTPAddr, &m.MTCPAddr, &m.PeerAddr, &m.Load, &m.Draining, &m.Committed, &m.Aborted, &m.MTCPConns, &m.StartedAt, &m.HeartbeatAt, &m.Alive, &age); err != nil {
			return nil, err
		}
		m.HeartbeatAge = time.Duration(age * float64(time.Second))
		ms = append(ms, m)
	}
	return ms, rows.Err()
}

// Migration is an MTCP migration as the front-end that took the connection
// saw it (hafe.migrations).
type Migration struct {
	ConnID, From, To string
	TakenBy          string // the front-end's id
	Mode, Trigger    string
	Err              string // "" when it succeeded
	Prepare, Wait    time.Duration
	Reinstate        time.Duration
	StateBytes       int
	At               time.Time // set by ListRecentMigrations
}

// RecordMigration stores m.
func RecordMigration(ctx context.Context, db DB, m Migration) error {
	var errText *string
	if m.Err != "" {
		errText = &m.Err
	}
	_, err := db.Exec(ctx, `INSERT INTO hafe.migrations (conn_id, from_addr, to_addr, taken_by, mode, trigger, error,
			prepare_us, wait_us, reinstate_us, state_bytes)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		m.ConnID, m.From, m.To, m.TakenBy, m.Mode, m.Trigger, errText,
		m.Prepare.Microseconds(), m.Wait.Microseconds(), m.Reinstate.Microseconds(), m.StateBytes)
	if err != nil {
		return fmt.Errorf("record migration: %w", err)
	}
	return nil
}

// ListRecentMigrations returns the latest limit migrations, newest first.
func ListRecentMigrations(ctx context.Context, db DB, limit int) ([]Migration, error) {
	rows, err := db.Query(ctx, `SELECT conn_id, from_addr, to_addr, taken_by, mode, trigger, coalesce(error, ''),
			prepare_us, wait_us, reinstate_us, state_bytes, at
		FROM hafe.migrations ORDER BY at DESC, id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	defer rows.Close()
	var out []Migration
	for rows.Next() {
		var m Migration
		var p, w, r int64
		if err := rows.Scan(&m.ConnID, &m.From, &m.To, &m.TakenBy, &m.Mode, &m.Trigger, &m.Err, &p, &w, &r, &m.StateBytes, &m.At); err != nil {
			return nil, err
		}
		m.Prepare, m.Wait, m.Reinstate = time.Duration(p)*time.Microsecond, time.Duration(w)*time.Microsecond, time.Duration(r)*time.Microsecond
		out = append(out, m)
	}
	return out, rows.Err()
}
