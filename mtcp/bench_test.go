package mtcp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// serveStateEcho is the benchmarks' server application: it exports a state
// of stateSize bytes once, then echoes.
func serveStateEcho(c *Conn, stateSize int) {
	defer c.Close()
	st, ok := c.ImportState()
	if !ok {
		st = make([]byte, stateSize)
		if err := c.ExportState(st); err != nil {
			return
		}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// phaseTotals sums the servers' per-phase durations.
type phaseTotals struct {
	mu                                            sync.Mutex
	prepareRequest, waitReply, reinstate, prepare time.Duration
}

func (p *phaseTotals) add(s MigrationStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prepareRequest += s.PrepareRequest
	p.waitReply += s.WaitReply
	p.reinstate += s.Reinstate
	p.prepare += s.PrepareReply
}

func (p *phaseTotals) report(b *testing.B) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := float64(b.N)
	b.ReportMetric(float64(p.prepareRequest.Microseconds())/n, "srv-prepare-req-µs/op")
	b.ReportMetric(float64(p.waitReply.Microseconds())/n, "srv-wait-reply-µs/op")
	b.ReportMetric(float64(p.reinstate.Microseconds())/n, "srv-reinstate-µs/op")
	b.ReportMetric(float64(p.prepare.Microseconds())/n, "origin-prepare-reply-µs/op")
}

func benchCluster(b *testing.B, n, stateSize int, phases *phaseTotals, eager bool) *testCluster {
	var store SnapshotStore
	if eager {
		store = NewMemStore()
	}
	tc := newCluster(&testing.T{}, n, store, func(cfg *ListenConfig) {
		if phases != nil {
			cfg.OnMigration = phases.add
		}
		if eager {
			cfg.ClusterKey = nil // no peer channel: every migration reads the store
		}
	})
	for _, l := range tc.lns {
		go func() {
			for {
				c, err := l.AcceptMTCP()
				if err != nil {
					return
				}
				go serveStateEcho(c, stateSize)
			}
		}()
	}
	b.Cleanup(func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	})
	return tc
}

// BenchmarkMigration compares one lazy migration (client-measured, from
// starting the migration until the stream is reattached) with the baseline
// of a plain TCP connect plus one round trip, per state size. Run the
// sub-benchmarks together and compare their ns/op.
func BenchmarkMigration(b *testing.B) {
	b.Run("baseline-tcp-connect-rtt", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
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
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			if _, err := nc.Write(one); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(nc, one); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			nc.Close()
			b.StartTimer()
		}
	})
	b.Run("baseline-rtt", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			nc, err := ln.Accept()
			if err == nil {
				defer nc.Close()
				_, _ = io.Copy(nc, nc)
			}
		}()
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		one := make([]byte, 1)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := nc.Write(one); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(nc, one); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, size := range []int{0, 5 << 10, 10 << 10} {
		for _, standby := range []bool{false, true} {
			name := fmt.Sprintf("lazy-state-%dkB", size>>10)
			if standby {
				name += "-standby"
			}
			b.Run(name, func(b *testing.B) { benchMigrate(b, size, standby, false) })
		}
		b.Run(fmt.Sprintf("eager-state-%dkB", size>>10), func(b *testing.B) { benchMigrate(b, size, false, true) })
	}
}

func benchMigrate(b *testing.B, stateSize int, standby, eager bool) {
	var phases phaseTotals
	tc := benchCluster(b, 2, stateSize, &phases, eager)
	d := &Dialer{Servers: tc.addrs, Standby: standby, Triggers: Triggers{KeepAlive: time.Minute, PathTimeout: time.Hour}}
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	one := make([]byte, 1)
	roundTrip := func() {
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
	}
	roundTrip() // the state is exported
	// Warm the peer channels both ways, then count from zero.
	for _, a := range []string{tc.addrs[1], tc.addrs[0]} {
		if err := c.Migrate(context.Background(), a); err != nil {
			b.Fatal(err)
		}
		roundTrip()
	}
	phases = phaseTotals{}
	var initiate, wait, complete, usedStandby time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		target := tc.addrs[(i+1)%2]
		if standby {
			b.StopTimer()
			for k := 0; k < 1000 && c.Standby() != target; k++ {
				time.Sleep(time.Millisecond)
			}
			b.StartTimer()
		}
		if err := c.Migrate(context.Background(), target); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s := c.LastMigration()
		initiate += s.Initiate
		wait += s.Wait
		complete += s.Complete
		if s.Standby {
			usedStandby++
		}
		roundTrip() // the stream works; the new server's state is exported
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(initiate.Microseconds())/n, "initiate-µs/op")
	b.ReportMetric(float64(wait.Microseconds())/n, "wait-µs/op")
	b.ReportMetric(float64(complete.Microseconds())/n, "complete-µs/op")
	if standby {
		b.ReportMetric(float64(usedStandby)/n, "standby-used")
	}
	phases.report(b)
}

