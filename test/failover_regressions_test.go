package test

import (
	"context"
	"testing"
	"time"
)

// The tests in this file pin bugs found in hafe, now fixed.

// TestFrontEndRestartedUnderItsName: fe1 is killed mid-batch and
// comes straight back under the same name (a supervisor restarting a
// crashed process), heartbeating again but knowing nothing of the batch.
// The batch runs nowhere, so the client's retry on fe2 must be able to take
// it over once fe1's old process is gone.
//
// It was a bug: hafe decided "the owner is alive" from the member row's
// heartbeat alone, and a restarted fe1 refreshes that row, so fe2 answered
// 409 for as long as fe1 lived. Now a batch records its owner's run
// (incarnation) and only that run's heartbeats count.
func TestFrontEndRestartedUnderItsName(t *testing.T) {
	c := startFailoverCluster(t, 2, slowStatement)
	fe1, fe2 := c.fes[0], c.fes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const key = "failover-restarted"
	body := c.body

	first := c.killMidBatch(ctx, t, fe1, key, body)
	if err := fe1.Start(ctx); err != nil {
		t.Fatalf("start fe1 again: %v", err)
	}

	// 40 tries over 20s: twenty times --owner-liveness.
	second, err := startBatchRetrying(ctx, t, fe2, key, body, 40)
	if err != nil {
		rows := c.rows(ctx, t, first.batchID)
		t.Fatalf("retry on fe2 while a restarted fe1 heartbeats: %v (batch: %s, owner %q)", err, rows, c.owner(ctx, t, first.batchID))
	}
	if err := second.waitEnd(ctx, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	batchID := sameBatch(t, first, []*capture{second})
	c.check(ctx, t, batchID, [][]byte{first.bytes(), second.bytes()})
	c.dumpLogs(ctx, t)
}

// TestHangUpDuringLongStatement: the client hangs up on fe1 while
// a slot runs a statement longer than the 5s fe1 gives itself to release
// the batch's lease. fe1's request is cancelled, but pgx only drops its end
// of the connection (DeadlineContextWatcherHandler, no cancel request): the
// server goes on with the statement and keeps the batch row locked, so
// fe1's ReleaseBatch times out and the batch stays owned by fe1. fe1 is
// alive and heartbeating, so every other front-end answered 409 for good.
// Fixed: a slot no longer locks the batch row while its statements run
// (the lease check is the outcome insert, at the end), so the release
// goes through.
func TestHangUpDuringLongStatement(t *testing.T) {
	c := startFailoverCluster(t, 2, slowLongStatement)
	fe1, fe2 := c.fes[0], c.fes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const key = "hang-up-long"

	first := mustStartBatch(ctx, t, fe1, key, c.body)
	if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
		t.Fatalf("fe1 stream before hanging up: %v", err)
	}
	c.waitSlowSlot(ctx, t, "fe1")
	first.close()
	requireCutOff(t, "fe1", first)
	// 60 tries over 30s: three times the statement, thirty times
	// --owner-liveness.
	second, err := startBatchRetrying(ctx, t, fe2, key, c.body, 60)
	if err != nil {
		for _, l := range logLines(ctx, fe1, "release", "interrupted") {
			t.Logf("fe1: %s", l)
		}
		t.Fatalf("retry on fe2 after hanging up on fe1: %v (batch owner %q)", err, c.owner(ctx, t, first.batchID))
	}
	if err := second.waitEnd(ctx, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	batchID := sameBatch(t, first, []*capture{second})
	c.check(ctx, t, batchID, [][]byte{first.bytes(), second.bytes()})
	c.dumpLogs(ctx, t)
}
