package frontend

import (
	"math"
	"slices"
	"sync"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/mtcp"
)

// busyConns are the MTCP connections streaming a batch now: the ones worth
// moving off an overloaded front-end.
type busyConns struct {
	mu    sync.Mutex
	conns map[*mtcp.Conn]bool
}

func (b *busyConns) set(c *mtcp.Conn, busy bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns == nil {
		b.conns = map[*mtcp.Conn]bool{}
	}
	if busy {
		b.conns[c] = true
	} else {
		delete(b.conns, c)
	}
}

func (b *busyConns) list() []*mtcp.Conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*mtcp.Conn, 0, len(b.conns))
	for c := range b.conns {
		out = append(out, c)
	}
	return out
}

// peerLoad is a live peer's MTCP address and running batches.
type peerLoad struct {
	addr string
	load float64
}

// overload decides how many running batches to move off a front-end that
// runs running of them: those above maxBatches (0: no limit), or above the
// peers' average by more than threshold (0: off). It returns where each
// goes, the least-loaded peer first, counting each move as it plans it;
// none when no peer is lighter.
func overload(running int, peers []peerLoad, maxBatches int, threshold float64) []string {
	if len(peers) == 0 || running == 0 {
		return nil
	}
	limit := math.Inf(1)
	if maxBatches > 0 {
		limit = float64(maxBatches)
	}
	if threshold > 0 {
		sum := 0.0
		for _, p := range peers {
			sum += p.load
		}
		limit = min(limit, sum/float64(len(peers))+threshold)
	}
	peers = slices.Clone(peers)
	var moves []string
	for n := float64(running); n > limit; n-- {
		i := 0
		for j, p := range peers {
			if p.load < peers[i].load || p.load == peers[i].load && p.addr < peers[i].addr {
				i = j
			}
		}
		if peers[i].load+1 > n-1 {
			break // moving would only overload the peer
		}
		moves = append(moves, peers[i].addr)
		peers[i].load++
	}
	return moves
}

// rebalance redirects MTCP connections with running batches to lighter
// front-ends when this one is overloaded (Config.MaxBatches,
// Config.RebalanceThreshold). It runs after each heartbeat, with the
// members just read.
func (s *Server) rebalance(ms []backendext.Member) {
	ln := s.mtcp.Load()
	if ln == nil || (s.cfg.MaxBatches <= 0 && s.cfg.RebalanceThreshold <= 0) || s.batches.isDraining() {
		return
	}
	var peers []peerLoad
	for _, m := range ms {
		if m.ID != s.cfg.ID && m.Alive && !m.Draining && m.MTCPAddr != "" {
			peers = append(peers, peerLoad{m.MTCPAddr, m.Load})
		}
	}
	moves := overload(s.batches.running(), peers, s.cfg.MaxBatches, s.cfg.RebalanceThreshold)
	busy := s.busy.list()
	for i, to := range moves {
		if i >= len(busy) {
			break
		}
		if err := busy[i].Redirect(to); err == nil {
			s.log.Info("overloaded: moving a connection with a running batch", "conn", busy[i].ID().String(), "to", to,
				"running", s.batches.running(), "max_batches", s.cfg.MaxBatches, "rebalance_threshold", s.cfg.RebalanceThreshold)
		}
	}
}
