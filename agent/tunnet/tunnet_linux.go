//go:build linux

package tunnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

const nicID tcpip.NICID = 1

// Interface is a TUN device with a route to it for each service address
// and the netstack that terminates the connections to them.
type Interface struct {
	name   string
	mtu    int
	log    *slog.Logger
	fd     int
	stack  *stack.Stack
	routes *hostRoutes
	ln     *listener
	up     bool // Open succeeded

	closing   atomic.Bool // the device's reader stopping is no failure then
	closeOnce sync.Once
	closeErr  error
}

// Open creates the device, configures the host (MTU, up, routes) and
// starts listening on the services. Close undoes it all.
func Open(cfg Config) (*Interface, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	addrs := cfg.addrs()
	if err := checkNotLocal(addrs); err != nil {
		return nil, err
	}
	fd, err := createDevice(cfg.Name)
	if err != nil {
		return nil, err
	}
	ifc := &Interface{name: cfg.Name, mtu: cfg.MTU, log: cfg.Logger, fd: fd}
	if err := ifc.start(cfg, addrs); err != nil {
		ifc.Close()
		return nil, err
	}
	return ifc, nil
}

// start builds the netstack on the device, then routes the services to it:
// when the first packet comes, the stack is there to answer it.
func (ifc *Interface) start(cfg Config, addrs []netip.Addr) error {
	link, err := fdbased.New(&fdbased.Options{
		FDs: []int{ifc.fd},
		MTU: uint32(cfg.MTU),
		// The host's TCP computes its checksums for a TUN device (it
		// offers no offload without a virtio header), and nothing on
		// the way can corrupt them: no need to verify them again.
		RXChecksumOffload: true,
		ClosedFunc: func(e tcpip.Error) {
			if e != nil && !ifc.closing.Load() {
				ifc.log.Error("TUN device failed", "dev", ifc.name, "err", e)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("tun: link endpoint: %w", err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	ifc.stack = s
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate} {
		if terr := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); terr != nil {
			return fmt.Errorf("tun: netstack: set %T: %s", opt, terr)
		}
	}
	if terr := s.CreateNIC(nicID, link); terr != nil {
		return fmt.Errorf("tun: netstack: create NIC: %s", terr)
	}
	for _, a := range addrs {
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if terr := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); terr != nil {
			return fmt.Errorf("tun: netstack: add address %v: %s", a, terr)
		}
	}
	// Every answer goes back through the device: the host routes it to
	// the application.
	s.SetRouteTable([]tcpip.Route{
		{Destination: anyIPv4(), NIC: nicID},
		{Destination: anyIPv6(), NIC: nicID},
	})
	if ifc.ln, err = listen(s, cfg.Services); err != nil {
		return fmt.Errorf("tun: %w", err)
	}
	if ifc.routes, err = configureHost(cfg.Name, cfg.MTU, addrs); err != nil {
		return err
	}
	ifc.up = true
	ifc.log.Info("TUN device up", "dev", ifc.name, "mtu", ifc.mtu, "services", fmt.Sprint(cfg.Services))
	return nil
}

// anyIPv4 and anyIPv6 are the default routes' destinations.
func anyIPv4() tcpip.Subnet {
	s, _ := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{}), tcpip.MaskFromBytes(make([]byte, 4)))
	return s
}

func anyIPv6() tcpip.Subnet {
	s, _ := tcpip.NewSubnet(tcpip.AddrFrom16([16]byte{}), tcpip.MaskFromBytes(make([]byte, 16)))
	return s
}

// Name returns the device's name.
func (ifc *Interface) Name() string { return ifc.name }

// Listener returns the listener on every service: each connection an
// application opens to one of them, as a *Conn. Closing it stops
// accepting; the device and the connections accepted go on until Close.
func (ifc *Interface) Listener() net.Listener { return ifc.ln }

// Close deletes the routes, stops the netstack (resetting connections
// still open) and closes the device, which the kernel then removes.
func (ifc *Interface) Close() error {
	ifc.closeOnce.Do(func() {
		ifc.closing.Store(true)
		var errs []error
		if ifc.routes != nil {
			errs = append(errs, ifc.routes.remove())
		}
		if ifc.ln != nil {
			ifc.ln.Close()
		}
		if ifc.stack != nil {
			// Removing the NIC stops the device's reader and waits for
			// it: only then may its descriptor close.
			ifc.stack.Destroy()
		}
		if err := unix.Close(ifc.fd); err != nil {
			errs = append(errs, fmt.Errorf("tun: close device %q: %w", ifc.name, err))
		}
		ifc.closeErr = errors.Join(errs...)
		if ifc.up {
			ifc.log.Info("TUN device closed", "dev", ifc.name)
		}
	})
	return ifc.closeErr
}
