package txn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	backendext "hafe.dev/hafe/backend-ext"
)

// slotFault says what an attempt's failure means for the slot.
type slotFault uint8

const (
	faultRetry    slotFault = iota // serialization failure or deadlock: run it again
	faultAbort                     // the transaction's own fault: record it aborted
	faultAdopt                     // the slot already has an outcome: report that
	faultFenced                    // another front-end owns the batch now
	faultLost                      // the database went away: settle by lookup
	faultCanceled                  // the caller gave up
	faultFatal                     // hafe's own tables are unusable
)

// attemptError is an attempt's failure together with what it means.
type attemptError struct {
	fault slotFault
	slot  *SlotError // for faultRetry and faultAbort
	err   error
}

func (e *attemptError) Error() string {
	if e.slot != nil {
		return e.slot.Error()
	}
	return e.err.Error()
}

func (e *attemptError) Unwrap() error { return e.err }

// runSlot brings slot seq to an outcome and returns it. Every path ends in
// the same place: the outcome recorded in the back-end (G5). After losing
// the database it first looks the outcome up, so an ambiguous commit is
// settled by the record, never by running the slot twice. first, when not
// nil, is the failure of an attempt already made (attempts of them).
func (e *Executor) runSlot(ctx context.Context, l *Lease, seq int, t Transaction, iso Isolation, first error, attempts int) (o backendext.Outcome, err error) {
	var (
		abort     *SlotError // set once the slot is known to abort
		lookup    bool       // the outcome may exist: read it before acting
		lostSince time.Time
		replaced  bool // the pool's connections were replaced once
		checked   bool // after a loss: the reported slots are still recorded
	)
	err = first
	for {
		if ctx.Err() != nil {
			return o, context.Cause(ctx)
		}
		if lookup && (replaced || !lostSince.IsZero()) && !checked {
			// The database came back, maybe as another server (a
			// promoted standby): it must still hold what was reported.
			if err := e.checkReported(ctx, l, seq); err != nil {
				var lost *LostReportsError
				if errors.As(err, &lost) {
					return o, err
				}
				if e.stillSettling(ctx, &lostSince, err) != nil {
					return o, fmt.Errorf("slot %d: database unreachable for %s: %w", seq, e.cfg.SettleTimeout, err)
				}
				continue
			}
			checked = true
		}
		if lookup {
			got, ok, err := backendext.GetOutcome(ctx, e.pool, l.BatchID, seq)
			if err == nil && ok {
				return got, nil
			}
			if err == nil {
				lookup = false
				continue
			}
			if e.stillSettling(ctx, &lostSince, err) != nil {
				return o, fmt.Errorf("slot %d: database unreachable for %s: %w", seq, e.cfg.SettleTimeout, err)
			}
			continue
		}
		switch {
		case err != nil:
			// first: decide from it below.
		case abort != nil:
			o, err = e.record(ctx, l, seq, StatusAborted, renderReport(Report{Seq: seq, Status: StatusAborted, Error: abort}), attempts)
		default:
			attempts++
			o, err = e.attempt(ctx, l, seq, t, iso, attempts)
		}
		if err == nil {
			return o, nil
		}
		var ae *attemptError
		if !errors.As(err, &ae) {
			return o, err
		}
		err = nil
		switch ae.fault {
		case faultRetry:
			if attempts < e.cfg.MaxAttempts {
				e.cfg.Observer.Retry(retryCause(ae))
				e.sleep(ctx, e.backoff(attempts))
				continue
			}
			abort = ae.slot
		case faultAbort:
			abort = ae.slot
		case faultAdopt:
			lookup = true
		case faultLost:
			e.cfg.Observer.Retry(RetryDatabaseLost)
			if !replaced && lostSince.IsZero() && backendext.IsDeadConn(ae.err) {
				// The slot's connection was dead, as a PostgreSQL restart
				// leaves every pooled one: replace them and settle at once
				// on a fresh one rather than after a pause per dead one.
				replaced = true
				e.pool.Reset()
				lookup = true
				continue
			}
			l.logger(e).Warn("lost the database during a slot; settling by lookup", "batch", l.BatchID, "seq", seq, "err", ae.err)
			lookup = true
			if e.stillSettling(ctx, &lostSince, ae.err) != nil {
				return o, fmt.Errorf("slot %d: database unreachable for %s: %w", seq, e.cfg.SettleTimeout, ae.err)
			}
		case faultFenced:
			return o, fmt.Errorf("slot %d of batch %s: %w", seq, l.BatchID, ErrFenced)
		case faultCanceled:
			return o, context.Cause(ctx)
		default:
			return o, fmt.Errorf("slot %d of batch %s: %w", seq, l.BatchID, ae.err)
		}
	}
}

