package mtcp

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
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
	return l.findWhere(t, func(s MigrationStats) bool { return s.Role == r })
}

// findWhere returns the first report that matches, waiting a little for it.
func (l *statsLog) findWhere(t *testing.T, match func(MigrationStats) bool) MigrationStats {
	t.Helper()
	for i := 0; i < 400; i++ {
		l.mu.Lock()
		for _, s := range l.s {
			if match(s) {
				l.mu.Unlock()
				return s
			}
		}
		l.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no such migration report")
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
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) {
		cfg.OnMigration = log.add
		// On a busy machine the PREPARE can reach the origin after the
		// new server's hedged FETCH, which then rightly wins.
		cfg.pushWait = 5 * time.Second
	})
	tc.echo()
	c := tc.dialChecked(testDialer(tc))
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
	c := tc.dialChecked(testDialer(tc))
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
	var log statsLog
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) {
		cfg.HandshakeTimeout = time.Minute // the pushed copy must go by DROP_PUSH, not expire
		cfg.OnMigration = log.add
	})
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
	c := tc.dialChecked(d)
	if err := c.Migrate(context.Background(), blocked); err == nil {
		t.Fatal("migration to an unreachable server succeeded")
	}
	// The PREPARE froze the connection on the origin, which pushed it.
	if s := log.find(t, RoleOrigin); !s.Pushed || s.Err != nil {
		t.Fatalf("origin: %+v, want a push", s)
	}
	// Back to the origin: by hand, or by the client's own recovery from
	// the frozen path if that got there first.
	if err := c.Migrate(context.Background(), tc.addrs[0]); err != nil {
		t.Fatalf("back to the origin: %v", err)
	}
	log.findWhere(t, func(s MigrationStats) bool {
		return s.Role == RoleNewServer && s.To == tc.addrs[0] && s.Mode == ModeLazy && s.Err == nil
	})
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	echoCheck(t, c)
	if got := c.Server(); got != tc.addrs[0] {
		t.Fatalf("client on %s, want the origin %s", got, tc.addrs[0])
	}
	// The origin withdrew the push (DROP_PUSH): a replayed MIGRATE for
	// the old counter finds nothing on the target.
	waitFor(t, func() bool { return tc.lns[1].numPushed() == 0 })
}

// TestForgedPrepareFreezesNothing: a PREPARE whose MIGRATE's MAC does not
// verify, whose counter was used, or whose target is not the one its own
// MAC covers, is ignored: the connection stays where it is and nothing is
// pushed.
func TestForgedPrepareFreezesNothing(t *testing.T) {
	checkLeaks(t)
	var log statsLog
	tc := newCluster(t, 3, nil, func(cfg *ListenConfig) { cfg.OnMigration = log.add })
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
	log.find(t, RoleOrigin)
	log.reset()
	c.mu.Lock()
	used := c.cl.counter
	c.mu.Unlock()
	prepare := func(m wire.Migrate, target string) wire.Prepare {
		return wire.Prepare{Target: target, Migrate: m, MAC: prepareMAC(c.secret, m, target)}
	}
	forged := signedMigrate(c, used+1, tc.addrs[1])
	forged.MAC[0] ^= 1
	redirected := prepare(signedMigrate(c, used+1, tc.addrs[1]), tc.addrs[0])
	redirected.Target = tc.addrs[2] // on the path, someone sends the push elsewhere
	unsigned := prepare(signedMigrate(c, used+1, tc.addrs[1]), tc.addrs[0])
	unsigned.MAC = nil
	for i, pr := range []wire.Prepare{
		prepare(forged, tc.addrs[0]),
		prepare(signedMigrate(c, used, tc.addrs[1]), tc.addrs[0]), // replayed counter
		redirected,
		unsigned,
	} {
		c.mu.Lock()
		c.path.queue(wire.AppendPrepare(nil, pr))
		c.mu.Unlock()
		echoCheck(t, c)
		time.Sleep(20 * time.Millisecond) // a push would have arrived by now
		if tc.lns[1].NumConns() != 1 || tc.lns[0].numPushed() != 0 || tc.lns[2].numPushed() != 0 {
			t.Fatalf("bad PREPARE %d moved the connection: %d conns, %d+%d pushed", i,
				tc.lns[1].NumConns(), tc.lns[0].numPushed(), tc.lns[2].numPushed())
		}
		echoCheck(t, c)
	}
	// An unparsable PREPARE is dropped, and the path carries on.
	c.mu.Lock()
	c.path.queue(append(wire.AppendHeader(nil, wire.TypePrepare, 3), 1, 2, 3))
	c.mu.Unlock()
	echoCheck(t, c)
	log.mu.Lock()
	for _, s := range log.s {
		if s.Err == nil {
			t.Fatalf("a bad PREPARE moved the connection: %+v", s)
		}
	}
	log.mu.Unlock()
	// The same PREPARE, untouched, does freeze and push it; the client,
	// which did not send it, finds its path closed and follows.
	good := prepare(signedMigrate(c, used+1, tc.addrs[1]), tc.addrs[0])
	c.mu.Lock()
	c.path.queue(wire.AppendPrepare(nil, good))
	c.mu.Unlock()
	log.findWhere(t, func(s MigrationStats) bool {
		return s.Role == RoleOrigin && s.Pushed && s.Err == nil && s.To == tc.addrs[0]
	})
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	echoCheck(t, c)
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
		if rerr := l.keepPushed(bad, st, bad.Origin); rerr == nil {
			t.Fatalf("push of %+v kept", bad)
		}
	}
	if l.numPushed() != 0 {
		t.Fatal("a refused push was kept")
	}
	if rerr := l.keepPushed(m, st, m.Origin); rerr != nil {
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

	// A MIGRATE whose prepared flag was cleared on the way (no MAC covers
	// it) still takes the state pushed for it, without waiting.
	if rerr := l.keepPushed(m, st, m.Origin); rerr != nil {
		t.Fatal(rerr)
	}
	var stats MigrationStats
	unflagged := m
	unflagged.Prepared = false
	got, mode, _, rerr := l.fetchState(context.Background(), unflagged, time.Now(), &stats)
	if rerr != nil || mode != ModeLazy || !stats.Pushed || got.Counter != 4 {
		t.Fatalf("unflagged MIGRATE: %v, mode %v, pushed %v, %+v", rerr, mode, stats.Pushed, got)
	}
}

