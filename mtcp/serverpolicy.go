package mtcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// Redirect asks the client to migrate to addr (load balancing).
func (c *Conn) Redirect(addr string) error {
	if c.sv == nil {
		return ErrNotServer
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.path == nil || c.state != stateActive {
		return c.opErr("redirect", c.stateErrOrLost())
	}
	c.path.queue(wire.AppendRedirect(nil, wire.Redirect{Addr: addr}))
	c.sv.redirected.Store(true)
	return nil
}

func (c *Conn) stateErrOrLost() error {
	if c.state.terminal() {
		return c.stateErrLocked()
	}
	return io.ErrClosedPipe
}

// SetServers replaces the server list and sends it to every client. A
// server dropped from it stays a peer (state is fetched from it) for 30s,
// so that the connections a draining server redirects can still be
// fetched from it once it is no longer offered to clients.
func (l *Listener) SetServers(addrs []string) {
	l.mu.Lock()
	now := time.Now()
	for _, a := range l.servers {
		if !slices.Contains(addrs, a) {
			if l.former == nil {
				l.former = map[string]time.Time{}
			}
			l.former[a] = now
		}
	}
	for a, t := range l.former {
		if slices.Contains(addrs, a) || now.Sub(t) >= formerPeerRetention {
			delete(l.former, a)
		}
	}
	l.servers = append([]string(nil), addrs...)
	conns := l.connList()
	l.mu.Unlock()
	f := wire.AppendServers(nil, wire.Servers{Addrs: addrs})
	for _, c := range conns {
		c.mu.Lock()
		if c.path != nil && c.state == stateActive {
			c.path.queue(f)
		}
		c.mu.Unlock()
	}
}

func (l *Listener) connList() []*Conn {
	cs := make([]*Conn, 0, len(l.conns))
	for _, c := range l.conns {
		cs = append(cs, c)
	}
	return cs
}

// Drain takes no new connections and redirects every connection to the
// other servers, returning when none is left or ctx ends.
func (l *Listener) Drain(ctx context.Context) error {
	l.mu.Lock()
	l.draining = true
	l.mu.Unlock()
	next := 0
	for round := 0; ; round++ {
		l.mu.Lock()
		conns := l.connList()
		targets := make([]string, 0, len(l.servers))
		for _, s := range l.servers {
			if s != l.cfg.Self {
				targets = append(targets, s)
			}
		}
		l.mu.Unlock()
		if len(conns) == 0 {
			return nil
		}
		if len(targets) == 0 {
			return fmt.Errorf("mtcp: drain: no other server to move %d connections to", len(conns))
		}
		if round%20 == 0 { // re-send every second to connections that did not move yet
			for _, c := range conns {
				_ = c.Redirect(targets[next%len(targets)])
				next++
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mtcp: drain: %d connections left: %w", len(conns), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sweepIdle periodically runs onIdleSweep until the Listener closes.
func (l *Listener) sweepIdle() {
	defer l.wg.Done()
	t := time.NewTicker(l.cfg.IdleTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-l.closed:
			return
		case now := <-t.C:
			l.onIdleSweep(now)
		}
	}
}

// onIdleSweep detaches connections whose path has been silent for
// IdleTimeout: a client that vanished without a FIN (host crash, cut
// cable) leaves a path that never fails on its own.
func (l *Listener) onIdleSweep(now time.Time) {
	l.mu.Lock()
	conns := l.connList()
	l.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		p, s := c.path, c.sv
		var dead *path
		if p != nil {
			if n := p.frames.Load(); n != s.lastFrames || s.lastMove.IsZero() {
				s.lastFrames, s.lastMove = n, now
			} else if now.Sub(s.lastMove) >= l.cfg.IdleTimeout {
				dead = p
			}
		}
		c.mu.Unlock()
		if dead != nil {
			c.pathFailed(dead, errors.New("path idle too long"))
		}
	}
}
