package frontend

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// escapes are ways to run SQL from a string, which no check of a
// statement's text can see into: each runs inner (a query returning one
// text column) inside the client's statement.
var escapes = []struct {
	name string
	wrap func(inner string) []string
}{
	{"query_to_xml", func(q string) []string {
		return []string{"SELECT query_to_xml(" + lit(q) + ", true, false, '') IS NOT NULL"}
	}},
	{"query_to_xmlschema", func(q string) []string {
		return []string{"SELECT query_to_xmlschema(" + lit(q) + ", true, false, '') IS NOT NULL"}
	}},
	{"query_to_xml_and_xmlschema", func(q string) []string {
		return []string{"SELECT query_to_xml_and_xmlschema(" + lit(q) + ", true, false, '') IS NOT NULL"}
	}},
	{"ts_stat", func(q string) []string {
		return []string{"SELECT count(*) FROM ts_stat(" + lit("SELECT to_tsvector(x) FROM ("+q+") s(x)") + ")"}
	}},
	{"ts_rewrite", func(q string) []string {
		return []string{"SELECT ts_rewrite('a'::tsquery, " + lit("SELECT 'a'::tsquery, 'b'::tsquery FROM ("+q+") s") + ")"}
	}},
	{"cursor_to_xml", func(q string) []string {
		// The cursor's own text would show set_config: it runs the
		// query from a string in turn.
		return []string{"DECLARE escape CURSOR FOR SELECT query_to_xml(" + lit(q) + ", true, false, '')", "SELECT cursor_to_xml('escape', 10, false, false, '') IS NOT NULL"}
	}},
}

