package txn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/internal/pgtemp/pgtest"
)

// A primary that fails over, played by throwaway servers whose
// default_transaction_read_only is switched with ALTER SYSTEM and a reload:
// the reload reaches the sessions already open, as a demotion does, so a
// session that wrote a moment ago finds its server read-only (SQLSTATE
// 25006) at its next write.

// startServer starts a server of the test's own (the switch is server-wide)
// with hafe and the test schema in database "app".
func startServer(t *testing.T) *pgtemp.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	pgtest.Database(t, s, "app", testSchema)
	return s
}

// setReadOnly makes every session of s read-only, or writable again.
func setReadOnly(t *testing.T, s *pgtemp.Server, on bool) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close(ctx)
	q := "ALTER SYSTEM RESET default_transaction_read_only"
	if on {
		q = "ALTER SYSTEM SET default_transaction_read_only = on"
	}
	if _, err := c.Exec(ctx, q); err != nil {
		t.Error(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Error(err)
	}
	// The reload reaches the other sessions at their next command.
	time.Sleep(200 * time.Millisecond)
}

// multiHost is a URL naming database app on every server, in order.
func multiHost(servers ...*pgtemp.Server) string {
	var hosts []string
	for _, s := range servers {
		hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", s.Port()))
	}
	return "postgres://postgres@" + strings.Join(hosts, ",") + "/app_1?sslmode=disable"
}

func sleepyBatch(n int) Batch {
	var txns []Transaction
	for i := 1; i <= n; i++ {
		txns = append(txns, counted(i, Statement{Query: "SELECT pg_sleep(0.05)"}))
	}
	return Batch{Transactions: txns}
}

// TestServerTurnedReadOnlyIsLeftAndBatchGoesOn: mid-batch the server turns
// read-only under the executor's sessions (a demoted primary), and back a
// second later (the primary again). The sessions that met 25006 are
// dropped, no write is tried on a read-only server, and the batch settles
// its slot by lookup and goes on, every slot once.
func TestServerTurnedReadOnlyIsLeftAndBatchGoesOn(t *testing.T) {
	s := startServer(t)
	e, pool := newExecutor(t, multiHost(s), "fe1", Config{SettleTimeout: time.Minute})
	const n = 12
	var lines int
	back := make(chan struct{})
	start := time.Now()
	defer func() { t.Logf("run took %s", time.Since(start)) }()
	sum, err := e.Run(context.Background(), open(t, e, "readonly", n), sleepyBatch(n), func([]byte) error {
		lines++
		if lines == 4 {
			setReadOnly(t, s, true)
			go func() { defer close(back); time.Sleep(time.Second); setReadOnly(t, s, false) }()
		}
		return nil
	})
	<-back
	if err != nil || sum.Committed != n {
		t.Fatalf("sum %+v err %v", sum, err)
	}
	for i, runs := range runsPerSlot(t, pool) {
		if runs != 1 {
			t.Errorf("slot %d committed %d times", i, runs)
		}
	}
}

