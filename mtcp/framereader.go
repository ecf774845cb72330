package mtcp

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"hafe.dev/hafe/internal/netwait"
	"hafe.dev/hafe/mtcp/internal/wire"
)

// frameReader reads a path's frames. A path waits for its next frame in the
// small bufio.Reader it was opened with, so an idle connection holds little;
// a frame too large for it moves the reader to a large pooled chunk, which
// takes many frames per read system call. The receive queue borrows DATA
// payloads in place from the chunk rather than copying them; the chunk
// goes back to the pool when the reader has run it empty and the queue has
// let go.
type frameReader struct {
	nc      net.Conn
	br      *bufio.Reader
	pending int // bytes of the last frame, peeked in br, still to discard

	big  *chunk // while non-nil, unparsed bytes are big.buf[r:w] and br is empty
	r, w int

	pre prefetched // under br once waitIdle has read for it
}

// chunk is a path reader's large buffer. refs counts the reader and the
// queue blocks borrowed from it; the last to let go pools it.
type chunk struct {
	buf  []byte
	refs atomic.Int32
}

// chunkSize is four full DATA frames, as many as the peer's writer sends
// in one batch.
const chunkSize = 256 << 10

var chunkPool = sync.Pool{New: func() any { return &chunk{buf: make([]byte, chunkSize)} }}

func newChunk() *chunk {
	c := chunkPool.Get().(*chunk)
	c.refs.Store(1)
	return c
}

func (c *chunk) ref() { c.refs.Add(1) }

func (c *chunk) unref() {
	if c.refs.Add(-1) == 0 {
		chunkPool.Put(c)
	}
}

// next returns the next frame. Its payload is valid until the next call;
// if lent() is non-nil, the payload lies in that chunk and may be borrowed
// for longer.
func (f *frameReader) next() (wire.Type, []byte, error) {
	if f.pending > 0 {
		_, _ = f.br.Discard(f.pending)
		f.pending = 0
	}
	if f.big != nil && f.r == f.w {
		f.release()
	}
	if f.big == nil {
		f.waitIdle()
		hdr, err := f.br.Peek(wire.HeaderLen)
		if err != nil {
			return 0, nil, err
		}
		t, n, err := wire.ParseHeader(hdr)
		if err != nil {
			return t, nil, err
		}
		if size := wire.HeaderLen + n; size <= f.br.Size() {
			frame, err := f.br.Peek(size)
			if err != nil {
				return 0, nil, noEOF(err)
			}
			f.pending = size
			return t, frame[wire.HeaderLen:], nil
		}
		f.big = newChunk()
		f.r = 0
		f.w, _ = f.br.Read(f.big.buf) // only what br holds: no system call
	}
	return f.nextBig()
}

// waitIdle reads, when the small reader holds nothing, the transport's
// next bytes without holding the reader: it goes back to a pool meanwhile,
// so an idle path costs no read buffer. The bytes are read into a pooled
// scratch buffer once they are there, the reader's fill copies them, and
// no system call is added.
func (f *frameReader) waitIdle() {
	if f.br.Buffered() > 0 || f.br.Size() != pathReadBuffer || !netwait.Supported(f.nc) {
		return
	}
	pathReaders.Put(f.br)
	f.br = nil
	buf, n, err, _ := netwait.ReadPooled(f.nc, &pathScratch)
	f.pre = prefetched{nc: f.nc, buf: buf, n: n, err: err}
	f.br = pathReaders.Get().(*bufio.Reader)
	f.br.Reset(&f.pre)
}

// prefetched is the transport under a path's small reader: the bytes
// waitIdle read, then the transport itself. The scratch buffer is no
// larger than the reader's, so the reader's first fill takes all of it.
type prefetched struct {
	nc   net.Conn
	buf  *[]byte
	r, n int
	err  error
}

func (p *prefetched) Read(b []byte) (int, error) {
	if p.buf != nil {
		k := copy(b, (*p.buf)[p.r:p.n])
		p.r += k
		if p.r == p.n {
			pathScratch.Put(p.buf)
			p.buf = nil
		}
		return k, nil
	}
	if err := p.err; err != nil {
		p.err = nil
		return 0, err
	}
	return p.nc.Read(b)
}

// pathReaders pools the small readers of paths waiting for bytes, and
// pathScratch the buffers their bytes arrive in.
var (
	pathReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, pathReadBuffer) }}
	pathScratch = sync.Pool{New: func() any { b := make([]byte, pathReadBuffer); return &b }}
)

// nextBig returns the next frame from the large buffer, reading as much as
// the transport has.
func (f *frameReader) nextBig() (wire.Type, []byte, error) {
	for {
		buf := f.big.buf
		size := wire.HeaderLen
		if f.w-f.r >= wire.HeaderLen {
			t, n, err := wire.ParseHeader(buf[f.r:f.w])
			if err != nil {
				return t, nil, err
			}
			size += n
			if f.w-f.r >= size {
				frame := buf[f.r : f.r+size]
				f.r += size
				return t, frame[wire.HeaderLen:], nil
			}
			if size > len(buf) {
				payload, err := f.readHuge(n)
				return t, payload, err
			}
		}
		if f.r+size > len(buf) {
			f.moveTail()
			buf = f.big.buf
		}
		k, err := f.nc.Read(buf[f.w:])
		f.w += k
		if err != nil && k == 0 {
			if f.w > f.r {
				err = noEOF(err)
			}
			return 0, nil, err
		}
	}
}

// readHuge reads a frame larger than the buffer into its own allocation;
// no frame a path carries is, but the codec allows it.
func (f *frameReader) readHuge(n int) ([]byte, error) {
	payload := make([]byte, n)
	k := copy(payload, f.big.buf[f.r+wire.HeaderLen:f.w])
	f.release() // the payload is not in it
	if _, err := io.ReadFull(f.nc, payload[k:]); err != nil {
		return nil, noEOF(err)
	}
	return payload, nil
}

// moveTail makes room after an incomplete frame at the end of the chunk:
// it moves the frame to the front, or to a fresh chunk while the queue
// borrows from this one.
func (f *frameReader) moveTail() {
	dst := f.big
	if dst.refs.Load() > 1 {
		dst = newChunk()
	}
	f.w = copy(dst.buf, f.big.buf[f.r:f.w])
	f.r = 0
	if dst != f.big {
		f.big.unref()
		f.big = dst
	}
}

// lent returns the chunk the last frame lies in, or nil.
func (f *frameReader) lent() *chunk { return f.big }

// drained reports whether the reader holds a chunk it has parsed to the end:
// its next read will wait without it.
func (f *frameReader) drained() bool { return f.big != nil && f.r == f.w }

// release lets go of the chunk; the reader must not be used after it
// unless it is empty.
func (f *frameReader) release() {
	if f.big != nil {
		f.big.unref()
		f.big = nil
		f.r, f.w = 0, 0
	}
}

// noEOF turns an EOF inside a frame into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
