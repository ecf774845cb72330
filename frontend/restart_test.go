package frontend

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// TestPostgresRestartCostsDelayNotErrors: after PostgreSQL restarts, every
// pooled connection is dead; the batches that come next must each get one
// that works (a connection that fails before a statement of theirs was sent
// is replaced) instead of a 503 per dead connection. Each runs once.
func TestPostgresRestartCostsDelayNotErrors(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-restart", AllowRawSQL: true}, false)
	// Fill the pool with connections that will all be dead.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fe.post(t, batchBody(rawTxn(fmt.Sprintf("INSERT INTO effects (note) VALUES ('warm-%d')", i), "SELECT pg_sleep(0.2)")), nil)
		}()
	}
	wg.Wait()
	if n := fe.pool.Stat().IdleConns(); n < 4 {
		t.Fatalf("only %d idle pooled connections before the restart", n)
	}
	if err := server.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	db.pool.Reset()
	for i := range 10 {
		body := batchBody(rawTxn(fmt.Sprintf("INSERT INTO effects (note) VALUES ('after-%d')", i)), transferTxn(1, 2, "1"))
		resp, out := fe.post(t, body, map[string]string{"Idempotency-Key": fmt.Sprint("after-", i)})
		if resp.StatusCode != 200 {
			t.Fatalf("batch %d after the restart: %d %s", i, resp.StatusCode, out)
		}
		ls := parseLines(t, out)
		if len(ls) != 3 || !ls[2].Done || ls[2].Committed != 2 {
			t.Fatalf("batch %d after the restart: %s", i, out)
		}
	}
	if n := db.count("SELECT count(*) FROM effects WHERE note LIKE 'after-%'"); n != 10 {
		t.Fatalf("%d effects after the restart, want 10", n)
	}
	if n := db.count("SELECT count(*) FROM (SELECT note FROM effects GROUP BY note HAVING count(*) > 1) x"); n != 0 {
		t.Fatalf("%d slots committed twice", n)
	}
}
