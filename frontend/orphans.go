package frontend

import (
	"context"
	"sync"
	"time"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/txn"
)

// A batch taken over because its client's connection moved here may have
// left its previous owner with a slot transaction open: an owner cut off
// from everything (not drained) keeps its sessions in PostgreSQL, and their
// row locks, until idle_in_transaction_session_timeout. Its outcome insert
// would fail on the new epoch, but the locks stall this front-end's slots.
// The heartbeat watches such owners and, once one's run stops
// heartbeating, terminates what its sessions still hold open.

// orphanWatch is a run that lost a batch to this front-end while alive.
type orphanWatch struct {
	owner, incarnation string
	batch              string
	epoch              int64
	until              time.Time // stop watching: the run is fine
}

type orphanWatches struct {
	mu   sync.Mutex
	runs []orphanWatch
}

func (o *orphanWatches) add(w orphanWatch) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.runs = append(o.runs, w)
}

// take removes and returns the watched runs that are gone by ms, and drops
// those watched long enough.
func (o *orphanWatches) take(ms []backendext.Member, now time.Time) []orphanWatch {
	alive := map[string]bool{}
	for _, m := range ms {
		if m.Alive {
			alive[m.ID+"\x00"+m.Incarnation] = true
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var gone []orphanWatch
	keep := o.runs[:0]
	for _, w := range o.runs {
		switch {
		case !alive[w.owner+"\x00"+w.incarnation]:
			gone = append(gone, w)
		case now.Before(w.until):
			keep = append(keep, w)
		}
	}
	o.runs = keep
	return gone
}

// watchPreviousOwner starts watching the run a migrated takeover took l
// from, if it was alive.
func (s *Server) watchPreviousOwner(l *txn.Lease) {
	if l.PreviousIncarnation == "" {
		return
	}
	s.orphans.add(orphanWatch{owner: l.PreviousOwner, incarnation: l.PreviousIncarnation, batch: l.BatchID, epoch: l.Epoch,
		until: time.Now().Add(3 * s.cfg.Executor.OwnerLiveness)})
}

// fenceOrphans terminates the open transactions of watched runs that are
// gone (after each heartbeat, with the members just read).
func (s *Server) fenceOrphans(ctx context.Context, ms []backendext.Member) {
	for _, w := range s.orphans.take(ms, time.Now()) {
		app := backendext.ApplicationName(w.owner, w.incarnation)
		n, err := backendext.FenceSessions(ctx, s.ctl, app)
		if err != nil {
			s.log.Warn("fence the sessions of a run that is gone", "sessions", app, "err", err)
			continue
		}
		if n == 0 {
			continue
		}
		s.metrics.Fence(txn.FencePreviousRun, n)
		if err := backendext.RecordFence(ctx, s.ctl, w.batch, w.epoch, n); err != nil {
			s.log.Warn("record fence", "batch", w.batch, "err", err)
		}
		s.log.Info("fenced: terminated the open transactions of a run that lost its batch to a migration and then stopped heartbeating",
			"batch", w.batch, "sessions", app, "count", n)
	}
}
