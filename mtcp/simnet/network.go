package simnet

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

var (
	// ErrClosed is returned by a Network that has been closed.
	ErrClosed = errors.New("simnet: network closed")
	// ErrNoLink is returned when two hosts have no link between them.
	ErrNoLink = errors.New("simnet: hosts not linked")
	// ErrLinked is returned by Link when the hosts are already linked.
	ErrLinked = errors.New("simnet: hosts already linked")
)

// DefaultMTU is the MTU of every host when Config.MTU is 0.
const DefaultMTU = 1500

// Config configures a Network.
type Config struct {
	// Seed seeds the loss PRNG of every link direction and the random
	// source of every stack (ISNs, ephemeral ports). Any value, including
	// 0, is a valid seed.
	Seed uint64
	// Logger receives topology changes (links, partitions, crashes), never
	// per-packet events. nil discards them.
	Logger *slog.Logger
	// MTU of every host's interface in bytes; 0 means DefaultMTU.
	MTU int
}

// Network is a set of hosts and the links between them. Its methods are
// safe for concurrent use.
type Network struct {
	cfg  Config
	log  *slog.Logger
	done chan struct{} // closed by Close; stops the path goroutines
	wg   sync.WaitGroup

	mu     sync.RWMutex
	closed bool
	byAddr map[netip.Addr]*Host
	byName map[string]*Host
	paths  map[pair]*path
}

// pair names one direction of a link.
type pair struct{ from, to *Host }

// New returns an empty network. Close it to stop its goroutines.
func New(cfg Config) *Network {
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Network{
		cfg:    cfg,
		log:    log.With("component", "simnet"),
		done:   make(chan struct{}),
		byAddr: make(map[netip.Addr]*Host),
		byName: make(map[string]*Host),
		paths:  make(map[pair]*path),
	}
}

// AddHost adds a host with its own TCP/IP stack and one IPv4 address. The
// host reaches no one until it is linked.
func (n *Network) AddHost(name string, addr netip.Addr) (*Host, error) {
	addr = addr.Unmap()
	if !addr.Is4() || addr.IsUnspecified() || addr.IsMulticast() {
		return nil, fmt.Errorf("simnet: host %q: address %v is not a unicast IPv4 address", name, addr)
	}
	if name == "" {
		return nil, errors.New("simnet: empty host name")
	}
	// The stack is built without n.mu held: it may send packets, and
	// sending takes n.mu.
	h, err := newHost(n, name, addr, n.seed("host", name))
	if err != nil {
		return nil, err
	}
	if err := n.register(h); err != nil {
		h.stack.Destroy()
		return nil, err
	}
	n.log.Debug("host added", "host", name, "addr", addr)
	return h, nil
}

func (n *Network) register(h *Host) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if _, ok := n.byName[h.name]; ok {
		return fmt.Errorf("simnet: host name %q already in use", h.name)
	}
	if other, ok := n.byAddr[h.addr]; ok {
		return fmt.Errorf("simnet: address %v already belongs to host %q", h.addr, other.name)
	}
	n.byName[h.name] = h
	n.byAddr[h.addr] = h
	return nil
}

// Host returns the host with the given name, or nil.
func (n *Network) Host(name string) *Host {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.byName[name]
}

// Link joins a and b with a link configured by cfg in both directions and
// routes each host's address to the other.
func (n *Network) Link(a, b *Host, cfg LinkConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if a == b {
		return fmt.Errorf("simnet: cannot link host %q to itself", a.name)
	}
	if a.net != n || b.net != n {
		return errors.New("simnet: host belongs to another network")
	}
	if err := n.addPaths(a, b, cfg); err != nil {
		return err
	}
	// Routes last, and without n.mu: the stacks may send at once.
	a.addRoute(b.addr)
	b.addRoute(a.addr)
	n.log.Info("link up", "a", a.name, "b", b.name, "config", cfg)
	return nil
}

func (n *Network) addPaths(a, b *Host, cfg LinkConfig) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed // and Close may be waiting for n.wg
	}
	if _, ok := n.paths[pair{a, b}]; ok {
		return fmt.Errorf("link %s-%s: %w", a.name, b.name, ErrLinked)
	}
	for _, pr := range []pair{{a, b}, {b, a}} {
		p := newPath(pr.from, pr.to, cfg, n.seed("path", pr.from.name, pr.to.name))
		n.paths[pr] = p
		n.wg.Go(func() { p.run(n.done) })
	}
	return nil
}

