package mtcp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// Dialer opens client ends of MTCP connections. Its DialContext plugs into
// http.Transport.DialContext. The zero Dialer dials TCP with defaults.
type Dialer struct {
	// Servers is the seed list of server addresses; servers send updates.
	// DialContext tries its addr first, then these.
	Servers []string
	// DialPath opens a transport connection. Default: TCP.
	DialPath func(ctx context.Context, addr string) (net.Conn, error)
	// TLSConfig, when set, wraps every path in TLS. An empty ServerName is
	// taken from the address dialled.
	TLSConfig *tls.Config
	Logger    *slog.Logger
	Limits    Limits
	Triggers  Triggers
	// Standby keeps a warm path to the next server so that a migration
	// needs no transport handshake (make-before-break).
	Standby bool
	// NoPrepare stops the client from sending PREPARE on its current path
	// before it dials the next server, so every migration fetches the
	// state on the new server's request instead of having it pushed
	// during the dial (for comparisons).
	NoPrepare bool
	// PrepareMinRTT: the client sends PREPARE only when its current path's
	// round-trip time (the kernel's minimum RTT of the TCP connection) is
	// at least this. The push saves the new server's FETCH round trip but
	// adds work on all three parties (PREPARE, PUSH and its answer); when
	// round trips are this short, as between processes on one host, that
	// work costs more than the round trip. The client's own path stands in
	// for the distance between the servers, which is what the push saves:
	// a client next to its server (a proxy on the same host) with servers
	// far apart should set it negative. Paths whose RTT cannot be read
	// (not kernel TCP, not Linux) always prepare. Default 100µs; negative:
	// prepare whatever the RTT.
	PrepareMinRTT time.Duration
	// HandshakeTimeout bounds a connect or one migration attempt. Default 10s.
	HandshakeTimeout time.Duration
	// RecoverTimeout is how long a client whose path failed keeps trying
	// servers before the connection fails with ErrLost. Default 30s.
	RecoverTimeout time.Duration
	// OnMigration, if set, is called after every migration attempt.
	OnMigration func(MigrationStats)
}

func (d Dialer) filled() *Dialer {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.DialPath == nil {
		d.DialPath = func(ctx context.Context, addr string) (net.Conn, error) {
			nd := net.Dialer{KeepAlive: -1} // MTCP pings on its own
			return nd.DialContext(ctx, "tcp", addr)
		}
	}
	d.Limits = d.Limits.withDefaults()
	d.Triggers.fill()
	setDefault(&d.HandshakeTimeout, 10*time.Second)
	setDefault(&d.RecoverTimeout, 30*time.Second)
	if d.PrepareMinRTT == 0 {
		d.PrepareMinRTT = defaultPrepareMinRTT
	}
	d.Servers = append([]string(nil), d.Servers...)
	return &d
}

// Dial is DialContext with a background context.
func (d *Dialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

// DialContext opens a connection to addr (or, failing that, a seed server).
// network is accepted for http.Transport's sake; paths are always streams.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.DialMTCP(ctx, addr)
}

