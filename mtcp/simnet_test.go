package mtcp

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/simnet"
)

// simCluster is a client host and n server hosts on a simulated network,
// every pair linked, with an MTCP listener on each server.
type simCluster struct {
	net     *simnet.Network
	client  *simnet.Host
	servers []*simnet.Host
	lns     []*Listener
	addrs   []string
}

func newSimCluster(t testing.TB, n int, link simnet.LinkConfig) *simCluster {
	t.Helper()
	sc := &simCluster{net: simnet.New(simnet.Config{Seed: 7})}
	t.Cleanup(func() { _ = sc.net.Close() })
	var err error
	sc.client, err = sc.net.AddHost("client", netip.MustParseAddr("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		h, err := sc.net.AddHost(fmt.Sprintf("s%d", i+1), netip.AddrFrom4([4]byte{10, 0, 0, byte(2 + i)}))
		if err != nil {
			t.Fatal(err)
		}
		sc.servers = append(sc.servers, h)
		sc.addrs = append(sc.addrs, fmt.Sprintf("10.0.0.%d:80", 2+i))
	}
	hosts := append([]*simnet.Host{sc.client}, sc.servers...)
	for i := range hosts {
		for j := i + 1; j < len(hosts); j++ {
			if err := sc.net.Link(hosts[i], hosts[j], link); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, h := range sc.servers {
		raw, err := h.Listen("tcp", ":80")
		if err != nil {
			t.Fatal(err)
		}
		l := NewListener(raw, ListenConfig{
			Self: sc.addrs[i], Servers: sc.addrs, ClusterKey: testKey, Logger: testLogger(), DetachedTimeout: 10 * time.Second,
			PeerDial: func(ctx context.Context, addr string) (net.Conn, error) { return h.DialContext(ctx, "tcp", addr) },
		})
		sc.lns = append(sc.lns, l)
		t.Cleanup(func() { _ = l.Close() })
	}
	return sc
}

func (sc *simCluster) dialer(tr Triggers) *Dialer {
	return &Dialer{
		// Attempts on a partitioned server give up well before the
		// servers' DetachedTimeout (10s here) drops the connection.
		HandshakeTimeout: 2 * time.Second,
		Servers:          sc.addrs, Triggers: tr, Logger: testLogger(),
		DialPath: func(ctx context.Context, addr string) (net.Conn, error) {
			return sc.client.DialContext(ctx, "tcp", addr)
		},
	}
}

// TestPartitionedPathMigratesOnNoProgress: the link to the current server
// goes silent (no error, no FIN); the client's progress check notices, it
// migrates to the other server, which fetches the state from the origin
// over the still-working server link. The streams stay exact.
func TestPartitionedPathMigratesOnNoProgress(t *testing.T) {
	checkLeaks(t)
	sc := newSimCluster(t, 2, simnet.LinkConfig{Delay: time.Millisecond, Bandwidth: 1 << 20})
	tc := &testCluster{t: t, lns: sc.lns, addrs: sc.addrs}
	wg := tc.runXformServers(0.2)
	defer wg.Wait()
	defer func() {
		for _, l := range sc.lns {
			_ = l.Close()
		}
	}()
	d := sc.dialer(Triggers{KeepAlive: 50 * time.Millisecond, PathTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := d.DialMTCP(ctx, sc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = sc.net.Partition(sc.client, sc.servers[0])
	}()
	if err := clientRun(ctx, c, 77, 300_000, nil); err != nil {
		t.Fatal(err)
	}
	if s := c.Server(); s != sc.addrs[1] {
		t.Fatalf("client ended on %s, want %s", s, sc.addrs[1])
	}
	if m := c.LastMigration(); m.Err != nil || m.To != sc.addrs[1] {
		t.Fatalf("last migration %+v", m)
	}
	_ = c.Close()
	sc.waitIdle(t)
}

// serveCounterStream is a streaming server application: it writes the
// bytes streamByte(0), streamByte(1), … in 1 kB chunks, snapshotting the
// offset after every chunk, until the connection ends.
func serveCounterStream(c *Conn) {
	defer c.Close()
	var off uint64
	if b, ok := c.ImportState(); ok && len(b) == 8 {
		off = binary.BigEndian.Uint64(b)
	}
	chunk := make([]byte, 1024)
	for {
		for i := range chunk {
			chunk[i] = streamByte(off + uint64(i))
		}
		if _, err := c.Write(chunk); err != nil {
			return
		}
		off += uint64(len(chunk))
		if err := c.ExportState(binary.BigEndian.AppendUint64(nil, off)); err != nil {
			return
		}
	}
}

func streamByte(off uint64) byte { return byte(off*7 + off>>8) }

// TestRatePolicyMovesAwayFromASlowedServer: the origin's link slows down to
// a trickle after some data; the smoothed inbound rate falls below 75% of
// its peak and the client migrates to the other server. The stream stays
// exact.
func TestRatePolicyMovesAwayFromASlowedServer(t *testing.T) {
	checkLeaks(t)
	fast := simnet.LinkConfig{Delay: time.Millisecond, Bandwidth: 4 << 20}
	sc := newSimCluster(t, 2, fast)
	for _, l := range sc.lns {
		go func() {
			for {
				c, err := l.AcceptMTCP()
				if err != nil {
					return
				}
				go serveCounterStream(c)
			}
		}()
	}
	d := sc.dialer(Triggers{KeepAlive: time.Second, PathTimeout: time.Minute, Rate: &RatePolicy{Interval: 50 * time.Millisecond}})
	var mu sync.Mutex
	slowed := false
	movedAfterSlowdown := 0
	d.OnMigration = func(s MigrationStats) {
		mu.Lock()
		defer mu.Unlock()
		if slowed && s.Err == nil && s.From == sc.addrs[0] && s.To == sc.addrs[1] {
			movedAfterSlowdown++
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := d.DialMTCP(ctx, sc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const total, slowAt = 1 << 20, 256 << 10
	buf := make([]byte, 4096)
	onAtSlowdown := ""
	for off := uint64(0); off < total; {
		// A bounded wait: without a migration the rest would take minutes.
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		for i, b := range buf[:n] {
			if b != streamByte(off+uint64(i)) {
				t.Fatalf("byte %d differs", off+uint64(i))
			}
		}
		off += uint64(n)
		mu.Lock()
		slow := !slowed && off >= slowAt
		slowed = slowed || slow
		mu.Unlock()
		if slow {
			onAtSlowdown = c.Server()
			slow := fast
			slow.Bandwidth = 20 << 10
			if err := sc.net.SetLinkOneWay(sc.servers[0], sc.client, slow); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Not "ends on s2": on a loaded machine the policy may also fire on
	// the healthy server; what matters is that it left the slowed one.
	mu.Lock()
	n := movedAfterSlowdown
	mu.Unlock()
	if n == 0 && onAtSlowdown != sc.addrs[1] {
		t.Fatal("the rate policy never moved the connection off the slowed server")
	}
	_ = c.Close()
	sc.waitIdle(t)
}

// waitIdle waits (bounded) until no server owns a connection, so the
// network is not torn down under a CLOSE still in flight.
func (sc *simCluster) waitIdle(t *testing.T) {
	waitFor(t, func() bool {
		for _, l := range sc.lns {
			if l.NumConns() > 0 {
				return false
			}
		}
		return true
	})
}

// BenchmarkMigrationRoundTripsSimnet counts a migration in round trips: on
// links with a 2 ms one-way delay, the time of one migration divided by
// the round-trip time (a plain TCP connect costs 1 RTT, so connect + one
// exchange is 2).
func BenchmarkMigrationRoundTripsSimnet(b *testing.B) {
	const delay = 2 * time.Millisecond
	rtt := 2 * delay
	b.Run("baseline-tcp-connect-rtt", func(b *testing.B) {
		sc := newSimCluster(b, 1, simnet.LinkConfig{Delay: delay})
		_ = sc.lns[0].Close() // free the port for a plain echo server
		ln, err := sc.servers[0].Listen("tcp", ":81")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer nc.Close(); _, _ = io.Copy(nc, nc) }()
			}
		}()
		one := make([]byte, 1)
		var total time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			nc, err := sc.client.DialContext(context.Background(), "tcp", "10.0.0.2:81")
			if err != nil {
				b.Fatal(err)
			}
			_, _ = nc.Write(one)
			if _, err := io.ReadFull(nc, one); err != nil {
				b.Fatal(err)
			}
			total += time.Since(t0)
			b.StopTimer()
			nc.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(total)/float64(b.N)/float64(rtt), "RTTs/op")
	})
	for _, standby := range []bool{false, true} {
		name := "lazy"
		if standby {
			name = "lazy-standby"
		}
		b.Run(name, func(b *testing.B) {
			sc := newSimCluster(b, 2, simnet.LinkConfig{Delay: delay})
			for _, l := range sc.lns {
				go func() {
					for {
						c, err := l.AcceptMTCP()
						if err != nil {
							return
						}
						go serveStateEcho(c, 10<<10)
					}
				}()
			}
			d := sc.dialer(Triggers{KeepAlive: time.Minute, PathTimeout: time.Hour})
			d.Standby = standby
			c, err := d.DialMTCP(context.Background(), sc.addrs[0])
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			one := make([]byte, 1)
			// Warm the peer channels both ways.
			for _, a := range []string{sc.addrs[1], sc.addrs[0]} {
				if err := c.Migrate(context.Background(), a); err != nil {
					b.Fatal(err)
				}
			}
			var total time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				target := sc.addrs[(i+1)%2]
				b.StopTimer()
				_, _ = c.Write(one)
				_, _ = io.ReadFull(c, one)
				for k := 0; standby && k < 1000; k++ {
					c.mu.Lock()
					ready := c.cl.standby != nil && c.cl.standby.addr == target
					c.mu.Unlock()
					if ready {
						break
					}
					time.Sleep(time.Millisecond)
				}
				b.StartTimer()
				t0 := time.Now()
				if err := c.Migrate(context.Background(), target); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
			}
			b.ReportMetric(float64(total)/float64(b.N)/float64(rtt), "RTTs/migration")
		})
	}
}
