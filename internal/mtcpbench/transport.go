package mtcpbench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"hafe.dev/hafe/mtcp/simnet"
)

// dialFunc opens a transport connection; nil means the kernel's TCP.
type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

// transport is where a benchmark's hosts live: the kernel's loopback, or a
// simulated network whose links add a propagation delay (the regime of
// the seed's LAN, where round trips dominate software costs).
type transport interface {
	// listen opens a listener on host i; servers are hosts 0…n-1, the
	// baseline's echo server is host n. An MTCP server listens as
	// mtcp.Listen does; a plain one (the baseline) as net.Listen does.
	listen(i int, plain bool) (ln net.Listener, self string, err error)
	// dialFrom returns how host i dials (the client is host -1).
	dialFrom(i int) dialFunc
	Close() error
	String() string
}

type loopback struct{}

func (loopback) listen(_ int, plain bool) (net.Listener, string, error) {
	var lc net.ListenConfig // Go's default: OS keepalive on accepted conns
	if !plain {
		lc.KeepAlive = -1 // MTCP pings on its own, as mtcp.Listen sets up
	}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	return ln, ln.Addr().String(), nil
}

func (loopback) dialFrom(int) dialFunc { return nil }
func (loopback) Close() error          { return nil }
func (loopback) String() string        { return "loopback (kernel TCP)" }

// simulated is n+1 server hosts and a client on a simnet network, every
// pair linked with the same one-way delay.
type simulated struct {
	net    *simnet.Network
	client *simnet.Host
	hosts  []*simnet.Host
	delay  time.Duration
}

func newSimulated(n int, delay time.Duration) (*simulated, error) {
	s := &simulated{net: simnet.New(simnet.Config{Seed: 1}), delay: delay}
	var err error
	if s.client, err = s.net.AddHost("client", netip.MustParseAddr("10.0.0.1")); err != nil {
		return nil, err
	}
	for i := 0; i <= n; i++ {
		h, err := s.net.AddHost(fmt.Sprintf("h%d", i), netip.AddrFrom4([4]byte{10, 0, 0, byte(2 + i)}))
		if err != nil {
			_ = s.net.Close()
			return nil, err
		}
		s.hosts = append(s.hosts, h)
	}
	all := append([]*simnet.Host{s.client}, s.hosts...)
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if err := s.net.Link(all[i], all[j], simnet.LinkConfig{Delay: delay}); err != nil {
				_ = s.net.Close()
				return nil, err
			}
		}
	}
	return s, nil
}

func (s *simulated) listen(i int, _ bool) (net.Listener, string, error) {
	ln, err := s.hosts[i].Listen("tcp", ":80")
	if err != nil {
		return nil, "", err
	}
	return ln, fmt.Sprintf("%s:80", s.hosts[i].Addr()), nil
}

func (s *simulated) dialFrom(i int) dialFunc {
	h := s.client
	if i >= 0 {
		h = s.hosts[i]
	}
	return func(ctx context.Context, addr string) (net.Conn, error) { return h.DialContext(ctx, "tcp", addr) }
}

func (s *simulated) Close() error { return s.net.Close() }
func (s *simulated) String() string {
	return fmt.Sprintf("simulated network (gVisor netstack), %s one-way delay on every link", s.delay)
}
