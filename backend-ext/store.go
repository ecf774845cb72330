package backendext

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the queries need: a pool, a connection or a transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	// ErrFenced means this owner's lease on the batch was taken over: its
	// epoch is no longer the batch's epoch, so it must not commit anything.
	ErrFenced = errors.New("lease on batch lost to another owner")
	// ErrOutcomeExists means the slot already has an outcome row.
	ErrOutcomeExists = errors.New("slot already has an outcome")
	// ErrNoBatch means no batch has that id.
	ErrNoBatch = errors.New("no such batch")
)

// Batch states.
const (
	BatchRunning = "running"
	BatchDone    = "done"
)

// Batch is a row of hafe.batches, plus whether its owner's heartbeat is fresh.
type Batch struct {
	ID          string
	IdemKey     string // "" when the client sent none
	RequestHash []byte
	NumTxns     int
	Owner       string // "" when no front-end holds the lease
	// OwnerIncarnation is the run of Owner that holds it.
	OwnerIncarnation string
	Epoch            int64
	State            string
	// OwnerAlive: the owner's current run heartbeats within the liveness
	// asked for; OwnerHeartbeatAge is how long ago it last did.
	OwnerAlive        bool
	OwnerHeartbeatAge time.Duration
}

// Outcome is a row of hafe.outcomes.
type Outcome struct {
	BatchID  string
	Seq      int
	Status   string // "committed" or "aborted"
	Report   []byte // the exact line reported to clients, without newline
	Epoch    int64
	Owner    string
	Attempts int
}

const batchColumns = `b.batch_id::text, coalesce(b.idem_key, ''), b.request_hash, b.n_txns,
	coalesce(b.owner, ''), coalesce(b.owner_incarnation, ''), b.epoch, b.state,
	coalesce(m.heartbeat_at > now() - make_interval(secs => $2::float8) AND m.incarnation = b.owner_incarnation, false),
	coalesce(extract(epoch FROM now() - m.heartbeat_at)::float8, 0)`

func scanBatch(row pgx.Row) (Batch, error) {
	var b Batch
	var age float64
	err := row.Scan(&b.ID, &b.IdemKey, &b.RequestHash, &b.NumTxns, &b.Owner, &b.OwnerIncarnation, &b.Epoch, &b.State, &b.OwnerAlive, &age)
	b.OwnerHeartbeatAge = time.Duration(age * float64(time.Second))
	return b, err
}

