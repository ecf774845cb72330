package mtcp

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// ErrPeerAuth: a peer could not prove it holds the cluster key.
var ErrPeerAuth = errors.New("mtcp: peer authentication failed")

// peerPool keeps authenticated peer channels to other servers, idle ones
// per address, and runs one FETCH at a time on each: the requester writes
// and reads the answer itself, with no dispatching goroutine in between.
type peerPool struct {
	l      *Listener
	mu     sync.Mutex
	idle   map[string][]*peerConn
	all    map[*peerConn]struct{} // for close
	closed bool
}

// maxIdlePeerConns bounds the idle channels kept per peer.
const maxIdlePeerConns = 4

func newPeerPool(l *Listener) *peerPool {
	return &peerPool{l: l, idle: make(map[string][]*peerConn), all: make(map[*peerConn]struct{})}
}

type peerConn struct {
	addr string
	nc   net.Conn
	br   *bufio.Reader
	next uint64
}

// call sends one request on a pooled channel to addr and reads the answer,
// which must be of type want; encode builds the request for a request
// number, which every answer repeats in its first 8 bytes. A pooled channel
// that turns out dead is replaced once, unless the request was written in
// full and must not be repeated (once). sent reports whether it was.
func (pp *peerPool) call(ctx context.Context, addr string, once bool, want wire.Type, encode func(req uint64) []byte) (payload []byte, sent bool, err error) {
	for attempt := 0; ; attempt++ {
		pc, reused, err := pp.take(ctx, addr)
		if err != nil {
			return nil, false, err
		}
		pc.next++
		t, payload, sent, err := exchangeSent(ctx, pc.nc, pc.br, encode(pc.next), time.Minute)
		switch {
		case err != nil:
		case t != want:
			err = errUnexpected(t)
		case len(payload) < 8 || binary.BigEndian.Uint64(payload) != pc.next:
			err = fmt.Errorf("%w: %s is not the answer to request %d", errProtocol, t, pc.next)
		default:
			pp.put(pc)
			return payload, true, nil
		}
		pp.discard(pc)
		if (once && sent) || !reused || attempt > 0 || ctx.Err() != nil {
			return nil, sent, err
		}
	}
}

// fetch asks the origin at addr to hand over the connection named in m.
func (pp *peerPool) fetch(ctx context.Context, addr string, m wire.Migrate) (wire.Transfer, error) {
	payload, _, err := pp.call(ctx, addr, false, wire.TypeTransfer, func(req uint64) []byte {
		return wire.AppendFetch(nil, wire.Fetch{Req: req, Migrate: m})
	})
	if err != nil {
		return wire.Transfer{}, err
	}
	return wire.ParseTransfer(payload)
}

// push hands a prepared connection's state to the server at addr. sent
// reports whether the whole PUSH was written: after that, an error leaves
// open whether the server kept it, so it is not repeated.
func (pp *peerPool) push(ctx context.Context, addr string, p wire.Push) (ans wire.Pushed, sent bool, err error) {
	bp := frameBufs.Get().(*[]byte)
	var frame []byte
	payload, sent, err := pp.call(ctx, addr, true, wire.TypePushed, func(req uint64) []byte {
		p.Req = req
		frame = wire.AppendPush((*bp)[:0], p)
		return frame
	})
	if frame != nil {
		putFrameBuf(bp, frame)
	}
	if err == nil {
		ans, err = wire.ParsePushed(payload)
	}
	return ans, sent, err
}

// dropPush asks the server at addr to forget a pushed state.
func (pp *peerPool) dropPush(ctx context.Context, addr string, d wire.DropPush) error {
	payload, _, err := pp.call(ctx, addr, false, wire.TypePushed, func(req uint64) []byte {
		d.Req = req
		return wire.AppendDropPush(nil, d)
	})
	if err == nil {
		_, err = wire.ParsePushed(payload)
	}
	return err
}

// take returns an idle channel to addr or dials a new one, if addr is a
// server of the cluster.
func (pp *peerPool) take(ctx context.Context, addr string) (pc *peerConn, reused bool, err error) {
	if !pp.l.isPeer(addr) {
		return nil, false, fmt.Errorf("peer %s: not in the server list", addr)
	}
	pp.mu.Lock()
	if pp.closed {
		pp.mu.Unlock()
		return nil, false, net.ErrClosed
	}
	if l := pp.idle[addr]; len(l) > 0 {
		pc = l[len(l)-1]
		pp.idle[addr] = l[:len(l)-1]
		pp.mu.Unlock()
		return pc, true, nil
	}
	pp.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, pp.l.cfg.PeerTimeout)
	defer cancel()
	nc, br, err := peerHandshake(ctx, &pp.l.cfg, addr)
	if err != nil {
		return nil, false, err
	}
	pc = &peerConn{addr: addr, nc: nc, br: br}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.closed {
		_ = nc.Close()
		return nil, false, net.ErrClosed
	}
	pp.all[pc] = struct{}{}
	return pc, false, nil
}

