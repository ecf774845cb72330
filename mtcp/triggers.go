package mtcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// run is the client's trigger loop: it turns path failures, silence, the
// rate policy and redirects into migrations.
func (cl *clientSide) run(c *Conn) {
	defer cl.wg.Done()
	t := time.NewTicker(cl.d.Triggers.tick())
	defer t.Stop()
	for {
		select {
		case <-cl.ctx.Done():
			return
		case <-cl.kick:
		case now := <-t.C:
			c.mu.Lock()
			cl.onKeepAliveTimer(c, now)
			cl.onRateTimer(c, now)
			c.mu.Unlock()
		}
		cl.act(c)
	}
}

// onKeepAliveTimer pings a quiet path and declares a silent one failed.
func (cl *clientSide) onKeepAliveTimer(c *Conn, now time.Time) {
	p := c.path
	if p == nil {
		return
	}
	if n := p.frames.Load(); n != cl.lastFrame {
		cl.lastFrame, cl.lastMove = n, now
		return
	}
	silent := now.Sub(cl.lastMove)
	if silent >= cl.d.Triggers.PathTimeout {
		cl.want = "no progress"
		return
	}
	if silent >= cl.d.Triggers.KeepAlive {
		p.queue(wire.AppendOffset(nil, wire.TypePing, uint64(now.UnixNano())))
	}
}

// onRateTimer feeds the rate policy a sample.
func (cl *clientSide) onRateTimer(c *Conn, now time.Time) {
	r := cl.d.Triggers.Rate
	if r == nil || c.path == nil || !cl.rateClock.due(now) {
		return
	}
	blocked := c.in.unread() >= c.lim.MaxRecvBuffer/2
	if cl.rate.observe(now, cl.received, blocked) {
		cl.want = "rate"
	}
}

// act carries out what the triggers asked for.
func (cl *clientSide) act(c *Conn) {
	c.mu.Lock()
	if c.state.terminal() || c.state == statePeerClosed {
		c.mu.Unlock()
		return
	}
	redirect, want := cl.redirect, cl.want
	if redirect == cl.cur || cl.redirectFrom != cl.cur {
		// Here already, or the server that asked is ours no more: a
		// draining server re-sends its REDIRECT every second to the
		// connections still on it, and one that is moving meanwhile
		// would move a second time.
		redirect = ""
	}
	cl.redirect, cl.want = "", ""
	target := ""
	if cl.standby != nil {
		target = cl.standby.addr
	} else {
		target = pickServer(cl.servers, cl.cur, 0)
	}
	p := c.path
	c.mu.Unlock()
	ctx := cl.ctx
	switch {
	case redirect != "":
		err := cl.migrateOnce(ctx, c, redirect, false, TriggerRedirect)
		if err == nil {
			break
		}
		c.log.Info("redirect not followed", "to", redirect, "err", err)
		// The server wants the connection gone (it drains): any other
		// server will do, the one it named may be down.
		c.mu.Lock()
		others := slices.DeleteFunc(slices.Clone(cl.servers), func(s string) bool { return s == cl.cur || s == redirect })
		c.mu.Unlock()
		for _, to := range others {
			if err := cl.migrateOnce(ctx, c, to, false, TriggerRedirect); err == nil || ctx.Err() != nil {
				break
			}
		}
	case want == "no progress" && p != nil:
		c.log.Info("path made no progress; migrating")
		c.pathFailed(p, errors.New("no progress"))
	case want == "rate":
		now := time.Now()
		c.mu.Lock()
		from := cl.cur
		if target != "" && target == from || cl.fled[target].Add(cl.d.Triggers.Rate.Cooldown).After(now) {
			target = pickFaster(cl.servers, from, cl.fled, now, cl.d.Triggers.Rate.Cooldown)
		}
		if target == "" {
			// Every other server was left for slowness lately: stay.
			cl.resetPolicyLocked(now)
			c.mu.Unlock()
			break
		}
		c.mu.Unlock()
		c.log.Info("migrating", "reason", want, "to", target)
		err := cl.migrateOnce(ctx, c, target, false, TriggerRate)
		c.mu.Lock()
		if err != nil {
			c.log.Info("migration failed", "to", target, "err", err)
			cl.resetPolicyLocked(time.Now())
		} else {
			if cl.fled == nil {
				cl.fled = make(map[string]time.Time)
			}
			cl.fled[from] = now
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	down := c.path == nil && !c.state.terminal() && c.state != statePeerClosed
	c.mu.Unlock()
	if down {
		cl.recover(c)
	}
}

func (cl *clientSide) migrateOnce(ctx context.Context, c *Conn, addr string, ifDown bool, trigger string) error {
	ctx, cancel := context.WithTimeout(ctx, cl.d.HandshakeTimeout)
	defer cancel()
	return cl.migrate(ctx, c, addr, ifDown, trigger)
}

// recover finds a new path after the current one failed, trying servers in
// turn with backoff until RecoverTimeout.
func (cl *clientSide) recover(c *Conn) {
	ctx, cancel := context.WithTimeout(cl.ctx, cl.d.RecoverTimeout)
	defer cancel()
	backoff := 20 * time.Millisecond
	var last error
	for attempt := 0; attempt < 10000; attempt++ {
		c.mu.Lock()
		if c.path != nil || c.state.terminal() || c.state == statePeerClosed {
			c.mu.Unlock()
			return
		}
		target := pickServer(cl.servers, cl.cur, attempt)
		if attempt == 0 && cl.standby != nil {
			target = cl.standby.addr
		}
		n := len(cl.servers)
		c.mu.Unlock()
		err := cl.migrateOnce(ctx, c, target, true, TriggerPathFailure)
		if err == nil {
			return
		}
		last = err
		c.log.Debug("recover attempt failed", "to", target, "err", err)
		if (attempt+1)%max(n, 1) == 0 {
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, time.Second)
		}
		if ctx.Err() != nil {
			break
		}
	}
	c.mu.Lock()
	if c.path == nil && !c.state.terminal() && cl.ctx.Err() == nil {
		c.log.Warn("connection lost", "err", last)
		c.setStateLocked(stateFailed, fmt.Errorf("%w: %v", ErrLost, last))
	}
	c.mu.Unlock()
}

// armStandby opens a warm path to the next server in the background.
func (cl *clientSide) armStandby(c *Conn) {
	if !cl.d.Standby {
		return
	}
	c.mu.Lock()
	target := pickServer(cl.servers, cl.cur, 0)
	if target == cl.cur || (cl.standby != nil && cl.standby.addr == target) {
		c.mu.Unlock()
		return
	}
	cl.dropStandbyLocked()
	c.mu.Unlock()
	cl.wg.Add(1)
	go func() {
		defer cl.wg.Done()
		ctx, cancel := context.WithTimeout(cl.ctx, cl.d.HandshakeTimeout)
		defer cancel()
		nc, err := openPath(ctx, cl.d, target)
		if err != nil {
			c.log.Debug("standby path", "to", target, "err", err)
			return
		}
		if _, err := nc.Write(wire.AppendStandby(nil, wire.Standby{ConnID: c.id})); err != nil {
			_ = nc.Close()
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if cl.ctx.Err() != nil || cl.standby != nil {
			_ = nc.Close()
			return
		}
		cl.standby = &standbyPath{addr: target, nc: nc, br: bufio.NewReaderSize(nc, pathReadBuffer)}
	}()
}
