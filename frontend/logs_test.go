package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
)

// logBuffer collects JSON log lines from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines decodes every line logged so far.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// startLoggedFrontend is startFrontend (without membership) logging JSON
// into the returned buffer.
func startLoggedFrontend(t *testing.T, url string, cfg Config) (*frontendUnderTest, *logBuffer) {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	backendext.ConfigurePool(pcfg, cfg.ID, "", time.Minute)
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if cfg.AllowRawSQL && cfg.Executor.RawSQL.Pool == nil {
		cfg.Executor.RawSQL = rawSQLFor(t, pool, cfg.ID, 4)
	}
	logs := &logBuffer{}
	s, err := New(pool, cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f := startServer(t, s)
	return f, logs
}

func TestEveryLogLineOfARequestCarriesItsID(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe1, logs1 := startLoggedFrontend(t, url, Config{ID: "fe-1", AllowRawSQL: true})
	fe2, logs2 := startLoggedFrontend(t, url, Config{ID: "fe-2", AllowRawSQL: true})
	lock := holdAdvisoryLock(t, url)
	body := batchBody(transferTxn(1, 2, "1"), rawTxn(holdLock), transferTxn(1, 2, "99999"))

	ctx, cancel := context.WithCancel(context.Background())
	resp, err := fe1.doContext(ctx, request{path: "/v1/batches", body: body,
		header: map[string]string{"Idempotency-Key": "logged", "X-Request-Id": "req-first"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("X-Request-Id"); got != "req-first" {
		t.Fatalf("X-Request-Id echoed as %q", got)
	}
	id := resp.Header.Get("Hafe-Batch-Id")
	newStreamReader(resp).next(t)
	waitFor(t, "slot 2 to wait for the lock", func() bool { return db.lockWaiters() == 1 })
	cancel()
	resp.Body.Close()
	waitFor(t, "fe-1 to release the lease", func() bool {
		return db.count("SELECT count(*) FROM hafe.batches WHERE batch_id = $1 AND owner IS NULL", id) == 1
	})
	lock.release()
	again, _ := fe2.post(t, body, map[string]string{"Idempotency-Key": "logged", "X-Request-Id": "req-second"})
	if again.StatusCode != 200 || again.Header.Get("X-Request-Id") != "req-second" {
		t.Fatalf("resume: %d, X-Request-Id %q", again.StatusCode, again.Header.Get("X-Request-Id"))
	}

	// Each front-end: every line that names the batch names the request,
	// with one start and one end line.
	for _, c := range []struct {
		logs      *logBuffer
		requestID string
		end       string
		more      []string
	}{
		{logs1, "req-first", "batch interrupted", nil},
		{logs2, "req-second", "batch finished", []string{"batch taken over"}},
	} {
		seen := map[string]map[string]any{}
		for _, l := range c.logs.lines(t) {
			if l["batch"] != id {
				continue
			}
			if l["request_id"] != c.requestID {
				t.Errorf("line without request id %s: %v", c.requestID, l)
			}
			seen[l["msg"].(string)] = l
		}
		start, end := seen["batch started"], seen[c.end]
		if start == nil || end == nil {
			t.Fatalf("%s: no start or %q line in %v", c.requestID, c.end, seen)
		}
		if start["key"] != "logged" || start["transactions"] != float64(3) || end["duration"] == nil {
			t.Errorf("%s: start %v, end %v", c.requestID, start, end)
		}
		for _, m := range c.more {
			if seen[m] == nil {
				t.Errorf("%s: no %q line in %v", c.requestID, m, seen)
			}
		}
	}
	end := map[string]any{}
	for _, l := range logs2.lines(t) {
		if l["msg"] == "batch finished" {
			end = l
		}
	}
	if end["committed"] != float64(2) || end["aborted"] != float64(1) {
		t.Errorf("finish line %v, want 2 committed and 1 aborted", end)
	}
}

func TestUnusableRequestIDsAreReplaced(t *testing.T) {
	fe := startFrontend(t, newDB(t), Config{}, false)
	for _, sent := range []string{"", strings.Repeat("x", 129), "two words", "caf\u00e9"} {
		resp := fe.do(t, request{method: "GET", path: "/healthz", header: map[string]string{"X-Request-Id": sent}})
		resp.Body.Close()
		if got := resp.Header.Get("X-Request-Id"); got == "" || got == sent || len(got) > 128 {
			t.Errorf("sent %q, got X-Request-Id %q", sent, got)
		}
	}
}
