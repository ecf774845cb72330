//go:build !unix

package netwait

import "net"

// Supported is false here: Readable cannot wait without a buffer.
func Supported(net.Conn) bool { return false }

// Readable returns false at once: read c as usual.
func Readable(net.Conn) bool { return false }
