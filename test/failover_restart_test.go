package test

import (
	"context"
	"testing"
	"time"
)

// TestFailoverChainOfKills: fe1 is killed a third into the batch, the retry
// on fe2 takes it over and fe2 is killed a third further on; fe1 comes back
// (same name, new process) and the client finishes there. Three streams,
// two takeovers, one set of rows.
func TestFailoverChainOfKills(t *testing.T) {
	c := startFailoverCluster(t, 2, slowStatement)
	fe1, fe2 := c.fes[0], c.fes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const key = "failover-chain"
	body := c.body

	first := c.killMidBatch(ctx, t, fe1, key, body)

	second, err := startBatchRetrying(ctx, t, fe2, key, body, 60)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.waitLines(ctx, 2*failoverFaultAfter); err != nil {
		t.Fatalf("fe2 stream before the kill: %v", err)
	}
	if err := fe2.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := second.waitEnd(ctx, 30*time.Second); err != nil {
		t.Fatalf("fe2's stream did not end after the kill: %v", err)
	}
	requireCutOff(t, "fe2", second)

	if err := fe1.Start(ctx); err != nil {
		t.Fatalf("start fe1 again: %v", err)
	}
	rest := submitUntilDone(ctx, t, fe1, key, body)
	batchID := sameBatch(t, first, append(rest, second))
	streams := append([][]byte{first.bytes(), second.bytes()}, streamBytes(rest)...)
	c.check(ctx, t, batchID, streams)
}
