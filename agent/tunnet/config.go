package tunnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
)

// DefaultMTU is the device's MTU when Config.MTU is zero. The device's
// packets never leave the host, so it is as large as loopback's (less
// room for a possible header), which lets the host's TCP send large
// segments and saves the netstack per-packet work.
const DefaultMTU = 65520

// Sentinel errors Open wraps, for callers to tell apart.
var (
	// ErrNoTUN: the host has no /dev/net/tun (no tun module, or a
	// container not given the device).
	ErrNoTUN = errors.New("no /dev/net/tun")
	// ErrPermission: creating the device or its routes needs root or
	// CAP_NET_ADMIN.
	ErrPermission = errors.New("needs root or CAP_NET_ADMIN")
	// ErrNameTaken: a network interface of that name exists already.
	ErrNameTaken = errors.New("a network interface of that name exists already")
	// ErrNotSupported: TUN mode needs Linux.
	ErrNotSupported = errors.New("TUN mode needs Linux")
)

// Config configures an Interface.
type Config struct {
	// Name is the TUN device's name (at most 15 bytes); it must not
	// exist yet.
	Name string
	// MTU is the device's and the netstack's MTU (default DefaultMTU;
	// at least 576, and 1280 with an IPv6 service).
	MTU int
	// Services are the addresses and ports applications connect to.
	// Each address is routed to the device (a /32 or /128 host route);
	// a connection to another port of it is refused (reset).
	Services []netip.AddrPort
	// Logger receives the device's life events. Default: none.
	Logger *slog.Logger
}

// maxNameLen is IFNAMSIZ less its terminating NUL.
const maxNameLen = 15

// ParseService parses a --service value: ADDR:PORT, an IPv6 address in
// brackets ([fd00::1]:80).
func ParseService(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("service %q: want ADDR:PORT, e.g. 10.77.0.1:80 or [fd77::1]:80", s)
	}
	a := ap.Addr().Unmap()
	switch {
	case ap.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("service %q: port 0", s)
	case a.Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("service %q: an address with a zone cannot be routed", s)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast():
		return netip.AddrPort{}, fmt.Errorf("service %q: want a unicast address that can be routed (not unspecified, loopback, multicast or link-local)", s)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

// Check validates cfg and fills its defaults; Open checks it too.
func (cfg *Config) Check() error {
	switch {
	case cfg.Name == "":
		return errors.New("tun: no device name")
	case len(cfg.Name) > maxNameLen:
		return fmt.Errorf("tun: device name %q: at most %d bytes", cfg.Name, maxNameLen)
	case strings.ContainsAny(cfg.Name, "/: \t\n%") || cfg.Name == "." || cfg.Name == "..":
		return fmt.Errorf("tun: device name %q: no '/', ':', '%%', spaces, '.' or '..'", cfg.Name)
	}
	if len(cfg.Services) == 0 {
		return errors.New("tun: no service address")
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < 576 || cfg.MTU > 65535 {
		return fmt.Errorf("tun: MTU %d: want 576 to 65535", cfg.MTU)
	}
	cfg.Services = slices.Clone(cfg.Services)
	seen := map[netip.AddrPort]bool{}
	for i, s := range cfg.Services {
		s, err := ParseService(s.String())
		if err != nil {
			return fmt.Errorf("tun: %w", err)
		}
		cfg.Services[i] = s
		if s.Addr().Is6() && cfg.MTU < 1280 {
			return fmt.Errorf("tun: service %v: IPv6 needs an MTU of at least 1280, not %d", s, cfg.MTU)
		}
		if seen[s] {
			return fmt.Errorf("tun: service %v given twice", s)
		}
		seen[s] = true
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// addrs returns the distinct service addresses, in order of first
// appearance.
func (cfg *Config) addrs() []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range cfg.Services {
		if !seen[s.Addr()] {
			seen[s.Addr()] = true
			out = append(out, s.Addr())
		}
	}
	return out
}
