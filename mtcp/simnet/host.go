package simnet

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

const nicID tcpip.NICID = 1

// Host is one machine on a Network: a gVisor stack with one interface and
// one IPv4 address. Its methods are safe for concurrent use.
type Host struct {
	net   *Network
	name  string
	addr  netip.Addr
	stack *stack.Stack
	nic   *nic

	crashed   atomic.Bool
	crashOnce sync.Once
}

// lockedSource makes a seeded math/rand source safe for concurrent use, as
// stack.Options.RandSource must be.
type lockedSource struct {
	mu  sync.Mutex
	src rand.Source
}

func (s *lockedSource) Int63() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.src.Int63()
}

func (s *lockedSource) Seed(seed int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.src.Seed(seed)
}

func newHost(n *Network, name string, addr netip.Addr, seed uint64) (*Host, error) {
	h := &Host{net: n, name: name, addr: addr}
	h.nic = &nic{host: h, mtu: uint32(n.cfg.MTU)}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
		// Connections to the host's own address stay inside its stack.
		HandleLocal: true,
		// The stack draws from it on several goroutines at once.
		RandSource: &lockedSource{src: rand.NewSource(int64(seed))},
	})
	h.stack = s
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			s.Destroy()
			return nil, fmt.Errorf("simnet: host %q: set %T: %s", name, opt, err)
		}
	}
	if err := s.CreateNIC(nicID, h.nic); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("simnet: host %q: create NIC: %s", name, err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(addr.As4()).WithPrefix(),
	}
	if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("simnet: host %q: add address %v: %s", name, addr, err)
	}
	return h, nil
}

// addRoute makes dst reachable through the host's interface.
func (h *Host) addRoute(dst netip.Addr) {
	h.stack.AddRoute(tcpip.Route{
		Destination: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(dst.As4()), PrefixLen: 32}.Subnet(),
		NIC:         nicID,
	})
}

// Name returns the host's name.
func (h *Host) Name() string { return h.name }

// Addr returns the host's IPv4 address.
func (h *Host) Addr() netip.Addr { return h.addr }

// String returns the host's name.
func (h *Host) String() string { return h.name }

// Stack returns the host's gVisor stack, for tuning TCP options in tests.
func (h *Host) Stack() *stack.Stack { return h.stack }

// Listen announces on the host. network must be "tcp" or "tcp4"; address is
// "host:port" where host is empty, the host's address or its name, and port
// 0 picks a free port.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	addr, err := h.resolve(network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	l, err := gonet.ListenTCP(h.stack, addr, ipv4.ProtocolNumber)
	if err != nil {
		return nil, translate(err)
	}
	return &listener{TCPListener: l, host: h}, nil
}

// DialContext connects to address on the named network; its signature fits
// net.Dialer.DialContext and http.Transport.DialContext. address is
// "host:port", where host is an IPv4 address or the name of a host on the
// same Network.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	addr, err := h.resolve(network, address, false)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	c, err := gonet.DialContextTCP(ctx, h.stack, addr, ipv4.ProtocolNumber)
	if err != nil {
		if ctx.Err() != nil && err == ctx.Err() {
			return nil, &net.OpError{Op: "dial", Net: network, Addr: tcpAddr(addr), Err: err}
		}
		err = translate(err)
		if oe, ok := err.(*net.OpError); ok {
			oe.Op = "dial" // as net.Dialer reports it
		}
		return nil, err
	}
	return newConn(c), nil
}

// Crash stops the host as if its power were cut: it sends and receives
// nothing more, its peers are not told, and its connections and listeners
// fail locally. A crashed host stays crashed; its name and address stay
// taken.
func (h *Host) Crash() {
	h.crashOnce.Do(func() {
		h.crashed.Store(true)
		h.stack.Close()
		h.stack.Wait()
		h.net.log.Info("host crashed", "host", h.name)
	})
}

func (h *Host) resolve(network, address string, listen bool) (tcpip.FullAddress, error) {
	switch network {
	case "tcp", "tcp4":
	default:
		return tcpip.FullAddress{}, net.UnknownNetworkError(network)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return tcpip.FullAddress{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return tcpip.FullAddress{}, &net.AddrError{Err: "invalid port", Addr: address}
	}
	if !listen && p == 0 {
		return tcpip.FullAddress{}, &net.AddrError{Err: "port 0 is not dialable", Addr: address}
	}
	fa := tcpip.FullAddress{Port: uint16(p)}
	var ip netip.Addr
	switch {
	case host == "" && listen:
		return fa, nil // every address of the host
	case host == "":
		ip = h.addr
	default:
		if ip, err = netip.ParseAddr(host); err != nil {
			other := h.net.Host(host)
			if other == nil {
				return tcpip.FullAddress{}, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
			}
			ip = other.addr
		}
	}
	ip = ip.Unmap()
	if !ip.Is4() {
		return tcpip.FullAddress{}, &net.AddrError{Err: "not an IPv4 address", Addr: host}
	}
	fa.Addr = tcpip.AddrFrom4(ip.As4())
	return fa, nil
}

func tcpAddr(a tcpip.FullAddress) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}
