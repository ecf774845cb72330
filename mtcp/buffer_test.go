package mtcp

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"hafe.dev/hafe/mtcp/internal/wire"
)

func TestByteQueueMatchesASlice(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var q byteQueue
	var ref []byte
	next := byte(0)
	for step := 0; step < 20000; step++ {
		switch rng.IntN(4) {
		case 0, 1:
			p := make([]byte, rng.IntN(3*maxBlock/2))
			for i := range p {
				p[i] = next
				next++
			}
			q.push(p)
			ref = append(ref, p...)
		case 2:
			n := rng.IntN(len(ref) + 1)
			q.drop(n)
			ref = ref[n:]
		case 3:
			if rng.IntN(2) == 0 {
				q.pin()
				defer q.unpin()
			}
		}
		if q.len() != len(ref) {
			t.Fatalf("step %d: len %d, want %d", step, q.len(), len(ref))
		}
		i := rng.IntN(len(ref) + 1)
		j := i + rng.IntN(len(ref)-i+1)
		if got := q.bytesFrom(i, j); !bytes.Equal(got, ref[i:j]) {
			t.Fatalf("step %d: bytes [%d,%d) differ", step, i, j)
		}
		if s := q.slice(i, 100); len(ref) > i && (len(s) == 0 || !bytes.Equal(s, ref[i:i+len(s)])) {
			t.Fatalf("step %d: slice at %d wrong", step, i)
		}
	}
}

// A receive queue borrows payloads from path readers' chunks; it must read
// the same as copies, and let go of each chunk exactly once per borrow.
func TestByteQueueBorrowsAndOwnsChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var q byteQueue
	var ref []byte
	var chunks []*chunk
	next := byte(0)
	fill := func(p []byte) {
		for i := range p {
			p[i] = next
			next++
		}
	}
	for step := 0; step < 3000; step++ {
		switch rng.IntN(5) {
		case 0:
			p := make([]byte, rng.IntN(2*maxBlock))
			fill(p)
			q.push(p)
			ref = append(ref, p...)
		case 1, 2:
			c := &chunk{buf: make([]byte, chunkSize)}
			c.refs.Store(1) // the reader's
			chunks = append(chunks, c)
			for at := 0; at < chunkSize-wire.MaxData; {
				at += rng.IntN(64) // a frame header between payloads
				p := c.buf[at : at+rng.IntN(wire.MaxData)]
				at += len(p)
				fill(p)
				q.borrow(p, c)
				ref = append(ref, p...)
			}
			if rng.IntN(2) == 0 {
				q.letGo(c)
			}
		case 3:
			n := rng.IntN(len(ref) + 1)
			q.drop(n)
			ref = ref[n:]
		case 4:
			if len(chunks) > 0 {
				q.letGo(chunks[rng.IntN(len(chunks))])
			}
		}
		if q.len() != len(ref) {
			t.Fatalf("step %d: len %d, want %d", step, q.len(), len(ref))
		}
		i := rng.IntN(len(ref) + 1)
		j := i + rng.IntN(len(ref)-i+1)
		if got := q.bytesFrom(i, j); !bytes.Equal(got, ref[i:j]) {
			t.Fatalf("step %d: bytes [%d,%d) differ", step, i, j)
		}
	}
	q.drop(q.len())
	for i, c := range chunks {
		if r := c.refs.Load(); r != 1 {
			t.Fatalf("chunk %d: %d references left, want the reader's only", i, r)
		}
	}
}
