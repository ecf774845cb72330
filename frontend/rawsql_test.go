package frontend

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/txn"
)

// TestRawSQLCannotReachHafesRecords: raw SQL runs under the client role,
// which PostgreSQL denies every access to schema hafe. A client that
// deletes, forges or reads outcome rows aborts its own transaction with
// insufficient_privilege, and the records stay as they were (issue 8.1).
func TestRawSQLCannotReachHafesRecords(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)

	// A victim's batch: one deposit, recorded.
	resp, out := fe.post(t, batchBody(`{"template":"deposit","args":{"id":1,"amount":1}}`), map[string]string{"Idempotency-Key": "victim"})
	if resp.StatusCode != 200 {
		t.Fatalf("victim: %d %s", resp.StatusCode, out)
	}
	victim := resp.Header.Get("Hafe-Batch-Id")
	before := db.state()

	attacks := []string{
		"DELETE FROM hafe.outcomes",
		"DELETE FROM hafe.batches",
		"UPDATE hafe.batches SET state = 'running', owner = NULL",
		"INSERT INTO hafe.outcomes (batch_id, seq, status, report, epoch, owner) VALUES ('" + victim + "', 2, 'committed', '{}', 1, 'x')",
		"SELECT count(*) FROM hafe.outcomes",
		"SELECT hafe.gc('0 seconds')",
		"SELECT hafe.claim_batch('" + victim + "', 'evil', 'run')",
		"TRUNCATE hafe.outcomes",
	}
	for _, q := range attacks {
		resp, out := fe.post(t, batchBody(rawTxn("INSERT INTO effects (note) VALUES ('attack')", q)), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", q, resp.StatusCode, out)
		}
		lines := parseLines(t, out)
		if lines[0].Status != "aborted" || lines[0].Error == nil || lines[0].Error.Code != "42501" || lines[0].Error.Statement != 2 {
			t.Fatalf("%s: want aborted with 42501 (insufficient privilege) at statement 2, got %s", q, out)
		}
	}
	after := db.state()
	// Each attack recorded its own aborted batch; nothing else changed.
	if after.Effects != 0 || after.Balances != before.Balances || after.Outcomes != before.Outcomes+len(attacks) || after.Batches != before.Batches+len(attacks) {
		t.Fatalf("the attacks wrote: %+v, before %+v", after, before)
	}
	if n := db.count("SELECT count(*) FROM hafe.outcomes WHERE batch_id = $1", victim); n != 1 {
		t.Fatalf("the victim's batch has %d outcomes, want 1", n)
	}
	// The victim's retry replays; the deposit is not made twice.
	resp, out = fe.post(t, batchBody(`{"template":"deposit","args":{"id":1,"amount":1}}`), map[string]string{"Idempotency-Key": "victim"})
	if resp.StatusCode != 200 || resp.Header.Get("Hafe-Resumed") != "true" {
		t.Fatalf("victim retry: %d %s", resp.StatusCode, out)
	}
	if n := db.count("SELECT (balance * 100)::int FROM accounts WHERE id = 1"); n != 100100 {
		t.Fatalf("account 1 holds %d cents, want 100100", n)
	}
}

// TestRawSQLCannotLeaveTheClientRole: every way to change the role back
// (SET ROLE, RESET, set_config, a DO block or a function of its own that
// would do it) is refused before anything runs.
func TestRawSQLCannotLeaveTheClientRole(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	for _, q := range []string{
		"RESET ROLE",
		"SET ROLE postgres",
		"SET LOCAL ROLE postgres",
		"set local role none",
		"SET SESSION AUTHORIZATION postgres",
		"SET LOCAL SESSION AUTHORIZATION DEFAULT",
		"RESET ALL",
		"SELECT set_config('role', 'postgres', true)",
		"SELECT pg_catalog.set_config('role', 'none', true)",
		`SELECT "set_config"('role', 'none', true)`,
		`SELECT U&"\0073et_config"('role', 'none', true)`,
		"SELECT SET_CONFIG/**/('session_authorization', 'postgres', true)",
		"SELECT set_config($1, 'none', true)",
		"DO $$ BEGIN RESET ROLE; DELETE FROM hafe.outcomes; END $$",
		"CREATE FUNCTION pg_temp.up() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RESET ROLE; END $$",
		"CREATE OR REPLACE PROCEDURE pg_temp.up() LANGUAGE sql AS $$ SELECT 1 $$",
	} {
		body := batchBody(rawTxn("INSERT INTO effects (note) VALUES ('before')"), rawTxn(q, "DELETE FROM hafe.outcomes"))
		resp, out := fe.post(t, body, nil)
		checkRefusal(t, resp, out, 422, "statement_not_allowed")
		if !strings.Contains(string(out), "transaction 2, statement 1") {
			t.Fatalf("%s: the refusal does not say which statement: %s", q, out)
		}
		db.untouched()
	}
}

