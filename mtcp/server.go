package mtcp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// ListenConfig configures a Listener. Zero fields take the defaults noted.
type ListenConfig struct {
	Logger *slog.Logger // default: discard
	// TLSConfig, when set, wraps every accepted transport connection in TLS.
	TLSConfig *tls.Config
	// Self is the address peers and clients reach this server at; it is
	// the origin a client names in MIGRATE, so the other servers must list
	// this server under it. Default: the listener's address.
	Self string
	// Servers is the list of server addresses sent to clients, and the
	// only servers this one opens peer channels to: it fetches state from
	// an origin only if the origin is listed (or was, within 30s).
	// Update it later with SetServers.
	Servers []string
	// ClusterKey authenticates the peer channel between servers (HMAC
	// challenge both ways). Empty disables lazy transfer.
	ClusterKey []byte
	// PeerDial opens a transport connection to a peer. Default: TCP.
	PeerDial func(ctx context.Context, addr string) (net.Conn, error)
	// PeerTLSConfig, when set, wraps peer connections in TLS (needed when
	// the peers' listeners use TLS; with client certificates it is mTLS).
	// An empty ServerName is taken from the peer's address.
	PeerTLSConfig *tls.Config
	// PeerClientCAs, when set (with TLSConfig), makes the peer channel
	// mutual TLS on top of ClusterKey: a peer is served only if it showed
	// a client certificate that verifies against these CAs. The listener
	// then asks every TLS client for a certificate; clients' paths need
	// none, but one they do show must verify.
	PeerClientCAs *x509.CertPool
	// Store enables eager mode: every ExportState is saved before it
	// returns, input is acknowledged only up to the last saved snapshot,
	// and a MIGRATE whose origin cannot be reached is served from it.
	Store  SnapshotStore
	Limits Limits
	// HandshakeTimeout bounds the first frame and a migration. Default 10s.
	HandshakeTimeout time.Duration
	// PeerTimeout bounds a lazy fetch from the origin. Default 3s.
	PeerTimeout time.Duration
	// DetachedTimeout is how long a connection without a path waits for
	// its client to come back before it fails with ErrLost. Default 60s;
	// keep it above the clients' Dialer.RecoverTimeout.
	DetachedTimeout time.Duration
	// IdleTimeout: a path on which nothing (not even the client's
	// keepalive pings) arrives for this long is taken for dead and the
	// connection detaches. Keep it above the clients' Triggers.KeepAlive.
	// Default 30s.
	IdleTimeout time.Duration
	// StandbyTimeout is how long a warm standby path may idle. Default 5m.
	StandbyTimeout time.Duration
	// MigratedRetention is how long a migrated-away connection's state can
	// still be fetched (in case the new server fails before replying).
	// Default 30s.
	MigratedRetention time.Duration
	// OnMigration, if set, is called after every migration this server
	// takes part in (as new server or origin), including failed ones.
	OnMigration func(MigrationStats)

	// pushWait is how long a new server waits for a pushed state before
	// it also sends a FETCH (prepareHedge); tests lengthen it so that a
	// push loses to the FETCH only when it fails, not when CI is busy.
	pushWait time.Duration
}

