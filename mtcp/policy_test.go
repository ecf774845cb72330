package mtcp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

func TestRateEstimatorFiresBelowFractionOfPeak(t *testing.T) {
	p := RatePolicy{}
	p.fill()
	now := time.Unix(0, 0)
	r := newRateEstimator(p, now, 0)
	total := uint64(0)
	step := func(bytesPerTick uint64, blocked bool) bool {
		now = now.Add(p.Interval)
		total += bytesPerTick
		return r.observe(now, total, blocked)
	}
	for i := 0; i < 20; i++ {
		if step(10_000, false) {
			t.Fatalf("fired at a steady rate (sample %d)", i)
		}
	}
	// A slow application (full receive buffer) says nothing about the server.
	for i := 0; i < 20; i++ {
		if step(0, true) {
			t.Fatal("fired while the application was not reading")
		}
	}
	if step(10_000, false) {
		t.Fatal("fired after a blocked spell")
	}
	// 80% of the peak: above the 75% default.
	for i := 0; i < 20; i++ {
		if step(8_000, false) {
			t.Fatal("fired at 80% of the peak")
		}
	}
	fired := false
	for i := 0; i < 20 && !fired; i++ {
		fired = step(5_000, false)
	}
	if !fired {
		t.Fatal("did not fire at 50% of the peak")
	}
}

// TestRateClockUsesEveryJitteredTick: with the trigger timer's period equal
// to the sampling interval, ticks that arrive early or late (a timer is
// never exact) each take a sample; a tick that comes a little less than an
// interval after the previous one must not be dropped.
func TestRateClockUsesEveryJitteredTick(t *testing.T) {
	p := RatePolicy{Interval: 20 * time.Millisecond}
	p.fill()
	start := time.Unix(1000, 0)
	// The policy is reset between two ticks of the timer, as after a
	// migration; the timer's schedule has its own phase.
	phase := 7 * time.Millisecond
	k := newRateClock(p.Interval, p.Interval, start)
	r := newRateEstimator(p, start, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	const ticks = 500
	total, used := uint64(0), 0
	for i := 1; i <= ticks; i++ {
		jitter := time.Duration(rng.IntN(9000)-1000) * time.Microsecond // -1ms..+8ms
		now := start.Add(phase + time.Duration(i)*p.Interval + jitter)
		total += 20_000
		if k.due(now) {
			used++
			r.observe(now, total, false)
		}
	}
	if used != ticks || r.samples != ticks {
		t.Fatalf("%d of %d ticks taken as samples (estimator saw %d)", used, ticks, r.samples)
	}
}

// TestRateClockSamplesOncePerInterval: a timer faster than the interval
// (the keepalive wants it) does not make samples more frequent, and after
// a stall the schedule starts over instead of catching up in a burst.
func TestRateClockSamplesOncePerInterval(t *testing.T) {
	const interval, tick = 100 * time.Millisecond, 30 * time.Millisecond
	start := time.Unix(1000, 0)
	k := newRateClock(interval, tick, start)
	used := 0
	now := start
	for i := 0; i < 100; i++ { // 3 s
		now = now.Add(tick)
		if k.due(now) {
			used++
		}
	}
	if used < 29 || used > 31 {
		t.Fatalf("%d samples in 3s at a %v interval", used, interval)
	}
	now = now.Add(time.Second) // the loop was busy migrating
	if !k.due(now) {
		t.Fatal("no sample after a stall")
	}
	if k.due(now.Add(tick)) || k.due(now.Add(2*tick)) {
		t.Fatal("samples in a burst after a stall")
	}
}

func TestRateEstimatorIgnoresTrickles(t *testing.T) {
	p := RatePolicy{}
	p.fill()
	now := time.Unix(0, 0)
	r := newRateEstimator(p, now, 0)
	total := uint64(0)
	for i := 0; i < 50; i++ {
		now = now.Add(p.Interval)
		total += uint64(i % 5) // < MinPeak bytes/s
		if r.observe(now, total, false) {
			t.Fatal("fired on a trickle")
		}
	}
}

func TestPickServerTriesOthersFirstAndCurrentLast(t *testing.T) {
	servers := []string{"a", "b", "c"}
	var got []string
	for i := 0; i < 4; i++ {
		got = append(got, pickServer(servers, "b", i))
	}
	if want := []string{"c", "a", "b", "c"}; !equalStrings(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if pickServer(nil, "x", 3) != "x" {
		t.Fatal("empty list")
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// runClients runs n xform clients against tc and calls during() once all
// are connected; every stream must stay exact.
func runClients(t *testing.T, tc *testCluster, n int, d *Dialer, during func(conns []*Conn)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	conns := make([]*Conn, n)
	ready := make(chan struct{}, n)
	for k := 0; k < n; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.DialMTCP(ctx, tc.addrs[0])
			if err != nil {
				t.Error(err)
				ready <- struct{}{}
				return
			}
			defer c.Close()
			conns[k] = c
			ready <- struct{}{}
			if err := clientRun(ctx, c, uint64(500+k), 400_000, nil); err != nil {
				t.Errorf("conn %d: %v", k, err)
			}
		}()
	}
	for range n {
		<-ready
	}
	during(conns)
	wg.Wait()
}

func TestRedirectMovesConnection(t *testing.T) {
	checkLeaks(t)
	var moved sync.Map
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) {
		cfg.OnMigration = func(s MigrationStats) {
			if s.Role == RoleNewServer && s.Err == nil {
				moved.Store(s.ConnID, s.To)
			}
		}
	})
	wg := tc.runXformServers(0.2)
	defer wg.Wait()
	defer func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	}()
	runClients(t, tc, 3, testDialer(tc), func([]*Conn) {
		tc.lns[0].mu.Lock()
		conns := tc.lns[0].connList()
		tc.lns[0].mu.Unlock()
		for _, c := range conns {
			_ = c.Redirect(tc.addrs[1])
		}
	})
	n := 0
	moved.Range(func(_, to any) bool {
		if to == tc.addrs[1] {
			n++
		}
		return true
	})
	t.Logf("%d connections followed the redirect", n)
}

