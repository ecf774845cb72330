package mtcp

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestUnmigratedRunMatches(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, nil)
	wg := tc.runXformServers(0.3)
	defer wg.Wait()
	defer tc.lns[0].Close()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := clientRun(context.Background(), c, 1, 300_000, nil); err != nil {
		t.Fatal(err)
	}
}

// TestRandomLazyMigrationsKeepStreamsExact: random streams both ways,
// random snapshot points, many migrations per connection between three
// servers; both applications read exactly the bytes of an unmigrated run.
func TestRandomLazyMigrationsKeepStreamsExact(t *testing.T) {
	for _, snapP := range []float64{0, 0.2, 1} {
		t.Run(fmt.Sprintf("snapshot-probability-%v", snapP), func(t *testing.T) {
			checkLeaks(t)
			testRandomMigrations(t, nil, snapP, nil)
		})
	}
}

func testRandomMigrations(t *testing.T, store SnapshotStore, snapP float64, mod func(*ListenConfig), export ...func(*Conn, []byte) error) {
	var modes [3]atomic.Int64 // lazy, eager, local take-overs
	tc := newCluster(t, 3, store, func(cfg *ListenConfig) {
		if mod != nil {
			mod(cfg)
		}
		cfg.OnMigration = func(s MigrationStats) {
			if s.Err == nil && s.Role == RoleNewServer {
				modes[s.Mode].Add(1)
			}
		}
	})
	if len(export) > 0 {
		tc.export = export[0]
	}
	wg := tc.runXformServers(snapP)
	defer wg.Wait()
	defer func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var cwg sync.WaitGroup
	var migrations atomic.Int64
	for k := 0; k < 4; k++ {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			seed := uint64(100 + k)
			rng := rand.New(rand.NewPCG(seed, 2))
			c, err := testDialer(tc).DialMTCP(ctx, tc.addrs[k%3])
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			err = clientRun(ctx, c, seed, 200_000+rng.IntN(400_000), func(i int) error {
				sleepRand(rng, time.Millisecond)
				err := c.Migrate(ctx, tc.addrs[rng.IntN(3)])
				if err == nil {
					migrations.Add(1)
				} else if i < 5 {
					c.mu.Lock()
					t.Logf("conn %d migrate %d: %v; client in [%d,%d) out [%d,%d) state %v", k, i, err, c.in.base, c.in.end(), c.out.base, c.out.end(), c.state)
					c.mu.Unlock()
				}
				return err
			})
			if err != nil {
				t.Errorf("conn %d: %v", k, err)
			}
		}()
	}
	cwg.Wait()
	t.Logf("%d migrations; server take-overs: lazy %d, eager %d, local %d", migrations.Load(), modes[0].Load(), modes[1].Load(), modes[2].Load())
}
