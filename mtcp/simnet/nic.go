package simnet

import (
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// nic is a host's only network interface: a stack.LinkEndpoint whose
// outbound packets go to the Network, which picks the link by destination
// address, like a switch port. Packets carry no link-layer header.
type nic struct {
	host *Host
	mtu  uint32

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
}

var _ stack.LinkEndpoint = (*nic)(nil)

// WritePackets implements stack.LinkEndpoint. It never blocks: a packet the
// network cannot carry is dropped, which TCP recovers from.
func (e *nic) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	now := time.Now()
	for _, pkt := range pkts.AsSlice() {
		data := make([]byte, 0, pkt.Size())
		for _, s := range pkt.AsSlices() {
			data = append(data, s...)
		}
		e.host.net.route(now, e.host, data)
	}
	return pkts.Len(), nil
}

// deliver hands an IP packet to the host's stack; false if the host cannot
// take it.
func (e *nic) deliver(data []byte) bool {
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if d == nil || e.host.crashed.Load() {
		return false
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(data)})
	d.DeliverNetworkPacket(ipv4.ProtocolNumber, pkt)
	pkt.DecRef()
	return true
}

// ipv4Dst returns the destination of an IPv4 packet.
func ipv4Dst(data []byte) (netip.Addr, bool) {
	if len(data) < header.IPv4MinimumSize || header.IPVersion(data) != header.IPv4Version {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(header.IPv4(data).DestinationAddress().As4()), true
}

// Attach implements stack.LinkEndpoint.
func (e *nic) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.dispatcher = d
	e.mu.Unlock()
}

// IsAttached implements stack.LinkEndpoint.
func (e *nic) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// MTU implements stack.LinkEndpoint.
func (e *nic) MTU() uint32 { return e.mtu }

// SetMTU implements stack.LinkEndpoint; the MTU is fixed by Config.MTU.
func (e *nic) SetMTU(uint32) {}

// Capabilities implements stack.LinkEndpoint. Links never corrupt packets,
// so checksums are neither computed nor verified, which saves CPU in
// benchmarks.
func (*nic) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityTXChecksumOffload | stack.CapabilityRXChecksumOffload
}

// MaxHeaderLength implements stack.LinkEndpoint.
func (*nic) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.
func (*nic) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.
func (*nic) SetLinkAddress(tcpip.LinkAddress) {}

// Wait implements stack.LinkEndpoint; a nic has no goroutines.
func (*nic) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (*nic) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.
func (*nic) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.
func (*nic) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.LinkEndpoint.
func (e *nic) Close() {
	e.mu.Lock()
	e.dispatcher = nil
	e.mu.Unlock()
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (*nic) SetOnCloseAction(func()) {}
