package frontend

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"hafe.dev/hafe/txn"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestTemplateBatchStreamsOneLinePerTransactionThenDone(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-1"}, false)
	body := batchBody(transferTxn(1, 2, "10.50"), transferTxn(3, 4, "5000"), `{"template":"balance","args":{"id":2}}`)
	resp, out := fe.post(t, body, map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	h := resp.Header
	for k, want := range map[string]string{
		"Content-Type": "application/x-ndjson", "Cache-Control": "no-store",
		"X-Content-Type-Options": "nosniff", "Hafe-Front-End": "fe-1", "Hafe-Resumed": "",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("header %s: %q, want %q", k, got, want)
		}
	}
	id := h.Get("Hafe-Batch-Id")
	if !uuidPattern.MatchString(id) {
		t.Fatalf("Hafe-Batch-Id %q is not a UUID", id)
	}
	want := strings.Join([]string{
		`{"seq":1,"status":"committed","results":[{"command":"UPDATE","rows_affected":1,"columns":["id","balance"],"rows":[[1,989.50]]},{"command":"UPDATE","rows_affected":1,"columns":["id","balance"],"rows":[[2,1010.50]]}]}`,
		`{"seq":2,"status":"aborted","error":{"code":"23514","message":"new row for relation \"accounts\" violates check constraint \"accounts_balance_check\"","statement":1,"detail":"Failing row contains (3, customer 3, -4000.00)."}}`,
		`{"seq":3,"status":"committed","results":[{"command":"SELECT","rows_affected":1,"columns":["id","owner","balance"],"rows":[[2,"customer 2",1010.50]]}]}`,
		`{"done":true,"batch_id":"` + id + `","transactions":3,"committed":2,"aborted":1}`,
	}, "\n") + "\n"
	if string(out) != want {
		t.Fatalf("stream:\n%s\nwant:\n%s", out, want)
	}
	if got := db.balanceSum(); got != "100000.00" {
		t.Fatalf("sum of balances %s", got)
	}
	if n := db.count("SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1", id); n != 3 {
		t.Fatalf("%d outcomes recorded, want 3", n)
	}
	if n := db.count("SELECT count(*) FROM hafe.batches WHERE batch_id = $1 AND state = 'done' AND owner IS NULL", id); n != 1 {
		t.Fatal("the batch is not marked done with its lease released")
	}
}

// TestEachLineIsFlushedAsItsTransactionCompletes reads the first line
// while the second transaction is still waiting for a lock the test holds.
func TestEachLineIsFlushedAsItsTransactionCompletes(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	lock := holdAdvisoryLock(t, url)
	resp := fe.do(t, request{path: "/v1/batches", body: batchBody(
		rawTxn("INSERT INTO effects (note) VALUES ('first')"),
		rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('second')"),
	)})
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	st := newStreamReader(resp)
	first := st.next(t)
	if !bytes.HasPrefix(first, []byte(`{"seq":1,"status":"committed"`)) {
		t.Fatalf("first line %s", first)
	}
	// The second transaction has not finished: it waits for our lock.
	waitFor(t, "the second transaction to wait for the lock", func() bool { return db.lockWaiters() == 1 })
	if n := db.count("SELECT count(*) FROM effects"); n != 1 {
		t.Fatalf("%d effects while the second transaction waits, want 1", n)
	}
	lock.release()
	second := st.next(t)
	if !bytes.HasPrefix(second, []byte(`{"seq":2,"status":"committed"`)) {
		t.Fatalf("second line %s", second)
	}
	done := st.next(t)
	if !bytes.HasPrefix(done, []byte(`{"done":true`)) {
		t.Fatalf("last line %s", done)
	}
	if st.sc.Scan() {
		t.Fatalf("a line after done: %s", st.sc.Bytes())
	}
}