// SetLink changes both directions of the link between a and b. Packets
// already in flight keep their schedule.
func (n *Network) SetLink(a, b *Host, cfg LinkConfig) error {
	return n.setConfig(a, b, cfg, true)
}

// SetLinkOneWay changes only the direction from → to of a link, e.g. to
// slow down what a server sends but not what it receives.
func (n *Network) SetLinkOneWay(from, to *Host, cfg LinkConfig) error {
	return n.setConfig(from, to, cfg, false)
}

func (n *Network) setConfig(from, to *Host, cfg LinkConfig, both bool) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	paths, err := n.linkPaths(from, to, both)
	if err != nil {
		return err
	}
	for _, p := range paths {
		p.setConfig(cfg)
	}
	n.log.Info("link changed", "from", from.name, "to", to.name, "both_ways", both, "config", cfg)
	return nil
}

// LinkConfig returns the configuration of the direction from → to.
func (n *Network) LinkConfig(from, to *Host) (LinkConfig, error) {
	p, err := n.path(from, to)
	if err != nil {
		return LinkConfig{}, err
	}
	return p.config(), nil
}

// Partition cuts the link between a and b in both directions: packets in
// flight and packets sent later are dropped until Heal. Connections are not
// told; they see silence, as across a real partition.
func (n *Network) Partition(a, b *Host) error {
	return n.setCut(a, b, true, true)
}

// PartitionOneWay cuts only the direction from → to, an asymmetric failure
// where from still hears to. Heal restores it.
func (n *Network) PartitionOneWay(from, to *Host) error {
	return n.setCut(from, to, false, true)
}

// Heal restores both directions of the link between a and b.
func (n *Network) Heal(a, b *Host) error {
	return n.setCut(a, b, true, false)
}

func (n *Network) setCut(from, to *Host, both, cut bool) error {
	paths, err := n.linkPaths(from, to, both)
	if err != nil {
		return err
	}
	for _, p := range paths {
		p.setCut(cut)
	}
	if cut {
		n.log.Info("link partitioned", "from", from.name, "to", to.name, "both_ways", both)
	} else {
		n.log.Info("link healed", "a", from.name, "b", to.name)
	}
	return nil
}

// Stats returns the counters of the direction from → to of a link.
func (n *Network) Stats(from, to *Host) (LinkStats, error) {
	p, err := n.path(from, to)
	if err != nil {
		return LinkStats{}, err
	}
	return p.snapshot(), nil
}

// linkPaths returns the path from → to and, if both, the path back.
func (n *Network) linkPaths(from, to *Host, both bool) ([]*path, error) {
	p, err := n.path(from, to)
	if err != nil || !both {
		return []*path{p}, err
	}
	back, err := n.path(to, from)
	return []*path{p, back}, err
}

func (n *Network) path(from, to *Host) (*path, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		return nil, ErrClosed
	}
	p, ok := n.paths[pair{from, to}]
	if !ok {
		return nil, fmt.Errorf("link %s-%s: %w", from.name, to.name, ErrNoLink)
	}
	return p, nil
}

// route is called by a host's nic for every outbound packet. Packets to an
// unknown or unlinked address vanish; the stack's routes normally prevent
// them from being sent at all.
func (n *Network) route(now time.Time, from *Host, data []byte) {
	dst, ok := ipv4Dst(data)
	if !ok {
		return
	}
	n.mu.RLock()
	var p *path
	if to := n.byAddr[dst]; to != nil && !n.closed {
		p = n.paths[pair{from, to}]
	}
	n.mu.RUnlock()
	if p != nil {
		p.send(now, data)
	}
}

// Close crashes every host, which aborts their connections and listeners,
// and stops every goroutine the network started. It waits for them.
func (n *Network) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	hosts := make([]*Host, 0, len(n.byName))
	for _, h := range n.byName {
		hosts = append(hosts, h)
	}
	n.mu.Unlock()

	close(n.done)
	n.wg.Wait()
	for _, h := range hosts {
		h.Crash()
	}
	n.log.Debug("network closed", "hosts", len(hosts))
	return nil
}

// seed derives a stable seed for one named part of the network, so that
// adding a host or link does not change the randomness of the others.
func (n *Network) seed(parts ...string) uint64 {
	f := fnv.New64a()
	for _, p := range parts {
		io.WriteString(f, p)
		f.Write([]byte{0})
	}
	return f.Sum64() ^ n.cfg.Seed
}
