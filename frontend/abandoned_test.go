package frontend

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestAbandonedBatchesAreListedAndCollected: a batch whose client left
// mid-batch is released at once (no owner), shows in GET
// /admin/batches?state=abandoned, and retention collects it and its
// outcomes once it has been left alone for longer than --retention.
func TestAbandonedBatchesAreListedAndCollected(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-ab", AdminToken: adminToken, AllowRawSQL: true, Retention: 24 * time.Hour}, true)
	lock := holdAdvisoryLock(t, url)
	body := batchBody(rawTxn("INSERT INTO effects (note) VALUES ('a')"), rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('b')"))
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := fe.doContext(ctx, request{path: "/v1/batches", body: body, header: map[string]string{"Idempotency-Key": "left"}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get("Hafe-Batch-Id")
	newStreamReader(resp).next(t)
	waitFor(t, "the second transaction to wait for the lock", func() bool { return db.lockWaiters() == 1 })
	cancel()
	resp.Body.Close()
	waitFor(t, "the lease to be released", func() bool {
		return db.count("SELECT count(*) FROM hafe.batches WHERE batch_id = $1 AND owner IS NULL", id) == 1
	})
	lock.release()
	done, _ := fe.post(t, batchBody(transferTxn(1, 2, "1")), nil)
	if done.StatusCode != 200 {
		t.Fatalf("another batch: %d", done.StatusCode)
	}

	list := func(state string) []any {
		v := fe.getJSON(t, "/admin/batches?state="+state, asAdmin, 200)
		return v["batches"].([]any)
	}
	ab := list("abandoned")
	if len(ab) != 1 || ab[0].(map[string]any)["batch_id"] != id || ab[0].(map[string]any)["state"] != "abandoned" {
		t.Fatalf("abandoned: %v", ab)
	}
	if d := list("done"); len(d) != 1 || d[0].(map[string]any)["batch_id"] != done.Header.Get("Hafe-Batch-Id") {
		t.Fatalf("done: %v", d)
	}
	if r := list("running"); len(r) != 0 {
		t.Fatalf("running: %v", r)
	}
	bad := fe.do(t, request{method: http.MethodGet, path: "/admin/batches?state=lost", header: asAdmin})
	b, _ := io.ReadAll(bad.Body)
	bad.Body.Close()
	checkRefusal(t, bad, b, 400, "bad_filter")

	// Within retention the abandoned batch stays resumable; past it, gc
	// removes it and its outcome, and leaves the rest alone.
	gc := func() {
		r := fe.do(t, request{method: http.MethodPost, path: "/admin/gc", header: asAdmin})
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Fatalf("gc: %d", r.StatusCode)
		}
	}
	gc()
	if n := db.count("SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1", id); n != 1 {
		t.Fatalf("gc within retention left %d outcomes of the abandoned batch, want 1", n)
	}
	if _, err := db.pool.Exec(context.Background(), "UPDATE hafe.batches SET updated_at = now() - interval '2 days' WHERE batch_id = $1", id); err != nil {
		t.Fatal(err)
	}
	gc()
	if n := db.count("SELECT count(*) FROM hafe.batches WHERE batch_id = $1", id) + db.count("SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1", id); n != 0 {
		t.Fatalf("the abandoned batch past retention still has %d rows", n)
	}
	if n := db.count("SELECT count(*) FROM hafe.batches"); n != 1 {
		t.Fatalf("%d batches left, want the done one", n)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 1 {
		t.Fatalf("%d effects, want slot 1's only", n)
	}
}
