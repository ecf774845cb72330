package mtcp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// choppyConn returns its bytes in reads of random sizes, as a transport may.
type choppyConn struct {
	net.Conn
	r   *bytes.Reader
	rng *rand.Rand
}

func (c *choppyConn) Read(p []byte) (int, error) {
	return c.r.Read(p[:min(len(p), 1+c.rng.IntN(96<<10))])
}

func TestFrameReaderReturnsEveryFrameWhateverTheReadSizes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var stream []byte
	var want [][]byte
	for range 2000 {
		var frame []byte
		switch rng.IntN(3) {
		case 0: // a control frame
			frame = wire.AppendOffset(nil, wire.TypeAck, rng.Uint64())
		case 1: // a small DATA frame
			frame = wire.AppendData(nil, rng.Uint64(), randBytes(rng, rng.IntN(200)))
		case 2: // up to a full one
			frame = wire.AppendData(nil, rng.Uint64(), randBytes(rng, rng.IntN(wire.MaxData+1)))
		}
		stream = append(stream, frame...)
		want = append(want, frame)
	}
	nc := &choppyConn{r: bytes.NewReader(stream), rng: rng}
	f := frameReader{nc: nc, br: bufio.NewReaderSize(nc, pathReadBuffer)}
	defer f.release()
	for i, w := range want {
		typ, payload, err := f.next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got := wire.AppendHeader(nil, typ, len(payload)); !bytes.Equal(append(got, payload...), w) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if _, _, err := f.next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
}

func TestFrameReaderReportsATruncatedFrame(t *testing.T) {
	frame := wire.AppendData(nil, 0, make([]byte, 10<<10))
	nc := &choppyConn{r: bytes.NewReader(frame[:len(frame)-1]), rng: rand.New(rand.NewPCG(5, 6))}
	f := frameReader{nc: nc, br: bufio.NewReaderSize(nc, pathReadBuffer)}
	defer f.release()
	if _, _, err := f.next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want ErrUnexpectedEOF", err)
	}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}
