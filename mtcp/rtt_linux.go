package mtcp

import (
	"crypto/tls"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pathRTT is the kernel's round-trip time of a TCP path: its windowed
// minimum, which tells how far the peer is better than the smoothed RTT
// does (that one carries the peer's delayed ACKs and scheduling). ok is
// false for paths that are not kernel TCP sockets.
func pathRTT(nc net.Conn) (rtt time.Duration, ok bool) {
	if tc, isTLS := nc.(*tls.Conn); isTLS {
		nc = tc.NetConn()
	}
	sc, isSys := nc.(syscall.Conn)
	if !isSys {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	cerr := raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil {
		return 0, false
	}
	us := info.Min_rtt
	if us == 0 || us == ^uint32(0) { // kernels before 4.6, or no sample yet
		us = info.Rtt
	}
	if us == 0 {
		return 0, false
	}
	return time.Duration(us) * time.Microsecond, true
}
