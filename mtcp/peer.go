package mtcp

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// ErrPeerAuth: a peer could not prove it holds the cluster key.
var ErrPeerAuth = errors.New("mtcp: peer authentication failed")

// peerPool keeps one authenticated peer channel per origin address and
// multiplexes FETCH requests over it.
type peerPool struct {
	l      *Listener
	mu     sync.Mutex
	conns  map[string]*peerConn
	closed bool
}

func newPeerPool(l *Listener) *peerPool {
	return &peerPool{l: l, conns: make(map[string]*peerConn)}
}

type peerConn struct {
	addr  string
	ready chan struct{} // closed when dialled (err set on failure)
	err   error
	nc    net.Conn
	wmu   sync.Mutex

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan wire.Transfer
	dead    error
}

// fetch asks the origin at addr to hand over the connection named in m.
func (pp *peerPool) fetch(ctx context.Context, addr string, m wire.Migrate) (wire.Transfer, error) {
	pc, err := pp.get(ctx, addr)
	if err != nil {
		return wire.Transfer{}, err
	}
	ch := make(chan wire.Transfer, 1)
	pc.mu.Lock()
	if pc.dead != nil {
		err := pc.dead
		pc.mu.Unlock()
		pp.forget(pc)
		return wire.Transfer{}, err
	}
	pc.next++
	req := pc.next
	pc.pending[req] = ch
	pc.mu.Unlock()
	defer func() {
		pc.mu.Lock()
		delete(pc.pending, req)
		pc.mu.Unlock()
	}()
	pc.wmu.Lock()
	_ = pc.nc.SetWriteDeadline(time.Now().Add(pp.l.cfg.PeerTimeout))
	_, err = pc.nc.Write(wire.AppendFetch(nil, wire.Fetch{Req: req, Migrate: m}))
	pc.wmu.Unlock()
	if err != nil {
		pc.fail(err)
		pp.forget(pc)
		return wire.Transfer{}, err
	}
	select {
	case tr, ok := <-ch:
		if !ok {
			return wire.Transfer{}, fmt.Errorf("mtcp: peer %s: channel closed", addr)
		}
		return tr, nil
	case <-ctx.Done():
		return wire.Transfer{}, ctx.Err()
	}
}

