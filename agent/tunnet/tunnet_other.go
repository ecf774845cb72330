//go:build !linux

package tunnet

import (
	"fmt"
	"net"
)

// Interface is a TUN device and its netstack; on this system there is
// none.
type Interface struct{}

// Open fails: TUN mode needs Linux.
func Open(cfg Config) (*Interface, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("tun: %w", ErrNotSupported)
}

// Name returns "".
func (*Interface) Name() string { return "" }

// Listener returns nil.
func (*Interface) Listener() net.Listener { return nil }

// Close does nothing.
func (*Interface) Close() error { return nil }
