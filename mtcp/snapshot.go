package mtcp

import (
	"context"
	"errors"
	"fmt"
)

type snapshot struct {
	state   []byte
	in, out uint64
	seq     uint64
	// exported: the application exported this snapshot (here or on a
	// previous server); the zero snapshot stands for none.
	exported bool
}

// ExportState records a snapshot: state is the application's state after
// everything it has read and written so far. In lazy mode it costs no
// network round trip; in eager mode it returns once the snapshot is saved.
func (c *Conn) ExportState(state []byte) error {
	return c.ExportStateContext(context.Background(), state)
}

// ExportStateContext is ExportState with a context bounding the store's Save.
func (c *Conn) ExportStateContext(ctx context.Context, state []byte) error {
	if c.sv == nil {
		return ErrNotServer
	}
	if err := c.recordSnapshot(state, false); err != nil {
		return err
	}
	if c.sv.ln.cfg.Store == nil {
		return nil
	}
	return c.persist(ctx)
}

// MaxDeferredInput bounds the input a snapshot recorded with RecordState
// may leave unacknowledged (kept in the client's send buffer) without
// being saved.
const MaxDeferredInput = 1 << 20

// RecordState records a snapshot like ExportState, but in eager mode saves
// it only when it must: when the connection has no saved snapshot yet, or
// when the input it covers beyond the saved one exceeds MaxDeferredInput.
// Otherwise the next ExportState or AmendState saves it (amended, if
// amended), and a crash meanwhile resumes from the saved snapshot, the
// client replaying the input since: the application must answer that
// input again as it did. It suits a boundary the application amends with
// its decision before it writes anything: one save per exchange instead
// of two. In lazy mode it is ExportState.
func (c *Conn) RecordState(state []byte) error {
	if c.sv == nil {
		return ErrNotServer
	}
	if err := c.recordSnapshot(state, false); err != nil {
		return err
	}
	if c.sv.ln.cfg.Store == nil {
		return nil
	}
	c.mu.Lock()
	s := c.sv
	deferSave := s.durableSeq > 0 && !s.preparing && s.snap.in-s.durable.in <= MaxDeferredInput
	c.mu.Unlock()
	if deferSave {
		return nil
	}
	return c.persist(context.Background())
}

// AmendState replaces the latest snapshot's state, keeping its input and
// output offsets and the input logged since: the application records a
// decision about input it will read again after a migration (say, which
// batch the request it has read but not yet answered became) without
// giving that input up. After a migration the application imports the
// amended state and re-reads the same input. Eager mode saves it like
// ExportState.
func (c *Conn) AmendState(state []byte) error {
	return c.AmendStateContext(context.Background(), state)
}

// AmendStateContext is AmendState with a context bounding the store's Save.
func (c *Conn) AmendStateContext(ctx context.Context, state []byte) error {
	if c.sv == nil {
		return ErrNotServer
	}
	if err := c.recordSnapshot(state, true); err != nil {
		return err
	}
	if c.sv.ln.cfg.Store == nil {
		return nil
	}
	return c.persist(ctx)
}

// recordSnapshot takes a snapshot at the current offsets and starts a new
// input log; amend keeps the latest snapshot's offsets and input log.
func (c *Conn) recordSnapshot(state []byte, amend bool) error {
	s := c.sv
	if len(state) > c.lim.MaxState {
		return fmt.Errorf("%w: %d bytes over %d", ErrStateTooLarge, len(state), c.lim.MaxState)
	}
	st := append([]byte(nil), state...)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.terminal() || c.appClosed {
		return c.opErr("export", c.stateErrLocked())
	}
	if amend {
		s.snap = snapshot{state: st, in: s.snap.in, out: s.snap.out, seq: s.snap.seq + 1, exported: true}
		return nil
	}
	s.snap = snapshot{state: st, in: c.in.read, out: c.out.app, seq: s.snap.seq + 1, exported: true}
	c.in.trim(c.in.read)
	s.logLost = false
	return nil
}

// persist writes the latest snapshot and migration counter to the store
// (eager mode), then acknowledges input up to the snapshot. A Save refused
// as stale means another server claimed the connection.
func (c *Conn) persist(ctx context.Context) error {
	s := c.sv
	store := s.ln.cfg.Store
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	rec, err := c.snapshotRecord()
	if err != nil || rec == nil {
		return err
	}
	err = store.Save(ctx, rec)
	if errors.Is(err, ErrStale) {
		// Our own earlier Save may have landed despite an error.
		if cur, lerr := store.Load(ctx, c.id); lerr == nil && cur.Counter == rec.Counter && cur.Seq == rec.Seq {
			err = nil
		}
	}
	return c.snapshotSaved(rec, err, false)
}

