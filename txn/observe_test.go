package txn

import (
	"fmt"
	"sync"
)

// recorder is an Observer that remembers what it was told, as
// "outcome committed executed", "retry deadlock", "takeover", "fence blocker 1".
type recorder struct {
	mu     sync.Mutex
	events map[string]int
}

func (r *recorder) add(e string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.events == nil {
		r.events = map[string]int{}
	}
	r.events[e] += n
}

func (r *recorder) count(e string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events[e]
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.events)
}

func (r *recorder) Outcome(status string, replayed bool) {
	src := "executed"
	if replayed {
		src = "replayed"
	}
	r.add("outcome "+status+" "+src, 1)
}
func (r *recorder) Retry(cause string)              { r.add("retry "+cause, 1) }
func (r *recorder) TakeOver(via string)             { r.add("takeover", 1) }
func (r *recorder) Fence(kind string, sessions int) { r.add("fence "+kind, sessions) }
