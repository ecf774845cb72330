package mtcp

import (
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// ConnID names a connection for its whole life, across migrations.
type ConnID [16]byte

func (id ConnID) String() string { return hex.EncodeToString(id[:]) }

// Limits bound a connection's buffers. Zero fields take the defaults.
type Limits struct {
	// MaxSendBuffer is how many written bytes may wait for the peer's
	// acknowledgement before Write blocks. Default 4 MiB. In eager mode a
	// server acknowledges input only up to its last saved snapshot, so
	// this also bounds the input a client may send between snapshots.
	MaxSendBuffer int
	// SendWindow is how many written bytes may be on their way (sent or
	// not) before the peer says it received them; Write blocks beyond it.
	// Smaller than MaxSendBuffer, it keeps a bulk stream's buffers in the
	// CPU caches. On a long path (kernel TCP on Linux, a round trip of
	// longPathRTT or more) the window, not the cache, limits a stream, so
	// there a Write that the window holds up gets all of MaxSendBuffer.
	// Default 512 KiB, at most MaxSendBuffer.
	SendWindow int
	// MaxRecvBuffer is how many received bytes may wait for Read: the
	// credit this end gives its peer (back-pressure without ever pausing
	// the path's reader). At least 64 KiB are buffered whatever it says, as
	// a new path starts with that much credit. Default 1 MiB.
	MaxRecvBuffer int
	// MaxInputLog is how many input bytes a server keeps since the last
	// snapshot; past it the connection cannot migrate until the next
	// snapshot. Default 8 MiB.
	MaxInputLog int
	// MaxState bounds ExportState's argument. Default 1 MiB.
	MaxState int

	// rttOf reads a path's round-trip time (pathRTT); tests replace it.
	rttOf func(net.Conn) (time.Duration, bool)
}

// longPathRTT is the round trip from which a connection's send window is
// all of MaxSendBuffer: 512 KiB per millisecond is 500 MB/s, more than a
// stream gets from one core, while a 50 ms path would be held to 10 MB/s.
const longPathRTT = time.Millisecond

func (l Limits) withDefaults() Limits {
	if l.MaxSendBuffer <= 0 {
		l.MaxSendBuffer = 4 << 20
	}
	if l.SendWindow <= 0 {
		l.SendWindow = 512 << 10
	}
	l.SendWindow = min(l.SendWindow, l.MaxSendBuffer)
	if l.MaxRecvBuffer <= 0 {
		l.MaxRecvBuffer = 1 << 20
	}
	if l.MaxInputLog <= 0 {
		l.MaxInputLog = 8 << 20
	}
	if l.rttOf == nil {
		l.rttOf = pathRTT
	}
	if l.MaxState <= 0 {
		l.MaxState = 1 << 20
	}
	return l
}

// connState is where a connection is in its life; transitions happen in
// machine.setState.
type connState uint8

const (
	stateActive     connState = iota // a path carries the stream
	stateDetached                    // no path; waiting for one (server) or migrating (client)
	statePeerClosed                  // the peer closed; unread bytes remain readable
	stateMigrated                    // origin: handed over to another server
	stateClosed                      // closed by the local application
	stateFailed                      // ended by an error (termErr)
)

func (s connState) String() string {
	switch s {
	case stateActive:
		return "active"
	case stateDetached:
		return "detached"
	case statePeerClosed:
		return "peer-closed"
	case stateMigrated:
		return "migrated"
	case stateClosed:
		return "closed"
	case stateFailed:
		return "failed"
	}
	return "connState(?)"
}

func (s connState) terminal() bool { return s >= stateMigrated }

// ackEvery is how many received bytes may go unacknowledged before an ACK
// is sent at once.
const ackEvery = 256 << 10

// Conn is one end of an MTCP connection: a net.Conn whose server end can
// move between servers. Accept returns server ends; Dialer.DialContext
// returns client ends. Methods of the other role return ErrNotServer or
// ErrNotClient.
//
// The protocol logic is the embedded machine; Conn is the thin shell
// around it: it takes the lock, feeds the machine an event, and carries
// out the effects (wakes waiters, arms timers, hands frames to the path's
// writer, retires paths).
type Conn struct {
	secret []byte
	cl     *clientSide // client ends only
	sv     *serverSide // server ends only
	end    endIO       // whichever of the two it is

	mu sync.Mutex
	machine
	path     *path // the current path; the machine's attached says whether there is one
	ackTimer *time.Timer
	rwait    chan struct{} // closed when Read may make progress
	wwait    chan struct{} // closed when Write may make progress

	readDL, writeDL deadline
	done            chan struct{} // closed when the connection ends locally
	laddr, raddr    atomic.Pointer[net.Addr]
}

func newConn(id ConnID, secret []byte, log *slog.Logger, lim Limits) *Conn {
	return &Conn{
		secret:  secret,
		machine: newMachine(id, nil, lim, log.With("conn", id.String()[:8])),
		readDL:  makeDeadline(),
		writeDL: makeDeadline(),
		done:    make(chan struct{}),
	}
}

// ID returns the connection's id.
func (c *Conn) ID() ConnID { return c.id }

// Done is closed when the connection ends at this end: it moved to
// another server, was closed, or failed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// applyLocked carries out the effects of the events fed to the machine
// since the last call.
func (c *Conn) applyLocked() {
	fx := c.takeEffects()
	if fx.wakeRead {
		c.notifyReadLocked()
	}
	if fx.wakeWrite {
		c.notifyWriteLocked()
	}
	if fx.armAck {
		c.armAckTimerLocked()
	}
	p := c.path
	switch {
	case p == nil:
	case fx.retireCur != nil:
		p.retire(fx.retireCur)
	case fx.closeCur:
		p.close()
		c.path = nil
	case fx.wakeWriter:
		p.wakeWriter()
	}
	if fx.ended {
		close(c.done)
		if c.ackTimer != nil {
			c.ackTimer.Stop()
		}
		c.readDL.stop()
		c.writeDL.stop()
	}
	if c.end != nil {
		c.end.apply(c, fx)
	}
}

// endIO is the I/O half of what differs between the two ends: it carries
// out the effects only one end has (serverSide and clientSide).
type endIO interface {
	apply(c *Conn, fx effects)
}

// setStateLocked changes the connection's state (see machine.setState).
func (c *Conn) setStateLocked(s connState, err error) {
	c.setState(s, err)
	c.applyLocked()
}

func (c *Conn) notifyReadLocked() {
	if c.rwait != nil {
		close(c.rwait)
		c.rwait = nil
	}
}

func (c *Conn) notifyWriteLocked() {
	if c.wwait != nil {
		close(c.wwait)
		c.wwait = nil
	}
}

func waitChan(p *chan struct{}) chan struct{} {
	if *p == nil {
		*p = make(chan struct{})
	}
	return *p
}

// Read reads input (server) or output (client) bytes.
func (c *Conn) Read(b []byte) (int, error) {
	for {
		c.mu.Lock()
		n, err, wait := c.read(b)
		c.applyLocked()
		if !wait {
			c.mu.Unlock()
			var es errState
			if errors.As(err, &es) {
				return 0, c.opErr("read", es.err)
			}
			return n, err
		}
		ch := waitChan(&c.rwait)
		c.mu.Unlock()
		dl := c.readDL.wait()
		if isClosedChan(dl) {
			return 0, timeoutErr(c, "read")
		}
		select {
		case <-ch:
		case <-dl:
			return 0, timeoutErr(c, "read")
		}
	}
}

// stateErrLocked is the error of a connection in a terminal state (or
// closed by its application).
func (c *Conn) stateErrLocked() error { return c.stateErr() }

// sendWindowLocked is the send window on the current path: SendWindow,
// or MaxSendBuffer once a Write finds SendWindow full on a long path.
func (c *Conn) sendWindowLocked() int {
	// Only a Write the window holds up pays for reading the RTT.
	if p := c.path; p != nil && c.out.unheard() >= c.lim.SendWindow {
		if rtt, ok := p.roundTrip(); ok && rtt >= longPathRTT {
			return c.lim.MaxSendBuffer
		}
	}
	return c.lim.SendWindow
}

// Write writes output (server) or input (client) bytes. It blocks while
// MaxSendBuffer bytes wait for the peer's acknowledgement, or the send
// window is full.
func (c *Conn) Write(b []byte) (int, error) {
	n := 0
	for {
		c.mu.Lock()
		k, err := c.write(b, c.sendWindowLocked())
		c.applyLocked()
		if err != nil {
			c.mu.Unlock()
			return n, c.opErr("write", err.(errState).err)
		}
		n += k
		b = b[k:]
		if len(b) == 0 || k > 0 {
			c.mu.Unlock()
			if len(b) == 0 {
				return n, nil
			}
			continue
		}
		ch := waitChan(&c.wwait)
		c.mu.Unlock()
		dl := c.writeDL.wait()
		if isClosedChan(dl) {
			return n, timeoutErr(c, "write")
		}
		select {
		case <-ch:
		case <-dl:
			return n, timeoutErr(c, "write")
		}
	}
}

// CloseWrite half-closes the connection: the peer reads EOF after the bytes
// written so far. The half-close survives migrations.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.closeWrite()
	c.applyLocked()
	if err != nil {
		return c.opErr("close", err.(errState).err)
	}
	return nil
}

