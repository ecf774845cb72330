package txn

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
)

// chain runs a batch's slots in one round trip each: the pipeline that
// commits slot k (its outcome insert, then COMMIT) also begins slot k+1 and
// runs its statements. Slot k is reported once its COMMIT's answer is read,
// so an outcome is still durable before it is reported (G2). Anything but
// plain success hands the slot to runSlot, the one recovery path, which
// settles it from the back-end.
type chain struct {
	e     *Executor
	l     *Lease
	iso   Isolation
	out   *reporter
	count func(backendext.Outcome) // tallies what is reported

	conn    *pgxpool.Conn // holds pending's open transaction
	pending *pendingSlot
}

// pendingSlot ran its statements in the open transaction on chain.conn; its
// outcome is rendered but not yet written.
type pendingSlot struct {
	o backendext.Outcome
	t Transaction
}

// step brings slot seq to its outcome, or leaves it pending, reporting
// whatever becomes durable on the way (the pending slot first).
func (c *chain) step(ctx context.Context, seq int, t Transaction) error {
	if !c.out.hasRoom() {
		// The client is behind: commit what is pending and give the
		// connection back before waiting for it, so that its slowness
		// holds no transaction, lock or pooled connection.
		if err := c.flush(ctx); err != nil {
			return err
		}
		c.release()
	}
	sent, args, err := sentStatements(t)
	if err != nil {
		return c.settle(ctx, seq, t, err, 1)
	}
	if t.Raw || !c.e.allKnown(sent) {
		// A client's raw SQL runs on a session of the raw SQL pool,
		// logged in as the client role; it is never chained.
		//
		// A statement never prepared might fail to: that would abort the
		// pending slot's transaction too. Run it on its own.
		if err := c.flush(ctx); err != nil {
			return err
		}
		// The slot takes a connection of its own; this one has no open
		// transaction now, and holding it could starve a small pool.
		c.release()
		return c.settle(ctx, seq, t, nil, 0)
	}
	if c.conn == nil {
		if c.conn, err = c.e.pool.Acquire(ctx); err != nil {
			c.conn = nil
			return c.settle(ctx, seq, t, c.e.classify(ctx, err, 0, false), 1)
		}
		if err := c.e.onServer(ctx, c.l, c.conn.Conn().PgConn(), seq); err != nil {
			c.release()
			return c.settle(ctx, seq, t, err, 1)
		}
	}
	b := &pgx.Batch{}
	p := c.pending
	if p != nil {
		b.Queue(backendext.InsertOutcomeSQL, backendext.OutcomeArgs(p.o)...)
		b.Queue("COMMIT")
	}
	b.Queue(c.iso.beginSQL())
	for i, q := range sent {
		b.Queue(q, args[i]...)
	}
	br := c.conn.Conn().SendBatch(ctx, b)
	if p != nil {
		c.pending = nil
		if err := c.e.readCommit(ctx, br, p.o); err != nil {
			br.Close()
			c.drop(ctx)
			if err := c.settle(ctx, p.o.Seq, p.t, err, p.o.Attempts); err != nil {
				return err
			}
			return c.step(ctx, seq, t) // its part of the pipeline did not run
		}
		// There is room for this line (see above): reporting it cannot
		// wait for the client while slot seq's transaction is open.
		if err := c.emit(ctx, p.o); err != nil {
			br.Close()
			c.drop(ctx)
			return err
		}
	}
	results, err := c.e.runStatements(ctx, br, 1, sent, 0)
	if err != nil {
		c.drop(ctx)
		return c.settle(ctx, seq, t, err, 1)
	}
	o, err := c.e.committedOutcome(c.l, seq, results, 1)
	if err != nil {
		c.drop(ctx)
		return c.settle(ctx, seq, t, err, 1)
	}
	c.pending = &pendingSlot{o: o, t: t}
	return nil
}

// flush writes and commits the pending slot's outcome and reports it.
func (c *chain) flush(ctx context.Context) error {
	p := c.pending
	if p == nil {
		return nil
	}
	c.pending = nil
	if err := c.e.commitOutcome(ctx, c.conn.Conn(), p.o, false); err != nil {
		c.drop(ctx)
		return c.settle(ctx, p.o.Seq, p.t, err, p.o.Attempts)
	}
	return c.emit(ctx, p.o)
}