// BenchmarkThroughput compares bulk transfer client→server over MTCP and
// over raw TCP.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 64 << 10
	run := func(b *testing.B, dial func() (net.Conn, error), accepted <-chan net.Conn) {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		srv := <-accepted
		total := int64(b.N) * chunk
		done := make(chan int64)
		go func() {
			n, _ := io.Copy(io.Discard, srv)
			done <- n
		}()
		buf := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		if n := <-done; n != total {
			b.Fatalf("server read %d bytes, want %d", n, total)
		}
		b.StopTimer()
		c.Close()
		srv.Close()
	}
	b.Run("raw-tcp", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			nc, err := ln.Accept()
			if err == nil {
				accepted <- nc
			}
		}()
		run(b, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }, accepted)
	})
	b.Run("mtcp", func(b *testing.B) {
		l, err := Listen("tcp", "127.0.0.1:0", ListenConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err == nil {
				accepted <- c
			}
		}()
		d := &Dialer{}
		run(b, func() (net.Conn, error) { return d.Dial("tcp", l.Addr().String()) }, accepted)
	})
}

// BenchmarkIdleConnMemory measures the heap and stack one idle server
// connection holds (after some traffic), reported as bytes/conn. The
// client ends are bare TCP sockets that did the MTCP handshake by hand, so
// they cost (almost) nothing in this process.
func BenchmarkIdleConnMemory(b *testing.B) {
	const n = 500
	for i := 0; i < b.N; i++ {
		l, err := Listen("tcp", "127.0.0.1:0", ListenConfig{})
		if err != nil {
			b.Fatal(err)
		}
		var mu sync.Mutex
		var conns []*Conn
		go func() {
			for {
				c, err := l.AcceptMTCP()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
		var clients []net.Conn
		// Warm up so lazily grown runtime structures are not counted.
		measure := func() uint64 {
			runtime.GC()
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return ms.HeapInuse + ms.StackInuse
		}
		open := func() net.Conn {
			nc, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			br := bufio.NewReader(nc)
			typ, _, err := exchange(context.Background(), nc, br, wire.AppendHello(nil, wire.Hello{Version: wire.Version}), 10*time.Second)
			if err != nil || typ != wire.TypeWelcome {
				b.Fatal(typ, err)
			}
			// Some traffic, then idle: 16 kB in, acknowledged.
			if _, err := nc.Write(wire.AppendData(nil, 0, make([]byte, 16<<10))); err != nil {
				b.Fatal(err)
			}
			return nc
		}
		for k := 0; k < 20; k++ {
			clients = append(clients, open())
		}
		waitConns := func(want int) {
			for k := 0; k < 1000; k++ {
				mu.Lock()
				got := len(conns)
				mu.Unlock()
				if got >= want {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		waitConns(20)
		// Let the applications read what arrived, as an idle server would.
		drained := 0
		drain := func() {
			mu.Lock()
			defer mu.Unlock()
			buf := make([]byte, 16<<10)
			for _, c := range conns[drained:] {
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				_ = c.ExportState(nil) // snapshot: the input log is released
			}
			drained = len(conns)
		}
		drain()
		before := measure()
		for k := 0; k < n; k++ {
			clients = append(clients, open())
		}
		waitConns(20 + n)
		drain()
		time.Sleep(50 * time.Millisecond)
		after := measure()
		b.ReportMetric(float64(after-before)/n, "bytes/conn")
		for _, nc := range clients {
			nc.Close()
		}
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		l.Close()
	}
}
