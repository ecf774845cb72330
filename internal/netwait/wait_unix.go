//go:build unix

package netwait

import (
	"errors"
	"net"
	"syscall"
)

// Supported reports whether Readable can wait on c (a TCP or Unix
// socket; not TLS, whose records need a buffer anyway).
func Supported(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}

// Readable blocks until c has bytes, an end of stream or an error to
// read, holding no buffer meanwhile; false if c cannot be waited on so
// (then read it as usual). An error (closed, deadline) is left for the
// next Read to report.
func Readable(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var peek [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EINTR)
	})
	return true
}