func (pp *peerPool) get(ctx context.Context, addr string) (*peerConn, error) {
	pp.mu.Lock()
	if pp.closed {
		pp.mu.Unlock()
		return nil, net.ErrClosed
	}
	pc := pp.conns[addr]
	if pc == nil {
		pc = &peerConn{addr: addr, ready: make(chan struct{}), pending: make(map[uint64]chan wire.Transfer)}
		pp.conns[addr] = pc
		pp.l.wg.Add(1)
		go pp.dial(pc)
	}
	pp.mu.Unlock()
	select {
	case <-pc.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if pc.err != nil {
		pp.forget(pc)
		return nil, pc.err
	}
	return pc, nil
}

func (pp *peerPool) forget(pc *peerConn) {
	pp.mu.Lock()
	if pp.conns[pc.addr] == pc {
		delete(pp.conns, pc.addr)
	}
	pp.mu.Unlock()
}

// dial opens and authenticates a peer channel, then reads replies on it
// until it fails.
func (pp *peerPool) dial(pc *peerConn) {
	defer pp.l.wg.Done()
	cfg := &pp.l.cfg
	ctx, cancel := context.WithTimeout(context.Background(), cfg.PeerTimeout)
	nc, br, err := peerHandshake(ctx, cfg, pc.addr)
	cancel()
	pp.mu.Lock()
	if err == nil && pp.closed {
		_ = nc.Close()
		err = net.ErrClosed
	}
	pc.nc, pc.err = nc, err
	pp.mu.Unlock()
	close(pc.ready)
	if err != nil {
		pp.l.log.Info("peer channel", "peer", pc.addr, "err", err)
		return
	}
	var hdr [wire.HeaderLen]byte
	for {
		t, payload, err := wire.ReadFrame(br, &hdr, nil)
		if err == nil && t != wire.TypeTransfer {
			err = errUnexpected(t)
		}
		var tr wire.Transfer
		if err == nil {
			tr, err = wire.ParseTransfer(payload)
		}
		if err != nil {
			pc.fail(err)
			pp.forget(pc)
			return
		}
		pc.mu.Lock()
		if ch := pc.pending[tr.Req]; ch != nil {
			select {
			case ch <- tr:
			default:
			}
		}
		pc.mu.Unlock()
	}
}

func (pc *peerConn) fail(err error) {
	pc.mu.Lock()
	if pc.dead == nil {
		pc.dead = err
		for _, ch := range pc.pending {
			close(ch)
		}
		pc.pending = map[uint64]chan wire.Transfer{}
	}
	pc.mu.Unlock()
	_ = pc.nc.Close()
}

func (pp *peerPool) close() {
	pp.mu.Lock()
	pp.closed = true
	conns := pp.conns
	pp.conns = map[string]*peerConn{}
	pp.mu.Unlock()
	for _, pc := range conns {
		<-pc.ready
		if pc.err == nil {
			pc.fail(net.ErrClosed)
		}
	}
}

// peerHandshake dials addr and proves the cluster key both ways.
func peerHandshake(ctx context.Context, cfg *ListenConfig, addr string) (net.Conn, *bufio.Reader, error) {
	nc, err := cfg.PeerDial(ctx, addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if cfg.PeerTLSConfig != nil {
		tc := tls.Client(nc, cfg.PeerTLSConfig)
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
	var hello wire.PeerHello
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
	if !hmac.Equal(ch.MAC, peerProof(cfg.ClusterKey, peerLabelServer, hello.Nonce, ch.Nonce)) {
		return fail(ErrPeerAuth)
	}
	auth := wire.PeerAuth{MAC: peerProof(cfg.ClusterKey, peerLabelClient, hello.Nonce, ch.Nonce)}
	if _, err := nc.Write(wire.AppendPeerAuth(nil, auth)); err != nil {
		return fail(err)
	}
	_ = nc.SetDeadline(time.Time{})
	return nc, br, nil
}

// servePeer answers a peer channel: authenticate, then serve FETCHes.
func (l *Listener) servePeer(nc net.Conn, br *bufio.Reader, payload []byte) {
	hello, err := wire.ParsePeerHello(payload)
	if err != nil || len(l.cfg.ClusterKey) == 0 {
		refuse(nc, refusal(RefuseUnauthenticated, "peer channel disabled"))
		return
	}
	ch := wire.PeerChallenge{}
	_, _ = rand.Read(ch.Nonce[:])
	ch.MAC = peerProof(l.cfg.ClusterKey, peerLabelServer, hello.Nonce, ch.Nonce)
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
		!hmac.Equal(auth.MAC, peerProof(l.cfg.ClusterKey, peerLabelClient, hello.Nonce, ch.Nonce)) {
		l.log.Warn("peer failed authentication", "remote", nc.RemoteAddr())
		refuse(nc, refusal(RefuseUnauthenticated, "bad proof"))
		return
	}
	_ = nc.SetDeadline(time.Time{})
	for {
		t, payload, err := wire.ReadFrame(br, &hdr, nil)
		if err != nil {
			return
		}
		if t != wire.TypeFetch {
			return
		}
		f, err := wire.ParseFetch(payload)
		if err != nil {
			return
		}
		st, rerr := l.freeze(f.Migrate)
		tr := wire.Transfer{Req: f.Req, State: st}
		if rerr != nil {
			tr = wire.Transfer{Req: f.Req, Code: uint8(rerr.Code), Reason: rerr.Reason}
		}
		if _, err := nc.Write(wire.AppendTransfer(nil, tr)); err != nil {
			return
		}
	}
}
