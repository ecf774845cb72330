package agent

import (
	"context"
	"io"
	"net"
	"testing"

	"hafe.dev/hafe/mtcp"
)

// BenchmarkRoundTrip: a 100-byte request and its echo, on one MTCP
// connection straight to the server and through the agent (one more
// loopback hop each way).
func BenchmarkRoundTrip(b *testing.B) {
	cl := startCluster(b, 1, echoServer)
	_, addr := startAgent(b, Config{Servers: cl.addrs})
	run := func(b *testing.B, c net.Conn) {
		msg := make([]byte, 100)
		buf := make([]byte, 100)
		for b.Loop() {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("mtcp", func(b *testing.B) {
		c, err := (&mtcp.Dialer{}).DialMTCP(context.Background(), cl.addrs[0])
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
	b.Run("agent", func(b *testing.B) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
}
