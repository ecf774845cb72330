package mtcp

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
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
	// Clients that never send PREPARE: every state is fetched.
	t.Run("fetch-only", func(t *testing.T) {
		checkLeaks(t)
		testRandomMigrationsWith(t, randomRun{snapP: 0.2, noPrepare: true})
	})
}

// randomRun configures testRandomMigrationsWith.
type randomRun struct {
	store     SnapshotStore
	snapP     float64
	mod       func(*ListenConfig)
	export    func(*Conn, []byte) error // nil: ExportState
	noPrepare bool                      // clients fetch only
}

func testRandomMigrations(t *testing.T, store SnapshotStore, snapP float64, mod func(*ListenConfig), export ...func(*Conn, []byte) error) {
	r := randomRun{store: store, snapP: snapP, mod: mod}
	if len(export) > 0 {
		r.export = export[0]
	}
	testRandomMigrationsWith(t, r)
}

func testRandomMigrationsWith(t *testing.T, r randomRun) {
	var modes [3]atomic.Int64 // lazy, eager, local take-overs
	var pushed atomic.Int64
	tc := newCluster(t, 3, r.store, func(cfg *ListenConfig) {
		if r.mod != nil {
			r.mod(cfg)
		}
		cfg.OnMigration = func(s MigrationStats) {
			if s.Err == nil && s.Role == RoleNewServer {
				modes[s.Mode].Add(1)
				if s.Pushed {
					pushed.Add(1)
				}
			}
		}
	})
	tc.export = r.export
	tc.noPrepare = r.noPrepare
	wg := tc.runXformServers(r.snapP)
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
	t.Logf("%d migrations; server take-overs: lazy %d (pushed %d), eager %d, local %d", migrations.Load(), modes[0].Load(), pushed.Load(), modes[1].Load(), modes[2].Load())
	if r.noPrepare && pushed.Load() > 0 {
		t.Errorf("%d states pushed to clients that sent no PREPARE", pushed.Load())
	}
	if !r.noPrepare && len(tc.lns[0].cfg.ClusterKey) > 0 && modes[0].Load() > 0 && pushed.Load() == 0 {
		t.Error("no lazy migration used a pushed state")
	}
}

// TestClientRecoversWhenTheNewServerDiesAfterTheFetch: a new server takes
// the state from the origin (which freezes the connection) and dies before
// it answers the client. The origin closes the frozen path soon after, the
// client recovers through another server, which fetches the state the
// origin kept, and the stream goes on.
func TestClientRecoversWhenTheNewServerDiesAfterTheFetch(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	fetched := make(chan error, 1)
	go func() {
		nc, err := dead.Accept()
		if err != nil {
			fetched <- err
			return
		}
		defer nc.Close()
		var hdr [wire.HeaderLen]byte
		_, payload, err := wire.ReadFrame(nc, &hdr, nil)
		if err != nil {
			fetched <- err
			return
		}
		m, err := wire.ParseMigrate(payload)
		if err != nil {
			fetched <- err
			return
		}
		cfg := ListenConfig{ClusterKey: testKey, PeerDial: func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		pc, br, err := peerHandshake(ctx, &cfg, m.Origin)
		if err != nil {
			fetched <- err
			return
		}
		defer pc.Close()
		typ, _, err := exchange(ctx, pc, br, wire.AppendFetch(nil, wire.Fetch{Req: 1, Migrate: m}), 5*time.Second)
		if err == nil && typ != wire.TypeTransfer {
			err = errUnexpected(typ)
		}
		fetched <- err // and never answer the client
	}()
	d := testDialer(tc)
	d.HandshakeTimeout = 500 * time.Millisecond
	d.NoPrepare = true // the fake new server fetches
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoCheck(t, c)
	if err := c.Migrate(context.Background(), dead.Addr().String()); err == nil {
		t.Fatal("migration to a server that never answers succeeded")
	}
	if err := <-fetched; err != nil {
		t.Fatalf("fake new server: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	echoCheck(t, c)
	if got := c.Server(); got != tc.addrs[1] {
		t.Fatalf("client on %s after recovering, want %s", got, tc.addrs[1])
	}
}