// Close closes the connection for good and returns at once. On a server
// the connection lingers, reattachable and migratable, until the client
// has every byte: the path sends the rest of the output, FIN and CLOSE,
// and the client's CLOSE in answer ends it. On a client it lingers,
// migrating if its path fails, until the server has acknowledged every
// byte written and the end of the stream (at most closeLinger), then it
// sends CLOSE; the server's application reads EOF.
func (c *Conn) Close() error {
	c.mu.Lock()
	ok, err := c.closeApp()
	c.applyLocked()
	c.mu.Unlock()
	if !ok {
		if err == ErrMigrated {
			return nil
		}
		return c.opErr("close", net.ErrClosed)
	}
	return nil
}

// closeLinger bounds how long a closed connection keeps flushing.
const closeLinger = 5 * time.Second

func (c *Conn) LocalAddr() net.Addr  { return loadAddr(&c.laddr) }
func (c *Conn) RemoteAddr() net.Addr { return loadAddr(&c.raddr) }

func loadAddr(p *atomic.Pointer[net.Addr]) net.Addr {
	if a := p.Load(); a != nil {
		return *a
	}
	return nil
}

func (c *Conn) SetDeadline(t time.Time) error {
	c.readDL.set(t)
	c.writeDL.set(t)
	return nil
}
func (c *Conn) SetReadDeadline(t time.Time) error  { c.readDL.set(t); return nil }
func (c *Conn) SetWriteDeadline(t time.Time) error { c.writeDL.set(t); return nil }

