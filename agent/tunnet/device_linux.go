//go:build linux

package tunnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// createDevice creates the TUN device name (IP packets, no packet
// information header) and returns its descriptor. The device must not
// exist: an existing one, someone else's, is never taken over. It is not
// persistent: it vanishes when the descriptor closes.
func createDevice(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		return -1, fmt.Errorf("tun: %w: load the tun module (modprobe tun) or, in a container, pass the device (docker run --device /dev/net/tun; in Kubernetes, a hostPath volume of type CharDevice): %v", ErrNoTUN, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return -1, fmt.Errorf("tun: open /dev/net/tun: %w: %v", ErrPermission, err)
	case err != nil:
		return -1, fmt.Errorf("tun: open /dev/net/tun: %w", err)
	}
	var ifr struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(ifr.name[:], name)
	ifr.flags = unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_TUN_EXCL
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		unix.Close(fd)
		switch errno {
		case unix.EPERM, unix.EACCES:
			return -1, fmt.Errorf("tun: create device %q: %w: %v", name, ErrPermission, errno)
		case unix.EBUSY, unix.EEXIST:
			return -1, fmt.Errorf("tun: create device %q: %w (pick another --tun name, or remove it)", name, ErrNameTaken)
		}
		return -1, fmt.Errorf("tun: create device %q: %w", name, errno)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tun: device %q: %w", name, err)
	}
	return fd, nil
}

// hostRoutes is what Open set up on the host beside the device: the
// routes to delete on Close.
type hostRoutes struct {
	routes []netlink.Route
}

// checkNotLocal refuses a service address the host has already: the
// kernel delivers those locally, never to a route.
func checkNotLocal(addrs []netip.Addr) error {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil // the route would tell; this check only explains
	}
	for _, ifa := range ifas {
		p, err := netip.ParsePrefix(ifa.String())
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if p.Addr().Unmap() == a {
				return fmt.Errorf("tun: service address %v is an address of this host: the kernel would deliver it locally, not to the device; pick an unused one", a)
			}
		}
	}
	return nil
}

// configureHost sets the device's MTU, brings it up and routes each
// address to it. On failure it undoes what it did but the device itself.
func configureHost(name string, mtu int, addrs []netip.Addr) (*hostRoutes, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("tun: find device %q: %w", name, err)
	}
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return nil, fmt.Errorf("tun: set device %q's MTU to %d: %w", name, mtu, netlinkErr(err))
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("tun: bring device %q up: %w", name, netlinkErr(err))
	}
	h := &hostRoutes{}
	for _, a := range addrs {
		bits := a.BitLen()
		r := netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)},
		}
		if a.Is4() {
			r.Scope = netlink.SCOPE_LINK
		}
		if err := netlink.RouteAdd(&r); err != nil {
			h.remove()
			if errors.Is(err, unix.EEXIST) {
				return nil, fmt.Errorf("tun: route %v to %q: a route to that address exists already (ip route show %v)", a, name, a)
			}
			return nil, fmt.Errorf("tun: route %v to %q: %w", a, name, netlinkErr(err))
		}
		h.routes = append(h.routes, r)
	}
	return h, nil
}

// remove deletes the routes; those gone already are no error.
func (h *hostRoutes) remove() error {
	var errs []error
	for i := range h.routes {
		if err := netlink.RouteDel(&h.routes[i]); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("tun: delete route %v: %w", h.routes[i].Dst, err))
		}
	}
	h.routes = nil
	return errors.Join(errs...)
}

// netlinkErr names a refusal for lack of privilege.
func netlinkErr(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %v", ErrPermission, err)
	}
	return err
}
