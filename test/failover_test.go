package test

import (
	"context"
	"testing"
	"time"

	"hafe.dev/hafe/test/harness"
)

// TestFailoverKilledFrontEnd: fe1 is killed (docker kill) a third into a
// batch; the client retries with the same Idempotency-Key on fe2, which
// resumes the batch. Every slot commits at most once, everything fe1
// reported is durable, and the two streams agree byte for byte.
func TestFailoverKilledFrontEnd(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			c := startFailoverCluster(t, 2, sp.at)
			fe1, fe2 := c.fes[0], c.fes[1]
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			const key = "failover-kill"

			first := c.killMidBatch(ctx, t, fe1, key, c.body)

			retries := submitUntilDone(ctx, t, fe2, key, c.body)
			streams := append([][]byte{first.bytes()}, streamBytes(retries)...)
			batchID := sameBatch(t, first, retries)
			c.check(ctx, t, batchID, streams)
			t.Logf("slot %d: %s", failoverSlowSlot, c.slotOwner(ctx, t, batchID, failoverSlowSlot))
		})
	}
}

// TestFailoverCutOffFrontEndIsFenced: fe1 is cut off the Docker network a
// third into a batch, so its database session stalls inside the slow
// slot's transaction: in a statement, or in COMMIT with its outcome written
// (then the claim waits for it and fences it after --fence-grace). The retry
// on fe2 takes the batch over and finishes it. When fe1 comes back it must
// not commit anything more for the batch (G4), and a replay of the finished
// batch from fe1 carries the same bytes.
func TestFailoverCutOffFrontEndIsFenced(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			testStuckFrontEndIsFenced(t, sp.at, "cut off", (*harness.Hafe).Disconnect, (*harness.Hafe).Reconnect)
		})
	}
}

// TestFailoverPausedFrontEndIsFenced: as the cut-off test, but fe1 is
// frozen (docker pause) instead: its connections stay up and nothing
// answers, like a stuck machine or a long GC pause.
func TestFailoverPausedFrontEndIsFenced(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			testStuckFrontEndIsFenced(t, sp.at, "paused", (*harness.Hafe).Pause, (*harness.Hafe).Unpause)
		})
	}
}

// testStuckFrontEndIsFenced stops fe1 with stop a third into the batch,
// finishes the batch on fe2, then lets fe1 go on with resume and checks it
// changes nothing.
func testStuckFrontEndIsFenced(t *testing.T, slow slowPoint, how string, stop, resume func(*harness.Hafe, context.Context) error) {
	c := startFailoverCluster(t, 2, slow)
	fe1, fe2 := c.fes[0], c.fes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const key = "failover-stuck"

	first := mustStartBatch(ctx, t, fe1, key, c.body)
	if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
		t.Fatalf("fe1 stream before it was %s: %v", how, err)
	}
	c.waitSlowSlot(ctx, t, "fe1")
	if err := stop(fe1, ctx); err != nil {
		t.Fatal(err)
	}
	stoppedAt := first.lineCount()

	retries := submitUntilDone(ctx, t, fe2, key, c.body)
	batchID := sameBatch(t, first, retries)
	// fe1's stream is still open and stalled: whatever it delivered so far
	// must fit.
	c.check(ctx, t, batchID, append([][]byte{first.bytes()}, streamBytes(retries)...))
	before := c.rows(ctx, t, batchID)
	for _, l := range logLines(ctx, fe2, "taken over", "terminated previous owner") {
		t.Logf("fe2: %s", l)
	}
	t.Logf("fe1 delivered %d lines (%d when %s); fe2 finished the batch; fe1 wrote %d outcomes, fe2 %d; slot %d: %s",
		first.lineCount(), stoppedAt, how, before.byOwner["fe1"], before.byOwner["fe2"],
		failoverSlowSlot, c.slotOwner(ctx, t, batchID, failoverSlowSlot))

	if err := resume(fe1, ctx); err != nil {
		t.Fatal(err)
	}
	// fe1 finds out it was fenced once its dead session answers again; give
	// it a bounded while, then hang up on it, which cancels its request
	// either way.
	if err := first.waitEnd(ctx, 45*time.Second); err != nil {
		t.Logf("fe1's stream still open %s after it was back (%v); closing it", 45*time.Second, err)
		first.close()
	}
	t.Logf("fe1's first stream ended after %d lines: %q", first.lineCount(), lastLine(first.bytes()))
	if hasDone(first.bytes()) {
		t.Errorf("fe1 reported the batch done after it was fenced")
	}

	// fe1 is back with a fresh heartbeat: asking it for the batch again
	// replays the finished batch from the database.
	replay := submitUntilDone(ctx, t, fe1, key, c.body)
	after := c.rows(ctx, t, batchID)
	if !after.equal(before) {
		t.Errorf("G4: the batch's rows changed after fe1 came back:\nbefore %s\nafter  %s", before, after)
	}
	streams := append([][]byte{first.bytes()}, streamBytes(retries)...)
	streams = append(streams, streamBytes(replay)...)
	c.check(ctx, t, batchID, streams)
	c.dumpLogs(ctx, t)
}

// TestFailoverPostgresRestart: PostgreSQL restarts a third into a batch run
// by a single front-end, killed (crash recovery) or stopped (fast
// shutdown), while the slow slot is in a statement or in its COMMIT. The
// front-end settles the slot by looking up its outcome and goes on, or the
// client retries with the same key; either way each slot commits once and
// the streams agree.
func TestFailoverPostgresRestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace time.Duration
	}{
		{"killed", 0},
		{"stopped", 10 * time.Second},
	} {
		for _, sp := range slowPoints {
			t.Run(tc.name+"_"+sp.name, func(t *testing.T) {
				c := startFailoverCluster(t, 1, sp.at)
				fe := c.fes[0]
				ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
				defer cancel()
				key := "failover-pg-" + tc.name

				first := mustStartBatch(ctx, t, fe, key, c.body)
				if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
					t.Fatalf("stream before the restart: %v", err)
				}
				c.waitSlowSlot(ctx, t, "fe1")
				started := c.postmasterStart(ctx, t)
				start := time.Now()
				if err := c.pg.Restart(ctx, tc.grace); err != nil {
					t.Fatal(err)
				}
				t.Logf("postgres back after %s", time.Since(start).Round(time.Millisecond))
				if again := c.postmasterStart(ctx, t); !again.After(started) {
					t.Fatalf("postgres did not restart: started at %s, then at %s", started, again)
				}
				if err := first.waitEnd(ctx, 90*time.Second); err != nil {
					t.Fatalf("the stream neither finished nor ended after the restart: %v", err)
				}
				streams := [][]byte{first.bytes()}
				batchID := first.batchID
				if !hasDone(first.bytes()) {
					t.Logf("the front-end interrupted the batch (%q); retrying with the key", lastLine(first.bytes()))
					retries := submitUntilDone(ctx, t, fe, key, c.body)
					batchID = sameBatch(t, first, retries)
					streams = append(streams, streamBytes(retries)...)
				}
				c.check(ctx, t, batchID, streams)
				t.Logf("slot %d: %s", failoverSlowSlot, c.slotOwner(ctx, t, batchID, failoverSlowSlot))
				for _, l := range logLines(ctx, fe, "lost the database", "interrupted") {
					t.Logf("fe1: %s", l)
				}
			})
		}
	}
}
