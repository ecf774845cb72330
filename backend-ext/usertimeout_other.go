//go:build !linux

package backendext

import (
	"syscall"
	"time"
)

// setUserTimeout: TCP_USER_TIMEOUT is Linux's; elsewhere keepalives alone
// detect a dead database.
func setUserTimeout(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