func (pp *peerPool) put(pc *peerConn) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.closed || len(pp.idle[pc.addr]) >= maxIdlePeerConns {
		delete(pp.all, pc)
		_ = pc.nc.Close()
		return
	}
	pp.idle[pc.addr] = append(pp.idle[pc.addr], pc)
}

func (pp *peerPool) discard(pc *peerConn) {
	pp.mu.Lock()
	delete(pp.all, pc)
	pp.mu.Unlock()
	_ = pc.nc.Close()
}

// warm opens a channel to addr ahead of the first migration.
func (pp *peerPool) warm(addr string) {
	pc, _, err := pp.take(pp.l.ctx, addr)
	if err != nil {
		pp.l.log.Debug("warm peer channel", "peer", addr, "err", err)
		return
	}
	pp.put(pc)
}

func (pp *peerPool) close() {
	pp.mu.Lock()
	pp.closed = true
	all := pp.all
	pp.all = map[*peerConn]struct{}{}
	pp.idle = map[string][]*peerConn{}
	pp.mu.Unlock()
	for pc := range all {
		_ = pc.nc.Close()
	}
}

// peerHandshake dials addr and proves the cluster key both ways, as the
// server named cfg.Self to the one named addr.
func peerHandshake(ctx context.Context, cfg *ListenConfig, addr string) (net.Conn, *bufio.Reader, error) {
	nc, err := cfg.PeerDial(ctx, addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if cfg.PeerTLSConfig != nil {
		tcfg := cfg.PeerTLSConfig
		if tcfg.ServerName == "" && !tcfg.InsecureSkipVerify {
			tcfg = tcfg.Clone()
			if host, _, err := net.SplitHostPort(addr); err == nil {
				tcfg.ServerName = host
			}
		}
		tc := tls.Client(nc, tcfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, nil, err
		}
		nc = tc
	}
	fail := func(err error) (net.Conn, *bufio.Reader, error) {
		_ = nc.Close()
		return nil, nil, fmt.Errorf("peer %s: %w", addr, err)
	}
	hello := wire.PeerHello{From: cfg.Self, To: addr}
	_, _ = rand.Read(hello.Nonce[:])
	if _, err := nc.Write(wire.AppendPeerHello(nil, hello)); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(nc, pathReadBuffer)
	var hdr [wire.HeaderLen]byte
	t, payload, err := wire.ReadFrame(br, &hdr, nil)
	if err != nil {
		return fail(err)
	}
	if t == wire.TypeRefuse {
		r, _ := wire.ParseRefuse(payload)
		return fail(&RefusalError{Code: RefusalCode(r.Code), Reason: r.Reason, Addr: addr})
	}
	if t != wire.TypePeerChallenge {
		return fail(errUnexpected(t))
	}
	ch, err := wire.ParsePeerChallenge(payload)
	if err != nil {
		return fail(err)
	}
	if !hmac.Equal(ch.MAC, peerProof(cfg.ClusterKey, peerLabelServer, hello, ch.Nonce)) {
		return fail(ErrPeerAuth)
	}
	auth := wire.PeerAuth{MAC: peerProof(cfg.ClusterKey, peerLabelClient, hello, ch.Nonce)}
	if _, err := nc.Write(wire.AppendPeerAuth(nil, auth)); err != nil {
		return fail(err)
	}
	if !stop() {
		return fail(ctx.Err())
	}
	_ = nc.SetDeadline(time.Time{})
	return nc, br, nil
}

// isOwnName reports whether name is one this server goes by: its Self, or
// its listener's address.
func (l *Listener) isOwnName(name string) bool {
	return name == l.cfg.Self || name == l.ln.Addr().String()
}

// servePeer answers a peer channel: authenticate, then serve the requests
// of the server at the other end, whose name the handshake proved.
func (l *Listener) servePeer(nc net.Conn, br *bufio.Reader, payload []byte) {
	hello, err := wire.ParsePeerHello(payload)
	if err != nil || len(l.cfg.ClusterKey) == 0 {
		refuse(nc, refusal(RefuseUnauthenticated, "peer channel disabled"))
		return
	}
	if !l.isOwnName(hello.To) {
		// Prove the key only as this server: a proof made for another
		// name would pass whoever relays this channel off as that server.
		l.log.Warn("peer channel meant for another server", "remote", nc.RemoteAddr(), "to", hello.To)
		refuse(nc, refusal(RefuseUnauthenticated, "wrong server"))
		return
	}
	if l.cfg.PeerClientCAs != nil && !verifiedClient(nc) {
		l.log.Warn("peer refused: no client certificate signed by the peer CA", "remote", nc.RemoteAddr(), "from", hello.From)
		refuse(nc, refusal(RefuseUnauthenticated, "peer certificate required"))
		return
	}
	ch := wire.PeerChallenge{}
	_, _ = rand.Read(ch.Nonce[:])
	ch.MAC = peerProof(l.cfg.ClusterKey, peerLabelServer, hello, ch.Nonce)
	if _, err := nc.Write(wire.AppendPeerChallenge(nil, ch)); err != nil {
		return
	}
	var hdr [wire.HeaderLen]byte
	t, payload, err := wire.ReadFrame(br, &hdr, nil)
	if err != nil {
		return
	}
	var auth wire.PeerAuth
	if t == wire.TypePeerAuth {
		auth, err = wire.ParsePeerAuth(payload)
	}
	if t != wire.TypePeerAuth || err != nil ||
		!hmac.Equal(auth.MAC, peerProof(l.cfg.ClusterKey, peerLabelClient, hello, ch.Nonce)) {
		l.log.Warn("peer failed authentication", "remote", nc.RemoteAddr(), "from", hello.From)
		refuse(nc, refusal(RefuseUnauthenticated, "bad proof"))
		return
	}
	peer := hello.From
	_ = nc.SetDeadline(time.Time{})
	for {
		// A nil buffer: every payload is freshly allocated, so a pushed
		// state may be kept as parsed.
		t, payload, err := wire.ReadFrame(br, &hdr, nil)
		if err != nil {
			return
		}
		var answer []byte
		after := func() {} // what waits until the answer is written
		bp := frameBufs.Get().(*[]byte)
		switch t {
		case wire.TypeFetch:
			f, err := wire.ParseFetch(payload)
			if err != nil {
				return
			}
			var st wire.ConnState
			var rerr *RefusalError
			st, rerr, after = l.freeze(f.Migrate, peer)
			tr := wire.Transfer{Req: f.Req, State: st}
			if rerr != nil {
				tr = wire.Transfer{Req: f.Req, Code: uint8(rerr.Code), Reason: rerr.Reason}
			}
			answer = wire.AppendTransfer(*bp, tr)
		case wire.TypePush:
			p, err := wire.ParsePush(payload)
			if err != nil {
				return
			}
			ans := wire.Pushed{Req: p.Req}
			if rerr := l.keepPushed(p.Migrate, p.State, peer); rerr != nil {
				ans.Code, ans.Reason = uint8(rerr.Code), rerr.Reason
			}
			answer = wire.AppendPushed(*bp, ans)
		case wire.TypeDropPush:
			d, err := wire.ParseDropPush(payload)
			if err != nil {
				return
			}
			l.forgetPushed(ConnID(d.ConnID), d.Counter, peer)
			answer = wire.AppendPushed(*bp, wire.Pushed{Req: d.Req})
		default:
			return
		}
		_, err = nc.Write(answer)
		putFrameBuf(bp, answer)
		after()
		if err != nil {
			return
		}
	}
}

// frameBufs recycles the buffers of the frames that carry a state (TRANSFER,
// PUSH): each is written once and forgotten, and a large state would
// otherwise cost a fresh allocation per migration.
var frameBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledFrame keeps the buffers of unusually large states out of the pool.
const maxPooledFrame = 256 << 10

func putFrameBuf(bp *[]byte, b []byte) {
	if cap(b) > maxPooledFrame {
		return
	}
	*bp = b[:0]
	frameBufs.Put(bp)
}

// verifiedClient reports whether nc is TLS and its client showed a
// certificate that verified against the listener's ClientCAs.
func verifiedClient(nc net.Conn) bool {
	tc, ok := nc.(*tls.Conn)
	return ok && len(tc.ConnectionState().VerifiedChains) > 0
}
