package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"hafe.dev/hafe/test/harness"
)

// capture is one POST's response as the client received it, read in the
// background: every byte, cut off or not.
type capture struct {
	status   int
	batchID  string
	frontEnd string
	resumed  bool

	cancel context.CancelFunc
	notify chan struct{} // a line arrived or the stream ended
	ended  chan struct{}

	start time.Time

	mu    sync.Mutex
	end   time.Time
	buf   []byte
	lines int
	times []time.Time // when each line arrived
	err   error       // why reading stopped (io.EOF at a clean end)
}

// failoverClient opens a new connection per request: none outlives the
// front-end it was made to.
var failoverClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// startBatch POSTs the batch and, on 200, starts reading the stream. Other
// statuses come back with the error body read and the capture ended.
func startBatch(ctx context.Context, fe *harness.Hafe, key string, body []byte) (*capture, error) {
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, fe.URL+"/v1/batches", bytes.NewReader(body))
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	start := time.Now()
	resp, err := failoverClient.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	c := &capture{
		status:   resp.StatusCode,
		batchID:  resp.Header.Get("Hafe-Batch-Id"),
		frontEnd: resp.Header.Get("Hafe-Front-End"),
		resumed:  resp.Header.Get("Hafe-Resumed") == "true",
		start:    start,
		cancel:   cancel,
		notify:   make(chan struct{}, 1),
		ended:    make(chan struct{}),
	}
	if resp.StatusCode != http.StatusOK {
		c.buf, c.err = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		close(c.ended)
		return c, nil
	}
	go c.read(resp.Body)
	return c, nil
}

func mustStartBatch(ctx context.Context, t *testing.T, fe *harness.Hafe, key string, body []byte) *capture {
	t.Helper()
	c, err := startBatch(ctx, fe, key, body)
	if err != nil {
		t.Fatalf("POST to %s: %v", fe.Alias, err)
	}
	t.Cleanup(c.close)
	if c.status != http.StatusOK {
		t.Fatalf("POST to %s: %d %s", fe.Alias, c.status, c.buf)
	}
	return c
}

func (c *capture) read(body io.ReadCloser) {
	defer close(c.ended)
	defer body.Close()
	r := bufio.NewReader(body)
	for {
		chunk, err := r.ReadBytes('\n')
		c.mu.Lock()
		c.buf = append(c.buf, chunk...)
		if len(chunk) > 0 && chunk[len(chunk)-1] == '\n' {
			c.lines++
			c.times = append(c.times, time.Now())
		}
		if err != nil {
			c.err, c.end = err, time.Now()
		}
		c.mu.Unlock()
		select {
		case c.notify <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// waitLines waits until the stream has n complete lines.
func (c *capture) waitLines(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		lines, err := c.lines, c.err
		c.mu.Unlock()
		if lines >= n {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stream ended after %d lines: %w: %q", lines, err, lastLine(c.bytes()))
		}
		select {
		case <-c.notify:
		case <-c.ended:
		case <-ctx.Done():
			return fmt.Errorf("%d lines of %d: %w", lines, n, ctx.Err())
		}
	}
}

// waitEnd waits at most d for the stream to end.
func (c *capture) waitEnd(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-c.ended:
		return nil
	case <-timer.C:
		return fmt.Errorf("still open after %s", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close hangs up and waits for the reader to stop.
func (c *capture) close() {
	c.cancel()
	<-c.ended
}

// took is how long the response took, from the request to its end (so
// far, while it goes on).
func (c *capture) took() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end.IsZero() {
		return time.Since(c.start)
	}
	return c.end.Sub(c.start)
}

func (c *capture) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf)
}

func (c *capture) lineCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lines
}

