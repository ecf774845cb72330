package mtcp

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

var errPeerClosedPath = errors.New("mtcp: peer closed the connection")

func errUnexpected(t wire.Type) error {
	return fmt.Errorf("%w: unexpected %s frame", errProtocol, t)
}

// path is one transport connection currently carrying a Conn's stream. It
// runs two goroutines: a reader feeding frames to the Conn's machine and a
// writer sending what the machine has queued (control frames, data).
type path struct {
	c    *Conn
	nc   net.Conn
	fr   frameReader // used by the reader goroutine only
	wake chan struct{}
	quit chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	// Guarded by c.mu.
	retiring bool   // send last and bye, then shut down
	last     []byte // frames queued for this path before it was replaced
	bye      []byte
	started  bool
	rttRead  bool // rtt and rttOK are known
	rttOK    bool
	rtt      time.Duration

	frames atomic.Uint64 // frames received, for the client's progress check
}

// pathReadBuffer is small on purpose: an idle connection holds it.
const pathReadBuffer = 4 << 10

func newPath(c *Conn, nc net.Conn, br *bufio.Reader) *path {
	if br == nil {
		br = bufio.NewReaderSize(nc, pathReadBuffer)
	}
	return &path{c: c, nc: nc, fr: frameReader{nc: nc, br: br}, wake: make(chan struct{}, 1), quit: make(chan struct{})}
}

// roundTrip is the path's round-trip time, read once on first need (the
// kernel's minimum RTT of a path hardly changes); ok is false where it
// cannot be read. Called with c.mu held.
func (p *path) roundTrip() (time.Duration, bool) {
	if !p.rttRead {
		p.rttRead = true
		p.rtt, p.rttOK = p.c.lim.rttOf(p.nc)
	}
	return p.rtt, p.rttOK
}

// queue adds an encoded control frame for this path, the current one;
// called with c.mu held.
func (p *path) queue(frame []byte) {
	if p.c.path != p {
		return
	}
	p.c.queue(frame)
	p.c.applyLocked()
}

func (p *path) wakeWriter() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// start launches the goroutines; called with c.mu held.
func (p *path) start() {
	if p.started {
		return
	}
	p.started = true
	p.wg.Add(2)
	go p.readLoop()
	go p.writeLoop()
}

// retire makes the writer send the current path's queued control frames
// and bye, then close it; called with c.mu held.
func (p *path) retire(bye []byte) {
	c := p.c
	p.retireWith(c.ctrl, bye)
	c.ctrl = nil
}

// retireWith makes the writer send last and bye, then close the path.
func (p *path) retireWith(last, bye []byte) {
	if !p.started {
		p.close()
		return
	}
	p.retiring = true
	p.last, p.bye = last, bye
	p.wakeWriter()
}

func (p *path) close() {
	p.once.Do(func() {
		close(p.quit)
		_ = p.nc.Close()
	})
}

func (p *path) readLoop() {
	defer p.wg.Done()
	defer p.fr.release()
	c := p.c
	for {
		t, payload, err := p.fr.next()
		if err != nil {
			c.pathFailed(p, err)
			return
		}
		p.frames.Add(1)
		c.mu.Lock()
		err = c.handleFrameLocked(p, t, payload)
		if p.fr.drained() {
			// The reader is about to wait, maybe for long: a little input
			// left unread or logged must not keep its chunk from the pool.
			c.in.buf.letGo(p.fr.lent())
		}
		c.mu.Unlock()
		if err != nil {
			c.pathFailed(p, err)
			return
		}
	}
}

// maxBatch bounds the bytes one writev carries.
const maxBatch = 256 << 10

func (p *path) writeLoop() {
	defer p.wg.Done()
	c := p.c
	hdrs := make([]byte, 0, (maxBatch/wire.MaxData+2)*(wire.HeaderLen+8))
	for {
		select {
		case <-p.wake:
		case <-p.quit:
			return
		}
		for {
			c.mu.Lock()
			if p.retiring {
				last := append(p.last, p.bye...)
				p.last = nil
				c.mu.Unlock()
				_ = p.nc.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = p.nc.Write(last)
				p.close()
				return
			}
			if c.path != p {
				c.mu.Unlock()
				return
			}
			var b sendBatch
			b, hdrs = c.poll(hdrs, maxBatch)
			c.applyLocked()
			c.mu.Unlock()
			if b.close {
				p.finishClose()
				return
			}
			if len(b.bufs) == 0 {
				break
			}
			err := p.write(b.bufs)
			if b.data > 0 {
				c.mu.Lock()
				c.sent(b.data)
				c.mu.Unlock()
			}
			if err != nil {
				c.pathFailed(p, err)
				return
			}
		}
	}
}

// write sends bufs in one writev on a TCP path. On a TLS path, which
// cannot writev, it copies them into one buffer first: written one by one
// they would each be a TLS record and a segment of their own (a DATA
// header apart from its payload), which doubled a small request's round
// trip (BenchmarkRoundTripTLS).
func (p *path) write(bufs net.Buffers) error {
	if _, isTLS := p.nc.(*tls.Conn); !isTLS || len(bufs) == 1 {
		_, err := bufs.WriteTo(p.nc)
		return err
	}
	fp := flatBufs.Get().(*[]byte)
	flat := (*fp)[:0]
	for _, b := range bufs {
		flat = append(flat, b...)
	}
	_, err := p.nc.Write(flat)
	*fp = flat
	flatBufs.Put(fp)
	return err
}

// flatBufs are the buffers write copies a TLS path's batch into.
var flatBufs = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// finishClose sends CLOSE and half-closes the transport; the reader then
// drains until the peer closes its side, so no RST destroys our last bytes.
func (p *path) finishClose() {
	_, _ = p.nc.Write(wire.AppendClose(nil))
	if cw, ok := p.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_ = p.nc.SetReadDeadline(time.Now().Add(closeLinger))
		return
	}
	p.close()
}
