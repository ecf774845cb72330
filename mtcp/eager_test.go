package mtcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// crash stops a server the hard way: no CLOSE frames, no hand-over, no
// store cleanup; its transport connections just vanish.
func (l *Listener) crash() {
	l.mu.Lock()
	conns := l.connList()
	l.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		if p := c.path; p != nil {
			p.close()
			c.path = nil
		}
		c.setStateLocked(stateFailed, errors.New("server crashed"))
		c.mu.Unlock()
	}
	_ = l.Close()
}

func TestRandomEagerMigrationsKeepStreamsExact(t *testing.T) {
	for _, tt := range []struct {
		snapP float64
		lazy  bool // peers may transfer lazily; else every move is from the store
	}{{0, true}, {0.3, true}, {0.05, false}, {0.5, false}} {
		t.Run(fmt.Sprintf("snapshot-probability-%v-lazy-%v", tt.snapP, tt.lazy), func(t *testing.T) {
			checkLeaks(t)
			store := NewMemStore()
			testRandomMigrations(t, store, tt.snapP, func(cfg *ListenConfig) {
				if !tt.lazy {
					cfg.ClusterKey = nil
				}
			})
			// Connections end when the client answers the server's CLOSE.
			waitFor(t, func() bool { return store.Len() == 0 })
		})
	}
}

// TestOriginCrashUnderEagerMode: two of three servers crash mid-stream; the
// clients recover through the snapshot store and both applications still
// read exactly the bytes of an unmigrated run.
//
// With RecordState for most snapshots (saved only with the next
// ExportState), a crash resumes from an older saved snapshot and replays
// more input; the streams are exact all the same.
func TestOriginCrashUnderEagerMode(t *testing.T) {
	recordMost := func(c *Conn, state []byte) error {
		if rand.IntN(4) == 0 {
			return c.ExportState(state)
		}
		return c.RecordState(state)
	}
	for _, tt := range []struct {
		snapP  float64
		name   string
		export func(*Conn, []byte) error
	}{{0.05, "ExportState", nil}, {0.5, "ExportState", nil}, {0.5, "RecordState", recordMost}} {
		snapP := tt.snapP
		t.Run(fmt.Sprintf("snapshot-probability-%v-%s", snapP, tt.name), func(t *testing.T) {
			checkLeaks(t)
			var eager atomic.Int64
			tc := newCluster(t, 3, NewMemStore(), func(cfg *ListenConfig) {
				cfg.PeerTimeout = 500 * time.Millisecond
				cfg.OnMigration = func(s MigrationStats) {
					if s.Role == RoleNewServer && s.Mode == ModeEager && s.Err == nil {
						eager.Add(1)
					}
				}
			})
			tc.export = tt.export
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
			started := make(chan struct{}, 6)
			for k := 0; k < 6; k++ {
				cwg.Add(1)
				go func() {
					defer cwg.Done()
					seed := uint64(300 + k)
					rng := rand.New(rand.NewPCG(seed, 3))
					c, err := testDialer(tc).DialMTCP(ctx, tc.addrs[k%2]) // on the servers that crash
					if err != nil {
						t.Error(err)
						return
					}
					defer c.Close()
					started <- struct{}{}
					err = clientRun(ctx, c, seed, 300_000+rng.IntN(300_000), func(i int) error {
						sleepRand(rng, 30*time.Millisecond)
						return c.Migrate(ctx, tc.addrs[rng.IntN(3)])
					})
					if err != nil {
						t.Errorf("conn %d: %v", k, err)
					}
				}()
			}
			for range 6 {
				<-started
			}
			time.Sleep(20 * time.Millisecond)
			tc.lns[0].crash()
			time.Sleep(20 * time.Millisecond)
			tc.lns[1].crash()
			cwg.Wait()
			t.Logf("eager take-overs: %d", eager.Load())
		})
	}
}

