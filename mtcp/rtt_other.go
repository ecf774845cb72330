//go:build !linux

package mtcp

import (
	"net"
	"time"
)

// pathRTT is not known off Linux; the client then always prepares.
func pathRTT(net.Conn) (time.Duration, bool) { return 0, false }
