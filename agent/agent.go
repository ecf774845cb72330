// Package agent carries plain TCP connections over Migratory TCP: every
// connection accepted on a local listener gets its own MTCP connection to
// a front-end, and the bytes are relayed both ways unchanged. An HTTP
// client that cannot link the client package (curl, Python, Java, a
// shell script) talks plain HTTP/1.1 to the agent, and its connection
// moves between front-ends in the middle of a batch as a Go client's
// would. The listener may be any net.Listener: a TCP one, or the service
// addresses of a TUN device whose connections a netstack terminates
// (agent/tunnet).
//
// The invariant: each direction's bytes reach the other side in order,
// each exactly once, and its end of stream (a half-close) follows its last
// byte; an MTCP connection that is lost for good aborts the local
// connection (RST), so the application never mistakes a cut stream for a
// finished one.
//
// Back-pressure is end to end: the agent reads from one side only as fast
// as the other side takes the bytes (an MTCP Write blocks while the send
// buffer is full, a TCP Write while the kernel's is), and holds at most
// one buffer per direction.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"hafe.dev/hafe/internal/netwait"
	"hafe.dev/hafe/mtcp"
)

// DefaultSendBuffer is the MTCP send buffer the agent gives its
// connections (Config.Dialer.Limits.MaxSendBuffer when that is zero). A
// front-end in eager mode acknowledges a request only once it has
// answered it, so the agent must hold the whole request meanwhile: the
// buffer bounds the largest request body an eager front-end can take
// through the agent (hafe serve's --max-body-bytes is 8 MiB by default).
// It is allocated as bytes arrive, not up front.
const DefaultSendBuffer = 16 << 20

// Config configures an Agent.
type Config struct {
	// Servers are the front-ends' MTCP addresses (HOST:PORT) to start
	// from; once a connection is open, the agent follows the list the
	// servers send.
	Servers []string
	// Dialer is the template for every MTCP connection: Triggers,
	// Standby, PrepareMinRTT, Limits, TLS. Its Servers and OnMigration
	// are the agent's.
	Dialer mtcp.Dialer
	// DialTimeout bounds opening an MTCP connection for an accepted one
	// (default 10s); on failure the local connection is reset.
	DialTimeout time.Duration
	// Logger receives one line per migration and per failed connection.
	Logger *slog.Logger
	// Metrics, when set, counts connections and migrations (NewMetrics).
	Metrics *Metrics
}

// Agent relays local connections over MTCP. Its methods are safe for
// concurrent use.
type Agent struct {
	cfg Config
	log *slog.Logger
	m   *Metrics

	seq  atomic.Uint64
	mu   sync.Mutex
	srv  []string // the servers known now
	next int      // round robin over srv for new connections
	open map[*relay]struct{}
	// stopping: Shutdown's time ran out; new relays end at once.
	stopping bool
	wg       sync.WaitGroup
}

// New checks cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("agent: no MTCP servers to start from")
	}
	for _, s := range cfg.Servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, errors.New("agent: server " + s + ": want HOST:PORT")
		}
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Dialer.Limits.MaxSendBuffer == 0 {
		cfg.Dialer.Limits.MaxSendBuffer = DefaultSendBuffer
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dialer.Logger == nil {
		cfg.Dialer.Logger = log.With("component", "mtcp")
	}
	return &Agent{cfg: cfg, log: log, m: cfg.Metrics, srv: append([]string(nil), cfg.Servers...), open: map[*relay]struct{}{}}, nil
}

// Servers returns the front-ends the agent knows now.
func (a *Agent) Servers() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.srv...)
}

// Open returns the number of connections being relayed.
func (a *Agent) Open() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.open)
}

// pick returns the server for a new connection and the list to fall back on.
func (a *Agent) pick() (string, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.srv[a.next%len(a.srv)]
	a.next++
	return s, append([]string(nil), a.srv...)
}

// learn takes the servers' own list, as a connection last heard it.
func (a *Agent) learn(list []string) {
	if len(list) == 0 {
		return
	}
	a.mu.Lock()
	a.srv = append(a.srv[:0:0], list...)
	a.mu.Unlock()
}

// Serve relays every connection accepted on ln until ln fails or is
// closed; it returns that error (net.ErrClosed once closed). Connections
// being relayed go on: Shutdown ends them.
func (a *Agent) Serve(ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() { // e.g. out of file descriptors
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				a.log.Warn("accept failed; retrying", "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.Relay(context.Background(), c)
		}()
	}
}