func TestSameKeyAndBodyAfterCompletionReplaysIdenticalBytes(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{}, false)
	key := map[string]string{"Idempotency-Key": "replay-1"}
	body := batchBody(transferTxn(1, 2, "1"), transferTxn(2, 3, "2000"), transferTxn(3, 4, "0.25"))
	first, out1 := fe.post(t, body, key)
	if first.StatusCode != 200 {
		t.Fatalf("status %d: %s", first.StatusCode, out1)
	}
	balances := db.state().Balances
	// Other spacing and key order: the same request.
	same := "\n{ \"isolation\" : \"\",\n  \"transactions\": [\n" +
		`{"args":{"amount":1,"to":2,"from":1},"template":"transfer"},` +
		` {"template":"transfer","args":{"to":3,"amount":2000,"from":2}},` + "\n\t" +
		`{"args":{"from":3,"amount":0.25,"to":4},"template":"transfer"} ] }` + "\n"
	for i, b := range []string{body, same} {
		again, out2 := fe.post(t, b, key)
		if again.StatusCode != 200 {
			t.Fatalf("replay %d: status %d: %s", i, again.StatusCode, out2)
		}
		if !bytes.Equal(out1, out2) {
			t.Fatalf("replay %d differs:\n%s\nfirst:\n%s", i, out2, out1)
		}
		if again.Header.Get("Hafe-Batch-Id") != first.Header.Get("Hafe-Batch-Id") {
			t.Fatalf("replay %d has batch %s, first had %s", i, again.Header.Get("Hafe-Batch-Id"), first.Header.Get("Hafe-Batch-Id"))
		}
		if again.Header.Get("Hafe-Resumed") != "true" {
			t.Fatalf("replay %d: Hafe-Resumed %q", i, again.Header.Get("Hafe-Resumed"))
		}
	}
	if s := db.state(); s.Batches != 1 || s.Outcomes != 3 || s.Balances != balances {
		t.Fatalf("a replay ran something again: %+v", s)
	}
	// Keys are per client: with no key the same body is a new batch.
	if resp, out := fe.post(t, body, nil); resp.StatusCode != 200 || resp.Header.Get("Hafe-Batch-Id") == first.Header.Get("Hafe-Batch-Id") {
		t.Fatalf("without a key: status %d, batch %s: %s", resp.StatusCode, resp.Header.Get("Hafe-Batch-Id"), out)
	}
}

func TestSameKeyWithAnotherBodyIsRefused(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{}, false)
	key := map[string]string{"Idempotency-Key": "reused"}
	if resp, out := fe.post(t, batchBody(transferTxn(1, 2, "1")), key); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	before := db.state()
	for name, body := range map[string]string{
		"other amount":      batchBody(transferTxn(1, 2, "2")),
		"one more":          batchBody(transferTxn(1, 2, "1"), transferTxn(1, 2, "1")),
		"other isolation":   `{"transactions":[` + transferTxn(1, 2, "1") + `],"isolation":"serializable"}`,
		"same number typed": batchBody(`{"template":"transfer","args":{"from":1,"to":2,"amount":"1"}}`),
	} {
		resp, out := fe.post(t, body, key)
		checkRefusal(t, resp, out, 422, "idempotency_key_reused")
		if after := db.state(); after != before {
			t.Fatalf("%s: the refusal wrote: %+v, before %+v", name, after, before)
		}
	}
	// Another client's same key is another batch.
	other := startFrontend(t, url, Config{ID: "fe-tokens", ClientTokens: []Token{{Name: "alice", Secret: "alice-secret"}, {Name: "bob", Secret: "bob-secret"}}}, false)
	for _, tok := range []string{"alice-secret", "bob-secret"} {
		resp, out := other.post(t, batchBody(transferTxn(5, 6, "1")), map[string]string{"Idempotency-Key": "reused", "Authorization": "Bearer " + tok})
		if resp.StatusCode != 200 {
			t.Fatalf("client %s: status %d: %s", tok, resp.StatusCode, out)
		}
	}
	if n := db.count("SELECT count(*) FROM hafe.batches"); n != 3 {
		t.Fatalf("%d batches, want 3 (keys are scoped per client)", n)
	}
}