// frozenForTest is a handed-over connection whose counter-5 handover went
// out as a push, as the origin keeps it.
func frozenForTest(l *Listener) (*migratedConn, *pushState, func(uint64) wire.Migrate) {
	secret, id := randomSecret(), randomID()
	mk := func(n uint64) wire.Migrate {
		m := wire.Migrate{ConnID: id, Counter: n, Origin: l.Self()}
		m.MAC = migrateMAC(secret, m)
		return m
	}
	ps := newPushState(mk(5), "target:1")
	mc := &migratedConn{handover: handover{secret: secret, counter: 5, state: wire.ConnState{ConnID: id, Secret: secret, Counter: 4}, push: ps}}
	return mc, ps, mk
}

// TestFetchOfAPushedCounterGetsTheStateOnlyIfThePushWasRefused: a FETCH
// for the MIGRATE a push carried waits for the push's answer; it gets the
// state only when the push was refused outright, never when it was kept,
// unanswered, or overtaken by a higher counter.
func TestFetchOfAPushedCounterGetsTheStateOnlyIfThePushWasRefused(t *testing.T) {
	tc := newCluster(t, 1, nil, nil)
	l := tc.lns[0]
	for _, tt := range []struct {
		outcome pushOutcome
		want    bool
	}{{pushRefused, true}, {pushKept, false}, {pushUnknown, false}} {
		mc, ps, mk := frozenForTest(l)
		res := make(chan *RefusalError, 1)
		go func() { _, rerr := l.handOverAgain(mc, mk(5)); res <- rerr }()
		time.Sleep(10 * time.Millisecond) // the FETCH waits for the push
		l.mu.Lock()
		ps.outcome = tt.outcome
		l.mu.Unlock()
		close(ps.done)
		if rerr := <-res; (rerr == nil) != tt.want {
			t.Errorf("push outcome %d: FETCH refusal %v, want state handed over %v", tt.outcome, rerr, tt.want)
		}
		if _, rerr := l.handOverAgain(mc, mk(5)); rerr == nil {
			t.Errorf("push outcome %d: a second FETCH for the same counter got the state", tt.outcome)
		}
	}

	// A higher counter is handed over while the FETCH waits; the push
	// then fails. The waiting FETCH must not get the state too.
	mc, ps, mk := frozenForTest(l)
	res := make(chan *RefusalError, 1)
	go func() { _, rerr := l.handOverAgain(mc, mk(5)); res <- rerr }()
	time.Sleep(10 * time.Millisecond)
	if _, rerr := l.handOverAgain(mc, mk(6)); rerr != nil {
		t.Fatal(rerr)
	}
	l.mu.Lock()
	ps.outcome = pushRefused
	l.mu.Unlock()
	close(ps.done)
	if rerr := <-res; rerr == nil {
		t.Error("counter 5 handed over after counter 6 was: two owners")
	}

	// The listener closes while the push is undecided.
	mc, _, mk = frozenForTest(l)
	go func() { _, rerr := l.handOverAgain(mc, mk(5)); res <- rerr }()
	time.Sleep(10 * time.Millisecond)
	_ = l.Close()
	if rerr := <-res; rerr == nil {
		t.Error("state handed over while its push was undecided")
	}
}

