package txn

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
)

// DefaultRawSQLTimeout bounds a raw SQL transaction unless configured.
const DefaultRawSQLTimeout = 30 * time.Second

// RawSQLConfig says where clients' raw SQL runs.
//
// PostgreSQL checks SET ROLE and set_config('role', …) against the
// session's login role, and any function that runs SQL from a string
// (query_to_xml, ts_stat, …) can call them, so a client statement on a
// session that logged in as the front-end's role can always become that
// role again. Raw SQL therefore runs on sessions that log in as the client
// role, from a pool of their own: there is no other role to go back to.
type RawSQLConfig struct {
	// Pool's sessions log in as the client role (configure it with
	// backendext.ConfigureRawPool). Its size bounds how many raw SQL
	// transactions run at once; they never take the front-end's own
	// connections. Each session serves one transaction and is closed.
	Pool *pgxpool.Pool
	// OutcomeKey signs the outcomes that raw SQL sessions write through
	// hafe.record_outcome (backendext.ReadOutcomeKey).
	OutcomeKey []byte
	// Timeout is the longest a raw SQL transaction may run (default
	// DefaultRawSQLTimeout); past it the statement is cancelled and the
	// transaction aborts, recorded as the client's fault.
	Timeout time.Duration
}

// reuseRawSessions, set only by benchmarks, puts raw SQL sessions back in
// the pool after DISCARD ALL instead of closing them, to measure what
// closing costs.
var reuseRawSessions = false

// attemptRaw runs a client's raw SQL slot once, on a session of the raw
// SQL pool, which logs in as the client role. The outcome is written
// inside the same transaction (G1) by hafe.record_outcome, signed, and the
// session is closed afterwards, so that nothing a client leaves on it
// (settings, the random seed, temporary objects, locks) meets the next.
func (e *Executor) attemptRaw(ctx context.Context, l *Lease, seq int, t Transaction, iso Isolation, attempts int) (backendext.Outcome, error) {
	rc := e.cfg.RawSQL
	if rc.Pool == nil {
		return backendext.Outcome{}, &attemptError{fault: faultAbort, err: errNoRawSQL, slot: &SlotError{Code: "raw_sql_disabled", Message: errNoRawSQL.Error()}}
	}
	sent, args, err := sentStatements(t)
	if err != nil {
		return backendext.Outcome{}, err
	}
	conn, err := rc.Pool.Acquire(ctx)
	if err != nil {
		return backendext.Outcome{}, e.classify(ctx, err, 0, false)
	}
	defer closeRawSession(ctx, conn)
	if err := e.onServer(ctx, l, conn.Conn().PgConn(), seq); err != nil {
		return backendext.Outcome{}, err
	}

	sctx, cancel := context.WithTimeout(ctx, rc.Timeout)
	defer cancel()
	timedOut := func(err error, atCommit bool) error {
		if ctx.Err() != nil || sctx.Err() == nil {
			return err
		}
		if atCommit {
			// record_outcome and COMMIT were sent: the outcome is
			// unknown, and the record settles it.
			return &attemptError{fault: faultLost, err: fmt.Errorf("raw SQL slot %d: commit cut off by the %s limit: %w", seq, rc.Timeout, err)}
		}
		return &attemptError{fault: faultAbort, err: err, slot: &SlotError{
			Code:    "raw_sql_timeout",
			Message: fmt.Sprintf("the transaction ran longer than the limit of %s and was cancelled", rc.Timeout),
		}}
	}

	b := &pgx.Batch{}
	b.Queue(iso.beginSQL())
	for i, q := range sent {
		b.Queue(q, args[i]...)
	}
	// The client's settings end with its statements: hafe's outcome and
	// the COMMIT run with the session's own (a client's statement_timeout,
	// lock_timeout or synchronous_commit = off must not decide them).
	b.Queue("RESET ALL")
	results, err := e.runStatements(sctx, conn.Conn().SendBatch(sctx, b), 1, sent, 1)
	if err != nil {
		return backendext.Outcome{}, timedOut(err, false)
	}
	o, err := e.committedOutcome(l, seq, results, attempts)
	if err != nil {
		return backendext.Outcome{}, err
	}
	b = &pgx.Batch{}
	b.Queue(backendext.RecordOutcomeSQL, backendext.SignedOutcomeArgs(o, rc.OutcomeKey)...)
	b.Queue("COMMIT")
	br := conn.Conn().SendBatch(sctx, b)
	err = e.readCommit(sctx, br, o)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = e.classify(sctx, cerr, 0, true)
	}
	if err != nil {
		return backendext.Outcome{}, timedOut(err, true)
	}
	return o, nil
}

var errNoRawSQL = errors.New("raw SQL is not enabled on this front-end")

// closeRawSession ends a raw SQL session, whatever state it is in; the
// pool opens fresh ones. The pool counts the session until it is closed,
// so a cancelled statement still holds its place in the bound.
func closeRawSession(ctx context.Context, conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	c := conn.Conn()
	if reuseRawSessions && !c.IsClosed() {
		// What the alternative to closing would take: DISCARD ALL (which
		// also drops the driver's prepared statements) and a fresh seed,
		// which DISCARD ALL leaves as the client set it.
		_, err := c.Exec(ctx, "ROLLBACK")
		if err == nil {
			err = c.DeallocateAll(ctx)
		}
		if err == nil {
			_, err = c.Exec(ctx, "DISCARD ALL")
		}
		if err == nil {
			_, err = c.Exec(ctx, "SELECT setseed($1)", rand.Float64()*2-1)
		}
		if err == nil {
			conn.Release()
			return
		}
	}
	c.Close(ctx)
	conn.Release()
}
