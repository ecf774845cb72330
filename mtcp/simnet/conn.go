package simnet

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// conn is a gonet TCP connection whose errors look like the kernel's, so
// that code under test classifies them as it would in production: deadlines
// unwrap to os.ErrDeadlineExceeded, use after Close to net.ErrClosed, and
// TCP failures to syscall errnos (ECONNRESET, ETIMEDOUT, ...).
type conn struct {
	*gonet.TCPConn
	// Addresses are kept from the start: gonet loses them once the
	// endpoint is aborted, the kernel does not.
	laddr, raddr net.Addr
	closed       atomic.Bool
}

func newConn(c *gonet.TCPConn) *conn {
	return &conn{TCPConn: c, laddr: c.LocalAddr(), raddr: c.RemoteAddr()}
}

func (c *conn) LocalAddr() net.Addr  { return c.laddr }
func (c *conn) RemoteAddr() net.Addr { return c.raddr }

func (c *conn) Read(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.closedErr("read")
	}
	n, err := c.TCPConn.Read(b)
	if err != nil && c.closed.Load() {
		return n, c.closedErr("read")
	}
	return n, c.opErr(err)
}

func (c *conn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.closedErr("write")
	}
	n, err := c.TCPConn.Write(b)
	if err != nil && c.closed.Load() {
		return n, c.closedErr("write")
	}
	return n, c.opErr(err)
}

func (c *conn) Close() error {
	if c.closed.Swap(true) {
		return c.closedErr("close")
	}
	return c.TCPConn.Close()
}

func (c *conn) CloseRead() error  { return c.opErr(c.TCPConn.CloseRead()) }
func (c *conn) CloseWrite() error { return c.opErr(c.TCPConn.CloseWrite()) }

// opErr translates err and names the connection's addresses in it.
func (c *conn) opErr(err error) error {
	err = translate(err)
	if oe, ok := err.(*net.OpError); ok {
		oe.Source, oe.Addr = c.laddr, c.raddr
	}
	return err
}

func (c *conn) closedErr(op string) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: net.ErrClosed}
}

// listener is a gonet listener whose Accept fails with net.ErrClosed after
// Close, as a kernel listener's does.
type listener struct {
	*gonet.TCPListener
	host   *Host
	closed atomic.Bool
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.TCPListener.Accept()
	if err != nil {
		// A listener on a crashed host is as closed as one closed by hand.
		if l.closed.Load() || l.host.crashed.Load() {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		}
		return nil, translate(err)
	}
	return newConn(c.(*gonet.TCPConn)), nil
}

// Addr reports 0.0.0.0 for a listener on every address, as the kernel does.
func (l *listener) Addr() net.Addr {
	a, ok := l.TCPListener.Addr().(*net.TCPAddr)
	if !ok {
		return nil
	}
	if len(a.IP) == 0 {
		a.IP = net.IPv4zero
	}
	return a
}

func (l *listener) Close() error {
	if l.closed.Swap(true) {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	// Shutdown wakes a blocked Accept; Close releases the endpoint.
	l.TCPListener.Shutdown()
	return l.TCPListener.Close()
}

// errnos maps the text gonet gives netstack's errors to what the kernel
// reports for the same condition. gonet keeps only the text.
var errnos = map[string]error{
	(&tcpip.ErrConnectionRefused{}).String():    syscall.ECONNREFUSED,
	(&tcpip.ErrConnectionReset{}).String():      syscall.ECONNRESET,
	(&tcpip.ErrConnectionAborted{}).String():    syscall.ECONNABORTED,
	(&tcpip.ErrAborted{}).String():              syscall.ECONNABORTED,
	(&tcpip.ErrTimeout{}).String():              syscall.ETIMEDOUT,
	(&tcpip.ErrHostUnreachable{}).String():      syscall.EHOSTUNREACH,
	(&tcpip.ErrHostDown{}).String():             syscall.EHOSTDOWN,
	(&tcpip.ErrNetworkUnreachable{}).String():   syscall.ENETUNREACH,
	(&tcpip.ErrClosedForSend{}).String():        syscall.EPIPE,
	(&tcpip.ErrNotConnected{}).String():         syscall.ENOTCONN,
	(&tcpip.ErrPortInUse{}).String():            syscall.EADDRINUSE,
	(&tcpip.ErrBadLocalAddress{}).String():      syscall.EADDRNOTAVAIL,
	(&tcpip.ErrNoPortAvailable{}).String():      syscall.EADDRNOTAVAIL,
	(&tcpip.ErrInvalidEndpointState{}).String(): syscall.EINVAL,
}

// translate rewrites the cause inside a gonet *net.OpError; other errors,
// including io.EOF, pass through.
func translate(err error) error {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Err == nil {
		return err
	}
	var cause error
	var t interface{ Timeout() bool }
	switch {
	case errors.As(oe.Err, &t) && t.Timeout():
		cause = os.ErrDeadlineExceeded
	default:
		if e, ok := errnos[oe.Err.Error()]; ok {
			cause = &os.SyscallError{Syscall: oe.Op, Err: e}
		}
	}
	if cause == nil {
		return err
	}
	cp := *oe
	cp.Err = cause
	return &cp
}
