package backendext

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Sessions keeps track of the database sessions of a front-end's pools,
// so that after a failover the ones still on the old server are cut at
// once. A session waiting for a killed server's answer would otherwise
// wait for TCP to give up (seconds to minutes) while the new primary is
// already there; cut, its slot settles by lookup on the new primary.
type Sessions struct {
	mu    sync.Mutex
	conns map[*pgx.Conn]struct{}
}

// NewSessions returns an empty Sessions.
func NewSessions() *Sessions { return &Sessions{conns: map[*pgx.Conn]struct{}{}} }

// Track makes the pools made with cfg register their sessions in s. Call
// it after ConfigurePool (whose connections name their server run).
func (s *Sessions) Track(cfg *pgxpool.Config) {
	after, before := cfg.AfterConnect, cfg.BeforeClose
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		if after != nil {
			if err := after(ctx, c); err != nil {
				return err
			}
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		return nil
	}
	cfg.BeforeClose = func(c *pgx.Conn) {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		if before != nil {
			before(c)
		}
	}
}

// DropNotOn cuts every tracked session that is not on server run server
// (ServerOf), idle or busy: a busy one's statement fails at once as with a
// lost connection. It returns how many it cut.
func (s *Sessions) DropNotOn(server string) int {
	if server == "" {
		return 0
	}
	s.mu.Lock()
	var stale []*pgx.Conn
	for c := range s.conns {
		if id := ServerOf(c.PgConn()); id != "" && id != server {
			stale = append(stale, c)
			delete(s.conns, c)
		}
	}
	s.mu.Unlock()
	for _, c := range stale {
		// The socket only: the session's own goroutine finds it closed
		// and the pool discards the connection.
		c.PgConn().Conn().Close()
	}
	return len(stale)
}