func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// TestStringRunningFunctionsCannotLeaveTheClientRole: a client that runs
// set_config('role', …) through a function that executes SQL from a string
// (query_to_xml and the like) stays the client role — PostgreSQL checks a
// role change against the session's login role, and raw SQL sessions log
// in as the client role — so it can neither delete nor forge outcomes, nor
// grant itself hafe's tables. The victim's retry replays its batch: its
// deposits are made once.
func TestStringRunningFunctionsCannotLeaveTheClientRole(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	var frontEndRole string
	if err := db.pool.QueryRow(context.Background(), "SELECT session_user::text").Scan(&frontEndRole); err != nil {
		t.Fatal(err)
	}

	deposits := batchBody(`{"template":"deposit","args":{"id":3,"amount":1}}`, `{"template":"deposit","args":{"id":3,"amount":1}}`, `{"template":"deposit","args":{"id":3,"amount":1}}`)
	resp, out := fe.post(t, deposits, map[string]string{"Idempotency-Key": "victim"})
	if resp.StatusCode != 200 {
		t.Fatalf("victim: %d %s", resp.StatusCode, out)
	}
	victim := resp.Header.Get("Hafe-Batch-Id")
	victimOutcomes := func() string {
		var s string
		if err := db.pool.QueryRow(context.Background(), "SELECT string_agg(seq || ':' || status || ':' || md5(report), ',' ORDER BY seq) FROM hafe.outcomes WHERE batch_id = $1", victim).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := victimOutcomes()

	noRole := "SELECT set_config('role', 'none', false)"
	toFrontEnd := "SELECT set_config('role', " + lit(frontEndRole) + ", false)"
	for _, e := range escapes {
		t.Run(e.name, func(t *testing.T) {
			// The escape runs; the role it asks for is the one it has.
			stmts := append(e.wrap(noRole), "SELECT current_user::text, session_user::text, current_setting('role')")
			resp, out := fe.post(t, batchBody(rawTxn(stmts...)), nil)
			lines := parseLines(t, out)
			if resp.StatusCode != 200 || lines[0].Status != "committed" {
				t.Fatalf("%d %s", resp.StatusCode, out)
			}
			var res struct{ Rows [][]string }
			if err := json.Unmarshal(lines[0].Results[len(stmts)-1], &res); err != nil {
				t.Fatal(err)
			}
			if got := res.Rows[0]; got[0] != "hafe_client" || got[1] != "hafe_client" {
				t.Fatalf("after %s: current_user %q, session_user %q; want the client role", e.name, got[0], got[1])
			}

			for _, attack := range []struct {
				inner string
				then  []string
			}{
				{noRole, []string{"DELETE FROM hafe.outcomes WHERE batch_id = '" + victim + "'"}},
				{noRole, []string{"TRUNCATE hafe.outcomes"}},
				{noRole, []string{"INSERT INTO hafe.outcomes (batch_id, seq, status, report, epoch, owner) SELECT batch_id, 4, 'committed', '{}', epoch, owner FROM hafe.batches WHERE batch_id = '" + victim + "'"}},
				{noRole, []string{"SELECT hafe.record_outcome('" + victim + "', 4, 'committed', '{}', 1, 'fe-test', 1, '\\x00'::bytea)"}},
				{toFrontEnd, []string{"DELETE FROM hafe.outcomes"}},
				{"SELECT set_config('session_authorization', " + lit(frontEndRole) + ", false)", []string{"DELETE FROM hafe.outcomes"}},
			} {
				stmts := append(e.wrap(attack.inner), attack.then...)
				resp, out := fe.post(t, batchBody(rawTxn(stmts...)), nil)
				lines := parseLines(t, out)
				if resp.StatusCode != 200 || lines[0].Status != "aborted" || lines[0].Error == nil || lines[0].Error.Code != "42501" {
					t.Fatalf("%v: want aborted with 42501 (insufficient privilege), got %d %s", stmts, resp.StatusCode, out)
				}
			}
			// A GRANT it has no right to make only warns; it must change nothing.
			stmts = append(e.wrap(noRole), "GRANT ALL ON ALL TABLES IN SCHEMA hafe TO hafe_client", "GRANT CREATE ON SCHEMA hafe TO hafe_client")
			fe.post(t, batchBody(rawTxn(stmts...)), nil)
			if n := db.count(`SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'hafe'::regnamespace AND c.relkind = 'r'
				AND has_table_privilege('hafe_client', c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE')`); n != 0 {
				t.Fatalf("the client role gained privileges on %d of hafe's tables", n)
			}
			if n := db.count("SELECT has_schema_privilege('hafe_client', 'hafe', 'CREATE')::int"); n != 0 {
				t.Fatal("the client role may create in schema hafe")
			}
			if got := victimOutcomes(); got != before {
				t.Fatalf("the victim's outcomes changed: %s, were %s", got, before)
			}
		})
	}

	// The victim's retry replays: three deposits of 1, made once.
	resp, out = fe.post(t, deposits, map[string]string{"Idempotency-Key": "victim"})
	if resp.StatusCode != 200 || resp.Header.Get("Hafe-Resumed") != "true" {
		t.Fatalf("victim retry: %d %s", resp.StatusCode, out)
	}
	if n := db.count("SELECT (balance * 100)::int FROM accounts WHERE id = 3"); n != 100300 {
		t.Fatalf("account 3 holds %d cents, want 100300", n)
	}
	if n := db.count("SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1", victim); n != 3 {
		t.Fatalf("the victim's batch has %d outcomes, want 3", n)
	}
}

// TestRawSQLSessionsCarryNothingToTheNextClient: one client seeds the
// random generator, defines custom settings (for the transaction, and for
// the session through a string-running function), makes a temporary table
// and takes a session lock; the next client, on a front-end with one raw
// SQL connection, finds none of it: not a predictable random(), not even
// an empty definition of the settings.
func TestRawSQLSessionsCarryNothingToTheNextClient(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	ctx := context.Background()
	fe := startFrontendWithPool(t, url, Config{ID: "fe-one-conn", AllowRawSQL: true}, 1)

	// What random() returns after setseed(0.42).
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var predicted float64
	err = conn.QueryRow(ctx, "SELECT setseed(0.42)::text, random()").Scan(new(string), &predicted)
	conn.Release()
	if err != nil {
		t.Fatal(err)
	}

	resp, out := fe.post(t, batchBody(rawTxn(
		"SELECT setseed(0.42)",
		"SELECT set_config('app.tenant', 'attacker', true)",
		"SELECT query_to_xml('SELECT set_config(''app.session_tenant'', ''attacker'', false)', true, false, '') IS NOT NULL",
		"CREATE TEMP TABLE accounts (id integer, owner text, balance numeric)",
		"SELECT pg_advisory_lock(8)",
	)), nil)
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"status":"committed"`) {
		t.Fatalf("first client: %d %s", resp.StatusCode, out)
	}

	for i := range 3 {
		resp, out = fe.post(t, batchBody(rawTxn(
			"SELECT random() AS r, current_setting('app.tenant', true) IS NULL AS tenant_undefined, current_setting('app.session_tenant', true) IS NULL AS session_tenant_undefined, to_regclass('pg_temp.accounts') IS NULL AS no_temp_table",
		)), nil)
		lines := parseLines(t, out)
		if resp.StatusCode != 200 || lines[0].Status != "committed" {
			t.Fatalf("next client: %d %s", resp.StatusCode, out)
		}
		var res struct{ Rows [][]any }
		if err := json.Unmarshal(lines[0].Results[0], &res); err != nil {
			t.Fatal(err)
		}
		row := res.Rows[0]
		if i == 0 && row[0] == predicted {
			t.Fatalf("the next client's random() is %v, as the first client's setseed(0.42) predicted", row[0])
		}
		if row[1] != true || row[2] != true || row[3] != true {
			t.Fatalf("the next client sees the first's settings or temporary table: %s", out)
		}
	}
	waitFor(t, "the first client's session lock to go with its session", func() bool {
		return db.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 8") == 0
	})
}

// TestRawSQLPastItsTimeoutIsAbortedAndRecorded: a raw SQL transaction that
// runs past --raw-sql-timeout is cancelled from the front-end, even when
// the client turned statement_timeout off, and recorded aborted as its own
// fault; the batch goes on, and the server stops running the statement.
func TestRawSQLPastItsTimeoutIsAbortedAndRecorded(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	cfg := Config{AllowRawSQL: true}
	withRawSQLTimeout(&cfg, time.Second)
	fe := startFrontend(t, url, cfg, false)
	resp, out := fe.post(t, batchBody(
		rawTxn("INSERT INTO effects (note) VALUES ('slow')", "SET LOCAL statement_timeout = 0", "SELECT pg_sleep(8)"),
		`{"template":"deposit","args":{"id":4,"amount":1}}`,
	), nil)
	lines := parseLines(t, out)
	if resp.StatusCode != 200 || len(lines) != 3 {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	if lines[0].Status != "aborted" || lines[0].Error == nil || lines[0].Error.Code != "raw_sql_timeout" {
		t.Fatalf("the slow transaction: want aborted with raw_sql_timeout, got %s", out)
	}
	if lines[1].Status != "committed" || !lines[2].Done {
		t.Fatalf("the batch did not go on: %s", out)
	}
	if n := db.count("SELECT count(*) FROM hafe.outcomes WHERE seq = 1 AND status = 'aborted' AND report LIKE '%raw_sql_timeout%'"); n != 1 {
		t.Fatalf("%d aborted outcomes recorded for the slow transaction, want 1", n)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 0 {
		t.Fatalf("the aborted transaction left %d effects", n)
	}
	waitFor(t, "the server to stop the cancelled statement", func() bool {
		return db.count("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%' AND pid <> pg_backend_pid()") == 0
	})
}

// TestSlowRawSQLCannotStarveTheFrontEnd: more raw SQL transactions than
// the front-end has connections, all stuck, take none of the front-end's
// own: template batches still run, /readyz still answers and heartbeats go
// on; once unstuck, the raw SQL transactions all commit.
func TestSlowRawSQLCannotStarveTheFrontEnd(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	const conns = 3
	fe := startFrontendWithPool(t, url, Config{ID: "fe-starve", AllowRawSQL: true, HeartbeatInterval: 100 * time.Millisecond}, conns)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { fe.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the first heartbeat", func() bool { return db.count("SELECT count(*) FROM hafe.members WHERE id = 'fe-starve'") == 1 })

	lock := holdAdvisoryLock(t, url)
	var wg sync.WaitGroup
	results := make(chan string, conns+2)
	for range conns + 2 {
		wg.Go(func() {
			resp, err := fe.doContext(context.Background(), request{path: "/v1/batches", body: batchBody(rawTxn("INSERT INTO effects (note) VALUES ('stuck')", holdLock))})
			if err != nil {
				results <- err.Error()
				return
			}
			defer resp.Body.Close()
			out, err := io.ReadAll(resp.Body)
			results <- fmt.Sprint(string(out), err)
		})
	}
	waitFor(t, "raw SQL to fill its pool", func() bool { return db.lockWaiters() == conns })

	heartbeat := func() time.Time {
		var at time.Time
		if err := db.pool.QueryRow(context.Background(), "SELECT heartbeat_at FROM hafe.members WHERE id = 'fe-starve'").Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}
	beat := heartbeat()
	// Bounded only so that a starved front-end fails the test instead of
	// hanging it; a working one answers at once.
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	for i := range conns + 1 {
		resp, err := fe.doContext(rctx, request{path: "/v1/batches", body: batchBody(`{"template":"deposit","args":{"id":5,"amount":1}}`)})
		if err != nil {
			t.Fatalf("template batch %d while raw SQL is stuck: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("template batch %d: %d", i, resp.StatusCode)
		}
		resp, err = fe.doContext(rctx, request{method: http.MethodGet, path: "/readyz"})
		if err != nil {
			t.Fatalf("/readyz while raw SQL is stuck: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("/readyz while raw SQL is stuck: %d", resp.StatusCode)
		}
	}
	waitFor(t, "a heartbeat while raw SQL is stuck", func() bool { return heartbeat().After(beat) })
	if db.lockWaiters() != conns {
		t.Fatal("the raw SQL transactions were not stuck all along")
	}
	if n := db.count("SELECT (balance * 100)::int FROM accounts WHERE id = 5"); n != 100000+100*(conns+1) {
		t.Fatalf("account 5 holds %d cents", n)
	}

	lock.release()
	wg.Wait()
	close(results)
	for out := range results {
		if !strings.Contains(out, `"status":"committed"`) {
			t.Fatalf("a raw SQL batch: %s", out)
		}
	}
	if n := db.count("SELECT count(*) FROM effects"); n != conns+2 {
		t.Fatalf("%d effects, want %d", n, conns+2)
	}
}