// DialMTCP is DialContext with the concrete type.
func (d *Dialer) DialMTCP(ctx context.Context, addr string) (*Conn, error) {
	cfg := d.filled()
	cands := mergeServers(nil, append([]string{addr}, cfg.Servers...))
	var last error
	for _, a := range cands {
		c, err := dialOne(ctx, cfg, a)
		if err == nil {
			return c, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	if last == nil {
		last = errors.New("mtcp: no server to dial")
	}
	return nil, &net.OpError{Op: "dial", Net: "mtcp", Err: last}
}

// openPath dials a transport connection to addr, with TLS when configured.
func openPath(ctx context.Context, cfg *Dialer, addr string) (net.Conn, error) {
	nc, err := cfg.DialPath(ctx, addr)
	if err != nil {
		return nil, err
	}
	if cfg.TLSConfig == nil {
		return nc, nil
	}
	tc := cfg.TLSConfig
	if tc.ServerName == "" && !tc.InsecureSkipVerify {
		tc = tc.Clone()
		if host, _, err := net.SplitHostPort(addr); err == nil {
			tc.ServerName = host
		}
	}
	t := tls.Client(nc, tc)
	if err := t.HandshakeContext(ctx); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return t, nil
}

// exchange writes one frame and reads the answer, bounded by ctx and timeout.
func exchange(ctx context.Context, nc net.Conn, br *bufio.Reader, frame []byte, timeout time.Duration) (wire.Type, []byte, error) {
	t, payload, _, err := exchangeSent(ctx, nc, br, frame, timeout)
	return t, payload, err
}

// exchangeSent is exchange that also reports whether the frame was
// written in full, so a caller can tell "never sent" from "no answer".
func exchangeSent(ctx context.Context, nc net.Conn, br *bufio.Reader, frame []byte, timeout time.Duration) (wire.Type, []byte, bool, error) {
	dl := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = nc.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := nc.Write(frame); err != nil {
		return 0, nil, false, err
	}
	var hdr [wire.HeaderLen]byte
	t, payload, err := wire.ReadFrame(br, &hdr, nil)
	if err != nil {
		return 0, nil, true, err
	}
	if !stop() {
		return 0, nil, true, ctx.Err()
	}
	_ = nc.SetDeadline(time.Time{})
	return t, payload, true, nil
}

func refusalFrom(payload []byte, addr string) error {
	r, err := wire.ParseRefuse(payload)
	if err != nil {
		return err
	}
	return &RefusalError{Code: RefusalCode(r.Code), Reason: r.Reason, Addr: addr}
}

func dialOne(ctx context.Context, cfg *Dialer, addr string) (*Conn, error) {
	nc, err := openPath(ctx, cfg, addr)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(nc, pathReadBuffer)
	t, payload, err := exchange(ctx, nc, br, wire.AppendHello(nil, wire.Hello{Version: wire.Version}), cfg.HandshakeTimeout)
	if err == nil && t == wire.TypeRefuse {
		err = refusalFrom(payload, addr)
	} else if err == nil && t != wire.TypeWelcome {
		err = errUnexpected(t)
	}
	var w wire.Welcome
	if err == nil {
		w, err = wire.ParseWelcome(payload)
	}
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	c := newConn(ConnID(w.ConnID), w.Secret, cfg.Logger.With("component", "mtcp-client"), cfg.Limits)
	cl := &clientSide{
		clientProto: clientProto{
			cur:             addr,
			servers:         mergeServers(append([]string(nil), cfg.Servers...), append(w.Servers, addr)),
			seeds:           append([]string(nil), cfg.Servers...),
			ignoreRedirects: cfg.Triggers.IgnoreRedirects,
		},
		d:    cfg,
		self: w.Self,
		kick: make(chan struct{}, 1),
		mig:  make(chan struct{}, 1),
	}
	if len(w.Servers) > 0 {
		cl.setServers(w.Servers)
	}
	cl.ctx, cl.cancel = context.WithCancel(context.Background())
	c.cl = cl
	c.side, c.end = &cl.clientProto, cl
	c.mu.Lock()
	err = c.attachLocked(newPath(c, nc, br), 0, 0, nil)
	cl.resetPolicyLocked(time.Now())
	c.mu.Unlock()
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	cl.wg.Add(1)
	go cl.run(c)
	cl.armStandby(c)
	return c, nil
}

// clientSide is the client half of a Conn.
type clientSide struct {
	clientProto // the machine's client side
	d           *Dialer
	ctx         context.Context // ends with the connection
	cancel      context.CancelFunc
	kick        chan struct{}
	mig         chan struct{} // one migration at a time
	wg          sync.WaitGroup

	// Guarded by the Conn's mu.
	counter   uint64
	self      string // the current server's own name (origin in MIGRATE)
	want      string // a trigger's reason to migrate
	standby   *standbyPath
	last      MigrationStats
	rate      rateEstimator
	lastFrame uint64    // progress check: frame count seen last tick
	lastMove  time.Time // and when it last changed
	rateClock rateClock
	linger    *time.Timer          // after Close: gives up waiting for acknowledgements
	fled      map[string]time.Time // servers the rate policy left, and when
}

type standbyPath struct {
	addr string
	nc   net.Conn
	br   *bufio.Reader
}

func (cl *clientSide) poke() {
	select {
	case cl.kick <- struct{}{}:
	default:
	}
}

// apply carries out the client's effects of a machine event.
func (cl *clientSide) apply(c *Conn, fx effects) {
	if fx.ended || fx.peerGone {
		cl.cancel()
	}
	if fx.peerGone {
		cl.dropStandbyLocked()
	}
	if fx.poke {
		cl.poke()
	}
	if fx.armLinger {
		cl.linger = time.AfterFunc(closeLinger, func() { cl.onLingerTimeout(c) })
	}
	if fx.clientDone {
		if cl.linger != nil {
			cl.linger.Stop()
		}
		go cl.closed(c)
	}
}

// onLingerTimeout gives up on a closed client's unacknowledged bytes.
func (cl *clientSide) onLingerTimeout(c *Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.finishClient()
	c.applyLocked()
}

func (cl *clientSide) closed(c *Conn) {
	cl.cancel()
	c.mu.Lock()
	cl.dropStandbyLocked()
	c.mu.Unlock()
}

func (cl *clientSide) dropStandbyLocked() {
	if cl.standby != nil {
		_ = cl.standby.nc.Close()
		cl.standby = nil
	}
}

func (cl *clientSide) resetPolicyLocked(now time.Time) {
	cl.received = 0
	cl.lastMove, cl.lastFrame = now, 0
	if r := cl.d.Triggers.Rate; r != nil {
		cl.rate = newRateEstimator(*r, now, 0)
		cl.rateClock = newRateClock(r.Interval, cl.d.Triggers.tick(), now)
	}
}

// Servers returns the servers the client currently knows.
func (c *Conn) Servers() []string {
	if c.cl == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.cl.servers...)
}

// Server returns the address of the server the client is attached to.
func (c *Conn) Server() string {
	if c.cl == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cl.cur
}

// Standby returns the address of the server the warm standby path leads
// to, once that path is open and announced, or "" when there is none (the
// Dialer has no Standby, the path is still opening, or a migration just
// used it). A Migrate to that address needs no transport handshake.
func (c *Conn) Standby() string {
	if c.cl == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cl.standby == nil {
		return ""
	}
	return c.cl.standby.addr
}

// LastMigration returns the client's view of its latest migration.
func (c *Conn) LastMigration() MigrationStats {
	if c.cl == nil {
		return MigrationStats{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cl.last
}

// Migrate moves the connection to the server at addr now (for tools and
// tests; the triggers call the same mechanism).
func (c *Conn) Migrate(ctx context.Context, addr string) error {
	if c.cl == nil {
		return ErrNotClient
	}
	return c.cl.migrate(ctx, c, addr, false, TriggerRequest)
}

// migrate runs one client-initiated migration to addr: initiate (open a
// path and send MIGRATE), wait (for ACCEPTED or REFUSE), complete
// (reattach and resend input from the server's offset). With ifDown it
// does nothing if another migration restored a path meanwhile.
func (cl *clientSide) migrate(ctx context.Context, c *Conn, addr string, ifDown bool, trigger string) error {
	select {
	case cl.mig <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-cl.mig }()
	t0 := time.Now()
	c.mu.Lock()
	if c.state.terminal() || c.state == statePeerClosed {
		err := c.stateErrOrLost()
		c.mu.Unlock()
		return c.opErr("migrate", err)
	}
	if ifDown && c.path != nil {
		c.mu.Unlock()
		return nil
	}
	cl.counter++
	m := wire.Migrate{ConnID: c.id, Counter: cl.counter, RecvOff: c.in.end(), Origin: cl.self}
	m.MAC = migrateMAC(c.secret, m)
	stats := MigrationStats{ConnID: c.id, Role: RoleClient, From: cl.self, To: addr, Trigger: trigger}
	if p := c.path; p != nil && addr != cl.cur && cl.self != "" && cl.worthPreparing(p) {
		// Ask the origin to push the state to addr while we dial it.
		p.queue(wire.AppendPrepare(nil, wire.Prepare{Target: addr, Migrate: m, MAC: prepareMAC(c.secret, m, addr)}))
		m.Prepared, stats.Pushed = true, true
	}
	var sb *standbyPath
	if cl.standby != nil && cl.standby.addr == addr {
		sb, cl.standby = cl.standby, nil
	}
	c.mu.Unlock()

	frame := wire.AppendMigrate(nil, m)
	var (
		nc      net.Conn
		br      *bufio.Reader
		t       wire.Type
		payload []byte
		err     error
		t1      time.Time
	)
	if sb != nil {
		nc, br = sb.nc, sb.br
		stats.Standby = true
		t1 = time.Now()
		t, payload, err = exchange(ctx, nc, br, frame, cl.d.HandshakeTimeout)
		if err != nil { // the warm path went cold: fall back to a new one
			_ = nc.Close()
			sb = nil
			stats.Standby = false
		}
	}
	if sb == nil {
		nc, err = openPath(ctx, cl.d, addr)
		if err != nil {
			stats.Err = err
			cl.report(c, stats)
			return err
		}
		br = bufio.NewReaderSize(nc, pathReadBuffer)
		t1 = time.Now()
		t, payload, err = exchange(ctx, nc, br, frame, cl.d.HandshakeTimeout)
	}
	stats.Initiate = t1.Sub(t0) // dial and write; the write itself is in the wait
	t2 := time.Now()
	stats.Wait = t2.Sub(t1)
	if err == nil {
		switch t {
		case wire.TypeRefuse:
			err = refusalFrom(payload, addr)
		case wire.TypeAccepted:
		default:
			err = errUnexpected(t)
		}
	}
	var acc wire.Accepted
	if err == nil {
		acc, err = wire.ParseAccepted(payload)
	}
	if err != nil {
		_ = nc.Close()
		stats.Err = err
		cl.report(c, stats)
		return err
	}
	c.mu.Lock()
	if c.state.terminal() || c.state == statePeerClosed {
		// The stream ended while we migrated: tell the new server, so
		// its copy does not wait for us.
		c.mu.Unlock()
		_, _ = nc.Write(wire.AppendClose(nil))
		_ = nc.Close()
		return c.opErr("migrate", net.ErrClosed)
	}
	if err := c.attachLocked(newPath(c, nc, br), acc.RecvOff, m.RecvOff, nil); err != nil {
		// The server lacks input we already discarded: unrecoverable.
		_ = nc.Close()
		c.setStateLocked(stateFailed, fmt.Errorf("%w: %v", ErrLost, err))
		c.mu.Unlock()
		return err
	}
	cl.cur, cl.self = addr, acc.Self
	if len(acc.Servers) > 0 {
		cl.setServers(acc.Servers)
	}
	cl.resetPolicyLocked(time.Now())
	c.mu.Unlock()
	stats.Complete = time.Since(t2)
	cl.report(c, stats)
	cl.armStandby(c)
	return nil
}

// defaultPrepareMinRTT is Dialer.PrepareMinRTT's default: on loopback the
// minimum RTT is tens of µs, on a LAN between hosts 100µs and more.
const defaultPrepareMinRTT = 100 * time.Microsecond

// worthPreparing tells whether to have the origin push the state while
// the client dials (see Dialer.PrepareMinRTT).
func (cl *clientSide) worthPreparing(p *path) bool {
	if cl.d.NoPrepare {
		return false
	}
	if cl.d.PrepareMinRTT < 0 {
		return true
	}
	rtt, ok := p.roundTrip()
	return !ok || rtt >= cl.d.PrepareMinRTT
}

func (cl *clientSide) report(c *Conn, s MigrationStats) {
	c.mu.Lock()
	cl.last = s
	c.mu.Unlock()
	if f := cl.d.OnMigration; f != nil {
		f(s)
	}
}