func TestDrainMovesEveryConnection(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 3, nil, nil)
	wg := tc.runXformServers(0.2)
	defer wg.Wait()
	defer func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	}()
	runClients(t, tc, 4, testDialer(tc), func(conns []*Conn) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := tc.lns[0].Drain(ctx); err != nil {
			t.Error(err)
		}
		if n := tc.lns[0].NumConns(); n != 0 {
			t.Errorf("%d connections left after Drain", n)
		}
		// A drained server takes no new connections; the dialer moves on.
		c, err := testDialer(tc).DialMTCP(ctx, tc.addrs[0])
		if err != nil {
			t.Error(err)
			return
		}
		if c.Server() == tc.addrs[0] {
			t.Error("new connection landed on the drained server")
		}
		_ = c.Close()
	})
}

// TestPathFailureMigratesTransparently breaks the transport under
// connections at random; the clients notice and reattach (to the same or
// another server) and the streams stay exact.
func TestPathFailureMigratesTransparently(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 3, nil, nil)
	wg := tc.runXformServers(0.2)
	defer wg.Wait()
	defer func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	}()
	runClients(t, tc, 3, testDialer(tc), func(conns []*Conn) {
		rng := rand.New(rand.NewPCG(9, 9))
		for i := 0; i < 30; i++ {
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
			c := conns[rng.IntN(len(conns))]
			if c == nil {
				continue
			}
			c.mu.Lock()
			if p := c.path; p != nil {
				_ = p.nc.Close() // as if the network dropped it
			}
			c.mu.Unlock()
		}
	})
}

func TestWarmStandbyCarriesTheMigration(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	d := testDialer(tc)
	d.Standby = true
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 4; i++ {
		target := tc.addrs[(i+1)%2]
		waitFor(t, func() bool { return c.Standby() == target })
		if err := c.Migrate(context.Background(), target); err != nil {
			t.Fatal(err)
		}
		if !c.LastMigration().Standby {
			t.Fatalf("migration %d did not use the standby path", i)
		}
		echoCheck(t, c)
	}
}

