package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/test/checker"
	"hafe.dev/hafe/test/harness"
)

// The failover workload: failoverSlots raw-SQL transactions, each recording
// its slot in runs, moving failoverAmount between two accounts and sleeping
// a little so that a fault lands mid-batch; every failoverAbortEvery-th one
// then divides by zero and aborts, so that aborted outcomes fail over too.
// The slot after failoverFaultAfter is slow (see slowPoint): the client
// injects the fault once it has read failoverFaultAfter lines and seen
// that slot sleep at PostgreSQL (waitSlowSlot), so the fault lands while
// that slot's transaction is open.
const (
	failoverSlots      = 60
	failoverFaultAfter = failoverSlots / 3 // lines the client reads before the fault
	failoverSlowSlot   = failoverFaultAfter + 1
	failoverAmount     = 5
	failoverAbortEvery = 10
	failoverSlowSleep  = "2"         // seconds
	failoverTotal      = "100000.00" // sum of the demo schema's balances
)

// slowPoint is where the slow slot spends its pause, so where in a slot's
// life the fault lands.
type slowPoint int

const (
	// slowStatement: a statement sleeps; the fault finds the slot's
	// transaction open and its outcome not yet written.
	slowStatement slowPoint = iota
	// slowCommit: a deferred trigger sleeps inside COMMIT; the fault finds
	// the outcome written and the commit in flight, so the front-end cannot
	// know whether it committed.
	slowCommit
	// slowLongStatement: a statement sleeps failoverLongSleep, longer
	// than a front-end waits to release a lease.
	slowLongStatement
)

const failoverLongSleep = "10" // seconds

var slowPoints = []struct {
	name string
	at   slowPoint
}{
	{"in_statement", slowStatement},
	{"in_commit", slowCommit},
}

// frontEndFlags make takeovers quick: an owner is gone 1s after its last
// heartbeat, and a stuck owner's session is terminated after 1s. A session
// idle in a transaction is ended after 5s (default 30s): a stuck owner's
// slot transaction that has not written its outcome yet is not fenced (see
// TestKnownBugStuckSlotTransactionIsNotFenced) and holds its rows until then.
// The test database's front-ends run as its superuser, hence
// --allow-superuser; raw SQL logs in as the client role (clientPassword,
// see failoverSchema), which that never excuses.
var frontEndFlags = []string{"--allow-raw-sql", "--allow-superuser", "--heartbeat", "200ms", "--owner-liveness", "1s", "--fence-grace", "1s",
	"--idle-in-transaction-timeout", "5s"}

// failoverCluster is PostgreSQL with hafe and the demo schema installed,
// plus front-ends fe1, fe2, … on one Docker network, and the workload.
type failoverCluster struct {
	pg   *harness.Postgres
	fes  []*harness.Hafe
	body []byte // the batch request
}

// failoverSchema is the workload's own tables: runs counts each slot's
// committed executions (tag tells concurrent batches apart); a slot listed in slow_commits sleeps in its COMMIT
// (a deferred constraint trigger on runs).
const failoverSchema = `
CREATE TABLE runs (slot integer NOT NULL, tag text NOT NULL DEFAULT '');
CREATE TABLE slow_commits (slot integer PRIMARY KEY);
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM slow_commits WHERE slot = NEW.slot) THEN
		PERFORM pg_sleep(` + failoverSlowSleep + `);
	END IF;
	RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER runs_slow_commit AFTER INSERT ON runs
	DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
-- The workload is raw SQL, which logs in as the client role (hafe db
-- install made it NOLOGIN; an operator gives it a password).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO hafe_client;
ALTER ROLE hafe_client LOGIN PASSWORD '` + clientPassword + `';
`

// clientPassword is the client role's in the failover tests.
const clientPassword = "hafe-client-test"

