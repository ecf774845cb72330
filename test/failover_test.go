package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
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
// injects the fault once it has read failoverFaultAfter lines, so the fault
// lands while that slot's transaction holds the batch's lease.
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
var frontEndFlags = []string{"--allow-raw-sql", "--heartbeat", "200ms", "--owner-liveness", "1s", "--fence-grace", "1s",
	"--idle-in-transaction-timeout", "5s"}

// TestFailoverKilledFrontEnd: fe1 is killed (docker kill) a third into a
// batch; the client retries with the same Idempotency-Key on fe2, which
// resumes the batch. Every slot commits at most once, everything fe1
// reported is durable, and the two streams agree byte for byte.
func TestFailoverKilledFrontEnd(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			c := startFailoverCluster(t, 2, sp.at)
			fe1, fe2 := c.fes[0], c.fes[1]
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			const key = "failover-kill"

			first := mustStartBatch(ctx, t, fe1, key, c.body)
			if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
				t.Fatalf("fe1 stream before the kill: %v", err)
			}
			c.waitSlowSlot(ctx, t, "fe1")
			if err := fe1.Kill(ctx); err != nil {
				t.Fatal(err)
			}
			if err := first.waitEnd(ctx, 30*time.Second); err != nil {
				t.Fatalf("fe1's stream did not end after the kill: %v", err)
			}
			requireCutOff(t, "fe1", first)

			retries := submitUntilDone(ctx, t, fe2, key, c.body)
			streams := append([][]byte{first.bytes()}, streamBytes(retries)...)
			batchID := sameBatch(t, first, retries)
			c.check(ctx, t, batchID, streams)
			t.Logf("slot %d: %s", failoverSlowSlot, c.slotOwner(ctx, t, batchID, failoverSlowSlot))
		})
	}
}

// TestFailoverCutOffFrontEndIsFenced: fe1 is cut off the Docker network a
// third into a batch, so its database session stalls inside a slot
// transaction holding the batch's lease. The retry on fe2 takes the batch
// over (fencing fe1's session after --fence-grace) and finishes it. When
// fe1 comes back it must not commit anything more for the batch (G4), and a
// replay of the finished batch from fe1 carries the same bytes.
func TestFailoverCutOffFrontEndIsFenced(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			testStuckFrontEndIsFenced(t, sp.at, "cut off", (*harness.Hafe).Disconnect, (*harness.Hafe).Reconnect)
		})
	}
}

// TestFailoverPausedFrontEndIsFenced: as the cut-off test, but fe1 is
// frozen (docker pause) instead: its connections stay up and nothing
// answers, like a stuck machine or a long GC pause.
func TestFailoverPausedFrontEndIsFenced(t *testing.T) {
	for _, sp := range slowPoints {
		t.Run(sp.name, func(t *testing.T) {
			testStuckFrontEndIsFenced(t, sp.at, "paused", (*harness.Hafe).Pause, (*harness.Hafe).Unpause)
		})
	}
}

