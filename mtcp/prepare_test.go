package mtcp

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// statsLog collects the servers' migration reports.
type statsLog struct {
	mu sync.Mutex
	s  []MigrationStats
}

func (l *statsLog) add(s MigrationStats) {
	l.mu.Lock()
	l.s = append(l.s, s)
	l.mu.Unlock()
}

// find returns the first report of role r, waiting a little for it.
func (l *statsLog) find(t *testing.T, r Role) MigrationStats {
	t.Helper()
	for i := 0; i < 200; i++ {
		l.mu.Lock()
		for _, s := range l.s {
			if s.Role == r {
				l.mu.Unlock()
				return s
			}
		}
		l.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %s report", r)
	return MigrationStats{}
}

func (l *statsLog) reset() {
	l.mu.Lock()
	l.s = nil
	l.mu.Unlock()
}

func (l *Listener) numPushed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pushed)
}

// TestPreparedMigrationIsPushed: the client's PREPARE makes the origin
// push the state, and the new server takes it without a FETCH.
func TestPreparedMigrationIsPushed(t *testing.T) {
	checkLeaks(t)
	var log statsLog
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) { cfg.OnMigration = log.add })
	tc.echo()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoCheck(t, c)
	for i := 0; i < 6; i++ {
		log.reset()
		to := tc.addrs[(i+1)%2]
		if err := c.Migrate(context.Background(), to); err != nil {
			t.Fatalf("migration %d: %v", i, err)
		}
		if s := c.LastMigration(); !s.Pushed {
			t.Fatalf("migration %d: the client sent no PREPARE: %+v", i, s)
		}
		if s := log.find(t, RoleNewServer); !s.Pushed || s.Mode != ModeLazy || s.Err != nil {
			t.Fatalf("migration %d: new server did not take a pushed state: %+v", i, s)
		}
		if s := log.find(t, RoleOrigin); !s.Pushed || s.Err != nil {
			t.Fatalf("migration %d: origin did not push: %+v", i, s)
		}
		echoCheck(t, c)
	}
	for _, l := range tc.lns {
		if n := l.numPushed(); n != 0 {
			t.Fatalf("%s still holds %d pushed states", l.Self(), n)
		}
	}
}

// TestRefusedPushFallsBackToFetch: the origin cannot reach the new server
// over the peer channel, so its push fails; the new server's FETCH for the
// same MIGRATE then gets the state (the counter was never handed over).
func TestRefusedPushFallsBackToFetch(t *testing.T) {
	checkLeaks(t)
	var log statsLog
	n := 0
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) {
		cfg.OnMigration = log.add
		if n == 0 { // server 0 reaches no peer
			cfg.PeerDial = func(ctx context.Context, addr string) (net.Conn, error) {
				return nil, errors.New("peer unreachable")
			}
		}
		n++
	})
	tc.echo()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoCheck(t, c)
	if err := c.Migrate(context.Background(), tc.addrs[1]); err != nil {
		t.Fatal(err)
	}
	echoCheck(t, c)
	if s := log.find(t, RoleNewServer); s.Pushed || s.Err != nil {
		t.Fatalf("new server: want a fetched state, got %+v", s)
	}
	for _, s := range log.s {
		if s.Role == RoleOrigin && s.Pushed && s.Err == nil {
			t.Fatalf("the origin reports a push that cannot have happened: %+v", s)
		}
	}
}

// TestClientReturnsToTheOriginWhenItCannotReachTheTarget: the PREPARE froze
// the connection and its state was pushed, but the client's own dial to
// the target fails. The client goes back to the origin, which hands the
// state over to itself; the pushed copy on the target expires unused.
func TestClientReturnsToTheOriginWhenItCannotReachTheTarget(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) { cfg.HandshakeTimeout = 300 * time.Millisecond })
	tc.echo()
	d := testDialer(tc)
	blocked := tc.addrs[1]
	d.DialPath = func(ctx context.Context, addr string) (net.Conn, error) {
		if addr == blocked {
			return nil, errors.New("no route to the target")
		}
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", addr)
	}
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoCheck(t, c)
	if err := c.Migrate(context.Background(), blocked); err == nil {
		t.Fatal("migration to an unreachable server succeeded")
	}
	waitFor(t, func() bool { return tc.lns[1].numPushed() == 1 || tc.lns[0].NumConns() == 1 })
	if err := c.Migrate(context.Background(), tc.addrs[0]); err != nil {
		t.Fatalf("back to the origin: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	echoCheck(t, c)
	if got := c.Server(); got != tc.addrs[0] {
		t.Fatalf("client on %s, want the origin %s", got, tc.addrs[0])
	}
	waitFor(t, func() bool { return tc.lns[1].numPushed() == 0 })
}

// TestForgedPrepareFreezesNothing: a PREPARE whose MAC does not verify, or
// whose counter was used, is ignored: the connection stays where it is and
// nothing is pushed.
func TestForgedPrepareFreezesNothing(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Migrate(context.Background(), tc.addrs[1]); err != nil {
		t.Fatal(err)
	}
	echoCheck(t, c)
	c.mu.Lock()
	used := c.cl.counter
	c.mu.Unlock()
	forged := signedMigrate(c, used+1, tc.addrs[1])
	forged.MAC[0] ^= 1
	replayed := signedMigrate(c, used, tc.addrs[1])
	for _, m := range []wire.Migrate{forged, replayed} {
		c.mu.Lock()
		c.path.queue(wire.AppendPrepare(nil, wire.Prepare{Target: tc.addrs[0], Migrate: m}))
		c.mu.Unlock()
		echoCheck(t, c)
		time.Sleep(20 * time.Millisecond) // a push would have arrived by now
		if tc.lns[1].NumConns() != 1 || tc.lns[0].numPushed() != 0 {
			t.Fatalf("a bad PREPARE moved the connection: %d conns, %d pushed", tc.lns[1].NumConns(), tc.lns[0].numPushed())
		}
		echoCheck(t, c)
	}
}

// TestPushMustMatchItsState: a pushed state is kept only if the MIGRATE
// it carries verifies with the state's own secret and counter.
func TestPushMustMatchItsState(t *testing.T) {
	tc := newCluster(t, 1, nil, nil)
	l := tc.lns[0]
	id := randomID()
	st := wire.ConnState{ConnID: id, Secret: randomSecret(), Counter: 4}
	m := wire.Migrate{ConnID: id, Counter: 5, Origin: "elsewhere:1"}
	m.MAC = migrateMAC(st.Secret, m)

	other := m
	other.MAC = migrateMAC(randomSecret(), m)
	stale := wire.Migrate{ConnID: id, Counter: 4, Origin: "elsewhere:1"}
	stale.MAC = migrateMAC(st.Secret, stale)
	for _, bad := range []wire.Migrate{other, stale} {
		if rerr := l.keepPushed(bad, st); rerr == nil {
			t.Fatalf("push of %+v kept", bad)
		}
	}
	if l.numPushed() != 0 {
		t.Fatal("a refused push was kept")
	}
	if rerr := l.keepPushed(m, st); rerr != nil {
		t.Fatal(rerr)
	}
	if _, ok := l.waitPushed(context.Background(), other, time.Millisecond); ok {
		t.Fatal("a MIGRATE with another MAC took the pushed state")
	}
	if got, ok := l.waitPushed(context.Background(), m, time.Millisecond); !ok || got.Counter != 4 {
		t.Fatalf("the matching MIGRATE did not take the pushed state: %v %+v", ok, got)
	}
	if l.numPushed() != 0 {
		t.Fatal("the pushed state was not consumed")
	}
}
