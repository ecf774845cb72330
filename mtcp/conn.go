package mtcp

import (
	"bytes"
	"encoding/hex"
	"io"
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
// setStateLocked.
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
type Conn struct {
	id     ConnID
	secret []byte
	log    *slog.Logger
	lim    Limits
	cl     *clientSide
	sv     *serverSide

	mu         sync.Mutex
	state      connState
	termErr    error
	in         recvStream // bytes from the peer
	out        sendStream // bytes to the peer
	path       *path
	ackedIn    uint64 // highest ACK sent for in
	heardIn    uint64 // highest offset of in reported received (ACK or RECEIVED)
	ackTimer   *time.Timer
	ackArmed   bool
	peerClosed bool
	appClosed  bool          // server: the application closed; the stream lingers until delivered
	rwait      chan struct{} // closed when Read may make progress
	wwait      chan struct{} // closed when Write may make progress

	readDL, writeDL deadline
	done            chan struct{} // closed when the connection ends locally
	laddr, raddr    atomic.Pointer[net.Addr]
}

func newConn(id ConnID, secret []byte, log *slog.Logger, lim Limits) *Conn {
	c := &Conn{
		id:      id,
		secret:  secret,
		log:     log.With("conn", id.String()[:8]),
		lim:     lim.withDefaults(),
		readDL:  makeDeadline(),
		writeDL: makeDeadline(),
		done:    make(chan struct{}),
	}
	return c
}

// ID returns the connection's id.
func (c *Conn) ID() ConnID { return c.id }

// setStateLocked is the one place a connection changes state.
func (c *Conn) setStateLocked(s connState, err error) {
	if c.state.terminal() {
		return
	}
	c.log.Debug("state", "from", c.state, "to", s)
	c.state = s
	if s.terminal() {
		if c.cl != nil {
			c.cl.cancel()
		}
		c.termErr = err
		close(c.done)
		if c.ackTimer != nil {
			c.ackTimer.Stop()
		}
		c.readDL.stop()
		c.writeDL.stop()
	}
	c.notifyReadLocked()
	c.notifyWriteLocked()
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
		if c.state.terminal() || c.appClosed {
			err := c.stateErrLocked()
			c.mu.Unlock()
			return 0, c.opErr("read", err)
		}
		if c.in.unread() > 0 {
			if len(b) == 0 {
				c.mu.Unlock()
				return 0, nil
			}
			n := c.in.readInto(b)
			c.maybeCreditLocked(false)
			c.mu.Unlock()
			return n, nil
		}
		if c.in.eof() || c.peerClosed {
			c.mu.Unlock()
			return 0, io.EOF
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
func (c *Conn) stateErrLocked() error {
	if c.appClosed && !c.state.terminal() {
		return net.ErrClosed
	}
	switch c.state {
	case stateClosed:
		return net.ErrClosed
	case stateMigrated:
		return ErrMigrated
	}
	if c.termErr != nil {
		return c.termErr
	}
	return ErrLost
}

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
		var err error
		switch {
		case c.state.terminal() || c.appClosed:
			err = c.stateErrLocked()
		case c.out.appFin:
			err = ErrWriteClosed
		case c.peerClosed:
			err = ErrPeerClosed
		}
		if err != nil {
			c.mu.Unlock()
			return n, c.opErr("write", err)
		}
		if len(b) == 0 {
			c.mu.Unlock()
			return n, nil
		}
		// Regenerated output the stream already holds costs no buffer space.
		k := len(b)
		if dup := c.out.end() - c.out.app; dup < uint64(k) {
			space := min(c.lim.MaxSendBuffer-c.out.unacked(), c.sendWindowLocked()-c.out.unheard())
			k = min(k, int(dup)+max(space, 0))
		}
		if k > 0 {
			c.out.write(b[:k])
			n += k
			b = b[k:]
			if p := c.path; p != nil {
				p.wakeWriter()
			}
			c.mu.Unlock()
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
	if c.state.terminal() || c.appClosed {
		return c.opErr("close", c.stateErrLocked())
	}
	if !c.out.appFin {
		c.out.appFin = true
		// During a migrated server's replay the stream already holds the
		// FIN, if the origin had sent one; only a caught-up writer adds it.
		if c.out.app == c.out.end() {
			c.out.fin = true
		}
		if p := c.path; p != nil {
			p.wakeWriter()
		}
	}
	return nil
}

// Close closes the connection for good and returns at once. On a client
// the connection lingers, migrating if its path fails, until the server
// has acknowledged every byte written and the end of the stream (at most
// closeLinger), then it sends CLOSE; the server's application reads EOF.
func (c *Conn) Close() error {
	if c.sv != nil {
		return c.closeServer()
	}
	c.mu.Lock()
	if c.state.terminal() || c.appClosed {
		err := c.stateErrLocked()
		c.mu.Unlock()
		if err == ErrMigrated {
			return nil
		}
		return c.opErr("close", net.ErrClosed)
	}
	c.appClosed = true
	c.out.fin = true
	c.in.discard() // nobody reads any more
	c.notifyReadLocked()
	c.notifyWriteLocked()
	if c.state == statePeerClosed {
		c.finishClientLocked()
		c.mu.Unlock()
		return nil
	}
	c.cl.linger = time.AfterFunc(closeLinger, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.finishClientLocked()
	})
	if p := c.path; p != nil {
		p.wakeWriter()
	}
	c.mu.Unlock()
	return nil
}

// finishClientLocked ends a closed client's linger without a CLOSE: the
// server closed first, or the linger ran out.
func (c *Conn) finishClientLocked() {
	if c.state.terminal() {
		return
	}
	if p := c.path; p != nil {
		p.close()
		c.path = nil
	}
	c.endLingerLocked()
}

// endLingerLocked makes a closed client's connection closed for good.
func (c *Conn) endLingerLocked() {
	if c.cl.linger != nil {
		c.cl.linger.Stop()
	}
	c.setStateLocked(stateClosed, net.ErrClosed)
	go c.cl.closed(c)
}

// clientFlushedLocked reports whether a closed client's server has
// acknowledged everything, the end of the stream included.
func (c *Conn) clientFlushedLocked() bool {
	return c.appClosed && c.out.finSent && c.out.base == c.out.end()
}

// closeServer closes a server end for the application at once, while the
// connection lingers, reattachable and migratable, until the client has
// everything: the path sends the rest of the output, FIN and CLOSE, and
// the client's CLOSE in answer ends the connection.
func (c *Conn) closeServer() error {
	c.mu.Lock()
	if c.state.terminal() || c.appClosed {
		err := c.stateErrLocked()
		c.mu.Unlock()
		if err == ErrMigrated {
			return nil
		}
		return c.opErr("close", net.ErrClosed)
	}
	c.appClosed = true
	if !c.out.appFin {
		c.out.appFin = true
		c.out.fin = c.out.fin || c.out.app == c.out.end()
	}
	c.notifyReadLocked()
	c.notifyWriteLocked()
	if c.peerClosed {
		c.setStateLocked(stateClosed, net.ErrClosed)
		c.mu.Unlock()
		c.sv.closed(c)
		return nil
	}
	if p := c.path; p != nil {
		p.wakeWriter()
	}
	c.mu.Unlock()
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

// handleFrameLocked applies one frame that arrived on path p.
func (c *Conn) handleFrameLocked(p *path, t wire.Type, payload []byte) error {
	if c.state.terminal() {
		return nil // draining a closing path
	}
	switch t {
	case wire.TypeData:
		off, data, err := wire.ParseData(payload)
		if err != nil {
			return err
		}
		n, err := c.in.push(off, data, p.fr.lent())
		if err != nil {
			return err
		}
		if c.appClosed && c.cl != nil {
			c.in.discard() // a closed client reads no more
			c.maybeCreditLocked(false)
		}
		if n > 0 {
			c.notifyReadLocked()
		}
		if c.cl != nil {
			c.cl.received += uint64(n)
		}
		if c.sv != nil {
			c.sv.checkLogLocked(c)
		}
		c.maybeAckLocked(p, false)
	case wire.TypeAck:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		if err := c.out.ack(off, c.sv != nil); err != nil {
			return err
		}
		c.notifyWriteLocked()
		if c.cl != nil && c.appClosed {
			p.wakeWriter() // it sends CLOSE once everything is acknowledged
		}
	case wire.TypeReceived:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		if err := c.out.received(off); err != nil {
			return err
		}
		c.notifyWriteLocked()
	case wire.TypeCredit:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		c.out.credit(off)
		p.wakeWriter()
	case wire.TypeFin:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		if err := c.in.setFin(off); err != nil {
			return err
		}
		c.notifyReadLocked()
		c.maybeAckLocked(p, true)
	case wire.TypeClose:
		if c.path != p {
			// A CLOSE from a server we already left (its copy went on
			// to the end): the current server sends its own.
			return nil
		}
		c.peerClosed = true
		c.notifyReadLocked()
		c.notifyWriteLocked()
		if c.cl != nil {
			// Everything the server sent has arrived: say so with our
			// own CLOSE (the server lingers until it hears it).
			c.setStateLocked(statePeerClosed, nil)
			c.cl.peerClosedLocked(c)
			p.retire(wire.AppendClose(nil))
			return nil
		}
		if c.appClosed {
			c.setStateLocked(stateClosed, net.ErrClosed)
			go c.sv.closed(c)
		}
		return errPeerClosedPath
	case wire.TypePing:
		v, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		p.queue(wire.AppendOffset(nil, wire.TypePong, v))
	case wire.TypeMoved:
		if c.sv == nil {
			return errUnexpected(t)
		}
		if c.path == p {
			// The client moved to a server that took the state from the
			// store (eager); this copy is stale.
			c.setStateLocked(stateMigrated, ErrMigrated)
			if s := c.sv; s.detached != nil {
				s.detached.Stop()
			}
			go c.sv.ln.remove(c)
		}
		return errPeerClosedPath
	case wire.TypePrepare:
		if c.sv == nil {
			return errUnexpected(t)
		}
		pr, err := wire.ParsePrepare(payload)
		if err != nil {
			return nil // only a shortcut: the new server will fetch
		}
		if pr.Migrate.ConnID != c.id {
			return nil // a PREPARE moves only the connection it came on
		}
		pr.Migrate.MAC = bytes.Clone(pr.Migrate.MAC) // payload is reused
		pr.MAC = bytes.Clone(pr.MAC)
		// Not under c.mu: freezing takes it, pushing waits on a peer.
		c.sv.ln.goTracked(func() { c.sv.ln.prepare(pr) })
	case wire.TypePong:
	case wire.TypeRedirect, wire.TypeServers:
		if c.cl == nil {
			return errUnexpected(t)
		}
		return c.cl.handleFrameLocked(c, t, payload)
	default:
		return errUnexpected(t)
	}
	return nil
}

// maybeAckLocked queues an ACK once ackEvery bytes are unacknowledged;
// fewer are acknowledged ackDelay later, so a bulk stream is not answered
// frame by frame. now acknowledges at once.
func (c *Conn) maybeAckLocked(p *path, now bool) {
	end := c.in.end()
	v := end
	if c.sv != nil {
		v = c.sv.ackableLocked(c)
	}
	heard := max(c.ackedIn, c.heardIn)
	if v <= c.ackedIn && end <= heard {
		return
	}
	if now || end-heard >= ackEvery {
		if v > c.ackedIn {
			c.ackedIn = v
			p.queue(wire.AppendOffset(nil, wire.TypeAck, v))
		}
		if end > max(v, c.heardIn) {
			// Eager mode: the rest may not be discarded yet, but it
			// arrived, and the peer's send window may move on.
			c.heardIn = end
			p.queue(wire.AppendOffset(nil, wire.TypeReceived, end))
		}
		return
	}
	if !c.ackArmed {
		c.ackArmed = true
		if c.ackTimer == nil {
			c.ackTimer = time.AfterFunc(ackDelay, c.onAckTimer)
		} else {
			c.ackTimer.Reset(ackDelay)
		}
	}
}

// maybeCreditLocked tells the peer it may send more once the application
// has read a good part of the window (now: whatever it read).
func (c *Conn) maybeCreditLocked(now bool) {
	p := c.path
	if p == nil {
		return // the next path starts with a CREDIT of its own
	}
	if off, ok := c.in.grant(c.lim.MaxRecvBuffer, now); ok {
		p.queue(wire.AppendOffset(nil, wire.TypeCredit, off))
	}
}

// ackDelay bounds how long received bytes go unacknowledged.
const ackDelay = 2 * time.Millisecond

// onAckTimer sends a delayed ACK.
func (c *Conn) onAckTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ackArmed = false
	if p := c.path; p != nil && !c.state.terminal() {
		c.maybeAckLocked(p, true)
	}
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
	if c.state.terminal() {
		return
	}
	if c.peerClosed {
		c.setStateLocked(statePeerClosed, nil)
		if c.sv != nil {
			c.sv.peerClosedLocked(c)
		}
		if c.cl != nil {
			c.cl.peerClosedLocked(c)
		}
		return
	}
	c.log.Debug("path failed", "err", err)
	c.setStateLocked(stateDetached, nil)
	if c.sv != nil {
		c.sv.detachedLocked(c)
	}
	if c.cl != nil {
		c.cl.pathDownLocked(c)
	}
}

// attachLocked makes p the connection's path, resuming output at resume;
// peerHas is the input offset the peer already counts as acknowledged.
// greeting, if any, is the first frame the path sends (a server's WELCOME
// or ACCEPTED); the path's first CREDIT rides with it.
func (c *Conn) attachLocked(p *path, resume, peerHas uint64, greeting []byte) error {
	if err := c.out.rewind(resume); err != nil {
		return err
	}
	if old := c.path; old != nil && old != p {
		if c.cl != nil {
			old.retire(wire.AppendMoved(nil)) // tell the old server the connection moved
		} else {
			old.close()
		}
	}
	c.path = p
	c.ackedIn, c.heardIn = peerHas, peerHas
	p.ctrl = append(p.ctrl, greeting...)
	c.in.openPath()
	c.maybeCreditLocked(true)
	if c.sv != nil {
		c.sv.attachedLocked()
	}
	a, b := p.nc.LocalAddr(), p.nc.RemoteAddr()
	c.laddr.Store(&a)
	c.raddr.Store(&b)
	c.setStateLocked(stateActive, nil)
	// Not at once: the greeting told the peer most of it, and a delayed
	// ACK rides along with data instead of costing a write of its own.
	c.maybeAckLocked(p, false)
	p.start()
	p.wakeWriter()
	return nil
}
