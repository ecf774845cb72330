package frontend

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// metric returns the sum of the series name{labels} in fe's registry
// (counters, gauges, or histograms' sample counts), 0 when none matches.
func (f *frontendUnderTest) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := f.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	// The sum over every series the labels match: labels left out are
	// summed over, not taken from whichever series comes first.
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				sum += m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				sum += m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func (f *frontendUnderTest) txns(t testing.TB, result, source string) int {
	t.Helper()
	return int(f.metric(t, "hafe_transactions_total", "result", result, "source", source))
}

func TestTransactionsAreCountedAsTheyCommitNotWhenTheBatchEnds(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	lock := holdAdvisoryLock(t, url)
	body := batchBody(transferTxn(1, 2, "1"), transferTxn(2, 3, "1"), transferTxn(1, 2, "99999"),
		rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('last')"))
	resp := fe.do(t, request{path: "/v1/batches", body: body})
	defer resp.Body.Close()
	st := newStreamReader(resp)
	for range 3 {
		st.next(t)
	}
	waitFor(t, "the fourth transaction to wait for the lock", func() bool { return db.lockWaiters() == 1 })

	// Mid-batch: three outcomes are durable, the batch runs.
	if c, a := fe.txns(t, "committed", "executed"), fe.txns(t, "aborted", "executed"); c != 2 || a != 1 {
		t.Fatalf("mid-batch: %d committed, %d aborted executed; want 2 and 1", c, a)
	}
	if n := fe.metric(t, "hafe_batches_in_flight"); n != 1 {
		t.Fatalf("mid-batch: hafe_batches_in_flight %v", n)
	}
	// The waiting slot is raw SQL: it holds a session of raw SQL's own
	// pool, none of the front-end's.
	if n := fe.cfg.Executor.RawSQL.Pool.Stat().AcquiredConns(); n != 1 {
		t.Fatalf("mid-batch: the raw SQL pool has %v connections in use, want the waiting slot's", n)
	}
	if n := fe.metric(t, "hafe_batches_total", "result", "done"); n != 0 {
		t.Fatalf("mid-batch: %v batches done", n)
	}

	lock.release()
	rest, _ := io.ReadAll(resp.Body)
	if lines := parseLines(t, rest); len(lines) != 2 || !lines[1].Done {
		t.Fatalf("end of stream: %s", rest)
	}
	if c := fe.txns(t, "committed", "executed"); c != 3 {
		t.Fatalf("after the batch: %d committed executed, want 3", c)
	}
	if n := fe.metric(t, "hafe_batches_in_flight"); n != 0 {
		t.Fatalf("after the batch: hafe_batches_in_flight %v", n)
	}
	if n := fe.metric(t, "hafe_batches_total", "result", "done"); n != 1 {
		t.Fatalf("after the batch: %v batches done", n)
	}
	if n := fe.metric(t, "hafe_http_request_duration_seconds", "route", "/v1/batches", "method", "POST", "code", "200"); n != 1 {
		t.Fatalf("request durations observed for POST /v1/batches: %v", n)
	}
}

// A batch interrupted on one front-end and resumed on another: the
// outcomes each executed add up to the rows in hafe.outcomes, and the
// second reports the first's as replayed.
func TestExecutedAndReplayedAddUpToTheRecordedOutcomes(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe1 := startFrontend(t, url, Config{ID: "fe-1", AllowRawSQL: true}, true)
	fe2 := startFrontend(t, url, Config{ID: "fe-2", AllowRawSQL: true}, true)
	lock := holdAdvisoryLock(t, url)
	body := batchBody(transferTxn(1, 2, "1"), transferTxn(1, 2, "99999"), transferTxn(2, 3, "1"),
		rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('x')"), transferTxn(3, 4, "1"), transferTxn(1, 2, "99999"))
	key := map[string]string{"Idempotency-Key": "add-up"}

	ctx, cancel := context.WithCancel(context.Background())
	resp, err := fe1.doContext(ctx, request{path: "/v1/batches", body: body, header: key})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get("Hafe-Batch-Id")
	st := newStreamReader(resp)
	for range 3 {
		st.next(t)
	}
	waitFor(t, "slot 4 to wait for the lock", func() bool { return db.lockWaiters() == 1 })
	cancel()
	resp.Body.Close()
	waitFor(t, "fe-1 to release the lease", func() bool {
		return db.count("SELECT count(*) FROM hafe.batches WHERE batch_id = $1 AND owner IS NULL", id) == 1
	})
	lock.release()

	again, out := fe2.post(t, body, key)
	if again.StatusCode != 200 || again.Header.Get("Hafe-Resumed") != "true" {
		t.Fatalf("resume: %d %v: %s", again.StatusCode, again.Header, out)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 7 || !strings.HasPrefix(lines[6], `{"done":true`) {
		t.Fatalf("resumed stream: %s", out)
	}

	for _, result := range []string{"committed", "aborted"} {
		recorded := db.count("SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1 AND status = $2", id, result)
		executed := fe1.txns(t, result, "executed") + fe2.txns(t, result, "executed")
		if executed != recorded {
			t.Errorf("%s: fe-1 and fe-2 executed %d, hafe.outcomes has %d", result, executed, recorded)
		}
		byFE1 := db.count("SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1 AND status = $2 AND owner = 'fe-1'", id, result)
		if got := fe2.txns(t, result, "replayed"); got != byFE1 {
			t.Errorf("%s: fe-2 replayed %d, fe-1 recorded %d", result, got, byFE1)
		}
		if got := fe1.txns(t, result, "replayed"); got != 0 {
			t.Errorf("%s: fe-1 replayed %d", result, got)
		}
	}
	if got := fe2.txns(t, "committed", "executed") + fe2.txns(t, "aborted", "executed") +
		fe2.txns(t, "committed", "replayed") + fe2.txns(t, "aborted", "replayed"); got != 6 {
		t.Errorf("fe-2 counted %d transactions for a 6-transaction batch", got)
	}
	if fe1.txns(t, "committed", "executed") != 2 || fe1.txns(t, "aborted", "executed") != 1 {
		t.Errorf("fe-1 executed %d committed and %d aborted, want 2 and 1", fe1.txns(t, "committed", "executed"), fe1.txns(t, "aborted", "executed"))
	}
	if n := fe2.metric(t, "hafe_batch_takeovers_total"); n != 1 {
		t.Errorf("fe-2 takeovers %v, want 1", n)
	}
	if n := fe1.metric(t, "hafe_batches_total", "result", "interrupted"); n != 1 {
		t.Errorf("fe-1 interrupted batches %v, want 1", n)
	}

	// A finished batch sent again is replayed whole.
	fe1.post(t, body, key)
	if got := fe1.txns(t, "committed", "replayed") + fe1.txns(t, "aborted", "replayed"); got != 6 {
		t.Errorf("fe-1 replayed %d of the finished batch's 6", got)
	}
}

func TestMetricsShowTheDatabaseMembersAndBuild(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-m"}, true)
	waitFor(t, "the first heartbeat", func() bool { return db.count("SELECT count(*) FROM hafe.members WHERE id = 'fe-m'") == 1 })
	waitFor(t, "the member list", func() bool { return len(fe.members.get()) == 1 })

	resp := fe.do(t, request{method: http.MethodGet, path: "/metrics"})
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(b)
	for _, want := range []string{
		"hafe_database_up 1\n",
		"hafe_database_round_trip_seconds ",
		`hafe_member_heartbeat_age_seconds{member="fe-m"} `,
		`hafe_db_pool_connections{state="idle"} `,
		"hafe_db_pool_max_connections ",
		"hafe_db_pool_acquire_waits_total ",
		`hafe_build_info{go="go`,
		`hafe_transaction_retries_total{cause="serialization_failure"} 0`,
		`hafe_fence_terminations_total{kind="blocker"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if age := fe.metric(t, "hafe_member_heartbeat_age_seconds", "member", "fe-m"); age < 0 || age > 10 {
		t.Errorf("heartbeat age %v s", age)
	}

	fe.ctl.Close() // the probe runs on the control pool, like heartbeats
	fe.heartbeat(context.Background())
	if up := fe.metric(t, "hafe_database_up"); up != 0 {
		t.Errorf("hafe_database_up %v after the control pool closed", up)
	}
}
