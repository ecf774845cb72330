package client_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hafe.dev/hafe/client"
	"hafe.dev/hafe/frontend"
)

// collector keeps what OnLine and Observe saw.
type collector struct {
	mu     sync.Mutex
	lines  map[int][]byte
	order  []int
	done   []byte
	events []client.Event
	onLine func(client.Line)
}

func newCollector() *collector { return &collector{lines: map[int][]byte{}} }

func (c *collector) line(l client.Line) error {
	c.mu.Lock()
	if l.Done {
		c.done = bytes.Clone(l.Bytes)
	} else {
		c.lines[l.Seq] = bytes.Clone(l.Bytes)
		c.order = append(c.order, l.Seq)
	}
	f := c.onLine
	c.mu.Unlock()
	if f != nil {
		f(l)
	}
	return nil
}

func (c *collector) observe(e client.Event) {
	c.mu.Lock()
	c.events = append(c.events, e)
	c.mu.Unlock()
}

func (c *collector) eventsOf(k client.EventKind) []client.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []client.Event
	for _, e := range c.events {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

// checkOnceInOrder fails unless seqs 1..n were delivered once each, in order.
func (c *collector) checkOnceInOrder(t *testing.T, n int) {
	t.Helper()
	if len(c.order) != n {
		t.Fatalf("delivered %d lines, want %d", len(c.order), n)
	}
	for i, seq := range c.order {
		if seq != i+1 {
			t.Fatalf("line %d delivered has seq %d", i+1, seq)
		}
	}
	if c.done == nil {
		t.Fatal("no summary line delivered")
	}
}

func newClient(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 10 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 2 * time.Second
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestSubmitResumesOnAnotherFrontEndAfterStreamCut(t *testing.T) {
	db := newBank(t)
	fe1 := startFrontEnd(t, db, "fe1", feOptions{wrap: cutAfter(20)})
	fe2 := startFrontEnd(t, db, "fe2", feOptions{})
	col := newCollector()
	c := newClient(t, client.Config{FrontEnds: []string{fe1.URL, fe2.URL}, Observe: col.observe})
	body := transfers(60)

	sum, err := c.Submit(testContext(t), client.Request{Body: body, OnLine: col.line})
	if err != nil {
		t.Fatalf("submit: %v (summary %+v)", err, sum)
	}
	col.checkOnceInOrder(t, 60)
	if !sum.Done || sum.Transactions != 60 || sum.Committed+sum.Aborted != 60 || sum.Aborted == 0 {
		t.Errorf("summary %+v: want done, 60 transactions, some aborted", sum)
	}
	if sum.Attempts < 2 || !sum.Resumed {
		t.Errorf("summary %+v: want a resumed retry", sum)
	}
	// The cut stream had delivered 20 whole lines; the resumed one
	// replayed exactly those, byte for byte, and they were skipped.
	rep := col.eventsOf(client.EventReplayed)
	if len(rep) != 1 || rep[0].Replayed != 20 {
		t.Errorf("replay events %+v, want one of 20 lines", rep)
	}
	retries := col.eventsOf(client.EventRetry)
	var se *client.StreamError
	if len(retries) == 0 || !errors.As(retries[0].Err, &se) || se.Lines != 20 {
		t.Errorf("first retry %+v: want a broken stream after 20 lines", retries)
	}
	// Every attempt carried the same key and the same body.
	reqs := append(fe1.rec.requests(), fe2.rec.requests()...)
	if len(reqs) != sum.Attempts {
		t.Errorf("front-ends saw %d requests; the client made %d attempts", len(reqs), sum.Attempts)
	}
	for _, r := range reqs {
		if r.key != sum.IdempotencyKey || !bytes.Equal(r.body, body) {
			t.Errorf("a request had key %q and a %d-byte body; want key %q and the %d-byte batch", r.key, len(r.body), sum.IdempotencyKey, len(body))
		}
	}
	if !strings.HasPrefix(sum.IdempotencyKey, "hafe-") {
		t.Errorf("generated key %q", sum.IdempotencyKey)
	}
	checkBank(t, db, sum.BatchID, col.lines, sum.Committed)
}

func TestSubmitRetriesBatchInProgressThenResumes(t *testing.T) {
	db := newBank(t)
	fe1 := startFrontEnd(t, db, "fe1", feOptions{rawSQL: true})
	fe2 := startFrontEnd(t, db, "fe2", feOptions{rawSQL: true})
	ctx := testContext(t)

	// Slot 1 waits for an advisory lock the test holds, so the batch is
	// surely still running on fe1 when the second client arrives.
	lock, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(ctx)
	if _, err := lock.Exec(ctx, "SELECT pg_advisory_lock(42)"); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"transactions":[{"sql":[{"query":"SELECT pg_advisory_xact_lock(42)"}]},
		{"template":"transfer","args":{"from":1,"to":2,"amount":10}}]}`)
	const key = "test-409"

	first := newCollector()
	c1 := newClient(t, client.Config{FrontEnds: []string{fe1.URL}})
	type result struct {
		sum client.Summary
		err error
	}
	firstDone := make(chan result, 1)
	go func() {
		sum, err := c1.Submit(ctx, client.Request{Body: body, IdempotencyKey: key, OnLine: first.line})
		firstDone <- result{sum, err}
	}()
	waitFor(t, "slot 1 to wait for the lock", func() bool {
		var n int
		lock.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").Scan(&n)
		return n > 0
	})

	second := newCollector()
	var unlock sync.Once
	c2 := newClient(t, client.Config{FrontEnds: []string{fe2.URL}, Observe: func(e client.Event) {
		second.observe(e)
		var api *client.APIError
		if e.Kind == client.EventRetry && errors.As(e.Err, &api) && api.Status == 409 {
			unlock.Do(func() { lock.Exec(ctx, "SELECT pg_advisory_unlock(42)") })
		}
	}})
	sum, err := c2.Submit(ctx, client.Request{Body: body, IdempotencyKey: key, OnLine: second.line})
	if err != nil {
		t.Fatalf("second submit: %v", err)
	}
	retries := second.eventsOf(client.EventRetry)
	var api *client.APIError
	if len(retries) == 0 || !errors.As(retries[0].Err, &api) || api.Status != 409 || api.Code != "batch_in_progress" || api.RetryAfter <= 0 {
		t.Fatalf("first retry %+v: want 409 batch_in_progress with Retry-After", retries)
	}
	second.checkOnceInOrder(t, 2)
	if !sum.Resumed || sum.Committed != 2 {
		t.Errorf("summary %+v: want a resumed batch with 2 commits", sum)
	}
	r := <-firstDone
	if r.err != nil {
		t.Fatalf("first submit: %v", r.err)
	}
	if r.sum.BatchID != sum.BatchID {
		t.Errorf("batch ids %s and %s differ", r.sum.BatchID, sum.BatchID)
	}
	for seq := 1; seq <= 2; seq++ {
		if !bytes.Equal(first.lines[seq], second.lines[seq]) {
			t.Errorf("seq %d: first client got %s, second %s", seq, first.lines[seq], second.lines[seq])
		}
	}
	checkBank(t, db, sum.BatchID, second.lines, 2)
}

func TestSubmitRefusalsAreFinal(t *testing.T) {
	db := newBank(t)
	fe1 := startFrontEnd(t, db, "fe1", feOptions{})
	fe2 := startFrontEnd(t, db, "fe2", feOptions{})
	ctx := testContext(t)
	c := newClient(t, client.Config{FrontEnds: []string{fe1.URL, fe2.URL}})
	if _, err := c.Submit(ctx, client.Request{Body: transfers(3), IdempotencyKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		body []byte
		key  string
		code string
	}{
		{"key reused with another body", transfers(4), "k1", "idempotency_key_reused"},
		{"unknown template", []byte(`{"transactions":[{"template":"nope","args":{}}]}`), "", "unknown_template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			called := false
			sum, err := c.Submit(ctx, client.Request{Body: tc.body, IdempotencyKey: tc.key, OnLine: func(client.Line) error { called = true; return nil }})
			var api *client.APIError
			if !errors.As(err, &api) || api.Status != 422 || api.Code != tc.code || api.Message == "" {
				t.Fatalf("err = %v, want 422 %s", err, tc.code)
			}
			if sum.Attempts != 1 || called {
				t.Errorf("attempts %d, lines delivered %v: a 422 must not be retried", sum.Attempts, called)
			}
		})
	}
}

func TestSubmitSendsBearerToken(t *testing.T) {
	db := newBank(t)
	fe := startFrontEnd(t, db, "fe1", feOptions{tokens: []frontend.Token{{Name: "app", Secret: "s3cret"}}})
	ctx := testContext(t)

	c := newClient(t, client.Config{FrontEnds: []string{fe.URL}})
	_, err := c.Submit(ctx, client.Request{Body: transfers(2)})
	var api *client.APIError
	if !errors.As(err, &api) || api.Status != 401 || api.Code != "unauthorized" {
		t.Fatalf("without token: err = %v, want 401", err)
	}
	c = newClient(t, client.Config{FrontEnds: []string{fe.URL}, Token: "s3cret"})
	if sum, err := c.Submit(ctx, client.Request{Body: transfers(2)}); err != nil || !sum.Done {
		t.Fatalf("with token: %+v, %v", sum, err)
	}
}

func TestSubmitMovesOnFromDrainingFrontEnd(t *testing.T) {
	db := newBank(t)
	fe1 := startFrontEnd(t, db, "fe1", feOptions{})
	fe2 := startFrontEnd(t, db, "fe2", feOptions{})
	fe1.fe.Drain()
	col := newCollector()
	c := newClient(t, client.Config{FrontEnds: []string{fe1.URL, fe2.URL}, Observe: col.observe})
	sum, err := c.Submit(testContext(t), client.Request{Body: transfers(5), OnLine: col.line})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Attempts != 2 || len(sum.FrontEnds) != 1 || sum.FrontEnds[0] != "fe2" {
		t.Errorf("summary %+v: want fe2 to serve on the second attempt", sum)
	}
	var api *client.APIError
	if r := col.eventsOf(client.EventRetry); len(r) != 1 || !errors.As(r[0].Err, &api) || api.Status != 503 {
		t.Errorf("retries %+v: want one after a 503", r)
	}
}

func TestSubmitGivesUpAfterMaxAttempts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c := newClient(t, client.Config{FrontEnds: []string{addr}, MaxAttempts: 3, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	sum, err := c.Submit(testContext(t), client.Request{Body: transfers(1)})
	var inc *client.IncompleteError
	if !errors.As(err, &inc) || !errors.Is(err, client.ErrIncomplete) || inc.Attempts != 3 || sum.Attempts != 3 {
		t.Fatalf("err = %v, summary %+v: want incomplete after 3 attempts", err, sum)
	}
}

// A front-end that replays a line with other bytes breaks G3; the client
// must say so rather than skip the line.
func TestSubmitReportsReplayThatDiffers(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Hafe-Batch-Id", "b1")
		if n == 1 {
			w.Write([]byte(`{"seq":1,"status":"committed"}` + "\n" + `{"seq":2,"status":"aborted"}` + "\n"))
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler) // the connection breaks
		}
		w.Header().Set("Hafe-Resumed", "true")
		w.Write([]byte(`{"seq":1,"status":"committed"}` + "\n" + `{"seq":2,"status":"committed"}` + "\n"))
	}))
	defer srv.Close()
	col := newCollector()
	c := newClient(t, client.Config{FrontEnds: []string{srv.URL}})
	_, err := c.Submit(testContext(t), client.Request{Body: transfers(2), OnLine: col.line})
	var ce *client.ContinuityError
	if !errors.As(err, &ce) || !errors.Is(err, client.ErrContinuity) || ce.Seq != 2 {
		t.Fatalf("err = %v, want a continuity error on seq 2", err)
	}
	if len(col.order) != 2 {
		t.Errorf("delivered %v, want seq 1 and 2 once", col.order)
	}
	c.CloseIdleConnections()
	checkNoClientGoroutines(t)
}

// checkNoClientGoroutines fails if goroutines of the client or of its HTTP
// connections outlive Submit and CloseIdleConnections (polled for 5 s).
func checkNoClientGoroutines(t *testing.T) {
	t.Helper()
	var stacks string
	for range 100 {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "hafe.dev/hafe/client.") && !strings.Contains(stacks, "net/http.(*persistConn)") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("goroutines left behind:\n%s", stacks)
}

// waitFor polls cond for at most 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 600 {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("gave up waiting for %s", what)
}

// An "interrupted" error line ends a stream without its summary: the
// client resumes elsewhere, and the replayed line is not delivered twice.
func TestSubmitRetriesAfterInterruptedLine(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Hafe-Batch-Id", "b1")
		w.Header().Set("Hafe-Front-End", "fake"+strconv.Itoa(n))
		line1 := `{"seq":1,"status":"committed"}` + "\n"
		if n == 1 {
			w.Write([]byte(line1 + `{"error":{"code":"interrupted","message":"database went away; retry with the same Idempotency-Key to resume"}}` + "\n"))
			return
		}
		w.Header().Set("Hafe-Resumed", "true")
		w.Write([]byte(line1 + `{"seq":2,"status":"aborted","error":{"code":"23514","message":"no"}}` + "\n" +
			`{"done":true,"batch_id":"b1","transactions":2,"committed":1,"aborted":1}` + "\n"))
	}))
	defer srv.Close()
	col := newCollector()
	c := newClient(t, client.Config{FrontEnds: []string{srv.URL}, Observe: col.observe})
	defer c.CloseIdleConnections()
	sum, err := c.Submit(testContext(t), client.Request{Body: transfers(2), OnLine: col.line})
	if err != nil {
		t.Fatal(err)
	}
	col.checkOnceInOrder(t, 2)
	var se *client.StreamError
	if r := col.eventsOf(client.EventRetry); len(r) != 1 || !errors.As(r[0].Err, &se) || se.Code != "interrupted" || se.Lines != 1 {
		t.Errorf("retries %+v: want one after an interrupted line", r)
	}
	if sum.Attempts != 2 || sum.Committed != 1 || sum.Aborted != 1 || strings.Join(sum.FrontEnds, ",") != "fake1,fake2" || !sum.Resumed {
		t.Errorf("summary %+v", sum)
	}
}

// A front-end that refuses the client's token (a misconfigured one) does
// not end a batch another front-end runs; only a refusal from every
// front-end is final.
func TestSubmitMovesOnFromAFrontEndThatRefusesTheToken(t *testing.T) {
	db := newBank(t)
	wrong := startFrontEnd(t, db, "fe1", feOptions{tokens: []frontend.Token{{Name: "app", Secret: "other"}}})
	right := startFrontEnd(t, db, "fe2", feOptions{tokens: []frontend.Token{{Name: "app", Secret: "s3cret"}}})
	ctx := testContext(t)
	c := newClient(t, client.Config{FrontEnds: []string{wrong.URL, right.URL}, Token: "s3cret"})
	sum, err := c.Submit(ctx, client.Request{Body: transfers(3)})
	if err != nil || !sum.Done || sum.Attempts != 2 || sum.FrontEnds[0] != "fe2" {
		t.Fatalf("summary %+v, err %v: want fe2 to run the batch on the second attempt", sum, err)
	}
	c = newClient(t, client.Config{FrontEnds: []string{wrong.URL, wrong.URL + "/"}, Token: "s3cret"})
	_, err = c.Submit(ctx, client.Request{Body: transfers(3)})
	var api *client.APIError
	if !errors.As(err, &api) || api.Status != 401 {
		t.Fatalf("every front-end refuses the token: err = %v, want the 401", err)
	}
}

// A front-end whose address refuses connections is skipped while another
// answers, instead of being tried every other attempt.
func TestSubmitSkipsAFrontEndThatRefusesConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	db := newBank(t)
	cut := 0
	fe := startFrontEnd(t, db, "fe1", feOptions{wrap: func(h http.Handler) http.Handler {
		// The first two streams break after a few lines, so the client
		// needs several attempts.
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cut++
			if cut <= 2 {
				hj, ok := w.(http.Hijacker)
				if ok {
					nc, _, _ := hj.Hijack()
					nc.Close()
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	}})
	col := newCollector()
	c := newClient(t, client.Config{FrontEnds: []string{dead, fe.URL}, Observe: col.observe})
	sum, err := c.Submit(testContext(t), client.Request{Body: transfers(3), OnLine: col.line})
	if err != nil || !sum.Done {
		t.Fatalf("summary %+v, err %v", sum, err)
	}
	tried := 0
	for _, e := range col.eventsOf(client.EventAttempt) {
		if e.URL == dead {
			tried++
		}
	}
	if tried != 1 {
		t.Errorf("the dead front-end was tried %d times in %d attempts, want once", tried, sum.Attempts)
	}
}
