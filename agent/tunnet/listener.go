package tunnet

import (
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// listenBacklog bounds the connections the netstack has accepted and the
// agent has not yet taken, per service.
const listenBacklog = 1024

// listener accepts connections on every service of a netstack: one
// listening endpoint per service, all waited on together, so the agent
// needs one Serve loop whatever the number of services. Safe for
// concurrent use.
type listener struct {
	eps   []listening
	addr  net.Addr      // the first service's
	ready chan struct{} // a token: some endpoint may have a connection
	done  chan struct{}
	once  sync.Once

	mu   sync.Mutex
	next int // where the next Accept starts looking, for fairness
}

type listening struct {
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	entry waiter.Entry
}

// listen opens a listening endpoint for each service on s.
func listen(s *stack.Stack, services []netip.AddrPort) (*listener, error) {
	l := &listener{ready: make(chan struct{}, 1), done: make(chan struct{})}
	for _, svc := range services {
		wq := new(waiter.Queue)
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		if svc.Addr().Is6() {
			proto = ipv6.ProtocolNumber
		}
		ep, terr := s.NewEndpoint(tcp.ProtocolNumber, proto, wq)
		if terr != nil {
			l.Close()
			return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(svc), Err: tcpipError{terr}}
		}
		fa := tcpip.FullAddress{Addr: tcpip.AddrFromSlice(svc.Addr().AsSlice()), Port: svc.Port()}
		if terr := ep.Bind(fa); terr != nil {
			ep.Close()
			l.Close()
			return nil, &net.OpError{Op: "bind", Net: "tcp", Addr: net.TCPAddrFromAddrPort(svc), Err: tcpipError{terr}}
		}
		if terr := ep.Listen(listenBacklog); terr != nil {
			ep.Close()
			l.Close()
			return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(svc), Err: tcpipError{terr}}
		}
		le := listening{ep: ep, wq: wq}
		le.entry = waiter.NewFunctionEntry(waiter.ReadableEvents, func(waiter.EventMask) { l.wake() })
		wq.EventRegister(&le.entry)
		l.eps = append(l.eps, le)
		if l.addr == nil {
			l.addr = net.TCPAddrFromAddrPort(svc)
		}
	}
	return l, nil
}

// wake leaves a token for a waiting Accept.
func (l *listener) wake() {
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

// Accept returns the next connection to any service; net.ErrClosed once
// the listener is closed.
func (l *listener) Accept() (net.Conn, error) {
	for {
		select {
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
		default:
		}
		if c := l.tryAccept(); c != nil {
			l.wake() // more may be waiting, for another Accept
			return c, nil
		}
		select {
		case <-l.done:
		case <-l.ready:
		}
	}
}

// tryAccept takes a connection from one of the endpoints, if one has any.
func (l *listener) tryAccept() net.Conn {
	l.mu.Lock()
	start := l.next
	l.next++
	l.mu.Unlock()
	for i := range l.eps {
		le := l.eps[(start+i)%len(l.eps)]
		var peer tcpip.FullAddress
		ep, wq, terr := le.ep.Accept(&peer)
		if terr != nil {
			continue // ErrWouldBlock, or closed (done tells)
		}
		return newConn(wq, ep)
	}
	return nil
}

// Close stops accepting: connections the netstack accepted and Accept has
// not returned are reset. Connections accepted before go on.
func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		for _, le := range l.eps {
			le.wq.EventUnregister(&le.entry)
			le.ep.Close()
		}
	})
	return nil
}

// Addr returns the first service's address.
func (l *listener) Addr() net.Addr { return l.addr }

// Conn is a connection an application opened to a service, terminated in
// the netstack. It is a net.Conn with CloseWrite (a half-close) and Abort.
type Conn struct {
	*gonet.TCPConn
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	once sync.Once
}

func newConn(wq *waiter.Queue, ep tcpip.Endpoint) *Conn {
	return &Conn{TCPConn: gonet.NewTCPConn(wq, ep), ep: ep, wq: wq}
}

// WaitReadable blocks until the connection has bytes, an end of stream
// or an error to read, or is closed or aborted; it holds no buffer
// meanwhile, so an idle connection costs its reader none. It ignores
// deadlines.
func (c *Conn) WaitReadable() {
	const mask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	if c.ep.Readiness(mask) != 0 {
		return
	}
	e, ch := waiter.NewChannelEntry(mask)
	c.wq.EventRegister(&e)
	defer c.wq.EventUnregister(&e)
	if c.ep.Readiness(mask) != 0 {
		return
	}
	<-ch
}

// Close closes the connection (a FIN after the bytes written). Closing
// twice, or after Abort, does nothing.
func (c *Conn) Close() error {
	c.once.Do(c.ep.Close)
	return nil
}

// Abort ends the connection with a reset, so the application sees an
// error rather than an end of stream.
func (c *Conn) Abort() {
	c.once.Do(func() {
		c.ep.Abort()
		c.ep.Close()
	})
}

// tcpipError makes a netstack error an error.
type tcpipError struct{ e tcpip.Error }

func (e tcpipError) Error() string { return e.e.String() }