// handleFrameLocked feeds the machine a frame that arrived on path p.
func (c *Conn) handleFrameLocked(p *path, t wire.Type, payload []byte) error {
	err := c.frame(c.path == p && p != nil, t, payload, p.fr.lent())
	c.applyLocked()
	return err
}

// maybeAckLocked acknowledges received input now or soon (see
// machine.maybeAck).
func (c *Conn) maybeAckLocked(now bool) {
	c.maybeAck(now)
	c.applyLocked()
}

// ackDelay bounds how long received bytes go unacknowledged.
const ackDelay = 2 * time.Millisecond

func (c *Conn) armAckTimerLocked() {
	if c.ackTimer == nil {
		c.ackTimer = time.AfterFunc(ackDelay, c.onAckTimer)
	} else {
		c.ackTimer.Reset(ackDelay)
	}
}

// onAckTimer sends a delayed ACK.
func (c *Conn) onAckTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ackTimerFired()
	c.applyLocked()
}

// pathFailed detaches p after an I/O or protocol error.
func (c *Conn) pathFailed(p *path, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !p.retiring { // a retiring path's writer sends its last frame and closes it
		p.close()
	}
	if c.path != p {
		return
	}
	c.path = nil
	if !c.state.terminal() && !c.peerClosed {
		c.log.Debug("path failed", "err", err)
	}
	c.pathLost()
	c.applyLocked()
}

// attachLocked makes p the connection's path, resuming output at resume;
// peerHas is the input offset the peer already counts as acknowledged.
// greeting, if any, is the first frame the path sends (a server's WELCOME
// or ACCEPTED); the path's first CREDIT rides with it.
func (c *Conn) attachLocked(p *path, resume, peerHas uint64, greeting []byte) error {
	old := c.path
	if err := c.attach(resume, peerHas, greeting); err != nil {
		return err
	}
	fx := c.fx.prev
	c.fx.prev = retired{}
	if old != nil && old != p {
		if fx.bye != nil {
			old.retireWith(fx.ctrl, fx.bye)
		} else {
			old.close()
		}
	}
	c.path = p
	a, b := p.nc.LocalAddr(), p.nc.RemoteAddr()
	c.laddr.Store(&a)
	c.raddr.Store(&b)
	if greeting != nil {
		// Written here rather than by the path's writer: the client
		// waits for it, and a goroutine hand-off costs it a wake-up. A
		// failed write fails the path like any other.
		first := c.ctrl
		c.ctrl = nil
		_, _ = p.nc.Write(first)
	}
	p.start()
	c.applyLocked()
	return nil
}