// Shutdown waits until the relayed connections have ended or ctx is done,
// then aborts those left. Close the listeners first.
func (a *Agent) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	a.mu.Lock()
	a.stopping = true // connections still dialling are aborted once dialled
	for r := range a.open {
		r.abort()
	}
	a.mu.Unlock()
	<-done
	return ctx.Err()
}

// Relay carries local over a new MTCP connection until both directions
// have ended, then closes both. It returns once local is closed. ctx
// bounds the dial only; Shutdown ends a relay early.
func (a *Agent) Relay(ctx context.Context, local net.Conn) {
	id := a.seq.Add(1)
	// The connection's logger is made when there is something to say:
	// kept for the connection's life, it would cost an idle one.
	client := local.RemoteAddr().String()
	log := func() *slog.Logger { return a.log.With("conn", id, "client", client) }
	first, servers := a.pick()
	d := a.cfg.Dialer
	d.Servers = servers
	d.OnMigration = func(s mtcp.MigrationStats) { a.observe(log(), s) }
	// Dial on a goroutine of its own: its stack grows deep and goes
	// with it, while this one, which relays for the connection's life,
	// stays small (idle connections cost mostly goroutine stacks).
	dialed := make(chan dialResult, 1)
	go func() {
		dctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
		defer cancel()
		mc, err := d.DialMTCP(dctx, first)
		dialed <- dialResult{mc, err}
	}()
	res := <-dialed
	mc, err := res.mc, res.err
	if err != nil {
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			log().Error("the front-end's TLS certificate does not verify: check the CA the agent trusts (--ca); resetting the connection", "err", err)
		} else {
			log().Warn("no front-end took the connection; resetting it", "err", err)
		}
		a.m.connection("dial_failed")
		abortConn(local)
		return
	}
	a.learn(mc.Servers())
	a.log.Debug("relaying", "conn", id, "client", client, "mtcp_conn", mc.ID(), "server", mc.Server())
	r := &relay{local: local, mc: mc}
	a.mu.Lock()
	a.open[r] = struct{}{}
	if a.stopping {
		r.abort()
	}
	a.mu.Unlock()
	a.m.opened()
	result := r.run(a.m)
	a.mu.Lock()
	delete(a.open, r)
	a.mu.Unlock()
	a.learn(mc.Servers())
	a.m.closed(result)
	a.log.Debug("relay ended", "conn", id, "result", result)
}

type dialResult struct {
	mc  *mtcp.Conn
	err error
}

// observe logs and counts one migration.
func (a *Agent) observe(log *slog.Logger, s mtcp.MigrationStats) {
	a.m.migration(s)
	args := []any{"mtcp_conn", s.ConnID.String(), "from", s.From, "to", s.To, "trigger", s.Trigger,
		"initiate", s.Initiate, "wait", s.Wait, "complete", s.Complete, "total", s.Total(),
		"standby", s.Standby, "pushed", s.Pushed}
	if s.Err != nil {
		log.Warn("migration failed", append(args, "err", s.Err)...)
		return
	}
	log.Info("migrated", args...)
}

// relay is one local connection and its MTCP connection.
type relay struct {
	local   net.Conn
	mc      *mtcp.Conn
	aborted atomic.Bool
}

// abort ends both connections at once: the local one with a reset.
func (r *relay) abort() {
	if r.aborted.CompareAndSwap(false, true) {
		abortConn(r.local)
		_ = r.mc.Close()
	}
}

// run relays until both directions end: "ok" when each ended with its
// sender's end of stream, "aborted" otherwise.
func (r *relay) run(m *Metrics) string {
	// A direction that fails aborts both, which ends the other's wait;
	// but when the front-end no longer takes the client's bytes (it
	// answered and closed, say a 413 to a body too large), the answer
	// still goes down to the client first.
	done := make(chan error, 1)
	go func() {
		err := copyHalf(r.mc, r.local, m.bytes(up))
		if _, refused := err.(writeError); err != nil && !refused {
			r.abort()
		}
		done <- err
	}()
	if err := copyHalf(r.local, r.mc, m.bytes(down)); err != nil {
		r.abort()
	}
	_, refused := (<-done).(writeError)
	if r.aborted.Load() {
		return "aborted"
	}
	if refused {
		// Closing with the client's unread bytes in the kernel would
		// reset the connection, and the client might lose the answer
		// it has not read yet: read until its FIN, for a while.
		_ = r.local.SetReadDeadline(time.Now().Add(lingerRead))
		_, _ = io.Copy(io.Discard, r.local)
	}
	_ = r.local.Close()
	_ = r.mc.Close()
	return "ok"
}