// testStuckFrontEndIsFenced stops fe1 with stop a third into the batch,
// finishes the batch on fe2, then lets fe1 go on with resume and checks it
// changes nothing.
func testStuckFrontEndIsFenced(t *testing.T, slow slowPoint, how string, stop, resume func(*harness.Hafe, context.Context) error) {
	c := startFailoverCluster(t, 2, slow)
	fe1, fe2 := c.fes[0], c.fes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const key = "failover-stuck"

	first := mustStartBatch(ctx, t, fe1, key, c.body)
	if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
		t.Fatalf("fe1 stream before it was %s: %v", how, err)
	}
	c.waitSlowSlot(ctx, t, "fe1")
	if err := stop(fe1, ctx); err != nil {
		t.Fatal(err)
	}
	stoppedAt := first.lineCount()

	retries := submitUntilDone(ctx, t, fe2, key, c.body)
	batchID := sameBatch(t, first, retries)
	// fe1's stream is still open and stalled: whatever it delivered so far
	// must fit.
	c.check(ctx, t, batchID, append([][]byte{first.bytes()}, streamBytes(retries)...))
	before := c.rows(ctx, t, batchID)
	for _, l := range logLines(ctx, fe2, "taken over", "terminated previous owner") {
		t.Logf("fe2: %s", l)
	}
	t.Logf("fe1 delivered %d lines (%d when %s); fe2 finished the batch; fe1 wrote %d outcomes, fe2 %d; slot %d: %s",
		first.lineCount(), stoppedAt, how, before.byOwner["fe1"], before.byOwner["fe2"],
		failoverSlowSlot, c.slotOwner(ctx, t, batchID, failoverSlowSlot))

	if err := resume(fe1, ctx); err != nil {
		t.Fatal(err)
	}
	// fe1 finds out it was fenced once its dead session answers again; give
	// it a bounded while, then hang up on it, which cancels its request
	// either way.
	if err := first.waitEnd(ctx, 45*time.Second); err != nil {
		t.Logf("fe1's stream still open %s after it was back (%v); closing it", 45*time.Second, err)
		first.close()
	}
	t.Logf("fe1's first stream ended after %d lines: %q", first.lineCount(), lastLine(first.bytes()))
	if hasDone(first.bytes()) {
		t.Errorf("fe1 reported the batch done after it was fenced")
	}

	// fe1 is back with a fresh heartbeat: asking it for the batch again
	// replays the finished batch from the database.
	replay := submitUntilDone(ctx, t, fe1, key, c.body)
	after := c.rows(ctx, t, batchID)
	if !after.equal(before) {
		t.Errorf("G4: the batch's rows changed after fe1 came back:\nbefore %s\nafter  %s", before, after)
	}
	streams := append([][]byte{first.bytes()}, streamBytes(retries)...)
	streams = append(streams, streamBytes(replay)...)
	c.check(ctx, t, batchID, streams)
	c.dumpLogs(ctx, t)
}