func (c *ListenConfig) fill(ln net.Listener) {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Self == "" {
		c.Self = ln.Addr().String()
	}
	if c.PeerDial == nil {
		c.PeerDial = func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{KeepAlive: -1} // peer channels fail fast on their own
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	c.Limits = c.Limits.withDefaults()
	setDefault(&c.HandshakeTimeout, 10*time.Second)
	setDefault(&c.PeerTimeout, 3*time.Second)
	setDefault(&c.DetachedTimeout, 60*time.Second)
	setDefault(&c.StandbyTimeout, 5*time.Minute)
	setDefault(&c.IdleTimeout, 30*time.Second)
	setDefault(&c.MigratedRetention, 30*time.Second)
	setDefault(&c.pushWait, prepareHedge)
	if c.TLSConfig != nil && c.PeerClientCAs != nil {
		c.TLSConfig = c.TLSConfig.Clone()
		c.TLSConfig.ClientAuth = tls.VerifyClientCertIfGiven
		c.TLSConfig.ClientCAs = c.PeerClientCAs
	}
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// Listener accepts MTCP connections: new ones, ones migrating in from other
// servers, and peer channels from other servers.
type Listener struct {
	cfg    ListenConfig
	ln     net.Listener
	log    *slog.Logger
	accept chan *Conn
	peers  *peerPool
	closed chan struct{}
	ctx    context.Context // ends when the Listener closes
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    map[ConnID]*Conn
	migrated map[ConnID]*migratedConn
	// States pushed here ahead of their MIGRATE; pushWake is closed and
	// replaced whenever one arrives.
	pushed      map[ConnID]*pushedConn
	pushedBytes int
	pushWake    chan struct{}
	raw         map[net.Conn]struct{} // transport conns not owned by a Conn
	servers     []string
	// former holds addresses dropped from servers lately, with when. They
	// stay peers for formerPeerRetention: a front-end leaves the list as
	// it starts to drain, and the connections it redirects then arrive
	// elsewhere naming it as their origin, to be fetched from.
	former   map[string]time.Time
	draining bool
	closing  bool
}

// Listen listens on a TCP address.
func Listen(network, addr string, cfg ListenConfig) (*Listener, error) {
	// No TCP keepalive on paths: MTCP pings and times out idle paths itself.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	return NewListener(ln, cfg), nil
}

// NewListener serves MTCP on ln (TCP, a simulated network, …). The Listener
// owns ln and closes it.
func NewListener(ln net.Listener, cfg ListenConfig) *Listener {
	cfg.fill(ln)
	l := &Listener{
		cfg:      cfg,
		ln:       ln,
		log:      cfg.Logger.With("component", "mtcp", "server", cfg.Self),
		accept:   make(chan *Conn, 64),
		closed:   make(chan struct{}),
		conns:    make(map[ConnID]*Conn),
		migrated: make(map[ConnID]*migratedConn),
		pushed:   make(map[ConnID]*pushedConn),
		pushWake: make(chan struct{}),
		raw:      make(map[net.Conn]struct{}),
		servers:  append([]string(nil), cfg.Servers...),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.peers = newPeerPool(l)
	l.wg.Add(2)
	go l.serve()
	go l.sweepIdle()
	if len(cfg.ClusterKey) > 0 {
		for _, s := range cfg.Servers {
			if s != cfg.Self {
				l.wg.Add(1)
				go func() {
					defer l.wg.Done()
					l.peers.warm(s)
				}()
			}
		}
	}
	return l
}

// Accept returns the next new or migrated-in connection.
func (l *Listener) Accept() (net.Conn, error) { return l.AcceptMTCP() }

// AcceptMTCP is Accept with the concrete type.
func (l *Listener) AcceptMTCP() (*Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.closed:
		return nil, &net.OpError{Op: "accept", Net: "mtcp", Addr: l.ln.Addr(), Err: net.ErrClosed}
	}
}

// Addr is the transport listener's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Self is the address this server names itself by.
func (l *Listener) Self() string { return l.cfg.Self }

// Close stops accepting and closes peer channels. Accepted connections
// stay open; close them, or Drain first.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return nil
	}
	l.closing = true
	close(l.closed)
	l.cancel()
	for nc := range l.raw {
		_ = nc.Close()
	}
	for _, m := range l.migrated {
		m.timer.Stop()
	}
	l.migrated = map[ConnID]*migratedConn{}
	for id, pc := range l.pushed {
		l.dropPushedLocked(id, pc)
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.peers.close()
	l.wg.Wait()
	return err
}

// NumConns reports how many connections this server currently owns.
func (l *Listener) NumConns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *Listener) serve() {
	defer l.wg.Done()
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.log.Warn("accept", "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-l.closed:
				return
			}
			continue
		}
		if !l.trackRaw(nc) {
			_ = nc.Close()
			return
		}
		l.wg.Add(1)
		go l.handshake(nc)
	}
}

func (l *Listener) trackRaw(nc net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.raw[nc] = struct{}{}
	return true
}

func (l *Listener) untrackRaw(nc net.Conn) {
	l.mu.Lock()
	delete(l.raw, nc)
	l.mu.Unlock()
}