// CreateBatch inserts a new running batch owned by owner (in its run
// incarnation) at epoch 1. When
// idemKey is not empty and a batch with that key exists, it returns that
// batch instead and created is false. liveness is how fresh an owner's
// heartbeat must be for Batch.OwnerAlive.
func CreateBatch(ctx context.Context, db DB, id, idemKey string, requestHash []byte, numTxns int, owner, incarnation string, liveness time.Duration) (b Batch, created bool, err error) {
	var key any
	if idemKey != "" {
		key = idemKey
		// Look first: an insert that conflicts with a batch row locked by
		// a (possibly hung) slot transaction would wait for that
		// transaction, and a takeover must not.
		b, err = scanBatch(db.QueryRow(ctx, `SELECT `+batchColumns+`
			FROM hafe.batches b LEFT JOIN hafe.members m ON m.id = b.owner WHERE b.idem_key = $1`, idemKey, liveness.Seconds()))
		if err == nil {
			return b, false, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return Batch{}, false, fmt.Errorf("read batch for key: %w", err)
		}
	}
	tag, err := db.Exec(ctx, `INSERT INTO hafe.batches (batch_id, idem_key, request_hash, n_txns, owner, owner_incarnation)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idem_key) DO NOTHING`, id, key, requestHash, numTxns, owner, incarnation)
	if err != nil {
		return Batch{}, false, fmt.Errorf("create batch: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return Batch{ID: id, IdemKey: idemKey, RequestHash: requestHash, NumTxns: numTxns, Owner: owner, OwnerIncarnation: incarnation, Epoch: 1, State: BatchRunning, OwnerAlive: true}, true, nil
	}
	b, err = scanBatch(db.QueryRow(ctx, `SELECT `+batchColumns+`
		FROM hafe.batches b LEFT JOIN hafe.members m ON m.id = b.owner WHERE b.idem_key = $1`, idemKey, liveness.Seconds()))
	if err != nil {
		return Batch{}, false, fmt.Errorf("read batch for key: %w", err)
	}
	return b, false, nil
}

// GetBatch reads a batch by id.
func GetBatch(ctx context.Context, db DB, id string, liveness time.Duration) (Batch, error) {
	b, err := scanBatch(db.QueryRow(ctx, `SELECT `+batchColumns+`
		FROM hafe.batches b LEFT JOIN hafe.members m ON m.id = b.owner WHERE b.batch_id = $1`, id, liveness.Seconds()))
	if errors.Is(err, pgx.ErrNoRows) {
		return Batch{}, ErrNoBatch
	}
	return b, err
}

// ClaimBatch takes the batch's lease for owner and returns the new epoch. It
// blocks while a slot transaction of the previous owner is open; see
// hafe.claim_batch.
func ClaimBatch(ctx context.Context, db DB, id, owner, incarnation string) (int64, error) {
	var epoch *int64
	err := db.QueryRow(ctx, "SELECT hafe.claim_batch($1, $2, $3)", id, owner, incarnation).Scan(&epoch)
	if err != nil {
		return 0, fmt.Errorf("claim batch %s: %w", id, err)
	}
	if epoch == nil {
		return 0, ErrNoBatch
	}
	return *epoch, nil
}

// FenceSessions terminates the sessions of application name app that are
// inside a transaction; see hafe.fence_sessions.
func FenceSessions(ctx context.Context, db DB, app string) (int, error) {
	var n int
	err := db.QueryRow(ctx, "SELECT hafe.fence_sessions($1)", app).Scan(&n)
	return n, err
}

// FenceBlockers terminates the hafe sessions that block backend pid.
func FenceBlockers(ctx context.Context, db DB, pid uint32) (int, error) {
	var n int
	err := db.QueryRow(ctx, "SELECT hafe.fence_blockers($1)", int32(pid)).Scan(&n)
	return n, err
}

// InsertOutcomeSQL writes a slot's outcome inside the slot's transaction,
// as its last statement before COMMIT. It is also the lease check: the
// epoch it stores is read from the batch row, share-locked until the
// transaction ends, and only if it is still the owner's; otherwise it is
// NULL and the insert fails (not-null violation on epoch). So a claim, which
// updates that row, waits for the commit, and an owner fenced by a claim
// cannot commit. It never succeeds without inserting, so COMMIT may be
// pipelined behind it. Take its arguments from OutcomeArgs and pass its
// result to OutcomeInserted.
const InsertOutcomeSQL = `INSERT INTO hafe.outcomes (batch_id, seq, status, report, xid, epoch, owner, attempts)
	VALUES ($1, $2, $3, $4, pg_catalog.pg_current_xact_id(),
		(SELECT epoch FROM hafe.batches WHERE batch_id OPERATOR(pg_catalog.=) $1 AND epoch OPERATOR(pg_catalog.=) $5 FOR SHARE), $6, $7)`

// OutcomeArgs are InsertOutcomeSQL's arguments for o.
func OutcomeArgs(o Outcome) []any {
	return []any{o.BatchID, o.Seq, o.Status, string(o.Report), o.Epoch, o.Owner, o.Attempts}
}

// OutcomeInserted interprets InsertOutcomeSQL's result: ErrOutcomeExists
// when the slot already had an outcome (roll back and adopt it), ErrFenced
// when the lease moved on (roll back and stop).
func OutcomeInserted(tag pgconn.CommandTag, err error) error {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "outcomes_pkey":
		return ErrOutcomeExists
	case errors.As(err, &pgErr) && pgErr.Code == "23502" && pgErr.TableName == "outcomes" && pgErr.ColumnName == "epoch":
		return ErrFenced
	case err != nil:
		return err
	case tag.RowsAffected() != 1:
		return fmt.Errorf("outcome insert affected %d rows", tag.RowsAffected())
	}
	return nil
}