// TestSameKeyWhileRunningIsRefusedWithRetryAfter holds a batch open on a
// lock and sends its retry meanwhile.
func TestSameKeyWhileRunningIsRefusedWithRetryAfter(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-1", AllowRawSQL: true}, true)
	other := startFrontend(t, url, Config{ID: "fe-2", AllowRawSQL: true}, true)
	lock := holdAdvisoryLock(t, url)
	body := batchBody(rawTxn("INSERT INTO effects (note) VALUES ('a')"), rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('b')"))
	key := map[string]string{"Idempotency-Key": "slow"}
	resp := fe.do(t, request{path: "/v1/batches", body: body, header: key})
	defer resp.Body.Close()
	st := newStreamReader(resp)
	st.next(t)
	waitFor(t, "the second transaction to wait for the lock", func() bool { return db.lockWaiters() == 1 })
	before := db.state()
	for _, f := range []*frontendUnderTest{fe, other} {
		again, out := f.post(t, body, key)
		checkRefusal(t, again, out, 409, "batch_in_progress")
		if again.Header.Get("Retry-After") == "" {
			t.Fatalf("%s: 409 without Retry-After", f.cfg.ID)
		}
		if !strings.Contains(string(out), "fe-1") {
			t.Fatalf("%s: the refusal does not name the owner: %s", f.cfg.ID, out)
		}
	}
	if after := db.state(); after != before {
		t.Fatalf("the refusals wrote: %+v, before %+v", after, before)
	}
	lock.release()
	rest, _ := io.ReadAll(resp.Body)
	lines := parseLines(t, rest)
	if len(lines) != 2 || lines[0].Seq != 2 || !lines[1].Done || lines[1].Committed != 2 {
		t.Fatalf("rest of the stream: %s", rest)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 2 {
		t.Fatalf("%d effects, want 2", n)
	}
}

// TestClientDisconnectReleasesTheLease: a client that goes away mid-batch
// can retry with its key on another front-end at once; the retry reports
// the committed slot from the back-end and runs the rest.
func TestClientDisconnectReleasesTheLease(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-1", AllowRawSQL: true}, true)
	other := startFrontend(t, url, Config{ID: "fe-2", AllowRawSQL: true}, true)
	lock := holdAdvisoryLock(t, url)
	body := batchBody(rawTxn("INSERT INTO effects (note) VALUES ('a')"), rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('b')"))
	key := map[string]string{"Idempotency-Key": "gone"}
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := fe.doContext(ctx, request{path: "/v1/batches", body: body, header: key})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get("Hafe-Batch-Id")
	st := newStreamReader(resp)
	first := st.next(t)
	waitFor(t, "the second transaction to wait for the lock", func() bool { return db.lockWaiters() == 1 })
	cancel()
	resp.Body.Close()
	// The lock is still held: the lease must come free without the
	// stuck statement finishing on its own.
	waitFor(t, "fe-1 to release the lease", func() bool {
		return db.count("SELECT count(*) FROM hafe.batches WHERE batch_id = $1 AND owner IS NULL", id) == 1
	})
	lock.release()
	again, out := other.post(t, body, key)
	if again.StatusCode != 200 {
		t.Fatalf("retry: status %d: %s", again.StatusCode, out)
	}
	if again.Header.Get("Hafe-Batch-Id") != id || again.Header.Get("Hafe-Resumed") != "true" || again.Header.Get("Hafe-Front-End") != "fe-2" {
		t.Fatalf("retry headers %v", again.Header)
	}
	if !bytes.HasPrefix(out, append(first, '\n')) {
		t.Fatalf("the retry's first line differs:\n%s\nfirst stream had:\n%s", out, first)
	}
	lines := parseLines(t, out)
	if len(lines) != 3 || lines[1].Status != "committed" || !lines[2].Done || lines[2].Committed != 2 {
		t.Fatalf("retry stream: %s", out)
	}
	if n := db.count("SELECT count(*) FROM effects WHERE note = 'a'"); n != 1 {
		t.Fatalf("slot 1 ran %d times", n)
	}
	if n := db.count("SELECT count(*) FROM effects WHERE note = 'b'"); n != 1 {
		t.Fatalf("slot 2 ran %d times", n)
	}
}

func TestDrainRefusesNewBatchesAndFailsReadiness(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{ID: "fe-1", AdminToken: adminToken, AllowRawSQL: true}, false)
	if v := fe.getJSON(t, "/readyz", nil, 200); v["status"] != "ready" {
		t.Fatalf("readyz %v", v)
	}
	// A batch running when the drain starts goes on to its end.
	lock := holdAdvisoryLock(t, url)
	resp := fe.do(t, request{path: "/v1/batches", body: batchBody(rawTxn("INSERT INTO effects (note) VALUES ('a')"), rawTxn(holdLock))})
	defer resp.Body.Close()
	st := newStreamReader(resp)
	st.next(t)
	dr := fe.do(t, request{method: http.MethodPost, path: "/admin/drain", header: asAdmin})
	drb, _ := io.ReadAll(dr.Body)
	dr.Body.Close()
	if dr.StatusCode != 202 || !strings.Contains(string(drb), `"batches_in_flight":1`) {
		t.Fatalf("drain: %d %s", dr.StatusCode, drb)
	}
	before := db.state()
	r2, out := fe.post(t, batchBody(transferTxn(1, 2, "1")), nil)
	checkRefusal(t, r2, out, 503, "draining")
	if r2.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	if v := fe.getJSON(t, "/readyz", nil, 503); v["status"] != "draining" {
		t.Fatalf("readyz while draining %v", v)
	}
	if v := fe.getJSON(t, "/healthz", nil, 200); v["status"] != "ok" {
		t.Fatalf("healthz while draining %v", v)
	}
	if after := db.state(); after != before {
		t.Fatalf("a refused batch wrote: %+v, before %+v", after, before)
	}
	lock.release()
	rest, _ := io.ReadAll(resp.Body)
	if lines := parseLines(t, rest); len(lines) != 2 || !lines[1].Done {
		t.Fatalf("the running batch did not finish: %s", rest)
	}
	select {
	case <-fe.Drain():
	default:
		t.Fatal("drained front-end still counts a running batch")
	}
}

// TestRawSQLWithArgumentsAndIsolation runs positional arguments of every
// JSON kind at the isolation level the request names.
func TestRawSQLWithArgumentsAndIsolation(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	body := `{"isolation":"serializable","transactions":[{"sql":[
		{"query":"INSERT INTO effects (note) VALUES ($1) RETURNING note","args":["x"]},
		{"query":"SELECT $1::bigint AS i, $2::numeric AS n, $3::bool AS b, $4::text IS NULL AS null_arg, $5::jsonb AS j, current_setting('transaction_isolation') AS iso",
		 "args":[9007199254740993, 0.1, true, null, {"k":[1,"two"]}]}]}]}`
	resp, out := fe.post(t, body, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	want := `{"seq":1,"status":"committed","results":[{"command":"INSERT","rows_affected":1,"columns":["note"],"rows":[["x"]]},` +
		`{"command":"SELECT","rows_affected":1,"columns":["i","n","b","null_arg","j","iso"],"rows":[[9007199254740993,0.1,true,true,{"k":[1,"two"]},"serializable"]]}]}`
	if first := strings.SplitN(string(out), "\n", 2)[0]; first != want {
		t.Fatalf("line:\n%s\nwant:\n%s", first, want)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 1 {
		t.Fatalf("%d effects", n)
	}
}

// TestFailedStatementAbortsOnlyItsTransaction: a bad statement is the
// transaction's fault; it is reported aborted and the batch goes on.
func TestFailedStatementAbortsOnlyItsTransaction(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	resp, out := fe.post(t, batchBody(
		rawTxn("INSERT INTO effects (note) VALUES ('kept')"),
		rawTxn("INSERT INTO effects (note) VALUES ('rolled back')", "SELECT 1/0"),
		rawTxn("INSERT INTO effects (note) VALUES ($1)"),
		rawTxn("INSERT INTO effects (note) VALUES ('also kept')"),
	), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	lines := parseLines(t, out)
	if len(lines) != 5 {
		t.Fatalf("stream: %s", out)
	}
	for i, want := range []string{"committed", "aborted", "aborted", "committed"} {
		if lines[i].Seq != i+1 || lines[i].Status != want {
			t.Fatalf("line %d: %+v, want %s", i+1, lines[i], want)
		}
	}
	if e := lines[1].Error; e == nil || e.Code != "22012" || e.Statement != 2 {
		t.Fatalf("division by zero reported as %+v", lines[1].Error)
	}
	if e := lines[2].Error; e == nil || e.Code != "invalid_arguments" {
		t.Fatalf("missing argument reported as %+v", lines[2].Error)
	}
	if l := lines[4]; !l.Done || l.Committed != 2 || l.Aborted != 2 {
		t.Fatalf("summary %+v", l)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 2 {
		t.Fatalf("%d effects, want 2", n)
	}
}

// TestResultLimitsAbortTheTransaction: rows per result and bytes per
// report are bounded; past them the transaction aborts with
// result_too_large instead of growing the response.
func TestResultLimitsAbortTheTransaction(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true, Executor: txn.Config{Limits: txn.Limits{MaxRows: 10, MaxReportBytes: 512}}}, false)
	resp, out := fe.post(t, batchBody(
		rawTxn("INSERT INTO effects (note) VALUES ('rows')", "SELECT generate_series(1, 11)"),
		rawTxn("INSERT INTO effects (note) VALUES ('bytes')", "SELECT repeat('x', 600)"),
		rawTxn("SELECT generate_series(1, 10)"),
	), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	lines := parseLines(t, out)
	for i, want := range []string{"aborted", "aborted", "committed"} {
		if lines[i].Status != want {
			t.Fatalf("line %d: %+v, want %s", i+1, lines[i], want)
		}
	}
	for i := range 2 {
		if e := lines[i].Error; e == nil || e.Code != "result_too_large" {
			t.Fatalf("line %d error %+v", i+1, lines[i].Error)
		}
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 0 {
		t.Fatalf("an aborted transaction left %d effects", n)
	}
}

// TestStatementThatFailsToPrepareAbortsOnlyItsTransaction: a syntax error
// or an unknown table is the transaction's fault like any other failed
// statement (G6), not a reason to interrupt the batch — a retry would
// fail the same way forever.
func TestStatementThatFailsToPrepareAbortsOnlyItsTransaction(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	for _, bad := range []string{"SELEC 1", "SELECT * FROM no_such_table"} {
		resp, out := fe.post(t, batchBody(
			rawTxn("INSERT INTO effects (note) VALUES ('rolled back')", bad),
			rawTxn("INSERT INTO effects (note) VALUES ('kept')"),
		), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, out)
		}
		lines := parseLines(t, out)
		if len(lines) != 3 || lines[0].Status != "aborted" || lines[0].Error == nil || lines[0].Error.Statement != 2 ||
			lines[1].Status != "committed" || !lines[2].Done {
			t.Fatalf("%s: stream %s", bad, out)
		}
	}
	if n := db.count("SELECT count(*) FROM effects WHERE note = 'rolled back'"); n != 0 {
		t.Fatalf("an aborted transaction left %d effects", n)
	}
}
