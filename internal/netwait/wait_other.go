//go:build !unix

package netwait

import (
	"net"
	"sync"
)

// Supported is false here: nothing can wait without a buffer.
func Supported(net.Conn) bool { return false }

// ReadPooled returns ok false at once: read c as usual.
func ReadPooled(net.Conn, *sync.Pool) (buf *[]byte, n int, err error, ok bool) {
	return nil, 0, nil, false
}
