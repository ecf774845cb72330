package frontend

import "sync"

// inflight counts running batches and, once draining, tells when none is
// left. Unlike a WaitGroup it can refuse new work and wait at the same time.
type inflight struct {
	mu       sync.Mutex
	n        int
	draining bool
	idle     chan struct{} // closed when draining and n reaches 0
}

// begin registers a batch; false once draining.
func (t *inflight) begin() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	t.n++
	return true
}

func (t *inflight) end() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 && t.draining {
		close(t.idle)
	}
}

// drain refuses new batches from now on; the channel closes when the
// running ones are done.
func (t *inflight) drain() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.draining {
		t.draining = true
		t.idle = make(chan struct{})
		if t.n == 0 {
			close(t.idle)
		}
	}
	return t.idle
}

func (t *inflight) state() (running int, draining bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n, t.draining
}

func (t *inflight) running() int     { n, _ := t.state(); return n }
func (t *inflight) isDraining() bool { _, d := t.state(); return d }
