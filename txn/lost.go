package txn

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	backendext "hafe.dev/hafe/backend-ext"
)

// ErrReportsLost means the back-end no longer holds outcomes that were
// already reported to the batch's client: the database failed over to a
// standby that had not received the newest commits (asynchronous
// replication). The batch must not go on (its slots would run a second
// time, or the client would be told of effects that are gone); it is
// marked done, so that no retry runs it again either.
var ErrReportsLost = errors.New("reported outcomes are missing from the database")

// LostReportsError says which batch lost which reports.
type LostReportsError struct {
	BatchID string
	// Reported is how many slots the client was told of (-1: unknown,
	// for a retry of a batch found marked lost); Recorded how many of
	// them the database still holds.
	Reported, Recorded int
	// BatchMissing: the batch itself was gone.
	BatchMissing bool
	// AtLeast: the client was told of Reported slots or more (an MTCP
	// connection holds their bytes, not their count).
	AtLeast bool
}

func (e *LostReportsError) Error() string {
	switch {
	case e.Reported < 0:
		return fmt.Sprintf("batch %s: slot %d's outcome was reported, then lost in a database failover", e.BatchID, e.Recorded+1)
	case e.BatchMissing:
		return fmt.Sprintf("batch %s: %d slots were reported, and the database lost the whole batch in a failover", e.BatchID, e.Reported)
	}
	n := fmt.Sprint(e.Reported)
	if e.AtLeast {
		n = "at least " + n
	}
	return fmt.Sprintf("batch %s: %s slots were reported, and the database holds only %d of them after a failover", e.BatchID, n, e.Recorded)
}

func (e *LostReportsError) Unwrap() error { return ErrReportsLost }

// checkReported runs once the database came back after a loss, before
// slot seq is settled: slots 1..seq-1 were reported (or queued for the
// client), so their outcomes must still be there. If they are not, the
// batch is marked lost (done, in the database the front-end reaches now)
// and a *LostReportsError returned.
func (e *Executor) checkReported(ctx context.Context, l *Lease, seq int) error {
	exists, n, err := backendext.CountRecorded(ctx, e.pool, l.BatchID, seq-1)
	if err != nil {
		return err // still settling: the caller tries again
	}
	if exists && n >= seq-1 {
		return nil
	}
	lost := &LostReportsError{BatchID: l.BatchID, Reported: seq - 1, Recorded: n, BatchMissing: !exists}
	e.markLost(ctx, l, !exists)
	return lost
}

// onServer checks, for a connection just taken for slot seq of l, that it
// reaches the server run the lease last wrote to; if it reaches another
// (a promoted standby, say), slots 1..seq-1 must still be recorded there
// (checkReported). A pool may switch servers without any error: after a
// failover its next new connection simply reaches the new primary.
func (e *Executor) onServer(ctx context.Context, l *Lease, c *pgconn.PgConn, seq int) error {
	id := backendext.ServerOf(c)
	if id == "" || id == l.server {
		return nil
	}
	if l.server == "" || seq == 1 {
		l.server = id
		return nil
	}
	if err := e.checkReported(ctx, l, seq); err != nil {
		if _, ok := err.(*LostReportsError); ok {
			return err
		}
		return &attemptError{fault: faultLost, err: err}
	}
	l.logger(e).Info("batch goes on on another database server run", "batch", l.BatchID, "seq", seq, "server", id, "was", l.server)
	l.server = id
	return nil
}

// markLost leaves a batch whose reports were lost done in the database, so
// that a retry with its key replays what is left and stops, rather than
// running the lost slots again. A batch the failover lost entirely is made
// again under its id and key, empty.
func (e *Executor) markLost(ctx context.Context, l *Lease, missing bool) {
	ctx, cancel := bookkeeping(ctx)
	defer cancel()
	if missing {
		if _, _, err := backendext.CreateBatch(ctx, e.pool, l.BatchID, l.open.IdempotencyKey, l.open.RequestHash, l.open.NumTxns, e.cfg.Owner, e.cfg.Incarnation, e.cfg.OwnerLiveness); err != nil {
			l.logger(e).Warn("record lost batch", "batch", l.BatchID, "err", err)
		}
	}
	if err := backendext.MarkBatchDone(ctx, e.pool, l.BatchID); err != nil {
		l.logger(e).Warn("record lost batch", "batch", l.BatchID, "err", err)
	}
	l.Finished = true
}