// TestPrepareNamesOnlyClusterServersAndItsOwnConnection: a PREPARE whose
// target is not a server of the cluster is not pushed (the new server
// fetches), and one naming another connection is ignored.
func TestPrepareNamesOnlyClusterServersAndItsOwnConnection(t *testing.T) {
	checkLeaks(t)
	outside, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	dialed := make(chan struct{}, 1)
	go func() {
		for {
			nc, err := outside.Accept()
			if err != nil {
				return
			}
			dialed <- struct{}{}
			_ = nc.Close()
		}
	}()
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	c := tc.dialChecked(testDialer(tc))
	c.mu.Lock()
	next := c.cl.counter + 1
	c.mu.Unlock()
	m := signedMigrate(c, next, tc.addrs[0])
	c.mu.Lock()
	c.path.queue(wire.AppendPrepare(nil, wire.Prepare{Target: outside.Addr().String(), Migrate: m, MAC: prepareMAC(c.secret, m, outside.Addr().String())}))
	c.mu.Unlock()
	echoCheck(t, c)
	select {
	case <-dialed:
		t.Fatal("the origin dialled an address outside the cluster")
	case <-time.After(50 * time.Millisecond):
	}
	if tc.lns[0].NumConns() != 1 {
		t.Fatal("a PREPARE for an outside target froze the connection")
	}

	other := tc.dialChecked(testDialer(tc))
	om := signedMigrate(other, 1, tc.addrs[0])
	c.mu.Lock()
	c.path.queue(wire.AppendPrepare(nil, wire.Prepare{Target: tc.addrs[1], Migrate: om, MAC: prepareMAC(other.secret, om, tc.addrs[1])}))
	c.mu.Unlock()
	echoCheck(t, c)
	time.Sleep(20 * time.Millisecond)
	echoCheck(t, other)
	if tc.lns[0].NumConns() != 2 || tc.lns[1].numPushed() != 0 {
		t.Fatalf("a PREPARE on one connection moved another: %d conns on the origin, %d pushed", tc.lns[0].NumConns(), tc.lns[1].numPushed())
	}
}

// TestPrepareOnlyOnLongPaths: below Dialer.PrepareMinRTT the client sends
// no PREPARE and the new server fetches the state.
func TestPrepareOnlyOnLongPaths(t *testing.T) {
	checkLeaks(t)
	var log statsLog
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) { cfg.OnMigration = log.add })
	tc.echo()
	d := testDialer(tc)
	d.PrepareMinRTT = time.Hour // longer than any loopback round trip
	c := tc.dialChecked(d)
	if err := c.Migrate(context.Background(), tc.addrs[1]); err != nil {
		t.Fatal(err)
	}
	echoCheck(t, c)
	if c.LastMigration().Pushed {
		t.Fatal("the client sent PREPARE on a path shorter than PrepareMinRTT")
	}
	if s := log.find(t, RoleNewServer); s.Pushed || s.Mode != ModeLazy || s.Err != nil {
		t.Fatalf("new server: want a fetched state, got %+v", s)
	}
}

func TestPathRTT(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := pathRTT(a); ok {
		t.Fatal("an RTT for a pipe")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if nc, err := ln.Accept(); err == nil {
			_, _ = io.Copy(nc, nc)
			_ = nc.Close()
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(nc, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	rtt, ok := pathRTT(nc)
	if runtime.GOOS == "linux" && (!ok || rtt <= 0 || rtt > time.Second) {
		t.Fatalf("loopback RTT %v, ok %v", rtt, ok)
	}
	t.Logf("loopback min RTT %v", rtt)
}

// TestFetchRacingAPrepareGetsTheHandover: a FETCH that waited for the
// connection's lock while a PREPARE froze it answers from the handed-over
// record (here: the state, once the push is refused), not "connection
// ended". Under load the new server's hedged FETCH can reach the origin
// while the PREPARE is freezing the connection.
func TestFetchRacingAPrepareGetsTheHandover(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	c := tc.dialChecked(testDialer(tc))
	l := tc.lns[0]
	sc, _ := l.lookup(c.id)
	if sc == nil {
		t.Fatal("the origin does not hold the connection")
	}
	m := signedMigrate(c, 1, tc.addrs[0])
	pr := wire.Prepare{Target: tc.addrs[1], Migrate: m, MAC: prepareMAC(c.secret, m, tc.addrs[1])}
	type result struct {
		st   wire.ConnState
		ps   *pushState
		rerr *RefusalError
	}
	prepared, fetched := make(chan result, 1), make(chan result, 1)
	sc.mu.Lock()
	go func() {
		st, ps, rerr := l.freezeState(m, &pr)
		prepared <- result{st, ps, rerr}
	}()
	time.Sleep(20 * time.Millisecond) // the PREPARE waits for the lock first
	go func() {
		st, ps, rerr := l.freezeState(m, nil)
		fetched <- result{st, ps, rerr}
	}()
	time.Sleep(20 * time.Millisecond)
	sc.mu.Unlock()

	p := <-prepared
	if p.rerr == nil {
		// The PREPARE won: its push "fails", so the FETCH is owed the state.
		l.mu.Lock()
		p.ps.outcome = pushRefused
		l.mu.Unlock()
		close(p.ps.done)
	}
	f := <-fetched
	if f.rerr != nil {
		t.Fatalf("the FETCH that raced the PREPARE (which got %v) was refused: %v", p.rerr, f.rerr)
	}
	if f.st.Counter != 0 || f.st.ConnID != c.id {
		t.Fatalf("the FETCH got the wrong state: %+v", f.st)
	}
	// The client finds its path closed and recovers under a higher counter.
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	echoCheck(t, c)
}
