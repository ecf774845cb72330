package mtcp

import (
	"context"
	"crypto/hmac"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// Prepared migration: the client sends PREPARE (its MIGRATE and the server
// it is about to dial) on the old path, then dials. The origin freezes the
// connection and pushes the state to that server over the peer channel
// while the client's transport handshake runs, so the new server usually
// holds the state when the MIGRATE arrives and skips the FETCH round trip.
//
// Exactly one server gets the state for a counter: the origin decides, at
// the freeze, whether the counter is handed over by push; a FETCH for the
// same MIGRATE waits for the push's answer and gets the state only if the
// push was refused (an unanswered push leaves the state unavailable for
// that counter: the client retries with the next). If the PREPARE never
// arrives, the new server's
// FETCH freezes the connection as in a plain lazy migration and the late
// PREPARE finds nothing to freeze.

// prepareHedge is how long a new server waits for a pushed state before it
// also sends a FETCH: a push normally wins against the client's dial, and a
// FETCH that races the push costs only a refused request.
const prepareHedge = 2 * time.Millisecond

// maxPushedBytes bounds the pushed state a server holds for MIGRATEs that
// have not arrived yet; beyond it pushes are refused and the new server
// fetches instead.
const maxPushedBytes = 64 << 20

// pushOutcome is what the origin knows of a push.
type pushOutcome uint8

const (
	pushPending pushOutcome = iota
	pushKept                // the new server answered that it holds the state
	pushRefused             // it refused, or the push never left this server
	pushUnknown             // sent, but no answer: the new server may hold it
)

// pushState is the origin's record of a push: it is decided once.
type pushState struct {
	mac     []byte        // the MIGRATE the push carries
	target  string        // where it went
	done    chan struct{} // closed when outcome is no longer pending
	outcome pushOutcome   // guarded by the Listener's mu
	fetched bool          // a FETCH got the state after the push was refused
}

// wait blocks until the push is decided, at most d or until stop closes.
func (ps *pushState) wait(d time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ps.done:
	case <-t.C:
	case <-stop:
	}
}

// pushedConn is a state pushed to this server ahead of its MIGRATE.
type pushedConn struct {
	m     wire.Migrate
	st    wire.ConnState
	size  int
	timer *time.Timer
}

// prepare is the origin's side of a PREPARE: freeze the connection and push
// its state to the server the client is dialling.
func (l *Listener) prepare(pr wire.Prepare) {
	if len(l.cfg.ClusterKey) == 0 || pr.Target == "" || pr.Target == l.cfg.Self {
		return // no peer channel (the new server will say so) or no move
	}
	if !l.isPeer(pr.Target) {
		// Dial only servers of the cluster, not any address a client
		// names; the new server fetches instead.
		return
	}
	t0 := time.Now()
	m := pr.Migrate
	stats := MigrationStats{ConnID: ConnID(m.ConnID), Role: RoleOrigin, Mode: ModeLazy, From: l.cfg.Self, To: pr.Target, Pushed: true}
	st, ps, rerr := l.freezeState(m, &pr)
	stats.PrepareReply = time.Since(t0)
	if rerr != nil {
		// A FETCH froze it first, or the PREPARE is stale or forged.
		stats.Err = rerr
		l.report(stats)
		return
	}
	stats.StateBytes = len(st.State) + len(st.Input) + len(st.Output)
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.PeerTimeout)
	ans, sent, err := l.peers.push(ctx, pr.Target, wire.Push{Migrate: m, State: st})
	cancel()
	outcome := pushKept
	switch {
	case err != nil && sent:
		outcome = pushUnknown
	case err != nil || ans.Code != 0:
		outcome = pushRefused
	}
	l.mu.Lock()
	ps.answered(outcome)
	l.mu.Unlock()
	close(ps.done)
	if err == nil && ans.Code != 0 {
		err = &RefusalError{Code: RefusalCode(ans.Code), Reason: ans.Reason, Addr: pr.Target}
	}
	if err != nil {
		l.log.Debug("push refused; the new server will fetch", "conn", ConnID(m.ConnID).String()[:8], "to", pr.Target, "err", err)
		stats.Err = err
	}
	l.report(stats)
}