func TestStandbyIsEmptyWithoutAWarmPath(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoCheck(t, c)
	if s := c.Standby(); s != "" {
		t.Fatalf("Standby() = %q without Dialer.Standby", s)
	}
}

func TestClientLearnsServerUpdates(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, nil)
	tc.echo()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc.lns[0].SetServers([]string{tc.addrs[0], "10.0.0.9:1"})
	waitFor(t, func() bool { return equalStrings(c.Servers(), []string{tc.addrs[0], "10.0.0.9:1"}) })
}

// waitFor polls cond for up to 10s (bounded; generous for slow machines).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

// TestServerDropsAClientThatVanished: a client whose host disappears
// leaves a path that never fails; the server's idle sweep detaches it and
// the detached timeout ends it. A live client's keepalives keep it.
func TestServerDropsAClientThatVanished(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, func(cfg *ListenConfig) {
		cfg.IdleTimeout = 200 * time.Millisecond
		cfg.DetachedTimeout = 200 * time.Millisecond
	})
	accepted := make(chan *Conn, 2)
	go func() {
		for {
			c, err := tc.lns[0].AcceptMTCP()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	// The vanished client: a bare TCP connection that said HELLO, then
	// nothing, and never closes.
	raw, err := net.Dial("tcp", tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	typ, _, err := exchange(context.Background(), raw, bufio.NewReader(raw), wire.AppendHello(nil, wire.Hello{Version: wire.Version}), 10*time.Second)
	if err != nil || typ != wire.TypeWelcome {
		t.Fatal(typ, err)
	}
	srv := <-accepted
	if _, err := srv.Read(make([]byte, 1)); !errors.Is(err, ErrLost) {
		t.Fatalf("server read on a vanished client: %v", err)
	}
	waitFor(t, func() bool { return tc.lns[0].NumConns() == 0 })

	// A live, idle client keeps its connection through many sweeps.
	d := testDialer(tc)
	d.Triggers.KeepAlive = 40 * time.Millisecond
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv = <-accepted
	defer srv.Close()
	time.Sleep(time.Second)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(srv, b); err != nil || b[0] != 'x' {
		t.Fatalf("idle but live connection: %v", err)
	}
}

func TestPickFasterSkipsServersLeftForSlowness(t *testing.T) {
	now := time.Now()
	servers := []string{"a", "b", "c"}
	fled := map[string]time.Time{"b": now.Add(-time.Second), "c": now.Add(-time.Minute)}
	for _, tt := range []struct {
		cur  string
		want string
	}{
		{"a", "c"}, // b was left a second ago; c long enough ago
		{"c", "a"},
		{"b", "c"},
	} {
		if got := pickFaster(servers, tt.cur, fled, now, 30*time.Second); got != tt.want {
			t.Errorf("from %s: %q, want %q", tt.cur, got, tt.want)
		}
	}
	// Two servers: never straight back to the one just left.
	if got := pickFaster([]string{"a", "b"}, "a", map[string]time.Time{"b": now}, now, 30*time.Second); got != "" {
		t.Errorf("went back to the server just left: %q", got)
	}
}

// TestClientKeepsItsSeedServers: a server that sends a short list (it has
// just started and knows no peer yet) does not make the client forget the
// servers it was given; they come after the server's.
func TestClientKeepsItsSeedServers(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	for _, l := range tc.lns {
		l.SetServers([]string{l.Self()})
	}
	d := testDialer(tc)
	d.Servers = []string{tc.addrs[0], tc.addrs[1]}
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Servers(); !equalStrings(got, []string{tc.addrs[0], tc.addrs[1]}) {
		t.Fatalf("servers %v after a greeting naming only %s", got, tc.addrs[0])
	}
	tc.lns[0].SetServers([]string{tc.addrs[0], "10.0.0.9:1"})
	waitFor(t, func() bool { return equalStrings(c.Servers(), []string{tc.addrs[0], "10.0.0.9:1", tc.addrs[1]}) })
}

// TestDrainPastADeadServer: a draining server redirects some connections
// to a server that is down (its membership has not caught up yet); their
// clients move to another server at once instead of waiting for the
// drain's next redirect a second later.
func TestDrainPastADeadServer(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 3, nil, nil)
	tc.echo()
	var conns []*Conn
	for range 4 {
		c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoCheck(t, c)
		conns = append(conns, c)
	}
	tc.lns[1].crash()
	ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond)
	defer cancel()
	if err := tc.lns[0].Drain(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if c.Server() != tc.addrs[2] {
			t.Errorf("a connection is on %s, not on the one live server left", c.Server())
		}
		echoCheck(t, c)
	}
}

