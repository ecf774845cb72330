package mtcp

import (
	"bytes"
	"io"
	"log/slog"
	"net"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// machine is one connection's protocol logic: a deterministic state
// machine with no goroutines, timers, locks or sockets inside. The Conn
// around it feeds it events under its lock (a frame arrived on a path, the
// application read, wrote or closed, a timer fired, a path was attached or
// lost) and then carries out the effects the event left in fx: control
// frames queued for the current path, waiters to wake, a timer to arm, a
// path to retire, the end of the connection.
//
// What the two ends do differently lives in side, implemented by
// clientProto and serverProto; the machine never asks which end it is.
type machine struct {
	id   ConnID
	side side
	lim  Limits
	log  *slog.Logger

	state      connState
	termErr    error
	in         recvStream // bytes from the peer
	out        sendStream // bytes to the peer
	attached   bool       // a path carries the stream
	ctrl       []byte     // control frames queued for the current path
	ackedIn    uint64     // highest ACK sent for in
	heardIn    uint64     // highest offset of in reported received (ACK or RECEIVED)
	ackArmed   bool
	peerClosed bool
	appClosed  bool // the application closed; the stream lingers until delivered

	fx effects
}

// effects are what an event asks the Conn to do, in addition to sending
// ctrl. The Conn takes them after every event (takeEffects).
type effects struct {
	wakeRead   bool // Read may make progress
	wakeWrite  bool // Write may make progress
	wakeWriter bool // the current path has frames or data to send
	armAck     bool // start the delayed-ACK timer (ackDelay)
	ended      bool // the connection reached a terminal state

	retireCur []byte // non-nil: the current path sends its frames and this, then closes
	closeCur  bool   // the current path is done: close it
	prev      retired

	// Server.
	reattached bool          // has a (new) path
	detached   bool          // server: lost its path, wait DetachedTimeout for the client
	remove     bool          // gone from this server (migrated or finished): leave the table
	forget     bool          // finished: leave the table and the snapshot store
	prepare    *wire.Prepare // the client asks us to push the state ahead of its MIGRATE
	// Client.
	poke       bool // the trigger loop has something to do (redirect, lost path)
	peerGone   bool // the server closed: stop the triggers, drop the standby path
	armLinger  bool // Close: give the server closeLinger to acknowledge everything
	clientDone bool // a closed client's connection ended
}

// retired is what becomes of the path a new one replaced.
type retired struct {
	ctrl  []byte // frames queued for it before the new path came
	bye   []byte // its last frame (a client's MOVED), or nil: just close it
	valid bool
}

// side is what differs between the two ends of a connection. Its methods
// change protocol state and record effects, nothing else.
type side interface {
	// dataArrived notes n new bytes of the peer's stream.
	dataArrived(m *machine, n int)
	// ackable is how far the peer may discard what it sent us.
	ackable(m *machine) uint64
	// ackOutput applies the peer's ACK.
	ackOutput(m *machine, off uint64) error
	// peerClose handles the peer's CLOSE on the current path.
	peerClose(m *machine) error
	// frame handles the frames only this end receives.
	frame(m *machine, current bool, t wire.Type, payload []byte) error
	// lastFrame reports whether the current path, with nothing left to
	// send, may say CLOSE now.
	lastFrame(m *machine) bool
	// pathLost handles the loss of the current path (state is set).
	pathLost(m *machine)
	// closeApp handles the application's Close.
	closeApp(m *machine)
	// replacedBye is the last frame a path replaced by a new one sends,
	// nil to just close it.
	replacedBye() []byte
}

func newMachine(id ConnID, s side, lim Limits, log *slog.Logger) machine {
	return machine{id: id, side: s, lim: lim.withDefaults(), log: log}
}

// takeEffects returns the effects recorded since the last call.
func (m *machine) takeEffects() effects {
	fx := m.fx
	m.fx = effects{}
	return fx
}

// setState is the one place a connection changes state.
func (m *machine) setState(s connState, err error) {
	if m.state.terminal() {
		return
	}
	m.log.Debug("state", "from", m.state, "to", s)
	m.state = s
	if s.terminal() {
		m.termErr = err
		m.attached = false
		m.fx.ended = true
	}
	m.fx.wakeRead, m.fx.wakeWrite = true, true
}

// queue adds a control frame for the current path.
func (m *machine) queue(frame []byte) {
	if !m.attached {
		return // a new path starts from a fresh state
	}
	m.ctrl = append(m.ctrl, frame...)
	m.fx.wakeWriter = true
}

// stateErr is the error of a connection in a terminal state (or closed by
// its application).
func (m *machine) stateErr() error {
	if m.appClosed && !m.state.terminal() {
		return net.ErrClosed
	}
	switch m.state {
	case stateClosed:
		return net.ErrClosed
	case stateMigrated:
		return ErrMigrated
	}
	if m.termErr != nil {
		return m.termErr
	}
	return ErrLost
}

// read is the application's Read: it returns bytes, io.EOF, an error of
// the connection's state (errState), or wait when nothing is there yet.
func (m *machine) read(b []byte) (n int, err error, wait bool) {
	if m.state.terminal() || m.appClosed {
		return 0, errState{m.stateErr()}, false
	}
	if m.in.unread() > 0 {
		if len(b) == 0 {
			return 0, nil, false
		}
		n = m.in.readInto(b)
		m.grantCredit(false)
		return n, nil, false
	}
	if m.in.eof() || m.peerClosed {
		return 0, io.EOF, false
	}
	return 0, nil, true
}

// errState marks an error that says why a connection cannot be used, as
// opposed to io.EOF.
type errState struct{ err error }

func (e errState) Error() string { return e.err.Error() }

// write is the application's Write: it takes what the buffers allow of b
// (k bytes; 0 and no error: wait until it may go on). window is the send
// window on the current path (Conn.sendWindowLocked).
func (m *machine) write(b []byte, window int) (k int, err error) {
	switch {
	case m.state.terminal() || m.appClosed:
		return 0, errState{m.stateErr()}
	case m.out.appFin:
		return 0, errState{ErrWriteClosed}
	case m.peerClosed:
		return 0, errState{ErrPeerClosed}
	}
	// Regenerated output the stream already holds costs no buffer space.
	k = len(b)
	if dup := m.out.end() - m.out.app; dup < uint64(k) {
		space := min(m.lim.MaxSendBuffer-m.out.unacked(), window-m.out.unheard())
		k = min(k, int(dup)+max(space, 0))
	}
	if k > 0 {
		m.out.write(b[:k])
		if m.attached {
			m.fx.wakeWriter = true
		}
	}
	return k, nil
}

// closeWrite is the application's CloseWrite.
func (m *machine) closeWrite() error {
	if m.state.terminal() || m.appClosed {
		return errState{m.stateErr()}
	}
	if !m.out.appFin {
		m.out.appFin = true
		// During a migrated server's replay the stream already holds the
		// FIN, if the origin had sent one; only a caught-up writer adds it.
		if m.out.app == m.out.end() {
			m.out.fin = true
		}
		m.fx.wakeWriter = m.attached
	}
	return nil
}

// closeApp is the application's Close. It reports false when the
// connection was already closed or ended (err says how).
func (m *machine) closeApp() (ok bool, err error) {
	if m.state.terminal() || m.appClosed {
		return false, m.stateErr()
	}
	m.appClosed = true
	m.fx.wakeRead, m.fx.wakeWrite = true, true
	m.side.closeApp(m)
	return true, nil
}

// frame applies one frame that arrived on a path; current says whether
// that path is the connection's current one. An error fails the path.
func (m *machine) frame(current bool, t wire.Type, payload []byte, lent *chunk) error {
	if m.state.terminal() {
		return nil // draining a closing path
	}
	switch t {
	case wire.TypeData:
		off, data, err := wire.ParseData(payload)
		if err != nil {
			return err
		}
		n, err := m.in.push(off, data, lent)
		if err != nil {
			return err
		}
		if n > 0 {
			m.fx.wakeRead = true
		}
		m.side.dataArrived(m, n)
		m.maybeAck(false)
	case wire.TypeAck:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		if err := m.side.ackOutput(m, off); err != nil {
			return err
		}
		m.fx.wakeWrite = true
	case wire.TypeReceived:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		if err := m.out.received(off); err != nil {
			return err
		}
		m.fx.wakeWrite = true
	case wire.TypeCredit:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		m.out.credit(off)
		m.fx.wakeWriter = m.attached
	case wire.TypeFin:
		off, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		if err := m.in.setFin(off); err != nil {
			return err
		}
		m.fx.wakeRead = true
		m.maybeAck(true)
	case wire.TypeClose:
		if !current {
			// A CLOSE from a server we already left (its copy went on
			// to the end): the current server sends its own.
			return nil
		}
		m.peerClosed = true
		m.fx.wakeRead, m.fx.wakeWrite = true, true
		return m.side.peerClose(m)
	case wire.TypePing:
		v, err := wire.ParseOffset(payload)
		if err != nil {
			return err
		}
		if current {
			m.queue(wire.AppendOffset(nil, wire.TypePong, v))
		}
	case wire.TypePong:
	default:
		return m.side.frame(m, current, t, payload)
	}
	return nil
}

// maybeAck queues an ACK once ackEvery bytes are unacknowledged; fewer
// are acknowledged ackDelay later (armAck), so a bulk stream is not
// answered frame by frame. now acknowledges at once.
func (m *machine) maybeAck(now bool) {
	if !m.attached {
		return
	}
	end := m.in.end()
	v := m.side.ackable(m)
	heard := max(m.ackedIn, m.heardIn)
	if v <= m.ackedIn && end <= heard {
		return
	}
	if now || end-heard >= ackEvery {
		if v > m.ackedIn {
			m.ackedIn = v
			m.queue(wire.AppendOffset(nil, wire.TypeAck, v))
		}
		if end > max(v, m.heardIn) {
			// Eager mode: the rest may not be discarded yet, but it
			// arrived, and the peer's send window may move on.
			m.heardIn = end
			m.queue(wire.AppendOffset(nil, wire.TypeReceived, end))
		}
		return
	}
	if !m.ackArmed {
		m.ackArmed = true
		m.fx.armAck = true
	}
}

// ackTimerFired is the delayed-ACK timer firing.
func (m *machine) ackTimerFired() {
	m.ackArmed = false
	if !m.state.terminal() {
		m.maybeAck(true)
	}
}

// grantCredit tells the peer it may send more once the application has
// read a good part of the window (now: whatever it read). While the peer
// still has half a window of credit, the CREDIT waits for the next frame
// the path sends anyway (the ACK of the data still coming), instead of
// costing a write of its own.
func (m *machine) grantCredit(now bool) {
	if !m.attached {
		return // the next path starts with a CREDIT of its own
	}
	left := m.in.limit - min(m.in.end(), m.in.limit)
	if off, ok := m.in.grant(m.lim.MaxRecvBuffer, now); ok {
		m.ctrl = wire.AppendOffset(m.ctrl, wire.TypeCredit, off)
		if now || left < uint64(m.lim.MaxRecvBuffer/2) {
			m.fx.wakeWriter = true
		}
	}
}

// attach makes a new path the connection's current one, resuming output
// at resume; peerHas is the input offset the peer already counts as
// acknowledged. greeting, if any, is the path's first frame (a server's
// WELCOME or ACCEPTED); the path's first CREDIT rides with it.
func (m *machine) attach(resume, peerHas uint64, greeting []byte) error {
	if err := m.out.rewind(resume); err != nil {
		return err
	}
	if m.attached {
		m.fx.prev = retired{ctrl: m.ctrl, bye: m.side.replacedBye(), valid: true}
	}
	m.ctrl = append([]byte(nil), greeting...)
	m.attached = true
	m.ackedIn, m.heardIn = peerHas, peerHas
	m.in.openPath()
	m.setState(stateActive, nil)
	m.fx.reattached = true
	m.grantCredit(true)
	// Not at once: the greeting told the peer most of it, and a delayed
	// ACK rides along with data instead of costing a write of its own.
	m.maybeAck(false)
	m.fx.wakeWriter = true
	return nil
}

// pathLost is the current path failing or being given up.
func (m *machine) pathLost() {
	if !m.attached {
		return
	}
	m.attached = false
	m.ctrl = nil
	if m.state.terminal() {
		return
	}
	if m.peerClosed {
		m.setState(statePeerClosed, nil)
	} else {
		m.setState(stateDetached, nil)
	}
	m.side.pathLost(m)
}

// sendBatch is what the current path's writer sends next.
type sendBatch struct {
	bufs  net.Buffers
	data  int  // stream bytes in bufs (the send buffer is pinned while they go out)
	close bool // all is sent: say CLOSE and half-close the path
}

// poll hands the writer the queued control frames, up to limit stream
// bytes the peer's credit allows, and a FIN when it is due; hdrs is
// scratch space for DATA headers.
func (m *machine) poll(hdrs []byte, limit int) (sendBatch, []byte) {
	var b sendBatch
	if len(m.ctrl) > 0 {
		b.bufs = append(b.bufs, m.ctrl)
		m.ctrl = nil
	}
	hdrs = hdrs[:0]
	for b.data < limit {
		off, p := m.out.next(wire.MaxData)
		if len(p) == 0 {
			break
		}
		h := len(hdrs)
		hdrs = wire.AppendDataHeader(hdrs, off, len(p))
		b.bufs = append(b.bufs, hdrs[h:], p)
		b.data += len(p)
	}
	if m.out.needFin() {
		m.out.finSent = true
		b.bufs = append(b.bufs, wire.AppendOffset(nil, wire.TypeFin, m.out.end()))
	}
	if m.appClosed && len(b.bufs) == 0 && m.out.sent == m.out.end() && (!m.out.fin || m.out.finSent) {
		b.close = m.side.lastFrame(m)
	}
	if b.data > 0 {
		m.out.buf.pin()
	}
	return b, hdrs
}

// sent is the writer done with a batch of n stream bytes.
func (m *machine) sent(n int) {
	if n > 0 {
		m.out.buf.unpin()
	}
}

// serverProto is the server end's part of the protocol.
type serverProto struct {
	eager       bool   // a SnapshotStore is configured
	logLost     bool   // input log overflowed since the last snapshot
	durableIn   uint64 // eager: input offset of the last saved snapshot
	maxInputLog int
}

func (s *serverProto) dataArrived(m *machine, n int) {
	if m.in.logLen() > s.maxInputLog && !s.logLost {
		m.log.Warn("input log overflow; not migratable until the next snapshot", "bytes", m.in.logLen())
		s.logLost = true
	}
	if s.logLost {
		m.in.trim(m.in.read)
	}
}

// ackable is how far the client may discard input: everything received
// in lazy mode, only up to the last durable snapshot in eager mode.
func (s *serverProto) ackable(m *machine) uint64 {
	if !s.eager || s.logLost {
		return m.in.end()
	}
	return s.durableIn
}

// ackOutput allows an ACK past the end: a migrated server's client may
// already hold output the application has not regenerated yet.
func (s *serverProto) ackOutput(m *machine, off uint64) error { return m.out.ack(off, true) }

func (s *serverProto) peerClose(m *machine) error {
	if m.appClosed {
		m.setState(stateClosed, net.ErrClosed)
		m.fx.forget = true
	}
	return errPeerClosedPath
}

func (s *serverProto) frame(m *machine, current bool, t wire.Type, payload []byte) error {
	switch t {
	case wire.TypeMoved:
		if current {
			// The client moved to a server that took the state from
			// the store (eager); this copy is stale.
			m.setState(stateMigrated, ErrMigrated)
			m.fx.remove = true
		}
		return errPeerClosedPath
	case wire.TypePrepare:
		pr, err := wire.ParsePrepare(payload)
		if err != nil {
			return nil // only a shortcut: the new server will fetch
		}
		if pr.Migrate.ConnID != m.id {
			return nil // a PREPARE moves only the connection it came on
		}
		pr.Migrate.MAC = bytes.Clone(pr.Migrate.MAC) // payload is reused
		pr.MAC = bytes.Clone(pr.MAC)
		m.fx.prepare = &pr
		return nil
	}
	return errUnexpected(t)
}

// replacedBye: the client replaced the path itself, so there is nothing
// to tell it on the old one.
func (s *serverProto) replacedBye() []byte { return nil }

// lastFrame: a closed server says CLOSE once all is sent.
func (s *serverProto) lastFrame(*machine) bool { return true }

func (s *serverProto) pathLost(m *machine) {
	if m.state == statePeerClosed {
		m.fx.remove = true
	} else {
		m.fx.detached = true
	}
}

// closeApp: the connection lingers, reattachable and migratable, until
// the client has everything: the path sends the rest of the output, FIN
// and CLOSE, and the client's CLOSE in answer ends it.
func (s *serverProto) closeApp(m *machine) {
	if !m.out.appFin {
		m.out.appFin = true
		m.out.fin = m.out.fin || m.out.app == m.out.end()
	}
	if m.peerClosed {
		m.setState(stateClosed, net.ErrClosed)
		m.fx.forget = true
		return
	}
	m.fx.wakeWriter = m.attached
}

// clientProto is the client end's part of the protocol.
type clientProto struct {
	cur     string // address of the current server as dialled
	servers []string
	// seeds are the Dialer's own servers: kept after whatever list the
	// servers send, which may be short (a server that has just started
	// knows few peers yet).
	seeds           []string
	received        uint64 // bytes received on the current server
	redirect        string
	redirectFrom    string // cur when redirect arrived
	ignoreRedirects bool
}

// setServers takes a server list sent by a server.
func (cl *clientProto) setServers(addrs []string) {
	cl.servers = mergeServers(mergeServers(append([]string(nil), addrs...), []string{cl.cur}), cl.seeds)
}

func (cl *clientProto) dataArrived(m *machine, n int) {
	if m.appClosed {
		m.in.discard() // a closed client reads no more
		m.grantCredit(false)
	}
	cl.received += uint64(n)
}

func (cl *clientProto) ackable(m *machine) uint64 { return m.in.end() }

// replacedBye tells the old server the connection moved (its copy may
// be a stale one the store superseded).
func (cl *clientProto) replacedBye() []byte { return wire.AppendMoved(nil) }

func (cl *clientProto) ackOutput(m *machine, off uint64) error {
	if err := m.out.ack(off, false); err != nil {
		return err
	}
	if m.appClosed {
		m.fx.wakeWriter = m.attached // it sends CLOSE once everything is acknowledged
	}
	return nil
}

// peerClose: everything the server sent has arrived; say so with our own
// CLOSE (the server lingers until it hears it).
func (cl *clientProto) peerClose(m *machine) error {
	m.setState(statePeerClosed, nil)
	m.fx.peerGone = true
	m.fx.retireCur = wire.AppendClose(nil)
	return nil
}

func (cl *clientProto) frame(m *machine, current bool, t wire.Type, payload []byte) error {
	switch t {
	case wire.TypeRedirect:
		r, err := wire.ParseRedirect(payload)
		if err != nil {
			return err
		}
		if !cl.ignoreRedirects && r.Addr != "" {
			cl.redirect, cl.redirectFrom = r.Addr, cl.cur
			cl.servers = mergeServers(cl.servers, []string{r.Addr})
			m.fx.poke = true
		}
		return nil
	case wire.TypeServers:
		s, err := wire.ParseServers(payload)
		if err != nil {
			return err
		}
		if len(s.Addrs) > 0 {
			cl.setServers(s.Addrs)
		}
		return nil
	}
	return errUnexpected(t)
}

// lastFrame: a closed client says CLOSE only once the server holds
// everything, the end of the stream included; until then a failed path
// is migrated.
func (cl *clientProto) lastFrame(m *machine) bool {
	if !(m.appClosed && m.out.finSent && m.out.base == m.out.end()) {
		return false
	}
	m.endLinger()
	return true
}

func (cl *clientProto) pathLost(m *machine) {
	if m.state == statePeerClosed {
		m.fx.peerGone = true
	} else {
		m.fx.poke = true
	}
}

// closeApp: the connection lingers, migrating if its path fails, until
// the server has acknowledged every byte and the FIN (armLinger bounds
// it), then sends CLOSE.
func (cl *clientProto) closeApp(m *machine) {
	m.out.fin = true
	m.in.discard() // nobody reads any more
	if m.state == statePeerClosed {
		m.finishClient()
		return
	}
	m.fx.armLinger = true
	m.fx.wakeWriter = m.attached
}

// finishClient ends a closed client's linger without a CLOSE: the server
// closed first, or the linger ran out.
func (m *machine) finishClient() {
	if m.state.terminal() {
		return
	}
	if m.attached {
		m.fx.closeCur = true
		m.attached = false
		m.ctrl = nil
	}
	m.endLinger()
}

// endLinger makes a closed client's connection closed for good.
func (m *machine) endLinger() {
	m.setState(stateClosed, net.ErrClosed)
	m.fx.clientDone = true
}
