package frontend

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestHealthAndReadiness(t *testing.T) {
	fe := startFrontend(t, newDB(t), Config{ID: "fe-h"}, false)
	if v := fe.getJSON(t, "/healthz", nil, 200); v["status"] != "ok" || v["id"] != "fe-h" {
		t.Fatalf("healthz %v", v)
	}
	if v := fe.getJSON(t, "/readyz", nil, 200); v["status"] != "ready" {
		t.Fatalf("readyz %v", v)
	}
}

func TestReadinessFailsWithoutTheDatabase(t *testing.T) {
	fe := startFrontend(t, newDB(t), Config{ID: "fe-h"}, false)
	fe.ctl.Close()
	if v := fe.getJSON(t, "/readyz", nil, 503); v["status"] != "database unreachable" {
		t.Fatalf("readyz %v", v)
	}
	if v := fe.getJSON(t, "/healthz", nil, 200); v["status"] != "ok" {
		t.Fatalf("healthz %v", v)
	}
}

func TestMetricsCountBatchesAndTransactions(t *testing.T) {
	url := newDB(t)
	fe := startFrontend(t, url, Config{}, false)
	fe.post(t, batchBody(transferTxn(1, 2, "1"), transferTxn(1, 2, "99999")), nil)
	fe.post(t, batchBody(transferTxn(1, 2, "1")), map[string]string{"Idempotency-Key": "m"})
	fe.post(t, batchBody(transferTxn(1, 2, "1")), map[string]string{"Idempotency-Key": "m"})
	fe.post(t, "{", nil)
	resp := fe.do(t, request{method: http.MethodGet, path: "/metrics"})
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	text := string(b)
	for _, want := range []string{
		`hafe_batches_total{result="done"} 3`,
		`hafe_transactions_total{result="committed",source="executed"} 2`,
		`hafe_transactions_total{result="committed",source="replayed"} 1`,
		`hafe_transactions_total{result="aborted",source="executed"} 1`,
		`hafe_requests_refused_total{code="bad_json"} 1`,
		`hafe_batches_resumed_total 1`,
		`hafe_reports_sent_total 4`,
		`hafe_batches_in_flight 0`,
		`hafe_batch_duration_seconds_count 3`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, l := range strings.Split(text, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if name := l[:strings.IndexAny(l, "{ ")]; !strings.HasPrefix(name, "hafe_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s has no hafe_ prefix", name)
		}
	}
}

func TestTemplatesAreListed(t *testing.T) {
	fe := startFrontend(t, newDB(t), Config{ClientTokens: []Token{{Name: "client", Secret: clientToken}}}, false)
	v := fe.getJSON(t, "/v1/templates", asClient, 200)
	if v["raw_sql"] != false {
		t.Fatalf("raw_sql %v", v["raw_sql"])
	}
	var names []string
	var transfer map[string]any
	for _, x := range v["templates"].([]any) {
		m := x.(map[string]any)
		names = append(names, m["name"].(string))
		if m["name"] == "transfer" {
			transfer = m
		}
	}
	if strings.Join(names, ",") != "balance,deposit,open_account,transfer,withdraw" {
		t.Fatalf("templates %v", names)
	}
	if args := transfer["args"].([]any); len(args) != 3 || args[0] != "amount" || transfer["doc"] == "" {
		t.Fatalf("transfer %v", transfer)
	}
}

func TestAdminRoutes(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-admin", AdminToken: adminToken}, true)
	waitFor(t, "the first heartbeat", func() bool { return db.count("SELECT count(*) FROM hafe.members WHERE id = 'fe-admin'") == 1 })

	v := fe.getJSON(t, "/admin/members", asAdmin, 200)
	ms := v["members"].([]any)
	if v["self"] != "fe-admin" || len(ms) != 1 || ms[0].(map[string]any)["id"] != "fe-admin" || ms[0].(map[string]any)["alive"] != true {
		t.Fatalf("members %v", v)
	}

	resp, out := fe.post(t, batchBody(transferTxn(1, 2, "1"), transferTxn(2, 1, "1")), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("batch: %d %s", resp.StatusCode, out)
	}
	id := resp.Header.Get("Hafe-Batch-Id")
	b := fe.getJSON(t, "/admin/batches/"+id, asAdmin, 200)
	if b["batch_id"] != id || b["state"] != "done" || b["transactions"] != float64(2) {
		t.Fatalf("batch %v", b)
	}
	reported := strings.Split(strings.TrimSpace(string(out)), "\n")
	outcomes := b["outcomes"].([]any)
	if len(outcomes) != 2 || outcomes[0].(map[string]any)["seq"] != float64(1) {
		t.Fatalf("outcomes %v", outcomes)
	}
	if !strings.HasPrefix(reported[0], `{"seq":1,"status":"committed"`) {
		t.Fatalf("first line %s", reported[0])
	}

	r := fe.do(t, request{method: http.MethodPost, path: "/admin/gc", header: asAdmin})
	gb, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !strings.Contains(string(gb), `"removed_rows":0`) {
		t.Fatalf("gc: %d %s", r.StatusCode, gb)
	}
	// Within retention the batch stays resumable.
	if n := db.count("SELECT count(*) FROM hafe.outcomes"); n != 2 {
		t.Fatalf("gc removed live outcomes: %d left", n)
	}

	r = fe.do(t, request{method: http.MethodPost, path: "/admin/drain", header: asAdmin})
	r.Body.Close()
	if r.StatusCode != 202 || !fe.Draining() {
		t.Fatalf("drain: %d, draining %v", r.StatusCode, fe.Draining())
	}
}

func TestDashboardIsServed(t *testing.T) {
	fe := startFrontend(t, newDB(t), Config{}, false)
	resp := fe.do(t, request{method: http.MethodGet, path: "/dashboard/"})
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("dashboard: %d", resp.StatusCode)
	}
}
