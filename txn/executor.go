package txn

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
)

// Config tunes an Executor. Zero fields take the documented defaults.
type Config struct {
	// Owner is this front-end's member id; it owns the batches it runs.
	Owner string
	// Incarnation tells this run of the front-end from earlier runs under
	// the same Owner name (default: random). A batch owned by an earlier
	// incarnation is not running any more, whatever the heartbeats say.
	// Configure the pool's sessions with the same one
	// (backendext.ConfigurePool), so that a later owner can fence them.
	Incarnation string
	// MaxAttempts bounds how often a slot is tried after serialization
	// failures and deadlocks (default 5).
	MaxAttempts int
	// RetryBackoff is the first pause between attempts; it doubles (default 10ms).
	RetryBackoff time.Duration
	// FenceGrace is how long a claim waits for the previous owner's open
	// slot transaction before terminating that session (default 5s).
	FenceGrace time.Duration
	// OwnerLiveness is how fresh an owner's heartbeat must be for its batch
	// to count as still running there (default 10s).
	OwnerLiveness time.Duration
	// SettleTimeout is how long a slot keeps trying to reach the database
	// after losing it, e.g. across a PostgreSQL restart (default 60s).
	SettleTimeout time.Duration
	// Limits bound each transaction's results (default DefaultLimits).
	Limits Limits
	// Observer is told about outcomes, retries, takeovers and fencing as
	// they happen (default: nobody).
	Observer Observer
	// RawSQL is where and how clients' raw SQL runs; without its Pool,
	// raw SQL transactions abort.
	RawSQL RawSQLConfig
}

func (c Config) withDefaults() Config {
	if c.Incarnation == "" {
		c.Incarnation = newUUID()
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 10 * time.Millisecond
	}
	if c.FenceGrace <= 0 {
		c.FenceGrace = 5 * time.Second
	}
	if c.OwnerLiveness <= 0 {
		c.OwnerLiveness = 10 * time.Second
	}
	if c.SettleTimeout <= 0 {
		c.SettleTimeout = 60 * time.Second
	}
	if c.RawSQL.Timeout <= 0 {
		c.RawSQL.Timeout = DefaultRawSQLTimeout
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.Limits.MaxRows <= 0 {
		c.Limits.MaxRows = DefaultLimits.MaxRows
	}
	if c.Limits.MaxReportBytes <= 0 {
		c.Limits.MaxReportBytes = DefaultLimits.MaxReportBytes
	}
	return c
}

var (
	// ErrKeyReused means an idempotency key came back with another request.
	ErrKeyReused = errors.New("idempotency key was used with a different request")
	// ErrFenced means another front-end took the batch over; this one must stop.
	ErrFenced = backendext.ErrFenced
)

// BusyError means the batch is still being executed, by Owner.
type BusyError struct {
	BatchID string
	Owner   string
	// RetryAfter is when the owner counts as gone if it does not heartbeat
	// again: the earliest a retry can take the batch over.
	RetryAfter time.Duration
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("batch %s is still running on front-end %s", e.BatchID, e.Owner)
}

// Executor runs batches for one front-end.
type Executor struct {
	pool *pgxpool.Pool
	cfg  Config
	log  *slog.Logger

	mu      sync.Mutex
	running map[string]bool // batch ids executing in this process
	known   *knownSQL       // SQL text that prepared fine before: safe to chain
}

// NewExecutor returns an executor that runs batches on pool as cfg.Owner.
// The pool's sessions should be configured with backendext.ConfigurePool.
func NewExecutor(pool *pgxpool.Pool, cfg Config, log *slog.Logger) *Executor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Executor{pool: pool, cfg: cfg.withDefaults(), log: log, running: map[string]bool{}, known: newKnownSQL(knownMaxCount, knownMaxBytes)}
}

