package test

import (
	"context"
	"testing"
	"time"
)

// TestFailoverDrainedFrontEnd: fe1 gets SIGTERM a third into a batch and,
// with --drain-timeout 1s, interrupts the batch rather than finish it, then
// leaves the cluster. The client's retry on fe2 resumes the batch.
func TestFailoverDrainedFrontEnd(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			c := startFailoverCluster(t, 2, sp.at, "--drain-timeout", "1s")
			fe1, fe2 := c.fes[0], c.fes[1]
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			const key = "failover-drain"

			first := mustStartBatch(ctx, t, fe1, key, c.body)
			if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
				t.Fatalf("fe1 stream before SIGTERM: %v", err)
			}
			c.waitSlowSlot(ctx, t, "fe1")
			if err := fe1.Signal(ctx, "TERM"); err != nil {
				t.Fatal(err)
			}
			if err := first.waitEnd(ctx, 30*time.Second); err != nil {
				t.Fatalf("fe1's stream did not end after SIGTERM and a 1s drain: %v", err)
			}
			requireCutOff(t, "fe1", first)
			t.Logf("fe1's stream ends with %q", lastLine(first.bytes()))

			retries := submitUntilDone(ctx, t, fe2, key, c.body)
			batchID := sameBatch(t, first, retries)
			c.check(ctx, t, batchID, append([][]byte{first.bytes()}, streamBytes(retries)...))
			t.Logf("slot %d: %s", failoverSlowSlot, c.slotOwner(ctx, t, batchID, failoverSlowSlot))
			for _, l := range logLines(ctx, fe1, "drain", "interrupted", "stopped", "leave") {
				t.Logf("fe1: %s", l)
			}
		})
	}
}

// TestFailoverClientHangsUp: the client goes away a third into a batch (its
// connection to fe1 closes; fe1 is fine) and retries with the same key at
// once, on fe2 and then on fe1 itself. fe1 stops the batch and gives its
// lease back; the retry resumes it.
func TestFailoverClientHangsUp(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			c := startFailoverCluster(t, 2, sp.at)
			fe1, fe2 := c.fes[0], c.fes[1]
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			const key = "failover-hang-up"

			first := mustStartBatch(ctx, t, fe1, key, c.body)
			if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
				t.Fatalf("fe1 stream before hanging up: %v", err)
			}
			c.waitSlowSlot(ctx, t, "fe1")
			first.close()
			requireCutOff(t, "fe1", first)

			second, err := startBatchRetrying(ctx, t, fe2, key, c.body, 60)
			if err != nil {
				t.Fatal(err)
			}
			if err := second.waitLines(ctx, 2*failoverFaultAfter); err != nil {
				t.Fatalf("fe2 stream before hanging up: %v", err)
			}
			second.close()
			requireCutOff(t, "fe2", second)

			rest := submitUntilDone(ctx, t, fe1, key, c.body)
			batchID := sameBatch(t, first, append(rest, second))
			streams := append([][]byte{first.bytes(), second.bytes()}, streamBytes(rest)...)
			c.check(ctx, t, batchID, streams)
		})
	}
}