// TestSessionStateDoesNotLeakToTheNextClient: session-level changes are
// refused, and whatever a client may legitimately leave behind on its
// connection (a temporary table that shadows a real one, a session
// advisory lock, local settings) is gone before the next batch runs there
// (issue 8.2). The pool has one connection so that both clients share it.
func TestSessionStateDoesNotLeakToTheNextClient(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	ctx := context.Background()
	if _, err := db.pool.Exec(ctx, `CREATE SCHEMA evil; CREATE TABLE evil.accounts (LIKE public.accounts);
		GRANT USAGE ON SCHEMA evil TO hafe_client; GRANT ALL ON evil.accounts TO hafe_client;
		INSERT INTO evil.accounts VALUES (1, 'attacker', 0)`); err != nil {
		t.Fatal(err)
	}
	fe := startFrontendWithPool(t, url, Config{ID: "fe-one-conn", AllowRawSQL: true}, 1)
	sessionOf := func() (app, idle, searchPath string) {
		t.Helper()
		resp, out := fe.post(t, batchBody(rawTxn("SELECT current_setting('application_name'), current_setting('idle_in_transaction_session_timeout'), current_setting('search_path')")), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, out)
		}
		var r struct {
			Results []struct{ Rows [][]string }
		}
		if err := json.Unmarshal([]byte(strings.SplitN(string(out), "\n", 2)[0]), &r); err != nil {
			t.Fatal(err)
		}
		row := r.Results[0].Rows[0]
		return row[0], row[1], row[2]
	}
	app, idle, path := sessionOf()

	for _, q := range []string{
		"SET search_path = evil, public",
		"set  search_path TO evil",
		"SET SESSION search_path = evil",
		"/* hi */ SET application_name = 'hafe/other/x'",
		"SET idle_in_transaction_session_timeout = 0",
		"SET TIME ZONE 'UTC'",
		"SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
		"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
		"RESET search_path",
		"DISCARD ALL",
		"LISTEN channel",
		"UNLISTEN *",
		"PREPARE p AS SELECT 1",
		"EXECUTE p",
		"DEALLOCATE ALL",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"LOAD 'plpgsql'",
		"SELECT set_config('search_path', 'evil, public', false)",
		"SELECT set_config('application_name', 'hafe/other/x', false)",
		"SET LOCAL transaction_read_only = on",
		"SET LOCAL standard_conforming_strings = off",
	} {
		resp, out := fe.post(t, batchBody(rawTxn(q)), nil)
		checkRefusal(t, resp, out, 422, "statement_not_allowed")
	}

	// Allowed, but it must not outlive the client's transaction.
	resp, out := fe.post(t, batchBody(rawTxn(
		"CREATE TEMP TABLE accounts (id integer, owner text, balance numeric)",
		"INSERT INTO accounts VALUES (1, 'shadow', 0)",
		"SELECT pg_advisory_lock(7)",
		"SET LOCAL search_path = evil, public",
		"SELECT set_config('statement_timeout', '1', true)",
	)), nil)
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"status":"committed"`) {
		t.Fatalf("allowed statements: %d %s", resp.StatusCode, out)
	}

	// The next client's templates read and write the real table.
	resp, out = fe.post(t, batchBody(`{"template":"deposit","args":{"id":1,"amount":5}}`, `{"template":"balance","args":{"id":1}}`), nil)
	if resp.StatusCode != 200 || !strings.Contains(string(out), `[1,"customer 1",1005.00]`) {
		t.Fatalf("templates after the client: %s", out)
	}
	if n := db.count("SELECT (balance * 100)::int FROM public.accounts WHERE id = 1"); n != 100500 {
		t.Fatalf("account 1 holds %d cents, want 100500", n)
	}
	if n := db.count("SELECT (balance * 100)::int FROM evil.accounts WHERE id = 1"); n != 0 {
		t.Fatalf("the attacker's table was written: %d cents", n)
	}
	// Its session is closed; the server ends it a moment later.
	waitFor(t, "the client's session advisory lock to go with its session", func() bool {
		return db.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7") == 0
	})
	if a, i, p := sessionOf(); a != app || i != idle || p != path {
		t.Fatalf("session after the clients: application_name %q, idle timeout %q, search_path %q; want %q %q %q", a, i, p, app, idle, path)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 0 {
		t.Fatalf("%d effects", n)
	}
}

// TestTransactionControlIsRefusedBeforeAnythingRuns: statements that would
// end, commit, roll back or split the slot's transaction are refused,
// however they are spelled, and the batch does not run at all (issue 8.3).
func TestTransactionControlIsRefusedBeforeAnythingRuns(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	for _, q := range []string{
		"COMMIT", "commit", "  Commit  ", "COMMIT;", "END", "END TRANSACTION", "COMMIT AND CHAIN",
		"ROLLBACK", "ABORT", "ROLLBACK TO SAVEPOINT s", "SAVEPOINT s", "RELEASE s", "RELEASE SAVEPOINT s",
		"BEGIN", "BEGIN ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION",
		"PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'", "ROLLBACK PREPARED 'x'",
		"/* lead */ COMMIT", "-- lead\nCOMMIT", "/* a /* nested */ comment */ COMMIT",
		"SELECT 1; COMMIT", "SELECT ';'; COMMIT", "SELECT $$;$$; COMMIT", "SELECT $a$ $$ $a$; COMMIT",
		"SELECT 'it''s'; ROLLBACK", `SELECT "x;"; ROLLBACK`, "SELECT E'\\';'; ROLLBACK",
		"SELECT '\\''; COMMIT; SELECT ", // a backslash escapes the quote where standard_conforming_strings is off
		"EXPLAIN ANALYZE EXECUTE p",
	} {
		body := batchBody(rawTxn("INSERT INTO effects (note) VALUES ('first')"), rawTxn("UPDATE accounts SET balance = balance + 1 WHERE id = 1", q))
		resp, out := fe.post(t, body, nil)
		checkRefusal(t, resp, out, 422, "statement_not_allowed")
		db.untouched()
	}
	// Look-alikes run.
	resp, out := fe.post(t, batchBody(rawTxn(
		"SELECT 'COMMIT' AS c -- ROLLBACK",
		"/* BEGIN */ SELECT $$ROLLBACK$$, \"commit\".x FROM (SELECT 1 AS x) AS \"commit\"",
		"SET LOCAL lock_timeout = '5s'",
		"SET CONSTRAINTS ALL DEFERRED",
		"INSERT INTO effects (note) VALUES ('set_config')",
		"SELECT set_config('myapp.user', 'alice', true), current_setting('myapp.user')",
	)), nil)
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"status":"committed"`) {
		t.Fatalf("look-alikes: %d %s", resp.StatusCode, out)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 1 {
		t.Fatalf("%d effects, want 1", n)
	}
}

