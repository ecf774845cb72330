package mtcp

import (
	"bytes"
	"math/rand/v2"
	"testing"
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