// GetOutcome reads a slot's outcome; ok is false when it has none.
func GetOutcome(ctx context.Context, db DB, batchID string, seq int) (o Outcome, ok bool, err error) {
	o = Outcome{BatchID: batchID, Seq: seq}
	var report string
	err = db.QueryRow(ctx, `SELECT status, report, epoch, owner, attempts FROM hafe.outcomes
		WHERE batch_id = $1 AND seq = $2`, batchID, seq).Scan(&o.Status, &report, &o.Epoch, &o.Owner, &o.Attempts)
	if errors.Is(err, pgx.ErrNoRows) {
		return Outcome{}, false, nil
	}
	if err != nil {
		return Outcome{}, false, fmt.Errorf("read outcome %s/%d: %w", batchID, seq, err)
	}
	o.Report = []byte(report)
	return o, true, nil
}

// ListOutcomes reads every recorded outcome of a batch, in seq order.
func ListOutcomes(ctx context.Context, db DB, batchID string) ([]Outcome, error) {
	rows, err := db.Query(ctx, `SELECT seq, status, report, epoch, owner, attempts FROM hafe.outcomes
		WHERE batch_id = $1 ORDER BY seq`, batchID)
	if err != nil {
		return nil, fmt.Errorf("list outcomes of %s: %w", batchID, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Outcome, error) {
		o := Outcome{BatchID: batchID}
		var report string
		err := r.Scan(&o.Seq, &o.Status, &report, &o.Epoch, &o.Owner, &o.Attempts)
		o.Report = []byte(report)
		return o, err
	})
}

// FinishBatch marks the batch done and releases its lease, if owner still
// holds it at epoch.
func FinishBatch(ctx context.Context, db DB, batchID string, epoch int64) error {
	return updateLeased(ctx, db, `UPDATE hafe.batches SET state = 'done', owner = NULL, updated_at = now()
		WHERE batch_id = $1 AND epoch = $2`, batchID, epoch)
}

// ReleaseBatch gives up the lease without finishing the batch, so that a
// retry on any front-end may resume it at once.
func ReleaseBatch(ctx context.Context, db DB, batchID string, epoch int64) error {
	return updateLeased(ctx, db, `UPDATE hafe.batches SET owner = NULL, updated_at = now()
		WHERE batch_id = $1 AND epoch = $2`, batchID, epoch)
}

func updateLeased(ctx context.Context, db DB, query, batchID string, epoch int64) error {
	tag, err := db.Exec(ctx, query, batchID, epoch)
	if err != nil {
		return fmt.Errorf("update batch %s: %w", batchID, err)
	}
	if tag.RowsAffected() == 0 {
		return ErrFenced
	}
	return nil
}

