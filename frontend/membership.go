package frontend

import (
	"context"
	"math/rand/v2"
	"slices"
	"time"

	backendext "hafe.dev/hafe/backend-ext"
)

// Run keeps this front-end's membership fresh and collects old rows until
// ctx ends, then leaves the cluster so its unfinished batches can be taken
// over at once.
func (s *Server) Run(ctx context.Context) error {
	s.heartbeat(ctx)
	hb := time.NewTicker(s.cfg.HeartbeatInterval)
	defer hb.Stop()
	gc := time.NewTimer(s.gcDelay())
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			leaveCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := backendext.Leave(leaveCtx, s.ctl, s.cfg.ID); err != nil {
				s.log.Warn("leave cluster", "err", err)
			}
			return nil
		case <-hb.C:
			s.heartbeat(ctx)
		case m := <-s.migrations:
			// For the dashboard: written here, off the migration's path.
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := backendext.RecordMigration(wctx, s.ctl, m); err != nil && ctx.Err() == nil {
				s.log.Warn("record migration", "err", err)
			}
			cancel()
		case <-gc.C:
			s.collect(ctx)
			gc.Reset(s.gcDelay())
		}
	}
}

// heartbeat probes the database, refreshes this member's row and reads
// everyone's, for the metrics and the dashboard.
func (s *Server) heartbeat(run context.Context) {
	ctx, cancel := context.WithTimeout(run, s.cfg.HeartbeatInterval*2)
	defer cancel()
	start := time.Now()
	server, err := s.probe(ctx)
	s.metrics.probedDatabase(time.Since(start), err)
	if err != nil {
		// A probe that timed out failed too (the database is silent);
		// one cut short because the front-end stops did not.
		if run.Err() == nil {
			s.log.Warn("database probe", "err", err)
			s.databaseLost()
			// A failover under way (servers answer, none is the
			// primary) is the same for the peers: moving connections
			// there only adds a migration to the stall. A batch that
			// waits longer than --settle-timeout is handed off then.
			if !backendext.NoPrimaryNow(err) {
				s.probeFailures++
				if s.probeFailures == handOffAfterProbes {
					s.handOffBusy("this front-end cannot reach the database")
				}
			}
		}
		return
	}
	s.probeFailures = 0
	s.followServer(server)
	s.watchReplication(ctx)
	c := s.counters()
	err = backendext.Heartbeat(ctx, s.ctl, backendext.Member{
		ID: s.cfg.ID, Incarnation: s.exec.Incarnation(), HTTPAddr: s.cfg.Addr, MTCPAddr: s.cfg.MTCPAddr, Load: float64(s.batches.running()), Draining: s.batches.isDraining(),
		Committed: int64(c.Committed), Aborted: int64(c.Aborted), MTCPConns: s.mtcpConns(),
	})
	if err != nil {
		if run.Err() == nil {
			s.log.Warn("heartbeat", "err", err)
		}
		return
	}
	ms, err := backendext.ListMembers(ctx, s.ctl, s.cfg.Executor.OwnerLiveness)
	if err != nil {
		if run.Err() == nil {
			s.log.Warn("read members", "err", err)
		}
		return
	}
	s.members.set(ms)
	s.publishServers(ms)
	s.rebalance(ms)
	s.fenceOrphans(ctx, ms)
}

// handOffAfterProbes is how many database probes in a row (one per
// heartbeat) must fail before a front-end moves its MTCP connections with
// running batches to its peers, which may still reach the database.
const handOffAfterProbes = 3

// handOffBusy redirects the MTCP connections that stream a batch to the
// other front-ends, spread over them; their batches go on there.
func (s *Server) handOffBusy(why string) {
	peers := s.mtcpPeers()
	busy := s.busy.list()
	if len(peers) == 0 || len(busy) == 0 {
		return
	}
	s.log.Warn("moving MTCP connections with running batches to the other front-ends: "+why, "connections", len(busy), "front_ends", len(peers))
	for i, c := range busy {
		c.Redirect(peers[i%len(peers)])
	}
}

// publishServers gives the MTCP listener the live, not draining members'
// MTCP addresses, which it sends its clients (their migration targets)
// when the list changes.
func (s *Server) publishServers(ms []backendext.Member) {
	ln := s.mtcp.Load()
	if ln == nil {
		return
	}
	var addrs []string
	for _, m := range ms {
		if m.MTCPAddr != "" && (m.ID == s.cfg.ID || m.Alive && !m.Draining) {
			addrs = append(addrs, m.MTCPAddr)
		}
	}
	slices.Sort(addrs)
	s.mtcpMu.Lock()
	same := slices.Equal(addrs, s.mtcpServers)
	s.mtcpServers = addrs
	s.mtcpMu.Unlock()
	if !same {
		ln.SetServers(addrs)
	}
}

// mtcpPeers is the server list without this front-end: where its MTCP
// connections can go.
func (s *Server) mtcpPeers() []string {
	return slices.DeleteFunc(s.MTCPServers(), func(a string) bool { return a == s.cfg.MTCPAddr })
}

// MTCPServers is the server list this front-end gives its MTCP clients.
func (s *Server) MTCPServers() []string {
	s.mtcpMu.Lock()
	defer s.mtcpMu.Unlock()
	return slices.Clone(s.mtcpServers)
}

// gcDelay spreads the collections of several front-ends apart.
func (s *Server) gcDelay() time.Duration {
	return s.cfg.GCInterval/2 + rand.N(s.cfg.GCInterval)
}

func (s *Server) collect(ctx context.Context) (int64, error) {
	n, err := backendext.GC(ctx, s.ctl, s.cfg.Retention)
	if err != nil {
		s.log.Warn("gc", "err", err)
	} else if n > 0 {
		s.log.Info("gc removed old rows", "rows", n, "retention", s.cfg.Retention)
	}
	return n, err
}

// Drain refuses new batches from now on and moves every MTCP connection
// to the other front-ends (running batches included: they go on there).
// The channel closes when no batch runs here and no MTCP connection is
// left (or the MTCP drain gave up: no other front-end, or MTCPDrainTimeout).
func (s *Server) Drain() <-chan struct{} {
	batches := s.batches.drain()
	s.drainOnce.Do(func() {
		s.drained = make(chan struct{})
		go func() {
			defer close(s.drained)
			if ln := s.mtcp.Load(); ln != nil {
				start, n := time.Now(), ln.NumConns()
				ctx, cancel := context.WithTimeout(context.Background(), MTCPDrainTimeout)
				err := ln.Drain(ctx)
				cancel()
				if err != nil {
					s.log.Warn("mtcp drain", "err", err, "left", ln.NumConns())
				} else if n > 0 {
					s.log.Info("mtcp drained: every connection moved to another front-end", "connections", n, "took", time.Since(start).Round(time.Millisecond))
				}
			}
			<-batches
		}()
	})
	return s.drained
}

// MTCPDrainTimeout bounds how long Drain keeps moving MTCP connections.
const MTCPDrainTimeout = 5 * time.Minute

// Draining reports whether Drain was called.
func (s *Server) Draining() bool { return s.batches.isDraining() }
