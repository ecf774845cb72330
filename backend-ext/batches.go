package backendext

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// BatchInfo is a batch as operators see it.
type BatchInfo struct {
	ID string
	// IdemKey is the batch's idempotency key as stored ("" without one):
	// the front-end's client scope, ":", the client's key.
	IdemKey string
	// State is as the cluster sees it: BatchRunning (its owner's run
	// heartbeats), BatchDone or BatchAbandoned.
	State        string
	Owner        string // "" when no front-end holds the lease
	OwnerAlive   bool
	Epoch        int64
	Transactions int
	// SlotsDone counts the slots with an outcome: Committed + Aborted.
	SlotsDone, Committed, Aborted int
	CreatedAt, UpdatedAt          time.Time
}

// Takeover is a row of hafe.takeovers: one claim of a batch's lease.
type Takeover struct {
	BatchID        string // set by ListRecentTakeovers
	Epoch          int64
	PreviousOwner  string // "" when the batch had been released
	Owner          string
	FencedSessions int
	At             time.Time
}

// BatchFilter selects batches for ListBatches. Zero fields select all.
type BatchFilter struct {
	State     string        // BatchRunning, BatchDone or BatchAbandoned
	Owner     string        // the front-end holding the lease
	OlderThan time.Duration // created longer ago than this
	// KeySuffix selects batches whose stored idempotency key ends with
	// ":" and KeySuffix: a client's Idempotency-Key under any scope (the
	// caller drops the matches it does not mean).
	KeySuffix string
	// Limit bounds the answer (default 100); most recently changed first.
	Limit int
}

// batchInfoSelect reads a BatchInfo; $1 is the owner liveness in seconds.
const batchInfoSelect = `WITH v AS (
	SELECT b.*, coalesce(m.heartbeat_at > now() - make_interval(secs => $1::float8) AND m.incarnation = b.owner_incarnation, false) AS alive
	FROM hafe.batches b LEFT JOIN hafe.members m ON m.id = b.owner)
SELECT v.batch_id::text, coalesce(v.idem_key, ''),
	CASE WHEN v.state = 'done' THEN 'done' WHEN v.alive THEN 'running' ELSE 'abandoned' END,
	coalesce(v.owner, ''), v.alive, v.epoch, v.n_txns,
	coalesce(o.committed, 0), coalesce(o.aborted, 0), v.created_at, v.updated_at
FROM v LEFT JOIN LATERAL (
	SELECT count(*) FILTER (WHERE status = 'committed') AS committed, count(*) FILTER (WHERE status = 'aborted') AS aborted
	FROM hafe.outcomes WHERE batch_id = v.batch_id) o ON true`

func scanBatchInfo(row pgx.Row) (BatchInfo, error) {
	var b BatchInfo
	err := row.Scan(&b.ID, &b.IdemKey, &b.State, &b.Owner, &b.OwnerAlive, &b.Epoch, &b.Transactions, &b.Committed, &b.Aborted, &b.CreatedAt, &b.UpdatedAt)
	b.SlotsDone = b.Committed + b.Aborted
	return b, err
}

// ListBatches returns the batches f selects, most recently changed first. liveness is how
// fresh an owner's heartbeat must be for its batch to be running.
func ListBatches(ctx context.Context, db DB, f BatchFilter, liveness time.Duration) ([]BatchInfo, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	var where []string
	args := []any{liveness.Seconds()}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	switch f.State {
	case "":
	case BatchDone:
		where = append(where, "v.state = 'done'")
	case BatchRunning:
		where = append(where, "v.state = 'running' AND v.alive")
	case BatchAbandoned:
		where = append(where, "v.state = 'running' AND NOT v.alive")
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownState, f.State)
	}
	if f.Owner != "" {
		where = append(where, "v.owner = "+arg(f.Owner))
	}
	if f.OlderThan > 0 {
		where = append(where, "v.created_at < now() - make_interval(secs => "+arg(f.OlderThan.Seconds())+"::float8)")
	}
	if f.KeySuffix != "" {
		where = append(where, "right(v.idem_key, "+arg(len([]rune(f.KeySuffix))+1)+") = ':' || "+arg(f.KeySuffix))
	}
	q := batchInfoSelect
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY v.updated_at DESC, v.batch_id LIMIT " + arg(f.Limit)
	rows, err := db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BatchInfo, error) { return scanBatchInfo(r) })
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	return out, nil
}

// GetBatchInfo reads one batch as operators see it.
func GetBatchInfo(ctx context.Context, db DB, id string, liveness time.Duration) (BatchInfo, error) {
	b, err := scanBatchInfo(db.QueryRow(ctx, batchInfoSelect+" WHERE v.batch_id = $2", liveness.Seconds(), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return BatchInfo{}, ErrNoBatch
	}
	if err != nil {
		return BatchInfo{}, fmt.Errorf("read batch %s: %w", id, err)
	}
	return b, nil
}

// ListTakeovers returns a batch's takeovers, oldest first.
func ListTakeovers(ctx context.Context, db DB, batchID string) ([]Takeover, error) {
	rows, err := db.Query(ctx, `SELECT epoch, coalesce(previous_owner, ''), owner, fenced_sessions, taken_at
		FROM hafe.takeovers WHERE batch_id = $1 ORDER BY epoch`, batchID)
	if err != nil {
		return nil, fmt.Errorf("list takeovers of %s: %w", batchID, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Takeover, error) {
		var t Takeover
		err := r.Scan(&t.Epoch, &t.PreviousOwner, &t.Owner, &t.FencedSessions, &t.At)
		return t, err
	})
}

// ListRecentTakeovers returns the latest limit takeovers of any batch,
// newest first (hafe.takeovers is indexed on taken_at).
func ListRecentTakeovers(ctx context.Context, db DB, limit int) ([]Takeover, error) {
	rows, err := db.Query(ctx, `SELECT batch_id::text, epoch, coalesce(previous_owner, ''), owner, fenced_sessions, taken_at
		FROM hafe.takeovers ORDER BY taken_at DESC, batch_id, epoch DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list recent takeovers: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Takeover, error) {
		var t Takeover
		err := r.Scan(&t.BatchID, &t.Epoch, &t.PreviousOwner, &t.Owner, &t.FencedSessions, &t.At)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("list recent takeovers: %w", err)
	}
	return out, nil
}

// RecordFence adds sessions to the count of sessions terminated to fence
// the previous owner for the takeover of batchID at epoch.
func RecordFence(ctx context.Context, db DB, batchID string, epoch int64, sessions int) error {
	_, err := db.Exec(ctx, `UPDATE hafe.takeovers SET fenced_sessions = fenced_sessions + $3
		WHERE batch_id = $1 AND epoch = $2`, batchID, epoch, sessions)
	if err != nil {
		return fmt.Errorf("record fence of batch %s: %w", batchID, err)
	}
	return nil
}