// TestDrainAfterLeavingTheServerList: a front-end leaves its peers' server
// lists as it starts to drain (it is no longer offered to clients), yet the
// connections it redirects arrive there naming it as their origin. The
// peers must still fetch from it, or (without a store) the moves fail.
func TestDrainAfterLeavingTheServerList(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	wg := tc.runXformServers(0.2)
	defer wg.Wait()
	defer func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	}()
	runClients(t, tc, 3, testDialer(tc), func(conns []*Conn) {
		tc.lns[1].SetServers(tc.addrs[1:])
		if !tc.lns[1].isPeer(tc.addrs[0]) {
			t.Error("a server dropped from the list this moment is no peer")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := tc.lns[0].Drain(ctx); err != nil {
			t.Error(err)
		}
		if n := tc.lns[0].NumConns(); n != 0 {
			t.Errorf("%d connections left after Drain", n)
		}
	})
	if tc.lns[1].isPeer("127.0.0.1:1") {
		t.Error("an address never listed is a peer")
	}
	tc.lns[1].mu.Lock()
	tc.lns[1].former[tc.addrs[0]] = time.Now().Add(-formerPeerRetention)
	tc.lns[1].mu.Unlock()
	if tc.lns[1].isPeer(tc.addrs[0]) {
		t.Error("a server dropped from the list long ago is still a peer")
	}
}

// TestRedirectToHereOrFromAFormerServerIsIgnored: a REDIRECT to the server
// the connection is on, or one that a server it has left sent before the
// move, causes no migration (a drain re-sends its REDIRECTs every second).
func TestRedirectToHereOrFromAFormerServerIsIgnored(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 3, nil, nil)
	wg := tc.runXformServers(0.2)
	defer wg.Wait()
	defer func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	}()
	var mu sync.Mutex
	var moves []string
	d := testDialer(tc)
	d.OnMigration = func(s MigrationStats) {
		mu.Lock()
		defer mu.Unlock()
		if s.Err == nil {
			moves = append(moves, s.To)
		}
	}
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	serverConn := func(l *Listener) *Conn {
		l.mu.Lock()
		defer l.mu.Unlock()
		if cs := l.connList(); len(cs) == 1 {
			return cs[0]
		}
		return nil
	}
	var sc *Conn
	for deadline := time.Now().Add(5 * time.Second); sc == nil && time.Now().Before(deadline); {
		sc = serverConn(tc.lns[0])
		time.Sleep(5 * time.Millisecond)
	}
	if sc == nil {
		t.Fatal("no connection on server 0")
	}
	_ = sc.Redirect(tc.addrs[0])
	// Two REDIRECTs before the client acts on the first: it moves once.
	c.mu.Lock()
	c.cl.redirect, c.cl.redirectFrom = tc.addrs[1], c.cl.cur
	c.mu.Unlock()
	_ = sc.Redirect(tc.addrs[2])
	c.cl.poke()
	deadline := time.Now().Add(5 * time.Second)
	for serverConn(tc.lns[0]) != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a second move would be done by now
	mu.Lock()
	defer mu.Unlock()
	if len(moves) != 1 {
		t.Errorf("moves %v, want exactly one", moves)
	}
}