// startFailoverCluster starts PostgreSQL and frontEnds front-ends with
// frontEndFlags and extra.
func startFailoverCluster(t *testing.T, frontEnds int, slow slowPoint, extra ...string) *failoverCluster {
	t.Helper()
	nw, pg := startFailoverDB(t, slow)
	fes := harness.StartHafes(t, nw, frontEnds, func(i int) harness.HafeConfig {
		id := fmt.Sprintf("fe%d", i+1)
		flags := append(slices.Clone(frontEndFlags), "--raw-sql-db", pg.NetworkURLFor("hafe_client", clientPassword))
		return harness.HafeConfig{Alias: id, Args: harness.ServeArgs(pg.NetworkURL, id, append(flags, extra...)...)}
	})
	return &failoverCluster{pg: pg, fes: fes, body: failoverBatch(failoverSlots, slow, "")}
}

// startFailoverDB starts PostgreSQL on a new network with hafe, the demo
// schema and the workload's tables installed.
func startFailoverDB(t *testing.T, slow slowPoint) (*harness.Network, *harness.Postgres) {
	t.Helper()
	harness.RequireDocker(t)
	nw := harness.NewNetwork(t)
	pg := harness.StartPostgres(t, nw, harness.PostgresConfig{})
	if code, out := harness.RunHafe(t, nw, time.Minute, "db", "install", "--db", pg.NetworkURL); code != 0 {
		t.Fatalf("hafe db install: exit %d: %s", code, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	db := connect(ctx, t, pg)
	defer db.Close(context.Background())
	schema := []string{hafesql.DemoSchema(), failoverSchema}
	if slow == slowCommit {
		schema = append(schema, fmt.Sprintf(`INSERT INTO slow_commits VALUES (%d)`, failoverSlowSlot))
	}
	for _, q := range schema {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatalf("schema: %v", err)
		}
	}
	return nw, pg
}

// waitSlowSlot waits until a session of front-end id sleeps in the slow
// slot (in its statement or its COMMIT, not in the short sleep every slot
// killMidBatch starts the batch on fe, reads a third of it, waits until fe
// is inside the slow slot's transaction, docker-kills fe and returns the
// stream, checked to have been cut off.
func (c *failoverCluster) killMidBatch(ctx context.Context, t *testing.T, fe *harness.Hafe, key string, body []byte) *capture {
	t.Helper()
	name := fe.Config.Alias
	first := mustStartBatch(ctx, t, fe, key, body)
	if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
		t.Fatalf("%s stream before the kill: %v", name, err)
	}
	c.waitSlowSlot(ctx, t, name)
	if err := fe.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := first.waitEnd(ctx, 30*time.Second); err != nil {
		t.Fatalf("%s's stream did not end after the kill: %v", name, err)
	}
	requireCutOff(t, name, first)
	return first
}

// has), so that the fault the caller injects next lands there.
func (c *failoverCluster) waitSlowSlot(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	for range 500 { // 10s
		var query string
		err := db.QueryRow(ctx, `SELECT coalesce(min(query), '') FROM pg_stat_activity
			WHERE application_name LIKE $1 AND wait_event = 'PgSleep' AND query NOT LIKE '%pg_sleep(0.05)%'`,
			"hafe/"+id+"/%").Scan(&query)
		if err != nil {
			t.Fatalf("watch %s's sessions: %v", id, err)
		}
		if query != "" {
			t.Logf("%s is in the slow slot: %q", id, query)
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s never slept in the slow slot", id)
}

// dumpLogs logs every front-end's output when HAFE_TEST_LOGS is set.
func (c *failoverCluster) dumpLogs(ctx context.Context, t *testing.T) {
	if os.Getenv("HAFE_TEST_LOGS") == "" {
		return
	}
	for _, fe := range c.fes {
		logs, _ := fe.Logs(ctx)
		t.Logf("---- %s ----\n%s", fe.Alias, logs)
	}
}

// slotOwner says who recorded slot seq's outcome, and how.
func (c *failoverCluster) slotOwner(ctx context.Context, t *testing.T, batchID string, seq int) string {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	var status, owner string
	var epoch int64
	err := db.QueryRow(ctx, `SELECT status, owner, epoch FROM hafe.outcomes WHERE batch_id = $1 AND seq = $2`, batchID, seq).Scan(&status, &owner, &epoch)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%s by %s at epoch %d", status, owner, epoch)
}

// postmasterStart is when the PostgreSQL server last started.
func (c *failoverCluster) postmasterStart(ctx context.Context, t *testing.T) time.Time {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	var at time.Time
	if err := db.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&at); err != nil {
		t.Fatal(err)
	}
	return at
}

// logLines are the lines of the container's output that mention any of
// words, for showing what a front-end did.
func logLines(ctx context.Context, h *harness.Hafe, words ...string) []string {
	logs, err := h.Logs(ctx)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, strings.TrimSpace(l))
				break
			}
		}
	}
	return out
}