// TestSnapshotsSavedByTheApplication: the application writes each snapshot
// itself (as the batch executor does, inside its own database
// transaction) with PrepareSnapshot and SnapshotSaved; eager migrations
// work as with ExportState.
func TestSnapshotsSavedByTheApplication(t *testing.T) {
	checkLeaks(t)
	store := NewMemStore()
	export := func(c *Conn, state []byte) error {
		for {
			rec, err := c.PrepareSnapshot(state)
			if err != nil || rec == nil {
				return err
			}
			err = c.SnapshotSaved(rec, store.Save(context.Background(), rec))
			if !errors.Is(err, ErrSnapshotSuperseded) {
				return err // a real application redoes its transaction
			}
		}
	}
	testRandomMigrations(t, store, 0.3, func(cfg *ListenConfig) { cfg.ClusterKey = nil }, export)
	waitFor(t, func() bool { return store.Len() == 0 })
}

// TestOwnReattachSupersedesAPreparedSnapshot: the application prepared a
// snapshot, and before it saved it the client reattached to the same
// server, which stores the new counter with the last saved snapshot (not
// the prepared one, whose transaction may still fail). The application's
// save is then refused as stale: SnapshotSaved says so with
// ErrSnapshotSuperseded, the connection lives on, and the snapshot saves
// once prepared again.
func TestOwnReattachSupersedesAPreparedSnapshot(t *testing.T) {
	checkLeaks(t)
	ctx := context.Background()
	store := NewMemStore()
	tc := newCluster(t, 1, store, nil)
	c, err := testDialer(tc).DialMTCP(ctx, tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := tc.lns[0].AcceptMTCP()
	if err != nil {
		t.Fatal(err)
	}
	rec, err := sc.PrepareSnapshot([]byte("state"))
	if err != nil || rec == nil {
		t.Fatalf("prepare: %v %v", rec, err)
	}
	if err := c.Migrate(ctx, tc.addrs[0]); err != nil {
		t.Fatal(err)
	}
	if got, err := store.Load(ctx, c.ID()); err != nil || got.Seq >= rec.Seq || got.Counter <= rec.Counter {
		t.Fatalf("after the reattach the store holds %+v (%v); want the new counter with the last saved snapshot", got, err)
	}
	err = store.Save(ctx, rec)
	if !errors.Is(err, ErrStale) {
		t.Fatalf("save after the reattach: %v, want ErrStale", err)
	}
	if err := sc.SnapshotSaved(rec, err); !errors.Is(err, ErrSnapshotSuperseded) {
		t.Fatalf("SnapshotSaved: %v, want ErrSnapshotSuperseded", err)
	}
	rec, err = sc.PrepareSnapshot([]byte("state"))
	if err != nil || rec == nil {
		t.Fatalf("prepare again: %v %v", rec, err)
	}
	if err := sc.SnapshotSaved(rec, store.Save(ctx, rec)); err != nil {
		t.Fatalf("save again: %v", err)
	}
	if _, err := sc.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 10)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "still here" {
		t.Fatalf("read %q, %v", b, err)
	}
	_ = sc.Close()
	_ = c.Close()
	waitFor(t, func() bool { return store.Len() == 0 })
}

// TestEagerInputBeyondTheSendWindowBeforeASnapshot: in eager mode the
// server may not let the client discard input before its next snapshot,
// yet the client sends far more than its SendWindow before the server's
// application snapshots: RECEIVED frames move the window while the input
// stays retained until the snapshot is saved.
func TestEagerInputBeyondTheSendWindowBeforeASnapshot(t *testing.T) {
	checkLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := NewMemStore()
	tc := newCluster(t, 1, store, nil)
	const total = 3 << 20
	d := testDialer(tc)
	d.Limits = Limits{SendWindow: 256 << 10, MaxSendBuffer: 4 << 20}
	c, err := d.DialMTCP(ctx, tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := tc.lns[0].AcceptMTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, total))
		wrote <- err
	}()
	if _, err := io.ReadFull(sc, make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { // the last RECEIVED may be a delayed one
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.out.heard == total
	})
	c.mu.Lock()
	retained := c.out.unacked()
	c.mu.Unlock()
	if retained != total {
		t.Fatalf("before the snapshot the client retains %d bytes, want all %d", retained, total)
	}
	if err := sc.ExportState([]byte("read it all")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.out.unacked() == 0
	})
}