// OpenRequest describes a batch a client submitted.
type OpenRequest struct {
	// IdempotencyKey, when set, names the batch across retries. Scope it
	// per client before passing it in.
	IdempotencyKey string
	// RequestHash identifies the request's content; a key reused with
	// another hash is refused with ErrKeyReused.
	RequestHash []byte
	NumTxns     int
	// Log, when set, logs what happens to this batch (say, with the
	// request's id); default the executor's logger.
	Log *slog.Logger
	// Migrated says the client's connection moved here from the front-end
	// running the batch (a verified MTCP migration): that owner has lost
	// its client, so the batch is taken over at once whatever its
	// heartbeat says, and an open slot transaction of the owner's is
	// terminated after MigratedFenceGrace rather than FenceGrace.
	Migrated bool
}

// MigratedFenceGrace is how long a claim after a migration waits for the
// previous owner's open slot transaction: that owner finds its client gone
// at its next write and stops, so a longer wait only stalls the client.
const MigratedFenceGrace = 200 * time.Millisecond

// Lease is this front-end's right to execute one batch.
type Lease struct {
	BatchID string
	Epoch   int64
	// Resumed is true when the batch existed before this request.
	Resumed bool
	// Finished is true when every slot already has its outcome.
	Finished bool
	// TakenOver is true when this lease was claimed from an earlier
	// owner (or from none, after the batch was released), moving the
	// epoch on; PreviousOwner is who held it ("" for nobody).
	TakenOver     bool
	PreviousOwner string
	// PreviousIncarnation is the run of PreviousOwner the lease was taken
	// from while that run's heartbeat was fresh (a migrated takeover), ""
	// otherwise. Should the run turn out to be gone (cut off, not
	// drained), a slot transaction it left open still holds its locks:
	// the caller fences its sessions once its heartbeat has aged.
	PreviousIncarnation string
	// Reported, when set before Run, says the client already holds the
	// report lines of slots 1..Reported.Slots (its MTCP connection moved
	// here with them): Run reports from the next slot on, and counts
	// those in its summary.
	Reported Reported

	log  *slog.Logger
	open OpenRequest // what it was opened with: to record it lost
	// server is the database server run (backendext.ServerOf) the
	// lease's slots last ran on.
	server string
}

// Reported is what a client already holds of a batch's report lines:
// slots 1..Slots, of which Committed committed and Aborted aborted.
type Reported struct {
	Slots, Committed, Aborted int
}