// retryCause names a faultRetry's cause for the Observer.
func retryCause(ae *attemptError) string {
	if ae.slot != nil && ae.slot.Code == "40P01" {
		return RetryDeadlock
	}
	return RetrySerialization
}

// stillSettling pauses before the next try while the database has been lost
// for less than SettleTimeout, and reports an error once it has been longer.
func (e *Executor) stillSettling(ctx context.Context, since *time.Time, err error) error {
	if since.IsZero() {
		*since = time.Now()
	}
	if time.Since(*since) > e.cfg.SettleTimeout {
		return err
	}
	e.sleep(ctx, 100*time.Millisecond+rand.N(100*time.Millisecond))
	return nil
}

func (e *Executor) backoff(attempt int) time.Duration {
	d := e.cfg.RetryBackoff << min(attempt-1, 6)
	return min(d, time.Second)/2 + rand.N(min(d, time.Second)/2+1)
}

func (e *Executor) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// attempt runs the slot's transaction once, in two round trips: the first
// pipeline opens the transaction and runs the statements; the second writes
// the rendered outcome (checking the lease) and commits. A client's raw SQL
// runs elsewhere (attemptRaw).
func (e *Executor) attempt(ctx context.Context, l *Lease, seq int, t Transaction, iso Isolation, attempts int) (backendext.Outcome, error) {
	if t.Raw {
		return e.attemptRaw(ctx, l, seq, t, iso, attempts)
	}
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return backendext.Outcome{}, e.classify(ctx, err, 0, false)
	}
	defer conn.Release()
	if err := e.onServer(ctx, l, conn.Conn().PgConn(), seq); err != nil {
		return backendext.Outcome{}, err
	}

	sent, args, err := sentStatements(t)
	if err != nil {
		return backendext.Outcome{}, err
	}
	b := &pgx.Batch{}
	b.Queue(iso.beginSQL())
	for i, q := range sent {
		b.Queue(q, args[i]...)
	}
	results, err := e.runStatements(ctx, conn.Conn().SendBatch(ctx, b), 1, sent, 0)
	if err != nil {
		rollback(ctx, conn.Conn())
		return backendext.Outcome{}, err
	}
	// Raw SQL (attemptRaw) is never chained, nor remembered: that would
	// only fill memory with clients' text.
	e.markKnown(sent)
	o, err := e.committedOutcome(l, seq, results, attempts)
	if err != nil {
		rollback(ctx, conn.Conn())
		return backendext.Outcome{}, err
	}
	return o, e.commitOutcome(ctx, conn.Conn(), o, false)
}

// record writes an outcome in a transaction of its own: used for aborted
// slots, after their transaction rolled back. One round trip.
func (e *Executor) record(ctx context.Context, l *Lease, seq int, status string, report []byte, attempts int) (backendext.Outcome, error) {
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return backendext.Outcome{}, e.classify(ctx, err, 0, false)
	}
	defer conn.Release()
	if err := e.onServer(ctx, l, conn.Conn().PgConn(), seq); err != nil {
		return backendext.Outcome{}, err
	}
	o := backendext.Outcome{BatchID: l.BatchID, Seq: seq, Status: status, Report: report, Epoch: l.Epoch, Owner: e.cfg.Owner, Attempts: attempts}
	return o, e.commitOutcome(ctx, conn.Conn(), o, true)
}