// TestProcedureThatCommitsIsStoppedByPostgreSQL: a procedure may contain
// COMMIT, but called inside the slot's transaction block PostgreSQL refuses
// it (invalid_transaction_termination); the slot aborts, nothing of it is
// kept, and it is recorded once.
func TestProcedureThatCommitsIsStoppedByPostgreSQL(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	ctx := context.Background()
	if _, err := db.pool.Exec(ctx, `CREATE PROCEDURE commit_twice(note text) LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO effects (note) VALUES (note);
			COMMIT;
			INSERT INTO effects (note) VALUES (note);
			ROLLBACK;
		END $$;
		GRANT EXECUTE ON PROCEDURE commit_twice(text) TO hafe_client`); err != nil {
		t.Fatal(err)
	}
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	resp, out := fe.post(t, batchBody(rawTxn("INSERT INTO effects (note) VALUES ('before')", "CALL commit_twice('inside')"), rawTxn("INSERT INTO effects (note) VALUES ('next')")), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	lines := parseLines(t, out)
	if lines[0].Status != "aborted" || lines[0].Error == nil || lines[0].Error.Code != "2D000" || lines[0].Error.Statement != 2 {
		t.Fatalf("want the CALL aborted with 2D000 (invalid transaction termination): %s", out)
	}
	if lines[1].Status != "committed" || !lines[2].Done {
		t.Fatalf("the batch did not go on: %s", out)
	}
	if n := db.count("SELECT count(*) FROM effects WHERE note <> 'next'"); n != 0 {
		t.Fatalf("the aborted slot left %d effects", n)
	}
	if n := db.count("SELECT count(*) FROM hafe.outcomes WHERE seq = 1 AND status = 'aborted'"); n != 1 {
		t.Fatalf("%d aborted outcomes for slot 1, want 1", n)
	}
}

// startFrontendWithPool is startFrontend with pools of at most conns
// connections (its own, and raw SQL's), so that tests can make batches
// share a session if the front-end reused them.
func startFrontendWithPool(t testing.TB, url string, cfg Config, conns int32) *frontendUnderTest {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = conns
	backendext.ConfigurePool(pcfg, cfg.ID, "", time.Minute)
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if cfg.ControlPool == nil {
		cfg.ControlPool = controlPool(t, url, cfg.ID)
	}
	if cfg.AllowRawSQL && cfg.Executor.RawSQL.Pool == nil {
		timeout := cfg.Executor.RawSQL.Timeout
		cfg.Executor.RawSQL = rawSQLFor(t, pool, cfg.ID, conns)
		cfg.Executor.RawSQL.Timeout = timeout
	}
	return startFrontendOn(t, pool, cfg)
}

// TestClientStatementTimeoutAbortsOnlyItsTransaction: a client's own
// SET LOCAL statement_timeout cancels its statement (57014); that is the
// transaction's fault, recorded and reported as its abort, not a lost
// database to wait for until --settle-timeout.
func TestClientStatementTimeoutAbortsOnlyItsTransaction(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true, Executor: txn.Config{SettleTimeout: 3 * time.Second}}, false)
	body := batchBody(
		rawTxn("INSERT INTO effects (note) VALUES ('timed out')", "SET LOCAL statement_timeout = '1ms'", "SELECT pg_sleep(1)"),
		rawTxn("INSERT INTO effects (note) VALUES ('next')"),
	)
	resp, out := fe.post(t, body, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	ls := parseLines(t, out)
	if len(ls) != 3 || ls[0].Status != "aborted" || ls[0].Error == nil || ls[0].Error.Code != "57014" || ls[0].Error.Statement != 3 ||
		ls[1].Status != "committed" || !ls[2].Done || ls[2].Aborted != 1 {
		t.Fatalf("stream:\n%s", out)
	}
	if n := db.count("SELECT count(*) FROM hafe.outcomes WHERE seq = 1 AND status = 'aborted'"); n != 1 {
		t.Fatalf("%d aborted outcomes for slot 1", n)
	}
	if n := db.count("SELECT count(*) FROM effects WHERE note = 'timed out'"); n != 0 {
		t.Fatal("the timed-out transaction's insert was kept")
	}
	if n := db.count("SELECT count(*) FROM effects WHERE note = 'next'"); n != 1 {
		t.Fatalf("the next transaction ran %d times", n)
	}
}
