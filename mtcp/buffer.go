package mtcp

import "sync"

// byteQueue is a FIFO of bytes kept in blocks. Consumed blocks are
// recycled, so a bulk stream does not reallocate or move bytes, and an empty
// queue holds no memory, so an idle connection costs little.
//
// A path writer sends slices of the blocks without holding the lock; while
// pinned, consumed blocks are parked instead of recycled, and handed to the
// pool when the writer unpins.
type byteQueue struct {
	blocks []block
	off    int // consumed bytes of blocks[0]
	n      int // unconsumed bytes
	pinned int
	parked []block
}

// block is a run of queued bytes: either the queue's own, filled up to len
// and appended to up to cap, or borrowed in place from a path reader's
// chunk (cap = len, so nothing is appended to it).
type block struct {
	b []byte
	c *chunk // the chunk a borrowed block lies in
}

const (
	minBlock = 2 << 10
	maxBlock = 64 << 10
)

// blockPools recycle blocks by size, minBlock << i: a connection that
// comes and goes (a short exchange, a migration) reuses the small ones
// too, not only bulk streams the large ones.
var blockPools [numBlockSizes]sync.Pool

const numBlockSizes = 6 // minBlock … maxBlock

func getBlock(size int) []byte {
	if i := blockSizeIndex(size); i >= 0 {
		if bp, ok := blockPools[i].Get().(*[]byte); ok {
			return (*bp)[:0]
		}
	}
	return make([]byte, 0, size)
}

// blockSizeIndex is i for size minBlock << i, or -1 for other sizes.
func blockSizeIndex(size int) int {
	for i := range numBlockSizes {
		if size == minBlock<<i {
			return i
		}
	}
	return -1
}

func (q *byteQueue) len() int { return q.n }

func (q *byteQueue) push(p []byte) {
	for len(p) > 0 {
		if len(q.blocks) == 0 || len(q.blocks[len(q.blocks)-1].b) == cap(q.blocks[len(q.blocks)-1].b) {
			q.blocks = append(q.blocks, block{b: q.newBlock(len(p))})
		}
		last := &q.blocks[len(q.blocks)-1].b
		k := copy((*last)[len(*last):cap(*last)], p)
		*last = (*last)[:len(*last)+k]
		p = p[k:]
		q.n += k
	}
}

// borrow appends p, which lies in c, without copying it.
func (q *byteQueue) borrow(p []byte, c *chunk) {
	if len(p) == 0 {
		return
	}
	c.ref()
	q.blocks = append(q.blocks, block{b: p[:len(p):len(p)], c: c})
	q.n += len(p)
}

// letGo copies what the queue borrows from c if that is less than half of
// c, so that a few bytes do not keep c from the pool; more is worth its
// room.
func (q *byteQueue) letGo(c *chunk) {
	held := 0
	for _, b := range q.blocks {
		if b.c == c {
			held += len(b.b)
		}
	}
	if held == 0 || held >= len(c.buf)/2 {
		return
	}
	for i := range q.blocks {
		b := &q.blocks[i]
		if b.c != c {
			continue
		}
		if i == 0 {
			b.b = b.b[q.off:]
			q.off = 0
		}
		own := getBlock(maxBlock) // a borrowed block is at most one frame
		b.b, b.c = append(own, b.b...), nil
		c.unref()
	}
}

// newBlock sizes blocks from small (a short message) to maxBlock (bulk).
func (q *byteQueue) newBlock(want int) []byte {
	size := minBlock
	if len(q.blocks) > 0 { // the next size up from the last block
		for last := cap(q.blocks[len(q.blocks)-1].b); size <= last && size < maxBlock; {
			size *= 2
		}
	}
	for size < want && size < maxBlock {
		size *= 2
	}
	return getBlock(size)
}

// drop consumes n bytes.
func (q *byteQueue) drop(n int) {
	q.n -= n
	for n > 0 {
		avail := len(q.blocks[0].b) - q.off
		if n < avail {
			q.off += n
			return
		}
		n -= avail
		q.release(q.blocks[0])
		q.blocks[0] = block{}
		q.blocks = q.blocks[1:]
		q.off = 0
	}
	if len(q.blocks) == 0 {
		q.blocks = nil
	}
}

func (q *byteQueue) release(b block) {
	if b.c == nil && blockSizeIndex(cap(b.b)) < 0 {
		return
	}
	if q.pinned > 0 {
		q.parked = append(q.parked, b)
		return
	}
	if b.c != nil {
		b.c.unref()
		return
	}
	buf := b.b[:0]
	blockPools[blockSizeIndex(cap(buf))].Put(&buf)
}

func (q *byteQueue) pin() { q.pinned++ }

func (q *byteQueue) unpin() {
	q.pinned--
	if q.pinned == 0 {
		for _, b := range q.parked {
			q.release(b)
		}
		q.parked = nil
	}
}

// slice returns the contiguous unconsumed bytes from index i to the end of
// their block, at most max.
func (q *byteQueue) slice(i, max int) []byte {
	i += q.off
	for _, blk := range q.blocks {
		if b := blk.b; i < len(b) {
			b = b[i:]
			if len(b) > max {
				b = b[:max]
			}
			return b[:len(b):len(b)]
		}
		i -= len(blk.b)
	}
	return nil
}

// copyAt copies unconsumed bytes from index i into p.
func (q *byteQueue) copyAt(i int, p []byte) int {
	n := 0
	for n < len(p) {
		b := q.slice(i+n, len(p)-n)
		if len(b) == 0 {
			break
		}
		n += copy(p[n:], b)
	}
	return n
}

// bytesFrom returns a copy of the unconsumed bytes from index i to j.
func (q *byteQueue) bytesFrom(i, j int) []byte {
	if j <= i {
		return nil
	}
	out := make([]byte, j-i)
	q.copyAt(i, out)
	return out
}

// queueOf makes a queue holding a copy of b.
func queueOf(b []byte) byteQueue {
	var q byteQueue
	q.push(b)
	return q
}