// connect opens a connection from the test process; the caller closes it.
// A fresh one per use, as PostgreSQL may have restarted since the last.
func connect(ctx context.Context, t *testing.T, pg *harness.Postgres) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatalf("connect to %s: %v", pg.URL, err)
	}
	return conn
}

// check runs the checker on the batch's rows and streams, then checks the
// money: each account's balance is what the committed slots' transfers
// make of 1000.00, once each.
func (c *failoverCluster) check(ctx context.Context, t *testing.T, batchID string, streams [][]byte) {
	t.Helper()
	c.checkBatches(ctx, t, checkedBatch{id: batchID, streams: streams})
}

// checkedBatch is one batch of the workload, with its tag in runs and every
// stream a client received for it.
type checkedBatch struct {
	id, tag string
	streams [][]byte
	// accounts are the accounts each slot moves money between; default
	// failoverAccounts.
	accounts func(seq int) (from, to int)
}

// checkBatches checks each batch as check does, and the money across all of
// them.
func (c *failoverCluster) checkBatches(ctx context.Context, t *testing.T, batches ...checkedBatch) {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	want := map[int]int{}
	committed := 0
	for _, b := range batches {
		vs, err := checker.Check(ctx, db, b.id, b.streams, checker.Options{
			EffectQuery: `SELECT slot FROM runs WHERE tag = $1`, EffectArgs: []any{b.tag},
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			t.Errorf("batch %s: %s", b.id, v)
		}
		if len(vs) > 0 {
			for i, s := range b.streams {
				t.Logf("stream %d (%d bytes):\n%s", i, len(s), s)
			}
		}
		rows, err := db.Query(ctx, `SELECT seq FROM hafe.outcomes WHERE batch_id = $1 AND status = 'committed'`, b.id)
		if err != nil {
			t.Fatal(err)
		}
		seqs, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			t.Fatal(err)
		}
		accounts := b.accounts
		if accounts == nil {
			accounts = failoverAccounts
		}
		for _, seq := range seqs {
			from, to := accounts(int(seq))
			want[from] -= failoverAmount
			want[to] += failoverAmount
		}
		committed += len(seqs)
		t.Logf("batch %s: %d streams, %d committed slots, checker: %d violations", b.id, len(b.streams), len(seqs), len(vs))
	}

	var total string
	if err := db.QueryRow(ctx, `SELECT sum(balance)::text FROM accounts`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != failoverTotal {
		t.Errorf("sum of balances %s, want %s", total, failoverTotal)
	}
	got := map[int]int{}
	rows, err := db.Query(ctx, `SELECT id, (balance - 1000)::int FROM accounts WHERE balance <> 1000 ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var id, delta int
	if _, err := pgx.ForEachRow(rows, []any{&id, &delta}, func() error { got[id] = delta; return nil }); err != nil {
		t.Fatal(err)
	}
	for acct := 1; acct <= 100; acct++ {
		if got[acct] != want[acct] {
			t.Errorf("account %d moved %+d, want %+d from the %d committed transfers", acct, got[acct], want[acct], committed)
		}
	}
}

// batchRows is what the database holds about a batch, to compare before
// and after a fenced front-end comes back.
type batchRows struct {
	outcomes []string // "seq status owner epoch"
	runs     int
	byOwner  map[string]int
	state    string
	epoch    int64
}

func (c *failoverCluster) rows(ctx context.Context, t *testing.T, batchID string) batchRows {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	r := batchRows{byOwner: map[string]int{}}
	rows, err := db.Query(ctx, `SELECT seq, status, owner, epoch FROM hafe.outcomes WHERE batch_id = $1 ORDER BY seq`, batchID)
	if err != nil {
		t.Fatal(err)
	}
	var (
		seq           int
		status, owner string
		epoch         int64
	)
	_, err = pgx.ForEachRow(rows, []any{&seq, &status, &owner, &epoch}, func() error {
		r.outcomes = append(r.outcomes, fmt.Sprintf("%d %s %s %d", seq, status, owner, epoch))
		r.byOwner[owner]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(ctx, `SELECT count(*) FROM runs`).Scan(&r.runs); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(ctx, `SELECT state, epoch FROM hafe.batches WHERE batch_id = $1`, batchID).Scan(&r.state, &r.epoch); err != nil {
		t.Fatal(err)
	}
	return r
}

// owner is the batch's current owner ("" when none).
func (c *failoverCluster) owner(ctx context.Context, t *testing.T, batchID string) string {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	var owner string
	if err := db.QueryRow(ctx, `SELECT coalesce(owner, '') FROM hafe.batches WHERE batch_id = $1`, batchID).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	return owner
}

func (r batchRows) equal(o batchRows) bool {
	if r.runs != o.runs || r.state != o.state || r.epoch != o.epoch || len(r.outcomes) != len(o.outcomes) {
		return false
	}
	for i := range r.outcomes {
		if r.outcomes[i] != o.outcomes[i] {
			return false
		}
	}
	return true
}

func (r batchRows) String() string {
	return fmt.Sprintf("state %s epoch %d, %d runs, %d outcomes %v", r.state, r.epoch, r.runs, len(r.outcomes), r.byOwner)
}

// failoverAccounts are the accounts slot seq moves money between.
func failoverAccounts(seq int) (from, to int) {
	from = seq%100 + 1
	to = (seq*7+3)%100 + 1
	if to == from {
		to = to%100 + 1
	}
	return from, to
}

// failoverBatch is the request body of the failover workload; its runs rows
// carry tag.
func failoverBatch(n int, slow slowPoint, tag string) []byte {
	return failoverBatchOn(n, slow, tag, failoverAccounts)
}

// failoverBatchOn is failoverBatch moving money between the accounts
// accounts gives each slot.
func failoverBatchOn(n int, slow slowPoint, tag string, accounts func(seq int) (from, to int)) []byte {
	type stmt struct {
		Query string `json:"query"`
		Args  []any  `json:"args,omitempty"`
	}
	type tx struct {
		SQL []stmt `json:"sql"`
	}
	var req struct {
		Transactions []tx `json:"transactions"`
	}
	for seq := 1; seq <= n; seq++ {
		from, to := accounts(seq)
		t := tx{SQL: []stmt{
			{Query: `INSERT INTO runs (slot) VALUES ($1)`, Args: []any{seq}},
			{Query: `UPDATE accounts SET balance = balance - $1 WHERE id = $2 RETURNING id, balance`, Args: []any{failoverAmount, from}},
			{Query: `UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING id, balance`, Args: []any{failoverAmount, to}},
			{Query: `SELECT pg_sleep(0.05)`},
		}}
		if tag != "" {
			t.SQL[0] = stmt{Query: `INSERT INTO runs (slot, tag) VALUES ($1, $2)`, Args: []any{seq, tag}}
		}
		if seq == failoverSlowSlot && slow == slowStatement {
			t.SQL[3].Query = `SELECT pg_sleep(` + failoverSlowSleep + `)`
		}
		if seq == failoverSlowSlot && slow == slowLongStatement {
			t.SQL[3].Query = `SELECT pg_sleep(` + failoverLongSleep + `)`
		}
		if seq%failoverAbortEvery == 0 {
			t.SQL = append(t.SQL, stmt{Query: `SELECT 1/0`})
		}
		req.Transactions = append(req.Transactions, t)
	}
	b, err := json.Marshal(req)
	if err != nil {
		panic(err)
	}
	return b
}
