package txn

import (
	"container/list"
	"sync"
)

// Bounds of the SQL text an executor remembers as prepared fine before.
const (
	knownMaxCount = 4096
	knownMaxBytes = 8 << 20
)

// knownSQL is the SQL text that prepared fine on this executor before, so
// that chaining it behind a pending slot cannot abort that slot. It forgets
// the least recently used text beyond maxCount entries or maxBytes of
// text: a forgotten statement only runs unchained once more.
type knownSQL struct {
	mu       sync.Mutex
	maxCount int
	maxBytes int
	bytes    int
	order    *list.List // front: most recently used; values are strings
	index    map[string]*list.Element
}

func newKnownSQL(maxCount, maxBytes int) *knownSQL {
	return &knownSQL{maxCount: maxCount, maxBytes: maxBytes, order: list.New(), index: map[string]*list.Element{}}
}

// allKnown reports whether every query is known, and marks them used.
func (k *knownSQL) allKnown(queries []string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, q := range queries {
		el, ok := k.index[q]
		if !ok {
			return false
		}
		k.order.MoveToFront(el)
	}
	return true
}

func (k *knownSQL) add(queries []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, q := range queries {
		if el, ok := k.index[q]; ok {
			k.order.MoveToFront(el)
			continue
		}
		if len(q) > k.maxBytes {
			continue
		}
		k.index[q] = k.order.PushFront(q)
		k.bytes += len(q)
		for k.order.Len() > k.maxCount || k.bytes > k.maxBytes {
			old := k.order.Remove(k.order.Back()).(string)
			delete(k.index, old)
			k.bytes -= len(old)
		}
	}
}

// size is how many texts and bytes are remembered.
func (k *knownSQL) size() (count, bytes int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.order.Len(), k.bytes
}