// TestFailoverThatLostReportedOutcomesIsDetected: the executor writes to
// server A, with B (read-only, a standby that never received A's commits)
// second in a multi-host URL. Mid-batch A turns read-only and B writable:
// a failover to a standby that lagged. The executor finds the new primary
// by itself, sees that the outcomes it already reported are not there,
// and stops with a *LostReportsError instead of running the batch again
// from where it was; the batch is marked done on B, so that a retry with
// its key stops the same way and runs nothing.
func TestFailoverThatLostReportedOutcomesIsDetected(t *testing.T) {
	a, b := startServer(t), startServer(t)
	setReadOnly(t, b, true)
	url := multiHost(a, b)
	e, _ := newExecutor(t, url, "fe1", Config{SettleTimeout: time.Minute})
	const n = 12
	var lines int
	l := open(t, e, "lost", n)
	_, err := e.Run(context.Background(), l, sleepyBatch(n), func([]byte) error {
		lines++
		if lines == 4 {
			setReadOnly(t, b, false)
			setReadOnly(t, a, true)
		}
		return nil
	})
	var lost *LostReportsError
	if !errors.As(err, &lost) || !errors.Is(err, ErrReportsLost) {
		t.Fatalf("Run: %v, want a *LostReportsError", err)
	}
	t.Logf("Run stopped after %d lines: %v", lines, err)
	if lost.BatchID != l.BatchID || lost.Reported < 4 || lost.Recorded != 0 || !lost.BatchMissing {
		t.Errorf("lost %+v, want batch %s, at least 4 reported, none recorded, the batch missing", lost, l.BatchID)
	}
	onB, err := pgx.Connect(context.Background(), b.URL("app_1"))
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close(context.Background())
	var runs int
	var state string
	if err := onB.QueryRow(context.Background(), "SELECT count(*) FROM runs").Scan(&runs); err != nil {
		t.Fatal(err)
	}
	if err := onB.QueryRow(context.Background(), "SELECT state FROM hafe.batches WHERE batch_id = $1", l.BatchID).Scan(&state); err != nil {
		t.Fatalf("the lost batch is not recorded on the new primary: %v", err)
	}
	if runs != 0 || state != backendext.BatchDone {
		t.Errorf("on the new primary: %d runs, batch %s; want none, done", runs, state)
	}

	// A retry with the key, on a fresh executor (another front-end).
	e2, _ := newExecutor(t, url, "fe2", Config{})
	l2 := open(t, e2, "lost", n)
	_, err = e2.Run(context.Background(), l2, sleepyBatch(n), (&stream{}).emit)
	if !errors.As(err, &lost) || l2.BatchID != l.BatchID {
		t.Fatalf("retry: batch %s, %v; want batch %s, a *LostReportsError", l2.BatchID, err, l.BatchID)
	}
	if err := onB.QueryRow(context.Background(), "SELECT count(*) FROM runs").Scan(&runs); err != nil || runs != 0 {
		t.Errorf("after the retry: %d runs (%v), want none", runs, err)
	}
}

func testLog(t *testing.T) *slog.Logger {
	if os.Getenv("HAFE_TEST_LOGS") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestBatchGoesOnOnPromotedSynchronousStandby: a real primary with a
// synchronous streaming standby, both in the multi-host URL. Mid-batch the
// primary crashes and the standby is promoted: the executor finds the new
// primary, sees that every reported outcome is there (synchronous
// replication kept them), settles the slot it was at by lookup and
// finishes the batch, every slot committed once.
func TestBatchGoesOnOnPromotedSynchronousStandby(t *testing.T) {
	primary := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	standby, err := pgtemp.StartStandby(ctx, primary, "s1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Stop() })
	c, err := pgx.Connect(ctx, primary.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"ALTER SYSTEM SET synchronous_standby_names = 's1'", "SELECT pg_reload_conf()"} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	c.Close(ctx)
	e, _ := newExecutor(t, multiHost(primary, standby), "fe1", Config{SettleTimeout: time.Minute})
	const n = 12
	var lines int
	promoted := make(chan error, 1)
	var stall time.Duration
	var killedAt time.Time
	sum, err := e.Run(ctx, open(t, e, "promoted", n), sleepyBatch(n), func([]byte) error {
		lines++
		switch lines {
		case 4:
			killedAt = time.Now()
			primary.Crash()
			go func() { promoted <- standby.Promote(ctx) }()
		case 5:
			stall = time.Since(killedAt)
		}
		return nil
	})
	if err := <-promoted; err != nil {
		t.Fatal(err)
	}
	if err != nil || sum.Committed != n {
		t.Fatalf("sum %+v err %v", sum, err)
	}
	t.Logf("the next line came %s after the primary crashed", stall.Round(time.Millisecond))
	check, err := pgx.Connect(ctx, standby.URL("app_1"))
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(ctx)
	rows, err := check.Query(ctx, "SELECT slot, count(*) FROM runs GROUP BY slot ORDER BY slot")
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]int{}
	for rows.Next() {
		var slot, k int
		rows.Scan(&slot, &k)
		got[slot] = k
	}
	for i := 1; i <= n; i++ {
		if got[i] != 1 {
			t.Errorf("slot %d committed %d times on the new primary", i, got[i])
		}
	}
}
