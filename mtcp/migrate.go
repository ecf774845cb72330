package mtcp

import (
	"bufio"
	"context"
	"crypto/hmac"
	"errors"
	"net"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// migratedConn is what an origin keeps of a connection it handed over, so
// the state can be handed over again if the new server fails before
// replying (handover decides when), until the timer forgets it.
type migratedConn struct {
	handover
	timer *time.Timer
}

// acceptMigrate takes over a connection for a MIGRATE: from this server's
// own table (the client reconnected), from the origin (lazy) or from the
// snapshot store (eager).
func (l *Listener) acceptMigrate(nc net.Conn, br *bufio.Reader, payload []byte) bool {
	t0 := time.Now()
	m, err := wire.ParseMigrate(payload)
	if err != nil {
		refuse(nc, refusal(RefuseBadRequest, "malformed MIGRATE"))
		return false
	}
	stats := MigrationStats{ConnID: ConnID(m.ConnID), Role: RoleNewServer, From: m.Origin, To: l.cfg.Self}
	if c, _ := l.lookup(m.ConnID); c != nil {
		stats.Mode = ModeLocal
		stats.PrepareRequest = time.Since(t0)
		ok, stale, rerr := l.reattach(c, m, nc, br)
		if !stale {
			stats.Reinstate = time.Since(t0) - stats.PrepareRequest
			if rerr != nil {
				stats.Err = rerr
				refuse(nc, rerr)
			}
			l.report(stats)
			return ok
		}
		// Our copy was claimed by another server: take it back from the store.
	}
	l.mu.Lock()
	draining := l.draining
	l.mu.Unlock()
	if draining {
		refuse(nc, refusal(RefuseDraining, "draining"))
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandshakeTimeout)
	defer cancel()
	var (
		st    wire.ConnState
		c     *Conn
		rerr  *RefusalError
		t2    time.Time
		retry bool
	)
	// The claim in the store fails if the old owner saved a newer
	// snapshot meanwhile; then fetch again (bounded).
	for attempt := 0; attempt < 5; attempt++ {
		var mode Mode
		var tWait time.Duration
		st, mode, tWait, rerr = l.fetchState(ctx, m, t0, &stats)
		stats.Mode = mode
		stats.WaitReply += tWait
		t2 = time.Now()
		if rerr == nil {
			c, retry, rerr = l.reinstate(ctx, m, st, mode)
		}
		if !retry {
			break
		}
	}
	if c == nil && rerr == nil {
		rerr = refusal(RefuseStateUnavailable, "snapshot store kept changing")
	}
	if rerr != nil {
		stats.Err = rerr
		stats.Reinstate = time.Since(t2)
		l.report(stats)
		l.log.Info("migration refused", "conn", ConnID(m.ConnID).String()[:8], "code", rerr.Code, "reason", rerr.Reason)
		refuse(nc, rerr)
		return false
	}
	stats.StateBytes = len(st.State) + len(st.Input) + len(st.Output)
	acc := wire.AppendAccepted(nil, wire.Accepted{RecvOff: c.in.end(), Self: l.cfg.Self, Servers: l.serverList()})
	// If the listener is closing, register fails; the claim stays in the
	// store, which is where another server takes the connection from.
	ok := l.register(c, nc, br, c.out.base, acc)
	stats.Reinstate = time.Since(t2)
	l.report(stats)
	return ok
}

// reattach moves a connection this server owns onto a new path. In eager
// mode the new counter is stored first; if that finds another server
// claimed the connection meanwhile, our copy is stale and reattach reports
// it so the caller can take the connection over from the store.
func (l *Listener) reattach(c *Conn, m wire.Migrate, nc net.Conn, br *bufio.Reader) (ok, stale bool, rerr *RefusalError) {
	c.mu.Lock()
	if c.state == stateMigrated {
		c.mu.Unlock()
		return false, true, nil
	}
	if c.state.terminal() || c.state == statePeerClosed {
		c.mu.Unlock()
		return false, false, refusal(RefuseUnknownConn, "connection ended")
	}
	if code := checkMigrate(c.secret, c.sv.counter, m); code != 0 {
		c.mu.Unlock()
		return false, false, refusal(code, "%s", code)
	}
	c.sv.counter = m.Counter
	c.mu.Unlock()
	if l.cfg.Store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandshakeTimeout)
		err := c.persist(ctx)
		cancel()
		if errors.Is(err, ErrMigrated) {
			return false, true, nil
		}
		if err != nil {
			return false, false, l.storeUnavailable(err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.terminal() {
		return false, false, refusal(RefuseUnknownConn, "connection ended")
	}
	resume := max(m.RecvOff, c.out.base)
	_ = c.out.ack(resume, true)
	acc := wire.AppendAccepted(nil, wire.Accepted{RecvOff: c.in.end(), Self: l.cfg.Self, Servers: l.serverList()})
	_ = nc.SetDeadline(time.Time{})
	// A failed write of the greeting fails the path like any other.
	if err := c.attachLocked(newPath(c, nc, br), resume, 0, acc); err != nil {
		return false, false, nil
	}
	return true, false, nil
}

// fetchState gets a connection's state: pushed by the origin after the
// client's PREPARE, lazily from the origin, from this server's own record
// when it is the origin, or eagerly from the store when the origin cannot
// answer.
func (l *Listener) fetchState(ctx context.Context, m wire.Migrate, t0 time.Time, stats *MigrationStats) (wire.ConnState, Mode, time.Duration, *RefusalError) {
	t1 := time.Now()
	stats.PrepareRequest = t1.Sub(t0)
	// pushed takes the state the origin pushed for this MIGRATE, waiting
	// at most d for it if the client announced the push (the push went to
	// the server its PREPARE named, which is the one it dials: here).
	// Without the flag it takes only a push that is here already: no MAC
	// covers the flag.
	pushed := func(d time.Duration) (wire.ConnState, bool) {
		if !m.Prepared {
			d = 0
		}
		st, ok := l.waitPushed(ctx, m, d)
		stats.Pushed = ok
		return st, ok
	}
	if len(l.cfg.ClusterKey) > 0 {
		if st, ok := pushed(l.cfg.pushWait); ok {
			return st, ModeLazy, time.Since(t1), nil
		}
	}
	if m.Origin == l.cfg.Self {
		// The client came back after a PREPARE froze the connection here
		// and its move failed: hand the state over to ourselves.
		if c, mc := l.lookup(m.ConnID); c == nil && mc != nil {
			st, rerr := l.handOverAgain(mc, m)
			if rerr != nil && rerr.Code == RefuseReplayedCounter {
				// We pushed it to ourselves under another name.
				if st, ok := pushed(l.cfg.PeerTimeout); ok {
					return st, ModeLazy, time.Since(t1), nil
				}
			}
			return st, ModeLazy, time.Since(t1), rerr
		}
	}
	var lazyErr error
	if m.Origin != "" && m.Origin != l.cfg.Self && len(l.cfg.ClusterKey) > 0 {
		// An origin outside the server list is not dialled (see
		// peerPool.take): the store, if any, is then the only source.
		pctx, cancel := context.WithTimeout(ctx, l.cfg.PeerTimeout)
		tr, err := l.peers.fetch(pctx, m.Origin, m)
		cancel()
		if err == nil && tr.Code == uint8(RefuseReplayedCounter) {
			// The origin pushed this very MIGRATE's state: it is here
			// already or on its way.
			if st, ok := pushed(l.cfg.PeerTimeout); ok {
				return st, ModeLazy, time.Since(t1), nil
			}
		}
		wait := time.Since(t1)
		if err == nil && tr.Code == 0 {
			return tr.State, ModeLazy, wait, nil
		}
		if err == nil {
			code := RefusalCode(tr.Code)
			if code != RefuseUnknownConn || l.cfg.Store == nil {
				return wire.ConnState{}, ModeLazy, wait, &RefusalError{Code: code, Reason: tr.Reason, Addr: m.Origin}
			}
		}
		lazyErr = err
		l.log.Info("lazy fetch failed", "origin", m.Origin, "err", err, "code", tr.Code)
	}
	if l.cfg.Store == nil {
		if lazyErr != nil {
			// Not the error itself: anyone may send a MIGRATE, and the
			// error would tell them about the network behind us.
			return wire.ConnState{}, ModeLazy, 0, refusal(RefuseStateUnavailable, "origin unreachable")
		}
		return wire.ConnState{}, ModeLazy, 0, refusal(RefuseUnknownConn, "unknown connection")
	}
	rec, err := l.cfg.Store.Load(ctx, ConnID(m.ConnID))
	wait := time.Since(t1)
	if errors.Is(err, ErrNoSnapshot) {
		return wire.ConnState{}, ModeEager, wait, refusal(RefuseUnknownConn, "unknown connection")
	}
	if err != nil {
		return wire.ConnState{}, ModeEager, wait, l.storeUnavailable(err)
	}
	// A record does not say whether the application ever exported a
	// snapshot: its state is imported as one, even if empty.
	return wire.ConnState{
		ConnID: m.ConnID, Secret: rec.Secret, Counter: rec.Counter, Seq: rec.Seq,
		SnapIn: rec.InOffset, SnapOut: rec.OutOffset, HasState: rec.Seq > 0, State: rec.State,
		OutOff: rec.OutOffset - uint64(len(rec.OutTail)), Output: rec.OutTail,
	}, ModeEager, wait, nil
}

// storeUnavailable logs a snapshot store's error and returns the refusal a
// client gets for it, which does not repeat it: a store's errors can name
// hosts of the network behind the server.
func (l *Listener) storeUnavailable(err error) *RefusalError {
	l.log.Warn("snapshot store", "err", err)
	return refusal(RefuseStateUnavailable, "snapshot store unavailable")
}

// reinstate verifies a MIGRATE against fetched state and rebuilds the
// connection: the application restarts from the snapshot, re-reads the
// input log, and its regenerated output below what the stream already holds
// is dropped; transferred output fills the gap up to the client.
func (l *Listener) reinstate(ctx context.Context, m wire.Migrate, st wire.ConnState, mode Mode) (c *Conn, retry bool, rerr *RefusalError) {
	if code := checkMigrate(st.Secret, st.Counter, m); code != 0 {
		return nil, false, refusal(code, "%s", code)
	}
	// The client holds output up to RecvOff, and up to OutOff too: that is
	// where the transferred output starts because the client acknowledged
	// it (possibly after sending MIGRATE, while the old path still ran).
	known := st.OutOff + uint64(len(st.Output))
	base := max(m.RecvOff, st.OutOff)
	var out []byte
	if base < known {
		out = append(out, st.Output[base-st.OutOff:]...)
	}
	end := max(base, known)
	if st.SnapOut > end {
		return nil, false, refusal(RefuseStateUnavailable, "output [%d,%d) lost", end, st.SnapOut)
	}
	c = l.newServerConn(ConnID(m.ConnID), append([]byte(nil), st.Secret...))
	s := c.sv
	s.counter = m.Counter
	// No copy: a state is never written to once taken (frames and store
	// records are freshly allocated, and a snapshot's bytes are immutable).
	// seq goes on counting: a stored record tells by it whether the
	// application ever exported a snapshot.
	s.snap = snapshot{state: st.State, in: st.SnapIn, out: st.SnapOut, seq: st.Seq, exported: st.HasState}
	s.imported, s.hasImported = s.snap.state, s.snap.exported
	c.in = recvStream{base: st.SnapIn, read: st.SnapIn, buf: queueOf(st.Input), keepLog: true}
	if st.InFin {
		c.in.fin, c.in.finOff = true, c.in.end()
	}
	c.out = sendStream{base: base, buf: queueOf(out), sent: base, app: st.SnapOut, fin: st.OutFin && base <= known}
	if store := l.cfg.Store; store != nil {
		var tail []byte
		if st.SnapOut > base {
			tail = out[:st.SnapOut-base]
		}
		rec := &SnapshotRecord{ConnID: c.id, Secret: c.secret, Counter: m.Counter, Seq: st.Seq, InOffset: st.SnapIn,
			OutOffset: st.SnapOut, State: s.snap.state, OutTail: tail, PrevCounter: st.Counter, PrevSeq: st.Seq}
		if mode == ModeLazy {
			// The frozen origin's last durable version is whatever the
			// store holds, as long as no one else claimed it since.
			cur, err := store.Load(ctx, c.id)
			switch {
			case errors.Is(err, ErrNoSnapshot):
				rec.PrevCounter, rec.PrevSeq = 0, 0
			case err != nil:
				return nil, false, l.storeUnavailable(err)
			case cur.Counter >= m.Counter:
				return nil, false, refusal(RefuseReplayedCounter, "another server claimed the connection")
			default:
				rec.PrevCounter, rec.PrevSeq = cur.Counter, cur.Seq
			}
		}
		if err := store.Save(ctx, rec); errors.Is(err, ErrStale) {
			return nil, mode == ModeEager, refusal(RefuseReplayedCounter, "another server claimed this counter")
		} else if err != nil {
			return nil, false, l.storeUnavailable(err)
		}
		s.durableIn, s.storeCounter, s.durableSeq, s.durable = st.SnapIn, m.Counter, st.Seq, s.snap
	}
	return c, false, nil
}

// freeze hands a connection over to the new server named to (the origin's
// side of a lazy migration): it checks the forwarded MIGRATE, stops the
// connection so the application's next Read or Write fails with
// ErrMigrated, and returns its state.
//
// after, called once the answer is on its way, wakes the frozen
// connection's application (its Read or Write fails with ErrMigrated) and
// reports the phase: the wake-up and the report cost the new server's
// wait nothing then.
func (l *Listener) freeze(m wire.Migrate, to string) (st wire.ConnState, rerr *RefusalError, after func()) {
	t0 := time.Now()
	stats := MigrationStats{ConnID: ConnID(m.ConnID), Role: RoleOrigin, Mode: ModeLazy, From: l.cfg.Self, To: to}
	st, _, c, rerr := l.freezeLater(m, nil)
	stats.PrepareReply = time.Since(t0)
	if c != nil && c.sv.redirected.Load() {
		stats.Trigger = TriggerRedirect
	}
	if rerr != nil {
		stats.Err = rerr
	} else {
		stats.StateBytes = len(st.State) + len(st.Input) + len(st.Output)
	}
	return st, rerr, func() {
		c.applyFrozen()
		l.report(stats)
	}
}

// freezeState hands over a live connection, or again the state of one
// already handed over. For a client's PREPARE (pr set) it only freezes a
// live connection and returns the push's bookkeeping.
func (l *Listener) freezeState(m wire.Migrate, pr *wire.Prepare) (wire.ConnState, *pushState, *RefusalError) {
	st, ps, c, rerr := l.freezeLater(m, pr)
	c.applyFrozen()
	return st, ps, rerr
}

// freezeLater is freezeState that leaves the frozen connection's effects
// (waking its application) to the caller: c.applyFrozen. c is nil when no
// live connection was frozen.
func (l *Listener) freezeLater(m wire.Migrate, pr *wire.Prepare) (wire.ConnState, *pushState, *Conn, *RefusalError) {
	for again := true; ; again = false {
		c, mc := l.lookup(m.ConnID)
		if c == nil {
			if mc == nil || pr != nil {
				return wire.ConnState{}, nil, nil, refusal(RefuseUnknownConn, "unknown connection")
			}
			st, rerr := l.handOverAgain(mc, m)
			return st, nil, nil, rerr
		}
		c.mu.Lock()
		if c.state == stateMigrated && again {
			// A PREPARE and a FETCH raced, and the other froze it while
			// we waited for the lock: answer from its handed-over record.
			c.mu.Unlock()
			continue
		}
		st, ps, rerr := l.freezeLocked(c, m, pr)
		c.mu.Unlock()
		return st, ps, c, rerr
	}
}

// applyFrozen carries out the effects a freeze left in the machine; c
// may be nil.
func (c *Conn) applyFrozen() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.applyLocked()
	c.mu.Unlock()
}

// freezeLocked is freezeState's part for a connection still in the table;
// called with c.mu held.
func (l *Listener) freezeLocked(c *Conn, m wire.Migrate, pr *wire.Prepare) (wire.ConnState, *pushState, *RefusalError) {
	s := c.sv
	if c.state.terminal() || c.state == statePeerClosed {
		return wire.ConnState{}, nil, refusal(RefuseUnknownConn, "connection ended")
	}
	if code := checkMigrate(c.secret, s.counter, m); code != 0 {
		return wire.ConnState{}, nil, refusal(code, "%s", code)
	}
	if pr != nil && !hmac.Equal(prepareMAC(c.secret, m, pr.Target), pr.MAC) {
		return wire.ConnState{}, nil, refusal(RefuseBadMAC, "PREPARE's MAC does not cover its target")
	}
	if s.logLost {
		return wire.ConnState{}, nil, refusal(RefuseStateUnavailable, "input log overflowed since the last snapshot")
	}
	if m.RecvOff > c.out.end()+maxRegenerateGap {
		return wire.ConnState{}, nil, refusal(RefuseBadRequest, "received offset %d beyond output end %d", m.RecvOff, c.out.end())
	}
	full := wire.ConnState{
		ConnID: m.ConnID, Secret: c.secret, Counter: s.counter, Seq: s.snap.seq,
		SnapIn: s.snap.in, SnapOut: s.snap.out, HasState: s.snap.exported, State: s.snap.state,
		Input:  c.in.buf.bytesFrom(int(s.snap.in-c.in.base), c.in.buf.len()),
		InFin:  c.in.fin && c.in.finOff == c.in.end(),
		OutOff: c.out.base, Output: c.out.buf.bytesFrom(0, c.out.buf.len()),
		OutFin: c.out.fin && c.out.app == c.out.end(),
	}
	s.counter = m.Counter
	if p := c.path; p != nil {
		// The frozen path neither reads nor writes the stream any more.
		// Closing it now would wake the client and both our path
		// goroutines while the new server waits for our reply; the
		// client retires it (MOVED) once it has moved, and if the move
		// fails the close below tells it soon enough.
		time.AfterFunc(frozenPathLinger, p.close)
		c.path = nil
	}
	c.setState(stateMigrated, ErrMigrated) // its effects: applyFrozen
	if s.detached != nil {
		s.detached.Stop()
	}
	var ps *pushState
	if pr != nil {
		ps = newPushState(m, pr.Target)
	}
	mc := &migratedConn{handover: handover{secret: c.secret, counter: m.Counter, state: full, push: ps}}
	l.mu.Lock()
	delete(l.conns, c.id)
	if !l.closing {
		l.migrated[c.id] = mc
		id := c.id
		mc.timer = time.AfterFunc(l.cfg.MigratedRetention, func() { l.expireMigrated(id, mc) })
	}
	l.mu.Unlock()
	st := full
	trimOutput(&st, m.RecvOff)
	return st, ps, nil
}

// handOverAgain answers a MIGRATE for a connection already handed over,
// as its handover record decides: with a higher counter the previous new
// server failed before the client heard from it, and the state goes to
// this one instead; with the very MIGRATE a PREPARE pushed, the state is
// handed over only if the push was refused, so exactly one server gets it
// for that counter.
func (l *Listener) handOverAgain(mc *migratedConn, m wire.Migrate) (wire.ConnState, *RefusalError) {
	l.mu.Lock()
	v := mc.request(m)
	l.mu.Unlock()
	if ps := v.waitPush; ps != nil {
		ps.wait(l.cfg.PeerTimeout, l.closed)
		l.mu.Lock()
		v = mc.afterPush(ps, m)
		l.mu.Unlock()
	}
	if d := v.drop; d != nil {
		id := ConnID(m.ConnID)
		l.goTracked(func() { l.dropPushed(d.target, id, d.counter) })
	}
	if !v.ok {
		return wire.ConnState{}, v.refuse
	}
	return v.state, nil
}

// frozenPathLinger is how long a migrated-away connection's old path stays
// open, unused, after the origin handed the connection over.
const frozenPathLinger = 10 * time.Millisecond

// maxRegenerateGap bounds how far a client's received offset may run ahead
// of this server's output. It may run ahead at all because a server that
// took the connection over regenerates output from the snapshot, and until
// it has, the client can hold bytes a previous server sent; the next server
// regenerates them too (the application is deterministic) and drops them.
// The bound only keeps offsets far from wrapping around.
const maxRegenerateGap = 1 << 32

// trimOutput drops transferred output the client already has, and output
// past the snapshot, which the new server's application regenerates: only
// the gap between the two needs to travel.
func trimOutput(st *wire.ConnState, recv uint64) {
	if recv > st.OutOff {
		st.Output = st.Output[min(recv-st.OutOff, uint64(len(st.Output))):]
		st.OutOff = recv
	}
	if end := st.OutOff + uint64(len(st.Output)); end > st.SnapOut {
		keep := uint64(0)
		if st.SnapOut > st.OutOff {
			keep = st.SnapOut - st.OutOff
		}
		st.Output = st.Output[:keep]
		st.OutFin = false
	}
}

// expireMigrated forgets a handed-over connection's state.
func (l *Listener) expireMigrated(id ConnID, mc *migratedConn) {
	l.mu.Lock()
	if l.migrated[id] == mc {
		delete(l.migrated, id)
	}
	l.mu.Unlock()
}
