package frontend

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"testing/fstest"
	"time"

	hafesql "hafe.dev/hafe/sql"
)

// paddedCatalog has one template, "noted": it records @note in effects
// and returns @size bytes, so that a few slots fill a socket's buffers.
func paddedCatalog(t testing.TB) *hafesql.Catalog {
	t.Helper()
	c, err := hafesql.Load(fstest.MapFS{"t/noted.sql": {Data: []byte(
		"-- Record @note and return @size bytes.\n" +
			"INSERT INTO effects (note) VALUES (@note);\n" +
			"SELECT repeat('x', @size) AS padding;\n")}}, "t")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// notedBatch is n calls of "noted", noted prefix-1 … prefix-n.
func notedBatch(prefix string, n, size int) string {
	txns := make([]string, n)
	for i := range txns {
		txns[i] = fmt.Sprintf(`{"template":"noted","args":{"note":"%s-%d","size":%d}}`, prefix, i+1, size)
	}
	return batchBody(txns...)
}

// stalledClient sends a batch over a raw TCP connection with a small
// receive buffer and then reads nothing, as a client that stopped reading
// does. The connection stays open until the test closes it.
func stalledClient(t testing.TB, fe *frontendUnderTest, key, body string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", fe.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.(*net.TCPConn).SetReadBuffer(4096)
	req := fmt.Sprintf("POST /v1/batches HTTP/1.1\r\nHost: hafe\r\nContent-Type: application/json\r\nIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s", key, len(body), body)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return c
}

// openTransactions counts the front-end's sessions inside a transaction.
func (c *checker) openTransactions(id string) int {
	return c.count("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'hafe/' || $1 || '%' AND xact_start IS NOT NULL", id)
}

// TestStalledReadersHoldNoDatabaseConnection: more clients than the pool
// has connections stop reading their responses. Their batches wait for
// them holding nothing: no open transaction, no pooled connection; the
// front-end keeps heartbeating, stays ready and runs other batches; and
// once the stalled clients go, each of their batches resumes on a retry
// with every slot run once.
func TestStalledReadersHoldNoDatabaseConnection(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	const poolSize, stalled, slots, size = 3, 5, 30, 300_000
	cfg := Config{ID: "fe-stall", Templates: paddedCatalog(t), WriteTimeout: 10 * time.Minute, HeartbeatInterval: 200 * time.Millisecond}
	fe := startFrontendWithPool(t, url, cfg, poolSize)
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { fe.Run(ctx); close(ran) }()
	t.Cleanup(func() { stop(); <-ran })

	var conns []net.Conn
	for i := range stalled {
		conns = append(conns, stalledClient(t, fe, fmt.Sprint("stalled-", i), notedBatch(fmt.Sprint("s", i), slots, size)))
	}
	stalledOutcomes := func() int {
		return db.count("SELECT count(*) FROM hafe.outcomes o JOIN hafe.batches b USING (batch_id) WHERE b.idem_key LIKE '%stalled-%'")
	}
	last := -1
	waitFor(t, "the stalled batches to stop making progress", func() bool {
		n := stalledOutcomes()
		if n == last && n > 0 && db.count("SELECT count(*) FROM hafe.batches WHERE idem_key LIKE '%stalled-%'") == stalled {
			return true
		}
		last = n
		time.Sleep(300 * time.Millisecond)
		return false
	})
	if last >= stalled*slots {
		t.Fatalf("the stalled batches finished (%d outcomes): the responses fit in the socket buffers, nothing stalled", last)
	}

	// Others are still served, while the stalled clients hold their sockets.
	reqCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := fe.doContext(reqCtx, request{path: "/v1/batches", body: notedBatch("other", 3, 10)})
	if err != nil {
		t.Fatalf("another client's batch while %d clients stall: %v", stalled, err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("another client's batch: %d %v %s", resp.StatusCode, err, out)
	}
	if ls := parseLines(t, out); len(ls) != 4 || ls[3].Committed != 3 {
		t.Fatalf("another client's batch: %s", out)
	}
	if v := fe.getJSON(t, "/readyz", nil, 200); v["status"] != "ready" {
		t.Fatalf("readyz %v", v)
	}
	waitFor(t, "a heartbeat while clients stall", func() bool {
		return db.count("SELECT count(*) FROM hafe.members WHERE id = 'fe-stall' AND heartbeat_at > now() - interval '300 milliseconds'") == 1
	})
	waitFor(t, "the stalled batches to hold no transaction and no connection", func() bool {
		return db.openTransactions("fe-stall") == 0 && fe.pool.Stat().AcquiredConns() == 0
	})
	if n := stalledOutcomes(); n != last {
		t.Fatalf("stalled batches went on from %d to %d outcomes while their clients read nothing", last, n)
	}

	// The clients give up; their batches resume elsewhere, every slot once.
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "the stalled batches to be released", func() bool {
		return db.count("SELECT count(*) FROM hafe.batches WHERE idem_key LIKE '%stalled-%' AND owner IS NOT NULL") == 0
	})
	other := startFrontend(t, url, Config{ID: "fe-retry", Templates: paddedCatalog(t)}, false)
	for i := range stalled {
		resp, out := other.post(t, notedBatch(fmt.Sprint("s", i), slots, size), map[string]string{"Idempotency-Key": fmt.Sprint("stalled-", i)})
		ls := parseLines(t, out)
		if resp.StatusCode != 200 || len(ls) != slots+1 || ls[slots].Committed != slots {
			t.Fatalf("retry %d: %d, %d lines", i, resp.StatusCode, len(ls))
		}
	}
	if n := db.count("SELECT count(*) FROM (SELECT note FROM effects GROUP BY note HAVING count(*) <> 1) x"); n != 0 {
		t.Fatalf("%d slots ran other than once", n)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != stalled*slots+3 {
		t.Fatalf("%d effects, want %d", n, stalled*slots+3)
	}
}

// TestWriteTimeoutReleasesAStalledClientsBatch: a client that reads
// nothing for longer than the write timeout loses its connection, and its
// batch is released at once while it still holds its socket: a retry
// anywhere resumes it, every slot run once.
func TestWriteTimeoutReleasesAStalledClientsBatch(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	const slots, size = 30, 300_000
	fe := startFrontend(t, url, Config{ID: "fe-wt", Templates: paddedCatalog(t), WriteTimeout: 300 * time.Millisecond}, true)
	stalledClient(t, fe, "late", notedBatch("late", slots, size))
	waitFor(t, "the batch to start", func() bool { return db.count("SELECT count(*) FROM hafe.outcomes") > 0 })
	waitFor(t, "the stalled client's batch to be released", func() bool {
		return db.count("SELECT count(*) FROM hafe.batches WHERE owner IS NULL AND state = 'running'") == 1
	})
	if n := db.openTransactions("fe-wt"); n != 0 {
		t.Fatalf("%d open transactions after the batch was released", n)
	}
	resp, out := fe.post(t, notedBatch("late", slots, size), map[string]string{"Idempotency-Key": "late"})
	ls := parseLines(t, out)
	if resp.StatusCode != 200 || resp.Header.Get("Hafe-Resumed") != "true" || len(ls) != slots+1 || ls[slots].Committed != slots {
		t.Fatalf("retry: %d, %d lines", resp.StatusCode, len(ls))
	}
	if n := db.count("SELECT count(*) FROM (SELECT note FROM effects GROUP BY note HAVING count(*) <> 1) x"); n != 0 {
		t.Fatalf("%d slots ran other than once", n)
	}
	if v := fe.getJSON(t, "/readyz", nil, 200); v["status"] != "ready" {
		t.Fatalf("readyz %v", v)
	}
}
