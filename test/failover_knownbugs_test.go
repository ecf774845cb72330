package test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// The tests in this file show bugs found in hafe and not fixed yet. They
// skip unless HAFE_KNOWN_BUGS is set, so that `make test` stays green; run
// them with
//
//	HAFE_KNOWN_BUGS=1 go test -count=1 -run KnownBug ./test/ -v
//
// and drop the skip with the fix (see failover_regressions_test.go).
func knownBug(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("HAFE_KNOWN_BUGS") == "" {
		t.Skipf("known bug: %s (set HAFE_KNOWN_BUGS=1 to run)", what)
	}
}

// TestKnownBugStuckSlotTransactionIsNotFenced: fe1 is cut off the network
// while slot 21's statements run, so its session ends up idle in the slot's
// transaction, holding the rows the statements updated (accounts, runs).
// The retry on fe2 takes the batch over at once — since the lease check
// moved into the outcome insert (5cfe34e), a slot transaction share-locks
// the batch row only once it writes its outcome, so the claim does not
// wait for this one and nobody fences it. fe2 then runs slot 21 itself and
// blocks on those rows until PostgreSQL's idle_in_transaction_session_timeout
// ends fe1's session: 30s by default, here 10 minutes. DESIGN G4 says the
// old owner's session is terminated after the grace period (1s here).
func TestKnownBugStuckSlotTransactionIsNotFenced(t *testing.T) {
	knownBug(t, "a cut-off owner's slot transaction that has not written its outcome is never fenced; the new owner waits for idle_in_transaction_session_timeout")
	c := startFailoverCluster(t, 2, slowStatement, "--idle-in-transaction-timeout", "10m")
	fe1, fe2 := c.fes[0], c.fes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const key = "stuck-slot"

	first := mustStartBatch(ctx, t, fe1, key, c.body)
	if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
		t.Fatalf("fe1 stream before the cut: %v", err)
	}
	c.waitSlowSlot(ctx, t, "fe1")
	if err := fe1.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}

	second, err := startBatchRetrying(ctx, t, fe2, key, c.body, 60)
	if err != nil {
		t.Fatal(err)
	}
	// 60s: sixty times --fence-grace.
	if err := second.waitEnd(ctx, 60*time.Second); err != nil {
		t.Fatalf("fe2 has not finished the batch (%v; %d lines so far); who waits for whom:\n%s",
			err, second.lineCount(), c.lockWaits(ctx, t))
	}
	batchID := sameBatch(t, first, []*capture{second})
	c.check(ctx, t, batchID, [][]byte{first.bytes(), second.bytes()})
}

// lockWaits lists the hafe sessions that wait for a lock, with the sessions
// they wait for.
func (c *failoverCluster) lockWaits(ctx context.Context, t *testing.T) string {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	rows, err := db.Query(ctx, `SELECT a.application_name, a.state, a.query, now() - a.query_start,
			b.application_name, b.state, b.query, now() - b.state_change
		FROM pg_stat_activity a JOIN pg_stat_activity b ON b.pid = ANY (pg_blocking_pids(a.pid))
		WHERE a.application_name LIKE 'hafe/%'`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var out strings.Builder
	for rows.Next() {
		var app, state, query, bApp, bState, bQuery string
		var waited, bFor time.Duration
		if err := rows.Scan(&app, &state, &query, &waited, &bApp, &bState, &bQuery, &bFor); err != nil {
			return err.Error()
		}
		fmt.Fprintf(&out, "  %s (%s %q for %s) waits for %s (%s for %s, last %q)\n",
			app, state, query, waited.Round(time.Second), bApp, bState, bFor.Round(time.Second), bQuery)
	}
	if out.Len() == 0 {
		return "  nobody"
	}
	return out.String()
}
