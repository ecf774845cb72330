//go:build !unix

package agent

import "net"

func waitReadable(net.Conn) bool { return false }