// commitOutcome inserts o, which checks the lease, and commits. With open
// set, it also opens the transaction.
func (e *Executor) commitOutcome(ctx context.Context, conn *pgx.Conn, o backendext.Outcome, open bool) error {
	b := &pgx.Batch{}
	if open {
		b.Queue("BEGIN")
	}
	b.Queue(backendext.InsertOutcomeSQL, backendext.OutcomeArgs(o)...)
	b.Queue("COMMIT")
	br := conn.SendBatch(ctx, b)
	err := func() error {
		if open {
			if _, err := br.Exec(); err != nil {
				return e.classify(ctx, err, 0, false)
			}
		}
		return e.readCommit(ctx, br, o)
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = e.classify(ctx, cerr, 0, true)
	}
	if err != nil {
		rollback(ctx, conn)
	}
	return err
}

// runStatements reads the first pipeline's results: prelude statements of
// hafe's own (BEGIN), the rows of each statement, sent as the queries in
// sent, then postlude statements of hafe's own.
func (e *Executor) runStatements(ctx context.Context, br pgx.BatchResults, prelude int, sent []string, postlude int) (results []Result, err error) {
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			err = e.classify(ctx, cerr, 0, false)
		}
	}()
	for range prelude {
		if _, err := br.Exec(); err != nil {
			return nil, e.classify(ctx, err, preprocessed(err, sent, 0), false)
		}
	}
	results = make([]Result, 0, len(sent))
	budget := e.cfg.Limits.MaxReportBytes // shared by the slot's statements
	for i := 1; i <= len(sent); i++ {
		res, err := e.readResult(ctx, br, sent, i, &budget)
		if err != nil {
			return nil, err
		}
		results = append(results, res)
	}
	for range postlude {
		if _, err := br.Exec(); err != nil {
			return nil, e.classify(ctx, err, 0, false)
		}
	}
	return results, nil
}

// preprocessed returns the 1-based statement of sent that err names when
// it is the driver's failure to prepare the pipeline: pgx prepares new
// statements (and encodes arguments) before it runs anything, and such an
// error arrives with the first result read. Otherwise it returns stmt.
func preprocessed(err error, sent []string, stmt int) int {
	var pre pgx.ErrPreprocessingBatch
	if errors.As(err, &pre) {
		if i := slices.Index(sent, pre.SQL()); i >= 0 {
			return i + 1
		}
		return 0
	}
	return stmt
}

// readResult reads statement stmt's result. budget is what is left of the
// report size limit: each row's size as received is taken from it before
// the row is decoded, so a result past the limit aborts the slot while it
// is read, holding no more than the limit (and the row at hand).
func (e *Executor) readResult(ctx context.Context, br pgx.BatchResults, sent []string, stmt int, budget *int) (Result, error) {
	rows, err := br.Query()
	if err != nil {
		return Result{}, e.classify(ctx, err, preprocessed(err, sent, stmt), false)
	}
	defer rows.Close()
	fds := rows.FieldDescriptions()
	var res Result
	var resultRows [][]any
	if len(fds) > 0 {
		res.Columns = make([]string, len(fds))
		for i, fd := range fds {
			res.Columns[i] = fd.Name
		}
		resultRows = [][]any{}
		res.Rows = &resultRows
	}
	for rows.Next() {
		if len(resultRows) == e.cfg.Limits.MaxRows {
			return Result{}, &attemptError{fault: faultAbort, slot: &SlotError{
				Code:      "result_too_large",
				Message:   fmt.Sprintf("statement returned more than the limit of %d rows", e.cfg.Limits.MaxRows),
				Statement: stmt,
			}}
		}
		for _, raw := range rows.RawValues() {
			*budget -= len(raw)
		}
		if *budget < 0 {
			return Result{}, &attemptError{fault: faultAbort, slot: &SlotError{
				Code:      "result_too_large",
				Message:   fmt.Sprintf("the transaction's results take more than the limit of %d bytes", e.cfg.Limits.MaxReportBytes),
				Statement: stmt,
			}}
		}
		vals, err := rows.Values()
		if err != nil {
			return Result{}, e.classify(ctx, err, stmt, false)
		}
		for i, v := range vals {
			vals[i] = jsonValue(v)
		}
		resultRows = append(resultRows, vals)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Result{}, e.classify(ctx, err, stmt, false)
	}
	tag := rows.CommandTag()
	res.Command, _, _ = strings.Cut(tag.String(), " ")
	res.RowsAffected = tag.RowsAffected()
	return res, nil
}

