package txn

import (
	"context"
	"sync"
)

// reportQueue is how many report lines may wait for a slow client before
// the executor stops to wait for it. Each line is at most
// Limits.MaxReportBytes.
const reportQueue = 4

// reporter hands a batch's report lines to its client on a goroutine of
// its own, so that a slow or stalled client never holds what the executor
// holds: the executor waits for the client only when the queue is full,
// and only after it has committed its pending slot and given its database
// connection back (see chain.emit).
type reporter struct {
	lines  chan []byte
	failed chan struct{} // closed when the client could not take a line
	err    error         // why; set before failed is closed
	done   chan struct{} // closed when the writer goroutine has returned
	once   sync.Once
}

// startReporter calls emit with each pushed line, in order, on a goroutine
// of its own. When emit fails the reporter stops and cancel is called
// with the error, so that the batch stops at once rather than at its next
// line.
func startReporter(emit func([]byte) error, cancel context.CancelCauseFunc) *reporter {
	r := &reporter{lines: make(chan []byte, reportQueue), failed: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for line := range r.lines {
			if err := emit(line); err != nil {
				r.err = err
				close(r.failed)
				cancel(err)
				return
			}
		}
	}()
	return r
}

// hasRoom reports whether a push would not wait for the client. Only the
// executor pushes, so the answer holds until it pushes.
func (r *reporter) hasRoom() bool { return len(r.lines) < cap(r.lines) }

// push queues line; it waits while the queue is full. It fails once the
// client failed to take an earlier line, or when ctx ends.
func (r *reporter) push(ctx context.Context, line []byte) error {
	select {
	case <-r.failed:
		return r.err
	default:
	}
	select {
	case r.lines <- line:
		return nil
	case <-r.failed:
		return r.err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// finish waits until the client took every queued line, or failed to.
func (r *reporter) finish() error {
	r.stop()
	select {
	case <-r.failed:
		return r.err
	default:
		return nil
	}
}

// stop lets the writer end after the queued lines and waits for it: after
// stop, emit is never called again.
func (r *reporter) stop() {
	r.once.Do(func() { close(r.lines) })
	<-r.done
}
