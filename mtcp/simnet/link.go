package simnet

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// DefaultQueueBytes is the serialisation queue of a bandwidth-limited link
// when LinkConfig.QueueBytes is 0.
const DefaultQueueBytes = 128 << 10

// LinkConfig describes one direction of a link, or both when passed to
// Network.Link or Network.SetLink. The zero value is a perfect link: no
// delay, no loss, unlimited bandwidth.
type LinkConfig struct {
	// Delay is the one-way propagation delay added to every packet.
	Delay time.Duration
	// Jitter adds a uniformly random extra delay in [0, Jitter) to each
	// packet. Packets still arrive in order: one that would overtake its
	// predecessor arrives with it.
	Jitter time.Duration
	// Loss is the probability in [0, 1] that a packet is dropped on the wire.
	Loss float64
	// Bandwidth in bytes per second, counting IP and TCP headers; 0 means
	// unlimited. A packet of n bytes occupies the link for n/Bandwidth
	// seconds, and packets queue behind each other.
	Bandwidth int64
	// QueueBytes bounds the bytes a bandwidth-limited link holds that are
	// not yet fully serialised, counting the packet on the wire; a packet
	// that does not fit is dropped (tail drop), as a router would. 0 means
	// DefaultQueueBytes.
	QueueBytes int
}

func (c LinkConfig) validate() error {
	switch {
	case c.Delay < 0:
		return fmt.Errorf("simnet: negative delay %v", c.Delay)
	case c.Jitter < 0:
		return fmt.Errorf("simnet: negative jitter %v", c.Jitter)
	case !(c.Loss >= 0 && c.Loss <= 1):
		return fmt.Errorf("simnet: loss %v outside [0, 1]", c.Loss)
	case c.Bandwidth < 0:
		return fmt.Errorf("simnet: negative bandwidth %d", c.Bandwidth)
	case c.QueueBytes < 0:
		return fmt.Errorf("simnet: negative queue size %d", c.QueueBytes)
	}
	return nil
}

// LinkStats counts the packets one direction of a link has handled.
type LinkStats struct {
	Sent           uint64 // packets offered to the link
	Delivered      uint64 // packets handed to the receiving host
	DeliveredBytes uint64 // bytes of IP packets delivered
	Lost           uint64 // dropped at random (LinkConfig.Loss)
	Overflowed     uint64 // dropped because the queue was full
	Cut            uint64 // dropped by a partition or a crashed host
}

// verdict is what the scheduler decides for one packet.
type verdict int

const (
	admitted verdict = iota
	lost
	overflowed
)

// scheduler is the pure timing model of one direction of a link: given the
// current time and a packet size it decides whether the packet is dropped
// and, if not, when it arrives. It does no I/O and reads no clock.
type scheduler struct {
	cfg LinkConfig
	rng *rand.Rand
	// free is when the sender finishes serialising the packets admitted so
	// far; a new packet starts at max(now, free).
	free time.Time
	// last is the arrival time of the latest admitted packet; arrivals never
	// go backwards, even when Delay is lowered, so the link stays FIFO.
	last time.Time
}

func (s *scheduler) admit(now time.Time, size int) (time.Time, verdict) {
	start := now
	if s.cfg.Bandwidth > 0 {
		if s.free.After(now) {
			start = s.free
			queue := s.cfg.QueueBytes
			if queue == 0 {
				queue = DefaultQueueBytes
			}
			if backlog := bytesIn(s.free.Sub(now), s.cfg.Bandwidth); backlog+int64(size) > int64(queue) {
				return time.Time{}, overflowed
			}
		}
		s.free = start.Add(serialisation(size, s.cfg.Bandwidth))
		start = s.free
	}
	// A packet lost on the wire has still used its share of the bandwidth.
	if s.cfg.Loss > 0 && s.rng.Float64() < s.cfg.Loss {
		return time.Time{}, lost
	}
	at := start.Add(s.cfg.Delay)
	if s.cfg.Jitter > 0 {
		at = at.Add(time.Duration(s.rng.Int64N(int64(s.cfg.Jitter))))
	}
	if at.Before(s.last) {
		at = s.last
	}
	s.last = at
	return at, admitted
}