// Open creates the batch, or finds it by idempotency key and takes it over.
// It fails with ErrKeyReused or a *BusyError when it must not run the batch.
// Every Lease must be passed to Run or Release.
func (e *Executor) Open(ctx context.Context, req OpenRequest) (*Lease, error) {
	log := req.Log
	if log == nil {
		log = e.log
	}
	var (
		id      string
		b       backendext.Batch
		created bool
	)
	// After a PostgreSQL restart the first use of each pooled connection
	// fails: the batch is created on a fresh one instead of refused. A
	// second try finds the first one's batch by its key (owned by this
	// very run, so it is resumed); a batch without a key gets a new id.
	err := backendext.WithLiveConn(ctx, e.pool, func(db backendext.DB) (err error) {
		id = newUUID()
		b, created, err = backendext.CreateBatch(ctx, db, id, req.IdempotencyKey, req.RequestHash, req.NumTxns, e.cfg.Owner, e.cfg.Incarnation, e.cfg.OwnerLiveness)
		return err
	})
	if err != nil {
		return nil, err
	}
	if created {
		if !e.markRunning(id) {
			return nil, &BusyError{BatchID: id, Owner: e.cfg.Owner, RetryAfter: time.Second}
		}
		return &Lease{BatchID: id, Epoch: b.Epoch, log: log, open: req}, nil
	}
	if !bytes.Equal(b.RequestHash, req.RequestHash) || b.NumTxns != req.NumTxns {
		return nil, ErrKeyReused
	}
	if req.Migrated {
		// The client may have come back to this front-end, whose earlier
		// run of the batch stops at its next write to the moved connection.
		e.waitStopped(ctx, b.ID, 5*time.Second)
	}
	if !e.markRunning(b.ID) {
		return nil, &BusyError{BatchID: b.ID, Owner: e.cfg.Owner, RetryAfter: time.Second}
	}
	if b.State == backendext.BatchDone {
		return &Lease{BatchID: b.ID, Epoch: b.Epoch, Resumed: true, Finished: true, log: log, open: req}, nil
	}
	// OwnerAlive holds only for the owner's current run, so a batch left by
	// an earlier run of this very front-end is taken over, not refused.
	if b.Owner != "" && b.Owner != e.cfg.Owner && b.OwnerAlive && !req.Migrated {
		e.markStopped(b.ID)
		return nil, &BusyError{BatchID: b.ID, Owner: b.Owner, RetryAfter: max(e.cfg.OwnerLiveness-b.OwnerHeartbeatAge, time.Second)}
	}
	grace := e.cfg.FenceGrace
	if req.Migrated {
		grace = min(grace, MigratedFenceGrace)
	}
	epoch, fenced, err := e.claim(ctx, log, b.ID, grace)
	if err != nil {
		e.markStopped(b.ID)
		return nil, err
	}
	if b.Owner != "" && b.OwnerIncarnation != "" && !b.OwnerAlive && !(b.Owner == e.cfg.Owner && b.OwnerIncarnation == e.cfg.Incarnation) {
		// The previous owner's run is gone (or it would have been busy):
		// a transaction it left open, stuck mid-statement, holds locks this
		// batch's slots need, and nothing else would end it before
		// idle_in_transaction_session_timeout.
		app := backendext.ApplicationName(b.Owner, b.OwnerIncarnation)
		if n, err := backendext.FenceSessions(ctx, e.pool, app); err != nil {
			log.Warn("fence previous owner's sessions", "batch", b.ID, "sessions", app, "err", err)
		} else if n > 0 {
			fenced += n
			e.cfg.Observer.Fence(FencePreviousRun, n)
			log.Info("fenced: terminated the previous run's open transactions", "batch", b.ID, "sessions", app, "count", n)
		}
	}
	if fenced > 0 {
		if err := backendext.RecordFence(ctx, e.pool, b.ID, epoch, fenced); err != nil {
			log.Warn("record fence", "batch", b.ID, "err", err)
		}
	}
	via := ViaRetry
	if req.Migrated {
		via = ViaMigration
	}
	e.cfg.Observer.TakeOver(via)
	if req.Migrated {
		e.logMigratedTakeover(ctx, log, b, epoch, fenced)
	} else {
		log.Info("batch taken over", "batch", b.ID, "previous_owner", b.Owner, "epoch", epoch)
	}
	l := &Lease{BatchID: b.ID, Epoch: epoch, Resumed: true, TakenOver: true, PreviousOwner: b.Owner, log: log, open: req}
	if b.OwnerAlive && b.Owner != e.cfg.Owner {
		l.PreviousIncarnation = b.OwnerIncarnation
	}
	return l, nil
}

// logMigratedTakeover writes the one line a takeover after a migration
// gets: where the batch stood and what became of the slot the previous
// owner was at. The lease is claimed, so nothing moves under the read.
func (e *Executor) logMigratedTakeover(ctx context.Context, log *slog.Logger, b backendext.Batch, epoch int64, fenced int) {
	p, err := backendext.ReadProgress(ctx, e.pool, b.ID)
	if err != nil {
		log.Info("batch taken over after its connection moved", "batch", b.ID, "previous_owner", b.Owner, "epoch", epoch, "progress_err", err)
		return
	}
	next := "not started or rolled back"
	if fenced > 0 {
		next = "in progress, terminated"
	}
	var found string
	switch {
	case p.Last.Seq == 0:
		found = fmt.Sprintf("no slot recorded; slot 1: %s", next)
	case p.Last.Seq >= b.NumTxns:
		found = fmt.Sprintf("every slot recorded (slot %d %s by %s, xid %s)", p.Last.Seq, p.Last.Status, p.Last.Owner, p.LastXID)
	default:
		found = fmt.Sprintf("slot %d: %s before the move (xid %s, by %s); slot %d: %s", p.Last.Seq, p.Last.Status, p.LastXID, p.Last.Owner, p.Last.Seq+1, next)
	}
	log.Info("batch taken over after its connection moved: "+found, "batch", b.ID, "previous_owner", b.Owner, "epoch", epoch,
		"recorded", p.Recorded, "fenced_sessions", fenced)
}

