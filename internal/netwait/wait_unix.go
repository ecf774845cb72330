//go:build unix

package netwait

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Supported reports whether ReadPooled can wait on c (a TCP
// or Unix socket; not TLS, whose records need a buffer anyway).
func Supported(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}

// ReadPooled reads from c into a buffer from pool (a *[]byte), taken only
// once bytes have arrived: while c is idle it holds none, and unlike a
// peek followed by a Read it costs no extra system call. It returns
// the buffer and the bytes read into it (nil when none were: the buffer is
// back in the pool), and an error as c's Read would (io.EOF at the end of
// stream). ok is false if c cannot be read so; then read it as usual.
func ReadPooled(c net.Conn, pool *sync.Pool) (buf *[]byte, n int, err error, ok bool) {
	rc := rawConn(c)
	if rc == nil {
		return nil, 0, nil, false
	}
	var rerr error
	werr := rc.Read(func(fd uintptr) bool {
		b := pool.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *b)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			pool.Put(b) // wait without it
			return false
		}
		if n <= 0 {
			n = 0
			pool.Put(b)
			return true
		}
		buf = b
		return true
	})
	switch {
	case werr != nil: // closed, or a deadline passed
		return nil, 0, opError(c, werr), true
	case rerr != nil:
		return nil, 0, opError(c, os.NewSyscallError("read", rerr)), true
	case buf == nil:
		return nil, 0, io.EOF, true
	}
	return buf, n, nil, true
}

func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// opError wraps err as net.Conn's Read would.
func opError(c net.Conn, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return err
	}
	return &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