// TestFailoverPostgresRestart: PostgreSQL restarts a third into a batch run
// by a single front-end, killed (crash recovery) or stopped (fast
// shutdown), while the slow slot is in a statement or in its COMMIT. The
// front-end settles the slot by looking up its outcome and goes on, or the
// client retries with the same key; either way each slot commits once and
// the streams agree.
func TestFailoverPostgresRestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace time.Duration
	}{
		{"killed", 0},
		{"stopped", 10 * time.Second},
	} {
		for _, sp := range slowPoints {
			t.Run(tc.name+"_"+sp.name, func(t *testing.T) {
				c := startFailoverCluster(t, 1, sp.at)
				fe := c.fes[0]
				ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
				defer cancel()
				key := "failover-pg-" + tc.name

				first := mustStartBatch(ctx, t, fe, key, c.body)
				if err := first.waitLines(ctx, failoverFaultAfter); err != nil {
					t.Fatalf("stream before the restart: %v", err)
				}
				c.waitSlowSlot(ctx, t, "fe1")
				started := c.postmasterStart(ctx, t)
				start := time.Now()
				if err := c.pg.Restart(ctx, tc.grace); err != nil {
					t.Fatal(err)
				}
				t.Logf("postgres back after %s", time.Since(start).Round(time.Millisecond))
				if again := c.postmasterStart(ctx, t); !again.After(started) {
					t.Fatalf("postgres did not restart: started at %s, then at %s", started, again)
				}
				if err := first.waitEnd(ctx, 90*time.Second); err != nil {
					t.Fatalf("the stream neither finished nor ended after the restart: %v", err)
				}
				streams := [][]byte{first.bytes()}
				batchID := first.batchID
				if !hasDone(first.bytes()) {
					t.Logf("the front-end interrupted the batch (%q); retrying with the key", lastLine(first.bytes()))
					retries := submitUntilDone(ctx, t, fe, key, c.body)
					batchID = sameBatch(t, first, retries)
					streams = append(streams, streamBytes(retries)...)
				}
				c.check(ctx, t, batchID, streams)
				t.Logf("slot %d: %s", failoverSlowSlot, c.slotOwner(ctx, t, batchID, failoverSlowSlot))
				for _, l := range logLines(ctx, fe, "lost the database", "interrupted") {
					t.Logf("fe1: %s", l)
				}
			})
		}
	}
}

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
`

// startFailoverCluster starts PostgreSQL and frontEnds front-ends with
// frontEndFlags and extra.
func startFailoverCluster(t *testing.T, frontEnds int, slow slowPoint, extra ...string) *failoverCluster {
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
	fes := harness.StartHafes(t, nw, frontEnds, func(i int) harness.HafeConfig {
		id := fmt.Sprintf("fe%d", i+1)
		return harness.HafeConfig{Alias: id, Args: harness.ServeArgs(pg.NetworkURL, id, append(slices.Clone(frontEndFlags), extra...)...)}
	})
	return &failoverCluster{pg: pg, fes: fes, body: failoverBatch(failoverSlots, slow, "")}
}

// waitSlowSlot waits until a session of front-end id sleeps in the slow
// slot (in its statement or its COMMIT, not in the short sleep every slot
// has), so that the fault the caller injects next lands there.
func (c *failoverCluster) waitSlowSlot(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	for range 500 { // 10s
		var query string
		err := db.QueryRow(ctx, `SELECT coalesce(min(query), '') FROM pg_stat_activity
			WHERE application_name = $1 AND wait_event = 'PgSleep' AND query NOT LIKE '%pg_sleep(0.05)%'`,
			"hafe/"+id).Scan(&query)
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
		for _, seq := range seqs {
			from, to := failoverAccounts(int(seq))
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
		from, to := failoverAccounts(seq)
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

// capture is one POST's response as the client received it, read in the
// background: every byte, cut off or not.
type capture struct {
	status   int
	batchID  string
	frontEnd string
	resumed  bool

	cancel context.CancelFunc
	notify chan struct{} // a line arrived or the stream ended
	ended  chan struct{}

	start time.Time

	mu    sync.Mutex
	end   time.Time
	buf   []byte
	lines int
	err   error // why reading stopped (io.EOF at a clean end)
}

// failoverClient opens a new connection per request: none outlives the
// front-end it was made to.
var failoverClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// startBatch POSTs the batch and, on 200, starts reading the stream. Other
// statuses come back with the error body read and the capture ended.
func startBatch(ctx context.Context, fe *harness.Hafe, key string, body []byte) (*capture, error) {
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, fe.URL+"/v1/batches", bytes.NewReader(body))
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	start := time.Now()
	resp, err := failoverClient.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	c := &capture{
		status:   resp.StatusCode,
		batchID:  resp.Header.Get("Hafe-Batch-Id"),
		frontEnd: resp.Header.Get("Hafe-Front-End"),
		resumed:  resp.Header.Get("Hafe-Resumed") == "true",
		start:    start,
		cancel:   cancel,
		notify:   make(chan struct{}, 1),
		ended:    make(chan struct{}),
	}
	if resp.StatusCode != http.StatusOK {
		c.buf, c.err = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		close(c.ended)
		return c, nil
	}
	go c.read(resp.Body)
	return c, nil
}

func mustStartBatch(ctx context.Context, t *testing.T, fe *harness.Hafe, key string, body []byte) *capture {
	t.Helper()
	c, err := startBatch(ctx, fe, key, body)
	if err != nil {
		t.Fatalf("POST to %s: %v", fe.Alias, err)
	}
	t.Cleanup(c.close)
	if c.status != http.StatusOK {
		t.Fatalf("POST to %s: %d %s", fe.Alias, c.status, c.buf)
	}
	return c
}

func (c *capture) read(body io.ReadCloser) {
	defer close(c.ended)
	defer body.Close()
	r := bufio.NewReader(body)
	for {
		chunk, err := r.ReadBytes('\n')
		c.mu.Lock()
		c.buf = append(c.buf, chunk...)
		if len(chunk) > 0 && chunk[len(chunk)-1] == '\n' {
			c.lines++
		}
		if err != nil {
			c.err, c.end = err, time.Now()
		}
		c.mu.Unlock()
		select {
		case c.notify <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// waitLines waits until the stream has n complete lines.
func (c *capture) waitLines(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		lines, err := c.lines, c.err
		c.mu.Unlock()
		if lines >= n {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stream ended after %d lines: %w: %q", lines, err, lastLine(c.bytes()))
		}
		select {
		case <-c.notify:
		case <-c.ended:
		case <-ctx.Done():
			return fmt.Errorf("%d lines of %d: %w", lines, n, ctx.Err())
		}
	}
}

// waitEnd waits at most d for the stream to end.
func (c *capture) waitEnd(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-c.ended:
		return nil
	case <-timer.C:
		return fmt.Errorf("still open after %s", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close hangs up and waits for the reader to stop.
func (c *capture) close() {
	c.cancel()
	<-c.ended
}

// took is how long the response took, from the request to its end (so
// far, while it goes on).
func (c *capture) took() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end.IsZero() {
		return time.Since(c.start)
	}
	return c.end.Sub(c.start)
}

func (c *capture) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf)
}

func (c *capture) lineCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lines
}

// startBatchRetrying POSTs the batch to fe with key until it answers 200,
// retrying 409 (still owned elsewhere), 503 and failed requests after a
// pause, at most attempts times; the stream is then read in the background.
func startBatchRetrying(ctx context.Context, t *testing.T, fe *harness.Hafe, key string, body []byte, attempts int) (*capture, error) {
	t.Helper()
	var refusals []string
	for attempt := 1; attempt <= attempts; attempt++ {
		c, err := startBatch(ctx, fe, key, body)
		switch {
		case err != nil:
			refusals = append(refusals, err.Error())
		case c.status == http.StatusConflict || c.status == http.StatusServiceUnavailable:
			refusals = append(refusals, fmt.Sprintf("%d %s", c.status, bytes.TrimSpace(c.buf)))
		case c.status != http.StatusOK:
			return nil, fmt.Errorf("POST to %s: %d %s", fe.Alias, c.status, c.buf)
		default:
			t.Cleanup(c.close)
			if len(refusals) > 0 {
				t.Logf("%s took the batch on attempt %d, after: %s", fe.Alias, attempt, summarize(refusals))
			}
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("POST to %s: %w after %s", fe.Alias, ctx.Err(), summarize(refusals))
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("%s refused the batch %d times: %s", fe.Alias, attempts, summarize(refusals))
}

// summarize shows a list of refusals with repeats counted.
func summarize(refusals []string) string {
	var b strings.Builder
	for i := 0; i < len(refusals); {
		j := i
		for j < len(refusals) && refusals[j] == refusals[i] {
			j++
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%dx %s", j-i, refusals[i])
		i = j
	}
	return b.String()
}

// submitUntilDone POSTs the batch to fe with key until a stream carries the
// done line, retrying refusals (startBatchRetrying) and streams that end
// without the done line. Bounded: at most 5 streams of 60 requests each.
// It returns every 200 stream, the last one complete.
func submitUntilDone(ctx context.Context, t *testing.T, fe *harness.Hafe, key string, body []byte) []*capture {
	t.Helper()
	var streams []*capture
	for range 5 {
		c, err := startBatchRetrying(ctx, t, fe, key, body, 60)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.waitEnd(ctx, 90*time.Second); err != nil {
			t.Fatalf("stream from %s: %v", fe.Alias, err)
		}
		streams = append(streams, c)
		if hasDone(c.bytes()) {
			t.Logf("%s finished the batch (resumed %v, %d lines) in %s", fe.Alias, c.resumed, c.lineCount(), c.took().Round(time.Millisecond))
			return streams
		}
		t.Logf("stream from %s ended without the done line: %q", fe.Alias, lastLine(c.bytes()))
	}
	t.Fatalf("%s did not finish the batch in 5 streams", fe.Alias)
	return nil
}

func streamBytes(cs []*capture) [][]byte {
	var out [][]byte
	for _, c := range cs {
		out = append(out, c.bytes())
	}
	return out
}

// sameBatch checks that every response named the first one's batch.
func sameBatch(t *testing.T, first *capture, more []*capture) string {
	t.Helper()
	if first.batchID == "" {
		t.Fatal("no Hafe-Batch-Id header")
	}
	for _, c := range more {
		if c.batchID != first.batchID {
			t.Fatalf("retry with the same key answered batch %s, the first request batch %s", c.batchID, first.batchID)
		}
	}
	return first.batchID
}

// requireCutOff fails the test if the stream finished: the fault came too
// late to test anything.
func requireCutOff(t *testing.T, name string, c *capture) {
	t.Helper()
	if hasDone(c.bytes()) {
		t.Fatalf("%s finished the batch before the fault", name)
	}
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	t.Logf("%s's stream cut off after %d lines (%v)", name, c.lineCount(), err)
}

func hasDone(stream []byte) bool {
	return bytes.HasPrefix(lastLine(stream), []byte(`{"done":true`))
}

// lastLine is the stream's last complete line.
func lastLine(stream []byte) []byte {
	stream = stream[:bytes.LastIndexByte(stream, '\n')+1]
	stream = bytes.TrimSuffix(stream, []byte("\n"))
	return stream[bytes.LastIndexByte(stream, '\n')+1:]
}