// GC deletes finished batches, snapshots and members older than
// retention, and abandoned batches (see BatchAbandoned) left alone for
// longer than retention.
func GC(ctx context.Context, db DB, retention time.Duration) (int64, error) {
	var n, abandoned int64
	err := db.QueryRow(ctx, "SELECT hafe.gc(make_interval(secs => $1::float8))", retention.Seconds()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	if err := db.QueryRow(ctx, collectAbandonedSQL, retention.Seconds()).Scan(&abandoned); err != nil {
		return n, fmt.Errorf("gc abandoned batches: %w", err)
	}
	return n + abandoned, nil
}

// ListOutcomesPage reads the outcomes of a batch with seq after after, in
// seq order: at most limit of them, and reports past maxBytes only for the
// first. complete is true when none after the last one returned was left
// out. A replay reads a long batch page by page, so it never holds more
// than a page of stored lines.
func ListOutcomesPage(ctx context.Context, db DB, batchID string, after, limit, maxBytes int) (os []Outcome, complete bool, err error) {
	rows, err := db.Query(ctx, `SELECT seq, status, report, epoch, owner, attempts, found FROM (
			SELECT o.*, row_number() OVER w AS n, sum(octet_length(report)) OVER w AS upto, count(*) OVER () AS found
			  FROM (SELECT seq, status, report, epoch, owner, attempts FROM hafe.outcomes
			         WHERE batch_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) o
			WINDOW w AS (ORDER BY seq)) x
		WHERE n = 1 OR upto <= $4 ORDER BY seq`, batchID, after, limit+1, maxBytes)
	if err != nil {
		return nil, false, fmt.Errorf("list outcomes of %s: %w", batchID, err)
	}
	var found int
	os, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Outcome, error) {
		o := Outcome{BatchID: batchID}
		var report string
		err := r.Scan(&o.Seq, &o.Status, &report, &o.Epoch, &o.Owner, &o.Attempts, &found)
		o.Report = []byte(report)
		return o, err
	})
	if err != nil {
		return nil, false, fmt.Errorf("list outcomes of %s: %w", batchID, err)
	}
	if len(os) > limit {
		os = os[:limit]
	}
	return os, len(os) == found, nil
}

// Progress is how far a batch's recorded outcomes go.
type Progress struct {
	Recorded int // outcomes recorded
	// Last is the outcome of the highest slot recorded (Seq 0: none), and
	// LastXID the transaction id that recorded it.
	Last    Outcome
	LastXID string
}

// ReadProgress reads how far a batch's recorded outcomes go.
func ReadProgress(ctx context.Context, db DB, batchID string) (Progress, error) {
	var p Progress
	p.Last.BatchID = batchID
	err := db.QueryRow(ctx, `SELECT count(*) OVER (), seq, status, owner, xid::text FROM hafe.outcomes
		WHERE batch_id = $1 ORDER BY seq DESC LIMIT 1`, batchID).Scan(&p.Recorded, &p.Last.Seq, &p.Last.Status, &p.Last.Owner, &p.LastXID)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read progress of %s: %w", batchID, err)
	}
	return p, nil
}

// OutcomeSize is a recorded outcome's seq, status and report length.
type OutcomeSize struct {
	Seq    int
	Status string
	Bytes  int
}

// ListOutcomeSizes reads the seq, status and report length of a batch's
// recorded outcomes, in seq order, without the reports: what a front-end
// needs to tell how many report lines a client already holds.
func ListOutcomeSizes(ctx context.Context, db DB, batchID string) ([]OutcomeSize, error) {
	rows, err := db.Query(ctx, `SELECT seq, status, octet_length(report) FROM hafe.outcomes WHERE batch_id = $1 ORDER BY seq`, batchID)
	if err != nil {
		return nil, fmt.Errorf("list outcome sizes of %s: %w", batchID, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (OutcomeSize, error) {
		var o OutcomeSize
		err := r.Scan(&o.Seq, &o.Status, &o.Bytes)
		return o, err
	})
}

// CountRecorded says whether batch batchID exists and how many of its
// slots 1..upTo have an outcome: after a failover, whether what was
// reported survived.
func CountRecorded(ctx context.Context, db DB, batchID string, upTo int) (exists bool, n int, err error) {
	err = db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM hafe.batches WHERE batch_id = $1),
		(SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1 AND seq <= $2)`, batchID, upTo).Scan(&exists, &n)
	if err != nil {
		return false, 0, fmt.Errorf("count outcomes of batch %s: %w", batchID, err)
	}
	return exists, n, nil
}

// MarkBatchDone marks a batch done whoever holds its lease: for a batch
// whose reported outcomes a failover lost, which must never run again.
func MarkBatchDone(ctx context.Context, db DB, batchID string) error {
	if _, err := db.Exec(ctx, `UPDATE hafe.batches SET state = 'done', owner = NULL, updated_at = now() WHERE batch_id = $1`, batchID); err != nil {
		return fmt.Errorf("mark batch %s done: %w", batchID, err)
	}
	return nil
}