// lingerRead bounds how long a connection whose front-end stopped taking
// its bytes is read (and its bytes dropped) after the answer went down.
const lingerRead = 2 * time.Second

// writeError is a failed write to copyHalf's destination.
type writeError struct{ error }

func (e writeError) Unwrap() error { return e.error }

// waitForBytes blocks until src has bytes, an end of stream or an error
// to read, holding no buffer meanwhile; false if src cannot be waited on
// so. An MTCP connection's Read of nothing waits for bytes to read. (TCP
// connections are read with netwait.ReadPooled instead.)
func waitForBytes(src net.Conn) bool {
	switch c := src.(type) {
	case *mtcp.Conn:
		_, _ = c.Read(nil) // an error is the next Read's to report
		return true
	case readableWaiter:
		c.WaitReadable()
		return true
	}
	return false
}

// readableWaiter is a connection that can wait for bytes to read without
// a buffer: one a netstack terminated (agent/tunnet's Conn).
type readableWaiter interface{ WaitReadable() }

// halfCloser is a connection whose sending side closes on its own.
type halfCloser interface{ CloseWrite() error }

// halfReader reads one direction's source. While src is idle it holds no
// buffer where it can wait without one (a TCP, MTCP or netstack
// connection), a small one otherwise; a pooled large one only while bytes
// flow.
type halfReader struct {
	src   net.Conn
	small []byte
	big   *[]byte
	// pending is a large buffer let go by the last read, whose bytes the
	// caller has yet to write: pooled by donePending.
	pending *[]byte
}

// read returns the next bytes src has, valid until the next call.
func (r *halfReader) read() ([]byte, error) {
	if r.big == nil {
		// A TCP connection is read into a pooled buffer taken once the
		// bytes are there: no buffer while idle, no extra system call.
		if b, n, err, ok := netwait.ReadPooled(r.src, &bigPool); ok {
			r.big = b
			if b == nil {
				return nil, err
			}
			return r.settle((*b)[:n], len(*b)), err
		}
		if waitForBytes(r.src) {
			r.big = bigPool.Get().(*[]byte)
		}
	}
	var buf []byte
	if r.big != nil {
		buf = *r.big
	} else {
		if r.small == nil {
			r.small = make([]byte, smallBuf)
		}
		buf = r.small
	}
	n, err := r.src.Read(buf)
	return r.settle(buf[:n], len(buf)), err
}

// settle keeps a large buffer for the next read when got filled the
// buffer (more may be waiting), or lets it go, once got is written, before
// a read that may wait long.
func (r *halfReader) settle(got []byte, size int) []byte {
	switch {
	case len(got) == size && r.big == nil:
		r.big = bigPool.Get().(*[]byte)
	case len(got) < size && r.big != nil:
		r.pending = r.big
		r.big = nil
	}
	return got
}

// donePending pools the buffer the last read let go; call it once its
// bytes are written.
func (r *halfReader) donePending() {
	if r.pending != nil {
		bigPool.Put(r.pending)
		r.pending = nil
	}
}

// release gives back the buffers the reader holds.
func (r *halfReader) release() {
	for _, b := range []*[]byte{r.big, r.pending} {
		if b != nil {
			bigPool.Put(b)
		}
	}
	r.big, r.pending = nil, nil
}

// copyHalf copies src to dst until src's end of stream, then half-closes
// dst; nil once it has.
func copyHalf(dst, src net.Conn, count func(int)) error {
	r := &halfReader{src: src}
	defer r.release()
	for {
		got, err := r.read()
		if len(got) > 0 {
			count(len(got))
			if _, werr := dst.Write(got); werr != nil {
				return writeError{werr}
			}
		}
		r.donePending()
		if err == io.EOF {
			if hc, ok := dst.(halfCloser); ok {
				err = hc.CloseWrite()
			} else {
				err = dst.Close()
			}
			if err != nil {
				return writeError{err}
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

const (
	smallBuf = 512
	bigBuf   = 64 << 10 // mtcp's largest block
)

var bigPool = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}

// aborter is a connection that ends with a reset on its own: one a
// netstack terminated (agent/tunnet's Conn).
type aborter interface{ Abort() }

// abortConn closes c with a reset where it can, so its peer sees an error
// rather than an end of stream.
func abortConn(c net.Conn) {
	switch c := c.(type) {
	case aborter:
		c.Abort()
		return
	case *net.TCPConn:
		_ = c.SetLinger(0)
	}
	_ = c.Close()
}
