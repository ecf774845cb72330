//go:build unix

package agent

import (
	"errors"
	"net"
	"syscall"
)

// waitReadable blocks until c has bytes, an end of stream or an error to
// read, holding no buffer meanwhile; false if c cannot be waited on so
// (then read it as usual). An idle connection then costs the agent no
// read buffer on its client side.
func waitReadable(c net.Conn) bool {
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
	// An error here (closed, deadline) is the next Read's to report.
	return true
}
