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
}

// ExportState records a snapshot: state is the application's state after
// everything it has read and written so far. In lazy mode it costs no
// network round trip; in eager mode it returns once the snapshot is saved.
func (c *Conn) ExportState(state []byte) error {
	return c.ExportStateContext(context.Background(), state)
}

// ExportStateContext is ExportState with a context bounding the store's Save.
func (c *Conn) ExportStateContext(ctx context.Context, state []byte) error {
	s := c.sv
	if s == nil {
		return ErrNotServer
	}
	if len(state) > c.lim.MaxState {
		return fmt.Errorf("%w: %d bytes over %d", ErrStateTooLarge, len(state), c.lim.MaxState)
	}
	st := append([]byte(nil), state...)
	c.mu.Lock()
	if c.state.terminal() || c.appClosed {
		err := c.stateErrLocked()
		c.mu.Unlock()
		return c.opErr("export", err)
	}
	s.snap = snapshot{state: st, in: c.in.read, out: c.out.app, seq: s.snap.seq + 1}
	c.in.trim(c.in.read)
	s.logLost = false
	c.mu.Unlock()
	if s.ln.cfg.Store == nil {
		return nil
	}
	return c.persist(ctx)
}

// persist writes the latest snapshot and migration counter to the store
// (eager mode), then acknowledges input up to the snapshot. A Save refused
// as stale means another server claimed the connection.
func (c *Conn) persist(ctx context.Context) error {
	s := c.sv
	store := s.ln.cfg.Store
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	c.mu.Lock()
	if c.state.terminal() {
		err := c.stateErrLocked()
		c.mu.Unlock()
		return c.opErr("export", err)
	}
	rec := &SnapshotRecord{
		ConnID: c.id, Secret: c.secret, Counter: s.counter, Seq: s.snap.seq,
		PrevCounter: s.storeCounter, PrevSeq: s.durableSeq,
		InOffset: s.snap.in, OutOffset: s.snap.out, State: s.snap.state, OutTail: outTailLocked(c, s.snap.out),
	}
	c.mu.Unlock()
	if rec.Counter == rec.PrevCounter && rec.Seq == rec.PrevSeq {
		return nil
	}
	err := store.Save(ctx, rec)
	if errors.Is(err, ErrStale) {
		// Our own earlier Save may have landed despite an error.
		if cur, lerr := store.Load(ctx, c.id); lerr == nil && cur.Counter == rec.Counter && cur.Seq == rec.Seq {
			err = nil
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(err, ErrStale) {
		// Another server claimed the connection (we were unreachable).
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
	s.storeCounter, s.durableSeq, s.durableIn = rec.Counter, rec.Seq, rec.InOffset
	if p := c.path; p != nil {
		c.maybeAckLocked(p, true)
	}
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
// migrated-in connection; ok is false on a new connection.
func (c *Conn) ImportState() (state []byte, ok bool) {
	if c.sv == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.sv.imported...), c.sv.hasImported
}