// classify turns a database error into an attemptError. stmt is the
// 1-based statement that failed, 0 for hafe's own statements; atCommit says
// the error came from COMMIT, where a lost connection leaves the outcome
// unknown.
func (e *Executor) classify(ctx context.Context, err error, stmt int, atCommit bool) error {
	if ctx.Err() != nil {
		return &attemptError{fault: faultCanceled, err: context.Cause(ctx)}
	}
	switch {
	case errors.Is(err, backendext.ErrFenced):
		return &attemptError{fault: faultFenced, err: err}
	case errors.Is(err, backendext.ErrOutcomeExists):
		return &attemptError{fault: faultAdopt, err: err}
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		if !atCommit && !isConnectionError(err) {
			// pgx refused the statement or its arguments before sending
			// it (an argument it cannot encode, a missing named argument):
			// the transaction's fault, not the connection's.
			return &attemptError{fault: faultAbort, err: err, slot: &SlotError{Code: "invalid_arguments", Message: err.Error(), Statement: stmt}}
		}
		return &attemptError{fault: faultLost, err: err}
	}
	slot := &SlotError{Code: pgErr.Code, Message: pgErr.Message, Statement: stmt, Detail: pgErr.Detail}
	switch {
	case pgErr.Code == "40001" || pgErr.Code == "40P01":
		return &attemptError{fault: faultRetry, err: err, slot: slot}
	case pgErr.Code == "57014":
		// query_canceled, and hafe did not cancel it (ctx is live): a
		// statement_timeout, the client's own SET LOCAL or the role's.
		// The session is fine and the transaction aborted: its outcome.
		return &attemptError{fault: faultAbort, err: err, slot: slot}
	case isServerGoneCode(pgErr.Code):
		return &attemptError{fault: faultLost, err: err}
	case pgErr.Code == backendext.ReadOnlyCode && (stmt == 0 || e.serverReadOnly(ctx)):
		// The server turned read-only under the session (a demoted
		// primary): the session is closed (backendext.RequireWritable)
		// and the slot settles by lookup on the new primary. A client's
		// own read-only transaction on a writable server aborts instead.
		return &attemptError{fault: faultLost, err: err}
	case stmt > 0 || atCommit:
		// At commit: deferred constraints and the like.
		return &attemptError{fault: faultAbort, err: err, slot: slot}
	default:
		return &attemptError{fault: faultFatal, err: err}
	}
}

// serverReadOnly reports whether the database the pool reaches now refuses
// writes, or cannot be asked: a write that failed with 25006 then failed
// for the server's sake, not for its transaction's.
func (e *Executor) serverReadOnly(ctx context.Context) bool {
	var ro bool
	err := e.pool.QueryRow(ctx, `SELECT pg_is_in_recovery() OR current_setting('default_transaction_read_only')::bool`).Scan(&ro)
	return err != nil || ro
}

// isServerGoneCode reports SQLSTATEs that say the session or server failed,
// not the transaction: connection exceptions, operator intervention (a
// terminated session, a shutdown; not 57014, a cancelled statement, which
// classify takes first), resource and system errors.
func isServerGoneCode(code string) bool {
	switch code[:2] {
	case "08", "53", "57", "58", "XX":
		return true
	}
	return code == "25P03" // idle_in_transaction_session_timeout
}

// isConnectionError reports errors of the connection rather than of what
// was sent on it.
func isConnectionError(err error) bool {
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	return errors.As(err, &netErr) || errors.As(err, &connectErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "conn busy")
}

// rollback ends whatever transaction the connection is in. A failure means
// the connection is broken; the pool then discards it.
func rollback(ctx context.Context, conn *pgx.Conn) {
	if conn.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		conn.Close(ctx)
	}
}
