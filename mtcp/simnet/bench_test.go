package simnet

import (
	"context"
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

// BenchmarkThroughput streams 64 KiB writes from server to client; compare
// MB/s across link settings (e.g. unlimited against 10MiBps).
func BenchmarkThroughput(b *testing.B) {
	for _, bc := range []struct {
		name string
		cfg  LinkConfig
	}{
		{"unlimited", LinkConfig{}},
		{"10MiBps", LinkConfig{Bandwidth: 10 << 20}},
		{"10MiBps_5ms", LinkConfig{Bandwidth: 10 << 20, Delay: 5 * time.Millisecond}},
		{"1pct_loss", LinkConfig{Loss: 0.01}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tp := newTopology(b, bc.cfg)
			client, server := tp.connPair(b)
			chunk := randomBytes(6, 64<<10)
			done := make(chan int64)
			go func() {
				n, _ := io.Copy(io.Discard, client)
				done <- n
			}()
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			// Not b.Loop: the timer must run until the last byte arrives.
			for range b.N {
				if _, err := server.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			server.(interface{ CloseWrite() error }).CloseWrite()
			<-done // count the time until the last byte has arrived
			b.StopTimer()
		})
	}
}

// BenchmarkRoundTrip measures one-byte ping-pong latency; with Delay d it
// should be a little over 2d.
func BenchmarkRoundTrip(b *testing.B) {
	for _, delay := range []time.Duration{0, time.Millisecond, 5 * time.Millisecond} {
		b.Run("delay="+delay.String(), func(b *testing.B) {
			tp := newTopology(b, LinkConfig{Delay: delay})
			client, server := tp.connPair(b)
			go echo(server)
			buf := make([]byte, 1)
			for b.Loop() {
				if _, err := client.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(client, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnect measures a TCP handshake plus one round trip, the
// baseline mtcp's migration benchmarks compare against.
func BenchmarkConnect(b *testing.B) {
	for _, delay := range []time.Duration{0, time.Millisecond} {
		b.Run("delay="+delay.String(), func(b *testing.B) {
			tp := newTopology(b, LinkConfig{Delay: delay})
			ln, err := tp.server.Listen("tcp", ":0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go echo(c)
				}
			}()
			addr := net.JoinHostPort(tp.server.Addr().String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
			ctx := context.Background()
			buf := make([]byte, 1)
			for b.Loop() {
				c, err := tp.client.DialContext(ctx, "tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