// settle brings slot seq to an outcome through runSlot and reports it.
func (c *chain) settle(ctx context.Context, seq int, t Transaction, first error, attempts int) error {
	o, err := c.e.runSlot(ctx, c.l, seq, t, c.iso, first, attempts)
	if err != nil {
		return err
	}
	return c.emit(ctx, o)
}

// emit reports a durable outcome. If the client is too far behind to take
// it now, the chain gives its connection back first (it holds no open
// transaction whenever the queue is full: see step) and then waits.
func (c *chain) emit(ctx context.Context, o backendext.Outcome) error {
	c.count(o)
	if !c.out.hasRoom() {
		c.release()
	}
	if err := c.out.push(ctx, o.Report); err != nil {
		return fmt.Errorf("report slot %d: %w", o.Seq, err)
	}
	return nil
}

// drop ends the connection's transaction, if any, and gives the connection
// back; the next step takes another.
func (c *chain) drop(ctx context.Context) {
	if c.conn == nil {
		return
	}
	rollback(ctx, c.conn.Conn())
	c.conn.Release()
	c.conn = nil
}

// release gives back a connection that holds no open transaction.
func (c *chain) release() {
	if c.conn != nil && c.pending == nil {
		c.conn.Release()
		c.conn = nil
	}
}

// close undoes a pending slot's transaction (it was never reported) and
// releases the connection.
func (c *chain) close(ctx context.Context) {
	c.pending = nil
	c.drop(ctx)
}

// sentStatements returns each statement as it goes to the server.
func sentStatements(t Transaction) ([]string, [][]any, error) {
	sent := make([]string, len(t.Statements))
	args := make([][]any, len(t.Statements))
	for i, s := range t.Statements {
		q, a, err := s.sent()
		if err != nil {
			return nil, nil, &attemptError{fault: faultAbort, err: err,
				slot: &SlotError{Code: "invalid_arguments", Message: err.Error(), Statement: i + 1}}
		}
		sent[i], args[i] = q, a
	}
	return sent, args, nil
}

// readCommit reads the answers to a pipelined outcome insert and COMMIT:
// the one check that a slot committed, for the chain and for a slot run
// on its own (commitOutcome).
func (e *Executor) readCommit(ctx context.Context, br pgx.BatchResults, o backendext.Outcome) error {
	if err := backendext.OutcomeInserted(br.Exec()); err != nil {
		var pre pgx.ErrPreprocessingBatch
		if errors.As(err, &pre) {
			// A statement further down failed to prepare, which aborted the
			// open transaction: the slot did not commit.
			return &attemptError{fault: faultLost, err: err}
		}
		return e.classify(ctx, err, 0, false)
	}
	tag, err := br.Exec()
	if err != nil {
		return e.classify(ctx, err, 0, true)
	}
	if tag.String() != "COMMIT" {
		// The server answers COMMIT of a failed transaction with ROLLBACK.
		return &attemptError{fault: faultLost, err: fmt.Errorf("commit of slot %d answered %q", o.Seq, tag.String())}
	}
	return nil
}

// committedOutcome renders a slot's results into the outcome to commit, or
// fails with an abort when the report is over the limit.
func (e *Executor) committedOutcome(l *Lease, seq int, results []Result, attempts int) (backendext.Outcome, error) {
	report := renderReport(Report{Seq: seq, Status: StatusCommitted, Results: results})
	if len(report) > e.cfg.Limits.MaxReportBytes {
		return backendext.Outcome{}, &attemptError{fault: faultAbort, slot: &SlotError{
			Code:    "result_too_large",
			Message: fmt.Sprintf("the transaction's results take %d bytes, more than the limit of %d", len(report), e.cfg.Limits.MaxReportBytes),
		}}
	}
	return backendext.Outcome{BatchID: l.BatchID, Seq: seq, Status: StatusCommitted, Report: report, Epoch: l.Epoch, Owner: e.cfg.Owner, Attempts: attempts}, nil
}

// allKnown reports whether every query has run on this executor before, so
// that preparing it again will not fail.
func (e *Executor) allKnown(queries []string) bool { return e.known.allKnown(queries) }

func (e *Executor) markKnown(queries []string) { e.known.add(queries) }
