package test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestFailoverKilledFrontEndWithConcurrentBatches: fe1 runs four batches at
// once over the same accounts (so they contend for rows and now and then
// deadlock, which hafe retries) and is killed a third into them; the
// clients retry all four on fe2 at once. Each batch passes the checker and
// the money adds up across all of them.
func TestFailoverKilledFrontEndWithConcurrentBatches(t *testing.T) {
	const batches = 4
	c := startFailoverCluster(t, 2, slowStatement)
	fe1, fe2 := c.fes[0], c.fes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	keys := make([]string, batches)
	bodies := make([][]byte, batches)
	firsts := make([]*capture, batches)
	for i := range batches {
		keys[i] = fmt.Sprintf("concurrent-%d", i+1)
		bodies[i] = failoverBatch(failoverSlots, slowStatement, keys[i])
		firsts[i] = mustStartBatch(ctx, t, fe1, keys[i], bodies[i])
	}
	if err := firsts[0].waitLines(ctx, failoverFaultAfter); err != nil {
		t.Fatalf("fe1 stream before the kill: %v", err)
	}
	c.waitSlowSlot(ctx, t, "fe1")
	if err := fe1.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	for i, f := range firsts {
		if err := f.waitEnd(ctx, 30*time.Second); err != nil {
			t.Fatalf("fe1's stream of %s did not end after the kill: %v", keys[i], err)
		}
		requireCutOff(t, keys[i], f)
	}

	// All four retries at once.
	seconds := make([]*capture, batches)
	errs := make([]error, batches)
	var wg sync.WaitGroup
	for i := range batches {
		wg.Go(func() {
			seconds[i], errs[i] = startBatchRetrying(ctx, t, fe2, keys[i], bodies[i], 60)
			if errs[i] == nil {
				errs[i] = seconds[i].waitEnd(ctx, 90*time.Second)
			}
		})
	}
	wg.Wait()
	var checked []checkedBatch
	for i := range batches {
		if errs[i] != nil {
			t.Fatalf("retry of %s on fe2: %v", keys[i], errs[i])
		}
		streams := []*capture{seconds[i]}
		if !hasDone(seconds[i].bytes()) {
			t.Logf("fe2's stream of %s ended without the done line: %q", keys[i], lastLine(seconds[i].bytes()))
			streams = append(streams, submitUntilDone(ctx, t, fe2, keys[i], bodies[i])...)
		}
		id := sameBatch(t, firsts[i], streams)
		checked = append(checked, checkedBatch{id: id, tag: keys[i], streams: append([][]byte{firsts[i].bytes()}, streamBytes(streams)...)})
	}
	c.checkBatches(ctx, t, checked...)
	for _, l := range logLines(ctx, fe2, "deadlock", "40P01", "retry") {
		t.Logf("fe2: %s", l)
	}
}