// handshake reads a transport connection's first frame and dispatches.
func (l *Listener) handshake(raw net.Conn) {
	defer l.wg.Done()
	owned := false
	defer func() {
		l.untrackRaw(raw)
		if !owned {
			_ = raw.Close()
		}
	}()
	nc := raw
	_ = nc.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	if l.cfg.TLSConfig != nil {
		tc := tls.Server(raw, l.cfg.TLSConfig)
		if err := tc.HandshakeContext(l.ctx); err != nil {
			// A certificate this server refused is worth an operator's
			// eye (a peer or client set up with the wrong CA); a scanner
			// or a client that gave up is not.
			var verr *tls.CertificateVerificationError
			if errors.As(err, &verr) {
				l.log.Warn("TLS handshake refused: the remote's certificate does not verify", "remote", raw.RemoteAddr(), "err", err)
			} else {
				l.log.Debug("TLS handshake", "remote", raw.RemoteAddr(), "err", err)
			}
			return
		}
		nc = tc
	}
	br := bufio.NewReaderSize(nc, pathReadBuffer)
	var hdr [wire.HeaderLen]byte
	t, payload, err := wire.ReadFrame(br, &hdr, nil)
	if err != nil {
		l.log.Debug("handshake", "err", err)
		return
	}
	if t == wire.TypeStandby {
		if _, err := wire.ParseStandby(payload); err != nil {
			return
		}
		_ = nc.SetDeadline(time.Now().Add(l.cfg.StandbyTimeout))
		if t, payload, err = wire.ReadFrame(br, &hdr, nil); err != nil {
			return
		}
		_ = nc.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	}
	switch t {
	case wire.TypeHello:
		owned = l.acceptNew(nc, br, payload)
	case wire.TypeMigrate:
		owned = l.acceptMigrate(nc, br, payload)
	case wire.TypePeerHello:
		l.servePeer(nc, br, payload)
	default:
		refuse(nc, refusal(RefuseBadRequest, "unexpected %s", t))
	}
}

func refuse(nc net.Conn, e *RefusalError) {
	_, _ = nc.Write(wire.AppendRefuse(nil, wire.Refuse{Code: uint8(e.Code), Reason: e.Reason}))
}

func (l *Listener) serverList() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.servers...)
}

// isPeer reports whether addr is a server of the cluster: this one, or one
// in the server list. A server dials no other address, so a MIGRATE (which
// anyone may send) cannot make it connect to an address of its choosing.
func (l *Listener) isPeer(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if addr == l.cfg.Self || slices.Contains(l.servers, addr) {
		return true
	}
	t, ok := l.former[addr]
	return ok && time.Since(t) < formerPeerRetention
}

// formerPeerRetention is how long a server dropped from the server list
// stays a peer: long enough for a drain to hand its connections over.
const formerPeerRetention = 30 * time.Second

func (l *Listener) newServerConn(id ConnID, secret []byte) *Conn {
	c := newConn(id, secret, l.log, l.cfg.Limits)
	c.sv = &serverSide{ln: l, serverProto: serverProto{eager: l.cfg.Store != nil, maxInputLog: c.lim.MaxInputLog}}
	c.side, c.end = &c.sv.serverProto, c.sv
	c.in.keepLog = true
	return c
}

// acceptNew creates a connection for a HELLO.
func (l *Listener) acceptNew(nc net.Conn, br *bufio.Reader, payload []byte) bool {
	h, err := wire.ParseHello(payload)
	if err != nil || h.Version != wire.Version {
		refuse(nc, refusal(RefuseBadRequest, "unsupported version"))
		return false
	}
	l.mu.Lock()
	draining := l.draining
	l.mu.Unlock()
	if draining {
		refuse(nc, refusal(RefuseDraining, "draining"))
		return false
	}
	c := l.newServerConn(randomID(), randomSecret())
	if st := l.cfg.Store; st != nil {
		// The first record holds the secret, so an eager migration can
		// verify the client even before the application's first snapshot.
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandshakeTimeout)
		err := st.Save(ctx, &SnapshotRecord{ConnID: c.id, Secret: c.secret})
		cancel()
		if err != nil {
			l.log.Warn("save initial snapshot", "err", err)
			refuse(nc, refusal(RefuseStateUnavailable, "snapshot store unavailable"))
			return false
		}
	}
	w := wire.AppendWelcome(nil, wire.Welcome{ConnID: c.id, Secret: c.secret, Self: l.cfg.Self, Servers: l.serverList()})
	return l.register(c, nc, br, 0, w)
}