// keepPushed stores a state the server named from pushed, until its
// MIGRATE arrives (or the handshake timeout passes). The MIGRATE it carries
// must verify with the state's secret, so only a client's own request
// moves state here, and must name from as its origin: a connection is
// handed over only by the server that owns it.
func (l *Listener) keepPushed(m wire.Migrate, st wire.ConnState, from string) *RefusalError {
	if code := checkMigrate(st.Secret, st.Counter, m); code != 0 || m.ConnID != st.ConnID {
		return refusal(RefuseBadMAC, "pushed state does not match its MIGRATE")
	}
	if m.Origin != from {
		return refusal(RefuseUnauthenticated, "pushed by a server other than the origin")
	}
	id := ConnID(m.ConnID)
	size := len(st.State) + len(st.Input) + len(st.Output)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing || l.draining {
		return refusal(RefuseDraining, "draining")
	}
	if old := l.pushed[id]; old != nil {
		if old.m.Counter >= m.Counter {
			return refusal(RefuseReplayedCounter, "a newer push is here")
		}
		l.dropPushedLocked(id, old)
	}
	if l.pushedBytes+size > maxPushedBytes {
		return refusal(RefuseStateUnavailable, "too much pushed state waiting")
	}
	pc := &pushedConn{m: m, st: st, size: size}
	pc.timer = time.AfterFunc(l.cfg.HandshakeTimeout, func() {
		l.mu.Lock()
		l.dropPushedLocked(id, pc)
		l.mu.Unlock()
	})
	l.pushed[id] = pc
	l.pushedBytes += size
	close(l.pushWake)
	l.pushWake = make(chan struct{})
	return nil
}

func (l *Listener) dropPushedLocked(id ConnID, pc *pushedConn) {
	if l.pushed[id] != pc {
		return
	}
	pc.timer.Stop()
	delete(l.pushed, id)
	l.pushedBytes -= pc.size
}

// waitPushed takes the state pushed for exactly this MIGRATE, waiting for
// it at most d.
func (l *Listener) waitPushed(ctx context.Context, m wire.Migrate, d time.Duration) (wire.ConnState, bool) {
	var t *time.Timer // made on the first wait: most calls (no PREPARE) look once
	id := ConnID(m.ConnID)
	for {
		l.mu.Lock()
		pc := l.pushed[id]
		if pc != nil && pc.m.Counter == m.Counter && hmac.Equal(pc.m.MAC, m.MAC) {
			l.dropPushedLocked(id, pc)
			l.mu.Unlock()
			return pc.st, true
		}
		wake := l.pushWake
		l.mu.Unlock()
		if d <= 0 {
			return wire.ConnState{}, false
		}
		if t == nil {
			t = time.NewTimer(d)
			defer t.Stop()
		}
		select {
		case <-wake:
		case <-t.C:
			return wire.ConnState{}, false
		case <-ctx.Done():
			return wire.ConnState{}, false
		case <-l.closed:
			return wire.ConnState{}, false
		}
	}
}

// dropPushed tells the server at addr to forget a state pushed to it for
// counter (or below): the origin handed the connection over again under a
// higher one. Best effort; a copy left behind expires with the handshake
// timeout.
func (l *Listener) dropPushed(addr string, id ConnID, counter uint64) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.PeerTimeout)
	defer cancel()
	if err := l.peers.dropPush(ctx, addr, wire.DropPush{ConnID: id, Counter: counter}); err != nil {
		l.log.Debug("drop pushed state", "conn", id.String()[:8], "at", addr, "err", err)
	}
}

// forgetPushed drops a pushed state for counter or below, if the server
// named from pushed it.
func (l *Listener) forgetPushed(id ConnID, counter uint64, from string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if pc := l.pushed[id]; pc != nil && pc.m.Counter <= counter && pc.m.Origin == from {
		l.dropPushedLocked(id, pc)
	}
}
