package frontend

import (
	"context"
	"io"
	"net/http"
	"testing"
)

// batchIDs lists the ids GET path answers with.
func (f *frontendUnderTest) batchIDs(t *testing.T, path string) []string {
	t.Helper()
	v := f.getJSON(t, path, asAdmin, 200)
	var ids []string
	for _, b := range v["batches"].([]any) {
		ids = append(ids, b.(map[string]any)["batch_id"].(string))
	}
	return ids
}

func TestAdminFollowsABatchThroughInterruptionAndTakeover(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe1 := startFrontend(t, url, Config{ID: "fe-1", AllowRawSQL: true, AdminToken: adminToken}, true)
	fe2 := startFrontend(t, url, Config{ID: "fe-2", AllowRawSQL: true, AdminToken: adminToken}, true)
	waitFor(t, "fe-1's heartbeat", func() bool { return db.count("SELECT count(*) FROM hafe.members WHERE id = 'fe-1'") == 1 })
	lock := holdAdvisoryLock(t, url)
	body := batchBody(transferTxn(1, 2, "1"), rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('b')"), transferTxn(1, 2, "99999"))
	key := map[string]string{"Idempotency-Key": "order-7"}

	ctx, cancel := context.WithCancel(context.Background())
	resp, err := fe1.doContext(ctx, request{path: "/v1/batches", body: body, header: key})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get("Hafe-Batch-Id")
	newStreamReader(resp).next(t)
	waitFor(t, "slot 2 to wait for the lock", func() bool { return db.lockWaiters() == 1 })

	if ids := fe2.batchIDs(t, "/admin/batches?state=running"); len(ids) != 1 || ids[0] != id {
		t.Fatalf("running: %v, want [%s]", ids, id)
	}
	if ids := fe2.batchIDs(t, "/admin/batches?key=order-7"); len(ids) != 1 || ids[0] != id {
		t.Fatalf("by key: %v", ids)
	}
	if ids := fe2.batchIDs(t, "/admin/batches?owner=fe-1&state=running"); len(ids) != 1 {
		t.Fatalf("by owner: %v", ids)
	}
	if ids := fe2.batchIDs(t, "/admin/batches?older_than=1h"); len(ids) != 0 {
		t.Fatalf("older than an hour: %v", ids)
	}
	b := fe2.getJSON(t, "/admin/batches/"+id, asAdmin, 200)
	if b["state"] != "running" || b["owner"] != "fe-1" || b["slots_done"] != float64(1) || b["transactions"] != float64(3) ||
		b["idempotency_key"] != "order-7" || b["epoch"] != float64(1) || len(b["takeovers"].([]any)) != 0 {
		t.Fatalf("mid-batch: %v", b)
	}
	o := fe2.getJSON(t, "/admin/overview", asAdmin, 200)
	if bs := o["batches"].([]any); len(bs) != 1 || bs[0].(map[string]any)["batch_id"] != id || bs[0].(map[string]any)["slots_done"] != float64(1) {
		t.Fatalf("overview batches mid-batch: %v", bs)
	}
	if ms := o["members"].([]any); len(ms) != 2 || ms[0].(map[string]any)["alive"] != true || ms[0].(map[string]any)["heartbeat_age_seconds"] == nil {
		t.Fatalf("overview members: %v", ms)
	}
	if c := o["counters"].(map[string]any); o["self"] != "fe-2" || c["committed"] != float64(0) || c["batches_in_flight"] != float64(0) {
		t.Fatalf("overview of fe-2 while fe-1 runs the batch: %v", o)
	}
	if c := fe1.getJSON(t, "/admin/overview", asAdmin, 200)["counters"].(map[string]any); c["committed"] != float64(1) || c["batches_in_flight"] != float64(1) {
		t.Fatalf("fe-1's counters mid-batch: %v", c)
	}

	cancel()
	resp.Body.Close()
	waitFor(t, "the batch to be abandoned", func() bool {
		ids := fe2.batchIDs(t, "/admin/batches?state=abandoned")
		return len(ids) == 1 && ids[0] == id
	})
	lock.release()
	if again, out := fe2.post(t, body, key); again.StatusCode != 200 {
		t.Fatalf("resume: %d %s", again.StatusCode, out)
	}

	b = fe1.getJSON(t, "/admin/batches/"+id, asAdmin, 200)
	if b["state"] != "done" || b["owner"] != "" || b["slots_done"] != float64(3) || b["committed"] != float64(2) || b["aborted"] != float64(1) || b["epoch"] != float64(2) {
		t.Fatalf("after the takeover: %v", b)
	}
	takeovers := b["takeovers"].([]any)
	if len(takeovers) != 1 {
		t.Fatalf("takeovers %v", takeovers)
	}
	if to := takeovers[0].(map[string]any); to["owner"] != "fe-2" || to["previous_owner"] != "" || to["epoch"] != float64(2) || to["at"] == "" {
		t.Fatalf("takeover %v", to)
	}
	o = fe1.getJSON(t, "/admin/overview", asAdmin, 200)
	if ts := o["takeovers"].([]any); len(ts) != 1 || ts[0].(map[string]any)["batch_id"] != id || ts[0].(map[string]any)["owner"] != "fe-2" {
		t.Fatalf("overview takeovers: %v", ts)
	}
	if bs := o["batches"].([]any); len(bs) != 0 {
		t.Fatalf("overview batches after the batch ended: %v", bs)
	}
	if len(b["outcomes"].([]any)) != 3 {
		t.Fatalf("outcomes %v", b["outcomes"])
	}
	if ids := fe1.batchIDs(t, "/admin/batches?state=done"); len(ids) != 1 || ids[0] != id {
		t.Fatalf("done: %v", ids)
	}
}

func TestAdminBatchFiltersAreChecked(t *testing.T) {
	fe := startFrontend(t, newDB(t), Config{AdminToken: adminToken}, false)
	for _, q := range []string{"state=lost", "older_than=yesterday", "older_than=-1h", "limit=0", "limit=1001", "limit=x"} {
		resp := fe.do(t, request{method: http.MethodGet, path: "/admin/batches?" + q, header: asAdmin})
		body := readAll(t, resp)
		checkRefusal(t, resp, body, 400, "bad_filter")
	}
	resp := fe.do(t, request{method: http.MethodGet, path: "/admin/batches/not-a-uuid", header: asAdmin})
	checkRefusal(t, resp, readAll(t, resp), 400, "bad_batch_id")
	resp = fe.do(t, request{method: http.MethodGet, path: "/admin/batches/00000000-0000-0000-0000-000000000001", header: asAdmin})
	checkRefusal(t, resp, readAll(t, resp), 404, "no_such_batch")
	resp = fe.do(t, request{method: http.MethodGet, path: "/admin/batches"})
	checkRefusal(t, resp, readAll(t, resp), 401, "unauthorized")
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestScopedKeysSplitIntoClientAndKey(t *testing.T) {
	for _, c := range []struct{ stored, client, key string }{
		{"", "", ""},
		{"open:order-1", "open", "order-1"},
		{"open:a:b", "open", "a:b"},
		{"token:billing:order-1", "billing", "order-1"},
		{"token:billing:a:b", "billing", "a:b"},
	} {
		if client, key := splitScopedKey(c.stored); client != c.client || key != c.key {
			t.Errorf("%q: client %q key %q, want %q %q", c.stored, client, key, c.client, c.key)
		}
	}
}
