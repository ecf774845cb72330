package rawsql

import "testing"

func TestCheckRefuses(t *testing.T) {
	for _, q := range []string{
		// Transaction control, however spelled.
		"COMMIT", "commit;", " \n\tCoMmIt", "END", "ABORT", "ROLLBACK TO s", "SAVEPOINT s", "RELEASE s",
		"BEGIN", "START TRANSACTION", "PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'",
		"/**/COMMIT", "/* /* nested */ still comment */ COMMIT", "-- c\nCOMMIT", "-- c\rCOMMIT",
		"SELECT 1;COMMIT", "SELECT ';' ; COMMIT", "SELECT $$;$$; COMMIT", "SELECT $a$ $$ ; $a$; COMMIT",
		"SELECT \"a;\"; COMMIT", "SELECT E'\\';'; COMMIT", "SELECT '\\''; COMMIT; SELECT ''''",
		"SELECT U&'\\0027'; COMMIT", "SELECT x$y$ FROM t; COMMIT; SELECT $y$ $y$",
		"SELECT 1+--x\n1; COMMIT", "SELECT 1 */* c */; COMMIT",
		// Session state.
		"SET search_path = x", "SET SESSION search_path = x", "SET TIME ZONE 'UTC'", "SET ROLE x",
		"SET TRANSACTION READ ONLY", "SET SESSION AUTHORIZATION x", "RESET ALL", "RESET role",
		"DISCARD ALL", "LISTEN c", "UNLISTEN *", "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p",
		"LOAD 'x'", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "EXPLAIN ANALYZE EXECUTE p",
		"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE p",
		"SET LOCAL ROLE x", "ALTER ROLE CURRENT_USER SET search_path = evil", "alter user current_user password 'x'", "ALTER GROUP g ADD USER u", `SET LOCAL "role" = x`, "SET LOCAL SESSION AUTHORIZATION x",
		"SET LOCAL TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET LOCAL transaction_read_only = on",
		"SET LOCAL standard_conforming_strings = off",
		// Leaving the role.
		"SELECT set_config('role', 'x', true)", "SELECT set_config('ROLE', 'x', true)",
		"SELECT set_config('search_path', 'x', false)", "SELECT set_config('a', 'x', $1)",
		"SELECT set_config($1, 'x', true)", "SELECT set_config(E'role', 'x', true)",
		"SELECT set_config('ro' || 'le', 'x', true)", `SELECT "set_config"('role', 'x', true)`,
		`SELECT U&"\0073et_config"('role', 'x', true)`, `SELECT U&"!0073et_config" UESCAPE '!' ('role', 'x', true)`,
		"SELECT pg_catalog . set_config ('role','x',true)", "SELECT set_config", "SELECT f(set_config('role', 'x', true))",
		"SELECT set_config('a', set_config('role', 'x', true), true)",
		"UPDATE pg_settings SET setting = 'x' WHERE name = 'role'", `UPDATE "pg_settings" SET setting = 'x'`,
		"DO $$ BEGIN RESET ROLE; END $$", "do 'BEGIN NULL; END'",
		"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS ''",
		"COPY t FROM STDIN", "COPY (SELECT 1) TO STDOUT",
		// Unreadable.
		"SELECT 'unterminated", "SELECT /* unterminated",
	} {
		if Check(q) == nil {
			t.Errorf("%q was allowed", q)
		}
	}
}

func TestCheckAllows(t *testing.T) {
	for _, q := range []string{
		"SELECT 1", "SELECT 'COMMIT'", "SELECT 1 -- COMMIT", "/* ROLLBACK */ SELECT 1", "SELECT $$BEGIN$$",
		`SELECT "commit" FROM t`, "INSERT INTO t (note) VALUES ('set_config')", "SELECT 'a\\d'",
		"SET LOCAL search_path = a, public", "SET LOCAL lock_timeout = '1s'", "SET CONSTRAINTS ALL DEFERRED",
		"SET LOCAL myapp.user = 'x'", "SELECT set_config('myapp.user', $1, true)",
		"SELECT set_config('search_path', 'a, ' || current_setting('search_path'), true)",
		"CALL p(1)", "CREATE TEMP TABLE x (a int) ON COMMIT DROP", "DECLARE c CURSOR FOR SELECT 1",
		"EXPLAIN ANALYZE SELECT 1", "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
		"NOTIFY c", "SELECT 1;", "CREATE TABLE x (a int)", "CREATE VIEW v AS SELECT 1",
		"SELECT e'\\n'", "SELECT b'101', x'ff', n'national'", "SELECT U&'d\\0061t\\+000061'",
	} {
		if err := Check(q); err != nil {
			t.Errorf("%q was refused: %v", q, err)
		}
	}
}

// FuzzCheckNeverLetsACommitThrough: whatever comes first, a COMMIT after
// a semicolon, each on a line of its own, is a statement of its own in
// every reading the server could make (a newline ends a -- comment;
// anything left open makes the text unreadable), so Check must refuse it.
func FuzzCheckNeverLetsACommitThrough(f *testing.F) {
	for _, seed := range []string{"SELECT 1", "SELECT 'a", "SELECT $$", "/* a /* b */", "SELECT E'\\'", `SELECT "x`,
		"SELECT U&\"\\0041\" UESCAPE '!'", "SELECT $a$ $b$ $a$", "-- c", "SELECT x$y$", "SELECT '\\''"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, q string) {
		Check(q)
		if Check(q+"\n;\nCOMMIT") == nil {
			t.Fatalf("%q followed by COMMIT was allowed", q)
		}
	})
}
