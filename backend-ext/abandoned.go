package backendext

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// BatchAbandoned names unfinished batches no live run of a front-end owns:
// released by a front-end whose client left, or left by one that is gone.
// A retry with the batch's key resumes it on any front-end; retention
// collects it once it has been left alone longer than that.
const BatchAbandoned = "abandoned"

// ErrUnknownState means a listing asked for a state other than running,
// done or abandoned.
var ErrUnknownState = errors.New("unknown batch state (want running, done or abandoned)")

// ListBatchesInState returns up to limit batches in state (BatchRunning:
// owned by a live run; BatchDone; BatchAbandoned; "" for all), most
// recently changed first, with State as the cluster sees it.
func ListBatchesInState(ctx context.Context, db DB, state string, limit int, liveness time.Duration) ([]Batch, error) {
	const alive = `coalesce(m.heartbeat_at > now() - make_interval(secs => $2::float8) AND m.incarnation = b.owner_incarnation, false)`
	var where string
	switch state {
	case "":
		where = "true"
	case BatchDone:
		where = "b.state = 'done'"
	case BatchRunning:
		where = "b.state = 'running' AND " + alive
	case BatchAbandoned:
		where = "b.state = 'running' AND NOT " + alive
	default:
		return nil, ErrUnknownState
	}
	rows, err := db.Query(ctx, `SELECT `+batchColumns+` FROM hafe.batches b LEFT JOIN hafe.members m ON m.id = b.owner
		WHERE $1::int > 0 AND `+where+` ORDER BY b.updated_at DESC, b.batch_id LIMIT $1`, limit, liveness.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	bs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Batch, error) { return scanBatch(r) })
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	for i := range bs {
		if bs[i].State == BatchRunning && !bs[i].OwnerAlive {
			bs[i].State = BatchAbandoned
		}
	}
	return bs, nil
}

// collectAbandonedSQL deletes unfinished batches (and their outcomes) left
// alone for longer than the retention ($1 seconds) whose owner's run has
// not heartbeat within it either: nobody resumed them in all that time.
const collectAbandonedSQL = `WITH gone AS (
		SELECT b.batch_id FROM hafe.batches b
		 WHERE b.state = 'running' AND b.updated_at < now() - make_interval(secs => $1::float8)
		   AND NOT EXISTS (SELECT 1 FROM hafe.members m WHERE m.id = b.owner AND m.incarnation = b.owner_incarnation
		                      AND m.heartbeat_at > now() - make_interval(secs => $1::float8))
		   FOR UPDATE OF b SKIP LOCKED),
	o AS (DELETE FROM hafe.outcomes WHERE batch_id IN (SELECT batch_id FROM gone) RETURNING 1),
	d AS (DELETE FROM hafe.batches WHERE batch_id IN (SELECT batch_id FROM gone) RETURNING 1)
	SELECT (SELECT count(*) FROM o) + (SELECT count(*) FROM d)`