// startBatchRetrying POSTs the batch to fe with key until it answers 200,
// retrying 409 (still owned elsewhere), 503 and failed requests after a
// pause, at most attempts times; the stream is then read in the background.
func startBatchRetrying(ctx context.Context, t *testing.T, fe *harness.Hafe, key string, body []byte, attempts int) (*capture, error) {
	t.Helper()
	var refusals []string
	for attempt := 1; attempt <= attempts; attempt++ {
		c, err := startBatch(ctx, fe, key, body)
		switch {
		case err != nil:
			refusals = append(refusals, err.Error())
		case c.status == http.StatusConflict || c.status == http.StatusServiceUnavailable:
			refusals = append(refusals, fmt.Sprintf("%d %s", c.status, bytes.TrimSpace(c.buf)))
		case c.status != http.StatusOK:
			return nil, fmt.Errorf("POST to %s: %d %s", fe.Alias, c.status, c.buf)
		default:
			t.Cleanup(c.close)
			if len(refusals) > 0 {
				t.Logf("%s took the batch on attempt %d, after: %s", fe.Alias, attempt, summarize(refusals))
			}
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("POST to %s: %w after %s", fe.Alias, ctx.Err(), summarize(refusals))
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("%s refused the batch %d times: %s", fe.Alias, attempts, summarize(refusals))
}

// summarize shows a list of refusals with repeats counted.
func summarize(refusals []string) string {
	var b strings.Builder
	for i := 0; i < len(refusals); {
		j := i
		for j < len(refusals) && refusals[j] == refusals[i] {
			j++
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%dx %s", j-i, refusals[i])
		i = j
	}
	return b.String()
}

// submitUntilDone POSTs the batch to fe with key until a stream carries the
// done line, retrying refusals (startBatchRetrying) and streams that end
// without the done line. Bounded: at most 5 streams of 60 requests each.
// It returns every 200 stream, the last one complete.
func submitUntilDone(ctx context.Context, t *testing.T, fe *harness.Hafe, key string, body []byte) []*capture {
	t.Helper()
	var streams []*capture
	for range 5 {
		c, err := startBatchRetrying(ctx, t, fe, key, body, 60)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.waitEnd(ctx, 90*time.Second); err != nil {
			t.Fatalf("stream from %s: %v", fe.Alias, err)
		}
		streams = append(streams, c)
		if hasDone(c.bytes()) {
			t.Logf("%s finished the batch (resumed %v, %d lines) in %s", fe.Alias, c.resumed, c.lineCount(), c.took().Round(time.Millisecond))
			return streams
		}
		t.Logf("stream from %s ended without the done line: %q", fe.Alias, lastLine(c.bytes()))
	}
	t.Fatalf("%s did not finish the batch in 5 streams", fe.Alias)
	return nil
}

func streamBytes(cs []*capture) [][]byte {
	var out [][]byte
	for _, c := range cs {
		out = append(out, c.bytes())
	}
	return out
}

// sameBatch checks that every response named the first one's batch.
func sameBatch(t *testing.T, first *capture, more []*capture) string {
	t.Helper()
	if first.batchID == "" {
		t.Fatal("no Hafe-Batch-Id header")
	}
	for _, c := range more {
		if c.batchID != first.batchID {
			t.Fatalf("retry with the same key answered batch %s, the first request batch %s", c.batchID, first.batchID)
		}
	}
	return first.batchID
}

// requireCutOff fails the test if the stream finished: the fault came too
// late to test anything.
func requireCutOff(t *testing.T, name string, c *capture) {
	t.Helper()
	if hasDone(c.bytes()) {
		t.Fatalf("%s finished the batch before the fault", name)
	}
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	t.Logf("%s's stream cut off after %d lines (%v)", name, c.lineCount(), err)
}

func hasDone(stream []byte) bool {
	return bytes.HasPrefix(lastLine(stream), []byte(`{"done":true`))
}

// lastLine is the stream's last complete line.
func lastLine(stream []byte) []byte {
	stream = stream[:bytes.LastIndexByte(stream, '\n')+1]
	stream = bytes.TrimSuffix(stream, []byte("\n"))
	return stream[bytes.LastIndexByte(stream, '\n')+1:]
}
