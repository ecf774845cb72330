package backendext

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TestSessionsOnAnOldServerRunAreCut: a session busy in a long statement
// on what is now the old server run fails at once when it is cut, instead
// of waiting for its answer.
func TestSessionsOnAnOldServerRunAreCut(t *testing.T) {
	ctx := context.Background()
	url, err := server.NewDatabase(ctx, "sessions")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	ConfigurePool(cfg, "fe-s", "", time.Minute)
	s := NewSessions()
	s.Track(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	run := ServerOf(c.Conn().PgConn())
	c.Release()
	if run == "" {
		t.Fatal("a session does not name its server run")
	}
	if n := s.DropNotOn(run); n != 0 {
		t.Fatalf("cut %d sessions on the current run", n)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { _, err := pool.Exec(ctx, "SELECT pg_sleep(30)"); done <- err }()
	time.Sleep(300 * time.Millisecond)
	if n := s.DropNotOn("another run"); n < 1 {
		t.Fatalf("cut %d sessions, want the busy one", n)
	}
	select {
	case err := <-done:
		if err == nil || !IsDeadConn(err) && !errors.Is(err, context.Canceled) {
			t.Logf("the cut statement failed with %v", err)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the cut statement took %s", time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the busy session was not cut")
	}
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("the pool after the cut: %v", err)
	}
}

// TestLookupOfADeadHostFailsFast: a host of a multi-host URL whose lookup
// failed fails again at once for a while, and a slow lookup is cut short.
func TestLookupOfADeadHostFailsFast(t *testing.T) {
	calls := 0
	lookup := quickLookup(func(ctx context.Context, host string) ([]string, error) {
		calls++
		if host == "slow" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return nil, errors.New("no such host")
	})
	start := time.Now()
	if _, err := lookup(context.Background(), "slow"); err == nil || time.Since(start) > lookupTimeout+time.Second {
		t.Fatalf("slow lookup: %v after %s", err, time.Since(start))
	}
	for range 3 {
		if _, err := lookup(context.Background(), "gone"); err == nil {
			t.Fatal("lookup of a gone host succeeded")
		}
	}
	if calls != 2 {
		t.Fatalf("%d lookups reached the resolver, want 2 (one per host)", calls)
	}
}