// register adds a new or migrated-in connection to the table, sends the
// greeting (WELCOME or ACCEPTED) on its first path, attaches the path and
// hands the connection to Accept. The connection is in the table before
// the client hears of it, so an immediate MIGRATE finds it. A failed
// greeting write is left to the path, which then fails like any other.
func (l *Listener) register(c *Conn, nc net.Conn, br *bufio.Reader, resume uint64, greeting []byte) bool {
	_ = nc.SetDeadline(time.Time{})
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return false
	}
	l.conns[c.id] = c
	if mc := l.migrated[c.id]; mc != nil {
		// Ours again: an old handed-over copy must never be handed out.
		mc.timer.Stop()
		delete(l.migrated, c.id)
	}
	l.mu.Unlock()
	c.mu.Lock()
	if c.state.terminal() {
		c.mu.Unlock()
		return false
	}
	if err := c.attachLocked(newPath(c, nc, br), resume, 0, greeting); err != nil {
		c.mu.Unlock()
		l.remove(c)
		return false
	}
	c.mu.Unlock()
	select {
	case l.accept <- c:
		return true
	case <-l.closed:
		l.remove(c)
		return false
	}
}

// goTracked runs f in a goroutine that Close waits for, unless closing.
func (l *Listener) goTracked(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
}

func (l *Listener) remove(c *Conn) {
	l.mu.Lock()
	if l.conns[c.id] == c {
		delete(l.conns, c.id)
	}
	l.mu.Unlock()
}

func (l *Listener) lookup(id ConnID) (*Conn, *migratedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[id], l.migrated[id]
}

func (l *Listener) report(s MigrationStats) {
	if f := l.cfg.OnMigration; f != nil {
		f(s)
	}
}

// serverSide is the server half of a Conn.
type serverSide struct {
	serverProto // the machine's server side
	ln          *Listener
	counter     uint64 // last accepted migration counter
	snap        snapshot
	// redirected: this server asked the client to move (Redirect), so
	// the migration that follows is reported with TriggerRedirect.
	redirected   atomic.Bool
	imported     []byte
	hasImported  bool
	durableSeq   uint64
	durable      snapshot   // eager: the last saved snapshot
	preparing    bool       // an application's PrepareSnapshot awaits SnapshotSaved
	storeCounter uint64     // the counter in the stored record
	saveMu       sync.Mutex // one Save at a time, so versions chain
	lastFrames   uint64     // idle sweep: frames seen on the path last time
	lastMove     time.Time  // and when that count last changed
	detached     *time.Timer
}

// apply carries out the server's effects of a machine event.
func (s *serverSide) apply(c *Conn, fx effects) {
	switch {
	case fx.reattached:
		s.lastMove = time.Time{} // a new path: the idle sweep starts over
		s.stopDetachedTimer()
	case fx.detached:
		s.detachedLocked(c)
	}
	if fx.remove || fx.forget {
		s.stopDetachedTimer()
	}
	if fx.remove {
		go s.ln.remove(c)
	}
	if fx.forget {
		go s.closed(c)
	}
	if pr := fx.prepare; pr != nil {
		// Not under c.mu: freezing takes it, pushing waits on a peer.
		s.ln.goTracked(func() { s.ln.prepare(*pr) })
	}
}

func (s *serverSide) stopDetachedTimer() {
	if s.detached != nil {
		s.detached.Stop()
		s.detached = nil
	}
}

func (s *serverSide) detachedLocked(c *Conn) {
	if s.detached != nil {
		s.detached.Stop()
	}
	s.detached = time.AfterFunc(s.ln.cfg.DetachedTimeout, func() { s.onDetachedTimeout(c) })
}

// onDetachedTimeout fires when a client has not come back in time.
func (s *serverSide) onDetachedTimeout(c *Conn) {
	c.mu.Lock()
	if c.state != stateDetached {
		c.mu.Unlock()
		return
	}
	c.log.Info("client did not come back; connection dropped", "after", s.ln.cfg.DetachedTimeout, "app_closed", c.appClosed)
	c.setStateLocked(stateFailed, ErrLost)
	c.mu.Unlock()
	s.closed(c)
}

// closed forgets a connection that ended.
func (s *serverSide) closed(c *Conn) {
	s.ln.remove(c)
	c.mu.Lock()
	if s.detached != nil {
		s.detached.Stop()
	}
	migrated := c.state == stateMigrated
	counter := s.counter
	c.mu.Unlock()
	if st := s.ln.cfg.Store; st != nil && !migrated {
		// Conditional: a stale copy (another server claimed the
		// connection with a higher counter) must not delete the record.
		ctx, cancel := context.WithTimeout(context.Background(), s.ln.cfg.HandshakeTimeout)
		_ = st.Delete(ctx, c.id, counter)
		cancel()
	}
}
