package mtcp

import (
	"bufio"
	"io"
	"net"
	"sync"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// frameReader reads a path's frames. A path waits for its next frame in the
// small bufio.Reader it was opened with, so an idle connection holds little;
// a frame too large for it moves the reader to a large pooled buffer, which
// takes many frames per read system call and goes back to the pool as soon
// as it runs empty.
type frameReader struct {
	nc      net.Conn
	br      *bufio.Reader
	pending int // bytes of the last frame, peeked in br, still to discard

	big  *[]byte // while non-nil, unparsed bytes are (*big)[r:w] and br is empty
	r, w int
}

// readBufSize is the large buffer: four full DATA frames, as many as the
// peer's writer sends in one batch.
const readBufSize = 256 << 10

var readBufPool = sync.Pool{New: func() any {
	b := make([]byte, readBufSize)
	return &b
}}

// next returns the next frame; its payload is valid until the next call.
func (f *frameReader) next() (wire.Type, []byte, error) {
	if f.pending > 0 {
		_, _ = f.br.Discard(f.pending)
		f.pending = 0
	}
	if f.big != nil && f.r == f.w {
		f.release()
	}
	if f.big == nil {
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
		f.big = readBufPool.Get().(*[]byte)
		f.r = 0
		f.w, _ = f.br.Read(*f.big) // only what br holds: no system call
	}
	return f.nextBig()
}

// nextBig returns the next frame from the large buffer, reading as much as
// the transport has.
func (f *frameReader) nextBig() (wire.Type, []byte, error) {
	buf := *f.big
	for {
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
			f.w = copy(buf, buf[f.r:f.w])
			f.r = 0
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
	k := copy(payload, (*f.big)[f.r+wire.HeaderLen:f.w])
	f.r = f.w
	if _, err := io.ReadFull(f.nc, payload[k:]); err != nil {
		return nil, noEOF(err)
	}
	return payload, nil
}

// release returns the large buffer; the reader must not be used after it
// unless it is empty.
func (f *frameReader) release() {
	if f.big != nil {
		readBufPool.Put(f.big)
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
