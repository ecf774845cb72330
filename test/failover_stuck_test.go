package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestStuckSlotTransactionIsFenced: fe1 is cut off the network while slot
// 21's statements run, so its session ends up idle in the slot's
// transaction, holding the rows the statements updated (accounts, runs).
// The retry on fe2 takes the batch over; a slot transaction share-locks the
// batch row only once it writes its outcome, so the claim does not wait for
// this one. Without more, fe2 would run slot 21 itself and block on those
// rows until PostgreSQL's idle_in_transaction_session_timeout (here 10
// minutes) ended fe1's session; the takeover terminates the dead run's open
// transactions instead (G4 in docs/design.md).
func TestStuckSlotTransactionIsFenced(t *testing.T) {
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