// serialisation is how long size bytes occupy a link of bw bytes per second.
func serialisation(size int, bw int64) time.Duration {
	return time.Duration(int64(size) * int64(time.Second) / bw)
}

// bytesIn is how many bytes a link of bw bytes per second sends in d.
func bytesIn(d time.Duration, bw int64) int64 {
	return int64(d) * bw / int64(time.Second)
}

// packet is an IP packet in flight with the time it reaches the receiver.
type packet struct {
	at   time.Time
	data []byte
}

// path is one direction of a link: a timed FIFO queue drained by one
// goroutine that hands each packet to the receiving host when it is due.
type path struct {
	from, to *Host

	mu    sync.Mutex
	sched scheduler
	cut   bool // partitioned
	queue []packet
	stats LinkStats

	wake chan struct{} // capacity 1: a packet was queued
}

func newPath(from, to *Host, cfg LinkConfig, seed uint64) *path {
	return &path{
		from:  from,
		to:    to,
		sched: scheduler{cfg: cfg, rng: rand.New(rand.NewPCG(seed, 0x51e7))},
		wake:  make(chan struct{}, 1),
	}
}

// send queues data, which the path now owns, or drops it.
func (p *path) send(now time.Time, data []byte) {
	p.mu.Lock()
	p.stats.Sent++
	if p.cut {
		p.stats.Cut++
		p.mu.Unlock()
		return
	}
	at, v := p.sched.admit(now, len(data))
	switch v {
	case lost:
		p.stats.Lost++
	case overflowed:
		p.stats.Overflowed++
	case admitted:
		p.queue = append(p.queue, packet{at: at, data: data})
	}
	p.mu.Unlock()
	if v == admitted {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

func (p *path) setConfig(cfg LinkConfig) {
	p.mu.Lock()
	p.sched.cfg = cfg
	p.mu.Unlock()
}

func (p *path) config() LinkConfig {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sched.cfg
}

// setCut partitions or heals the path. Packets already on the wire are lost
// by a partition, as they would be when a cable is pulled.
func (p *path) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		p.stats.Cut += uint64(len(p.queue))
		clear(p.queue)
		p.queue = p.queue[:0]
	}
}

func (p *path) snapshot() LinkStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// due removes the packets due at now and returns them with the time the
// next one is due (zero if none is queued).
func (p *path) due(now time.Time, buf []packet) ([]packet, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for n < len(p.queue) && !p.queue[n].at.After(now) {
		n++
	}
	buf = append(buf, p.queue[:n]...)
	rest := copy(p.queue, p.queue[n:])
	clear(p.queue[rest:])
	p.queue = p.queue[:rest]
	if rest == 0 {
		return buf, time.Time{}
	}
	return buf, p.queue[0].at
}

// run delivers packets until done is closed.
func (p *path) run(done <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var batch []packet
	for {
		var next time.Time
		batch, next = p.due(time.Now(), batch[:0])
		for i := range batch {
			p.deliver(batch[i].data)
			batch[i] = packet{}
		}
		if len(batch) > 0 {
			continue // time has passed while delivering
		}
		var fire <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			fire = timer.C
		}
		select {
		case <-done:
			return
		case <-p.wake:
			timer.Stop()
		case <-fire:
		}
	}
}

func (p *path) deliver(data []byte) {
	ok := !p.from.crashed.Load() && p.to.nic.deliver(data)
	p.mu.Lock()
	if ok {
		p.stats.Delivered++
		p.stats.DeliveredBytes += uint64(len(data))
	} else {
		p.stats.Cut++ // one of the hosts has crashed
	}
	p.mu.Unlock()
}