// snapshotRecord is the store record for the latest snapshot and the
// current migration counter, nil when the store already has it. While the
// application saves a prepared snapshot in its own transaction, which may
// still fail, a record written meanwhile (a reattach storing its counter)
// carries the last saved snapshot instead.
func (c *Conn) snapshotRecord() (*SnapshotRecord, error) {
	s := c.sv
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.terminal() {
		return nil, c.opErr("export", c.stateErrLocked())
	}
	snap := s.snap
	if s.preparing {
		snap = s.durable
	}
	rec := &SnapshotRecord{
		ConnID: c.id, Secret: c.secret, Counter: s.counter, Seq: snap.seq,
		PrevCounter: s.storeCounter, PrevSeq: s.durableSeq,
		InOffset: snap.in, OutOffset: snap.out, State: snap.state, OutTail: outTailLocked(c, snap.out),
	}
	if rec.Counter == rec.PrevCounter && rec.Seq == rec.PrevSeq {
		return nil, nil
	}
	return rec, nil
}

// PrepareSnapshot records a snapshot like ExportState but leaves making it
// durable to the caller, so it can be written in the same database
// transaction as the application's own effects: store rec with the
// store's compare-and-swap semantics, then report the outcome with
// SnapshotSaved. Until then input is acknowledged only up to the previous
// durable snapshot. Calls must not overlap (prepare, save, report, then
// the next). rec is nil when there is nothing new to save.
func (c *Conn) PrepareSnapshot(state []byte) (*SnapshotRecord, error) {
	if c.sv == nil {
		return nil, ErrNotServer
	}
	if err := c.recordSnapshot(state, false); err != nil {
		return nil, err
	}
	rec, err := c.snapshotRecord()
	if rec != nil {
		c.mu.Lock()
		c.sv.preparing = true
		c.mu.Unlock()
	}
	return rec, err
}

// SnapshotSaved reports the outcome of saving a record from
// PrepareSnapshot: nil makes it the durable snapshot (and acknowledges the
// input it covers); ErrStale means another server claimed the connection,
// which then fails with ErrMigrated here and in the application. If this
// server replaced the record itself meanwhile (a reattach stores its new
// counter), SnapshotSaved returns ErrSnapshotSuperseded instead: the
// connection lives on, and the application prepares the snapshot again.
func (c *Conn) SnapshotSaved(rec *SnapshotRecord, err error) error {
	if c.sv == nil {
		return ErrNotServer
	}
	return c.snapshotSaved(rec, err, true)
}

func (c *Conn) snapshotSaved(rec *SnapshotRecord, err error, byApp bool) error {
	s := c.sv
	c.mu.Lock()
	defer c.mu.Unlock()
	if byApp {
		s.preparing = false
	}
	if errors.Is(err, ErrStale) && (s.storeCounter != rec.PrevCounter || s.durableSeq != rec.PrevSeq) {
		// Not another server: this server's own save since rec was
		// prepared (a reattach stores its new counter) moved the record
		// on. rec was not saved; the application prepares it again.
		return c.opErr("export", ErrSnapshotSuperseded)
	}
	if errors.Is(err, ErrStale) {
		if p := c.path; p != nil {
			p.close()
			c.path = nil
		}
		c.setStateLocked(stateMigrated, ErrMigrated)
		go s.ln.remove(c)
		return c.opErr("export", ErrMigrated)
	}
	if err != nil {
		return fmt.Errorf("mtcp: save snapshot: %w", err)
	}
	if rec.Counter < s.storeCounter || (rec.Counter == s.storeCounter && rec.Seq <= s.durableSeq) {
		return nil // an older record than the one already durable
	}
	s.storeCounter, s.durableSeq, s.durableIn = rec.Counter, rec.Seq, rec.InOffset
	s.durable = snapshot{state: rec.State, in: rec.InOffset, out: rec.OutOffset, seq: rec.Seq}
	c.maybeAckLocked(true) // the input it covers may be discarded now
	return nil
}

// outTailLocked copies the unacknowledged output below off.
func outTailLocked(c *Conn, off uint64) []byte {
	if off <= c.out.base {
		return nil
	}
	return c.out.buf.bytesFrom(0, int(off-c.out.base))
}

// ImportState returns the application state of the last snapshot on a
// migrated-in connection; ok is false on a new connection, and on a
// migrated one whose application never exported a snapshot.
func (c *Conn) ImportState() (state []byte, ok bool) {
	if c.sv == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.sv.imported...), c.sv.hasImported
}

// OutputHeld is how many bytes past the application's write offset the
// connection already holds: after a migration, output of the previous
// server that the client has, or that came with the state. The
// application, which regenerates output from the snapshot, would write
// these bytes again only to have them dropped; SkipOutput skips them
// instead, for an application that knows how long its output there is.
func (c *Conn) OutputHeld() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.out.end() - c.out.app)
}

// SkipOutput moves the application's write offset n bytes on, over output
// the connection already holds (at most OutputHeld): the application
// declares that what it would write there is what is held.
func (c *Conn) SkipOutput(n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.terminal() {
		return c.opErr("skip", c.stateErrLocked())
	}
	if n < 0 || uint64(n) > c.out.end()-c.out.app {
		return fmt.Errorf("mtcp: skip %d bytes of output, but only %d are held", n, c.out.end()-c.out.app)
	}
	c.out.app += uint64(n)
	return nil
}