// Incarnation is this run's incarnation: heartbeat with it.
func (e *Executor) Incarnation() string { return e.cfg.Incarnation }

// claim takes the batch's lease. A previous owner's slot transaction holds
// the batch row; if it is still open after FenceGrace, its session is
// terminated so that it can never commit. fenced counts the sessions
// terminated.
func (e *Executor) claim(ctx context.Context, log *slog.Logger, batchID string, fenceGrace time.Duration) (epoch int64, fenced int, err error) {
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("claim batch %s: %w", batchID, err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	type result struct {
		epoch int64
		err   error
	}
	done := make(chan result, 1)
	go func() {
		epoch, err := backendext.ClaimBatch(ctx, conn, batchID, e.cfg.Owner, e.cfg.Incarnation)
		done <- result{epoch, err}
	}()
	grace := time.NewTimer(fenceGrace)
	defer grace.Stop()
	for {
		select {
		case r := <-done:
			return r.epoch, fenced, r.err
		case <-grace.C:
			n, err := backendext.FenceBlockers(ctx, e.pool, pid)
			if err != nil {
				log.Warn("fence blockers", "batch", batchID, "err", err)
			} else if n > 0 {
				fenced += n
				e.cfg.Observer.Fence(FenceBlocker, n)
				log.Info("fenced: terminated the previous owner's session", "batch", batchID, "sessions", n)
			}
			grace.Reset(fenceGrace)
		}
	}
}

// Release gives the lease back without finishing the batch, so that a retry
// can resume it anywhere at once. Run calls it itself when it stops early.
func (e *Executor) Release(l *Lease) {
	defer e.markStopped(l.BatchID)
	if l.Finished {
		return
	}
	ctx, cancel := bookkeeping(context.Background())
	defer cancel()
	if err := backendext.ReleaseBatch(ctx, e.pool, l.BatchID, l.Epoch); err != nil && !errors.Is(err, ErrFenced) {
		l.logger(e).Warn("release batch", "batch", l.BatchID, "err", err)
	}
}

// bookkeeping is the context a batch's own records are written on once
// its client may be gone: not cancelled with the request, bounded so that
// a lost database cannot hold the caller.
func bookkeeping(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

func (e *Executor) markRunning(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running[id] {
		return false
	}
	e.running[id] = true
	return true
}

// waitStopped waits, at most d, until this process runs batch id no more.
func (e *Executor) waitStopped(ctx context.Context, id string, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		e.mu.Lock()
		running := e.running[id]
		e.mu.Unlock()
		if !running {
			return
		}
		e.sleep(ctx, 10*time.Millisecond)
	}
}

func (e *Executor) markStopped(id string) {
	e.mu.Lock()
	delete(e.running, id)
	e.mu.Unlock()
}

// Run executes the batch under lease l, calling emit with each slot's
// report line in seq order as soon as its outcome is durable, then returns
// the summary (whose Line is the response's last line). Slots that already
// have an outcome are reported from it and not run again. If Run returns an
// error the batch is not finished; a later Open with the same key resumes it.
//
// emit is called on a goroutine of its own, at most a few lines behind the
// slots that are durable: a client that reads slowly makes Run wait, but
// never while it holds a database connection or an open transaction. Once
// emit fails, Run stops and releases the batch. emit is not called after
// Run returns.
func (e *Executor) Run(ctx context.Context, l *Lease, b Batch, emit func(line []byte) error) (sum Summary, err error) {
	sum = Summary{BatchID: l.BatchID, Transactions: len(b.Transactions), Committed: l.Reported.Committed, Aborted: l.Reported.Aborted}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	out := startReporter(emit, cancel)
	defer out.stop() // after the release below: a stalled client must not delay it
	defer func() {
		if err != nil {
			e.Release(l)
		}
	}()
	c := &chain{e: e, l: l, iso: b.Isolation, out: out, count: func(o backendext.Outcome) {
		// Only this lease writes outcomes at its epoch (a resumed batch is
		// claimed at a new one): any other was recorded by someone else. A
		// finished batch is opened at its last epoch and only replayed.
		e.cfg.Observer.Outcome(o.Status, l.Finished || o.Epoch != l.Epoch)
		if o.Status == StatusCommitted {
			sum.Committed++
		} else {
			sum.Aborted++
		}
	}}
	defer c.close(ctx)
	rec := &recorded{e: e, l: l}
	for i, t := range b.Transactions[min(l.Reported.Slots, len(b.Transactions)):] {
		seq := l.Reported.Slots + i + 1
		o, ok, err := rec.at(ctx, seq, c)
		if err != nil {
			return sum, err
		}
		if ok {
			if err := c.flush(ctx); err != nil {
				return sum, err
			}
			if err := c.emit(ctx, o); err != nil {
				return sum, err
			}
			continue
		}
		if l.Finished {
			// Only a failover that lost reported outcomes leaves a done
			// batch with a gap (checkReported marked it so).
			return sum, &LostReportsError{BatchID: l.BatchID, Reported: -1, Recorded: seq - 1}
		}
		if err := c.step(ctx, seq, t); err != nil {
			return sum, err
		}
	}
	if err := c.flush(ctx); err != nil {
		return sum, err
	}
	c.close(ctx)
	sum.Done = true
	if !l.Finished {
		// Every slot has its outcome: the batch is done whether or not its
		// client is still there to hear it, so this runs on a context of
		// its own (a client hanging up now must not leave it "running").
		bctx, cancel := bookkeeping(ctx)
		err := backendext.FinishBatch(bctx, e.pool, l.BatchID, l.Epoch)
		cancel()
		if err != nil && !errors.Is(err, ErrFenced) {
			l.logger(e).Warn("finish batch", "batch", l.BatchID, "err", err)
		}
		l.Finished = err == nil
	}
	e.markStopped(l.BatchID)
	if err := out.finish(); err != nil {
		return sum, fmt.Errorf("report to client: %w", err)
	}
	return sum, nil
}

// logger is the lease's logger, or the executor's for a lease made by hand.
func (l *Lease) logger(e *Executor) *slog.Logger {
	if l.log != nil {
		return l.log
	}
	return e.log
}

// Pages of recorded outcomes a replay reads at a time.
const (
	replayPageRows  = 256
	replayPageBytes = 4 << 20
)

// recorded walks the outcomes a resumed batch already has, a page at a
// time, so that replaying a long batch never holds all its lines.
type recorded struct {
	e    *Executor
	l    *Lease
	page []backendext.Outcome // in seq order
	upTo int                  // every outcome up to this seq was read
}

// at returns slot seq's recorded outcome, if it has one. Slots are asked
// for in seq order. Before it reads a page it has c commit what it has
// pending and give its connection back.
func (r *recorded) at(ctx context.Context, seq int, c *chain) (backendext.Outcome, bool, error) {
	if !r.l.Resumed {
		return backendext.Outcome{}, false, nil
	}
	if seq > r.upTo {
		if err := c.flush(ctx); err != nil {
			return backendext.Outcome{}, false, err
		}
		c.release()
		var complete bool
		err := backendext.WithLiveConn(ctx, r.e.pool, func(db backendext.DB) (err error) {
			r.page, complete, err = backendext.ListOutcomesPage(ctx, db, r.l.BatchID, seq-1, replayPageRows, replayPageBytes)
			return err
		})
		if err != nil {
			return backendext.Outcome{}, false, err
		}
		r.upTo = math.MaxInt
		if !complete {
			r.upTo = r.page[len(r.page)-1].Seq
		}
	}
	for len(r.page) > 0 && r.page[0].Seq <= seq {
		o := r.page[0]
		r.page[0] = backendext.Outcome{} // its line is the reporter's now
		r.page = r.page[1:]
		if o.Seq == seq {
			return o, true, nil
		}
	}
	return backendext.Outcome{}, false, nil
}

func newUUID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return pgtype.UUID{Bytes: u, Valid: true}.String()
}
