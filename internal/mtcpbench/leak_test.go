package mtcpbench

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestBenchmarksLeaveNoGoroutines runs every benchmark with tiny
// parameters, the migration one also on the simulated network, and checks
// that each closes what it started.
func TestBenchmarksLeaveNoGoroutines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := runtime.NumGoroutine()
	if _, err := RunMigrate(ctx, MigrateConfig{Runs: 3, Sizes: []int{0}, Warmup: 1}); err != nil {
		t.Fatal(err)
	}
	sim, err := RunMigrate(ctx, MigrateConfig{Runs: 3, Sizes: []int{1 << 10}, Warmup: 1, Delay: 100 * time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sim.Table(), "simulated network") || sim.Lazy[0].Transferred < 1<<10 {
		t.Errorf("simulated run:\n%s", sim.Table())
	}
	if _, err := RunStream(ctx, StreamConfig{Total: 20 << 10, SlowAfter: 4 << 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := RunThroughput(ctx, ThroughputConfig{Bytes: 1 << 20, Rounds: 1}); err != nil {
		t.Fatal(err)
	}
	// Bounded, and generous: closed connections may linger while flushing.
	for i := 0; runtime.NumGoroutine() > before; i++ {
		if i == 200 {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
