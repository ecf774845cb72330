package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/test/harness"
)

// The PostgreSQL failover tests: a primary "pg" and a streaming standby
// "pg2" of it, both from the test image; three front-ends whose --db names
// both (postgres://…@pg:5432,pg2:5432/hafe). Two clients run a batch each:
// one over MTCP (no key, never retries), one over plain HTTP with an
// Idempotency-Key. Mid-batch the primary is killed (docker kill) and the
// standby promoted (SELECT pg_promote()).
//
// Synchronous replication: both batches go on on the new primary and the
// checker proves G1-G3 there. Asynchronous replication, the standby cut off
// the network for the last commits before the kill so that they are really
// lost: the front-ends find reported outcomes missing on the new
// primary and end both streams with a reports_lost line, never running a
// lost slot again; /admin/lost-reports lists them.

// pgFailoverSlots is the batches' length: long enough to outlast the
// failover.
const pgFailoverSlots = 120

// noSlowSlot: every slot sleeps 50ms, none longer.
const noSlowSlot slowPoint = -1

type pgFailoverCluster struct {
	*failoverCluster
	primary, standby *harness.Postgres
}

// startPGFailoverCluster starts pg with the workload's schema, its
// standby pg2 (synchronous when sync is set) and three front-ends on both.
func startPGFailoverCluster(t *testing.T, sync bool) *pgFailoverCluster {
	t.Helper()
	harness.RequireDocker(t)
	nw := harness.NewNetwork(t)
	pg := harness.StartPostgres(t, nw, harness.PostgresConfig{InitScripts: []string{harness.ReplicationInitScript(t)}})
	if code, out := harness.RunHafe(t, nw, time.Minute, "db", "install", "--db", pg.NetworkURL); code != 0 {
		t.Fatalf("hafe db install: exit %d: %s", code, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	db := connect(ctx, t, pg)
	defer db.Close(context.Background())
	for _, q := range []string{hafesql.DemoSchema(), failoverSchema} {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatalf("schema: %v", err)
		}
	}
	pg2 := harness.StartStandby(t, nw, pg, "pg2")
	if sync {
		for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = 'pg2'`, `SELECT pg_reload_conf()`} {
			if _, err := db.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := "async"
	if sync {
		want = "sync"
	}
	for i := 0; ; i++ {
		var state string
		err := db.QueryRow(ctx, `SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = 'pg2' AND state = 'streaming'`).Scan(&state)
		if err != nil {
			t.Fatal(err)
		}
		if state == want {
			break
		}
		if i == 100 {
			t.Fatalf("pg2 is %q, want streaming %s", state, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	dbURL := harness.MultiHostURL(pg.Config.User, pg.Config.Password, pg, pg2)
	rawURL := harness.MultiHostURL("hafe_client", clientPassword, pg, pg2)
	fes := harness.StartHafes(t, nw, 3, func(i int) harness.HafeConfig {
		id := fmt.Sprintf("fe%d", i+1)
		flags := append(slices.Clone(frontEndFlags), "--raw-sql-db", rawURL, "--admin-token", pgFailoverAdminToken)
		return harness.HafeConfig{Alias: id, Args: harness.ServeArgs(dbURL, id, flags...), MTCP: &harness.MTCPConfig{Mode: "eager"}}
	})
	c := &pgFailoverCluster{failoverCluster: &failoverCluster{pg: pg, fes: fes}, primary: pg, standby: pg2}
	mc := &mtcpCluster{failoverCluster: c.failoverCluster}
	for _, fe := range fes {
		mc.waitServerList(ctx, t, fe)
	}
	for _, fe := range fes {
		v := c.readyz(ctx, t, fe)
		t.Logf("%s readyz replication: %v", fe.Alias, v["replication"])
		if r, _ := v["replication"].(map[string]any); r["promise"] != want {
			t.Errorf("%s: readyz says promise %v, want %s", fe.Alias, r["promise"], want)
		}
	}
	return c
}

const pgFailoverAdminToken = "pg-failover-admin"

func (c *pgFailoverCluster) readyz(ctx context.Context, t *testing.T, fe *harness.Hafe) map[string]any {
	t.Helper()
	return getJSON(ctx, t, fe.URL+"/readyz", "")
}

func getJSON(ctx context.Context, t *testing.T, url, token string) map[string]any {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := failoverClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return v
}

// pgFailoverRun is the two clients' batches.
type pgFailoverRun struct {
	mtcp, http       *capture
	mtcpBody, hBody  []byte
	mtcpAcc, httpAcc func(seq int) (from, to int)
	cl               *mtcpClient
}

func (c *pgFailoverCluster) startRuns(ctx context.Context, t *testing.T) *pgFailoverRun {
	r := &pgFailoverRun{mtcpAcc: laneAccounts(0, 2), httpAcc: laneAccounts(1, 2)}
	r.mtcpBody = failoverBatchOn(pgFailoverSlots, noSlowSlot, "mtcp", r.mtcpAcc)
	r.hBody = failoverBatchOn(pgFailoverSlots, noSlowSlot, "http", r.httpAcc)
	r.cl = newMTCPClient(t, "client", c.fes)
	r.mtcp = r.cl.start(ctx, t, c.fes[0], r.mtcpBody)
	r.http = mustStartBatch(ctx, t, c.fes[1], "pg-failover", r.hBody)
	return r
}

// failOver kills the primary and promotes the standby, and says how long
// the promotion took (pg_promote waits for it).
func (c *pgFailoverCluster) failOver(ctx context.Context, t *testing.T, before func()) (killedAt time.Time, promotion time.Duration) {
	t.Helper()
	if err := c.primary.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	killedAt = time.Now()
	if before != nil {
		before()
	}
	db := connect(ctx, t, c.standby)
	defer db.Close(context.Background())
	start := time.Now()
	var ok bool
	if err := db.QueryRow(ctx, `SELECT pg_promote(true, 60)`).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_promote: %v, %v", ok, err)
	}
	promotion = time.Since(start)
	c.pg = c.standby // the checker reads the new primary
	return killedAt, promotion
}

// TestPostgresFailoverSynchronous: with a synchronous standby, a primary
// killed mid-batch costs the clients a stall, nothing else: both batches
// finish on the promoted standby, every slot once, each stream byte for
// byte what the database recorded (G1-G3).
func TestPostgresFailoverSynchronous(t *testing.T) {
	c := startPGFailoverCluster(t, true)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	r := c.startRuns(ctx, t)
	for _, s := range []*capture{r.mtcp, r.http} {
		if err := s.waitLines(ctx, 20); err != nil {
			t.Fatal(err)
		}
	}
	atM, atH := r.mtcp.lineCount(), r.http.lineCount()
	killedAt, promotion := c.failOver(ctx, t, nil)
	for _, s := range []*capture{r.mtcp, r.http} {
		_ = s.waitEnd(ctx, 2*time.Minute)
	}
	stallM, stallH := stallAfter(r.mtcp, killedAt), stallAfter(r.http, killedAt)
	t.Logf("primary killed after %d (MTCP) and %d (HTTP) lines; promotion took %s; next line %s (MTCP) and %s (HTTP) after the kill",
		atM, atH, promotion.Round(time.Millisecond), stallM.Round(time.Millisecond), stallH.Round(time.Millisecond))
	if err := r.mtcp.waitEnd(ctx, 2*time.Minute); err != nil {
		t.Fatalf("MTCP stream: %v", err)
	}
	httpStreams := []*capture{r.http}
	if err := r.http.waitEnd(ctx, 2*time.Minute); err != nil {
		t.Fatalf("HTTP stream: %v", err)
	}
	if !hasDone(r.http.bytes()) {
		t.Logf("HTTP stream ended without the done line (%q): retrying with the key", lastLine(r.http.bytes()))
		httpStreams = append(httpStreams, submitUntilDone(ctx, t, c.fes[2], "pg-failover", r.hBody)...)
	}
	if !hasDone(r.mtcp.bytes()) {
		t.Errorf("the MTCP stream ended without the done line: %q", lastLine(r.mtcp.bytes()))
	}
	logMigrations(t, r.cl)
	c.checkBatches(ctx, t,
		checkedBatch{id: r.mtcp.batchID, tag: "mtcp", streams: [][]byte{r.mtcp.bytes()}, accounts: r.mtcpAcc},
		checkedBatch{id: r.http.batchID, tag: "http", streams: streamBytes(httpStreams), accounts: r.httpAcc})
	for _, fe := range c.fes {
		for _, l := range logLines(ctx, fe, "lost the database", "another database server", "another server run", "durability", "interrupted", "LOST") {
			t.Logf("%s: %s", fe.Alias, l)
		}
	}
	for _, fe := range c.fes {
		v := c.readyz(ctx, t, fe)
		t.Logf("%s readyz after the failover: %v %v", fe.Alias, v["status"], v["replication"])
	}
}

// stallAfter is the stall a client saw across a fault at since: lines
// already on their way (the reporter's queue, the socket) still arrive
// after it, so it is the time from since to the line that ended the
// longest gap between lines after it.
func stallAfter(c *capture, since time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, gap, end := since, time.Duration(-1), since
	for _, at := range c.times {
		if at.Before(since) {
			continue
		}
		if d := at.Sub(prev); d > gap {
			gap, end = d, at
		}
		prev = at
	}
	return end.Sub(since)
}

// TestPostgresFailoverAsynchronousLosesNothingSilently: with asynchronous
// replication and the standby cut off the network for the primary's last
// commits, the
// promoted standby lacks outcomes the clients were told of. The front-ends
// notice, end both streams with a reports_lost line and run none of the
// lost slots again; their /admin/lost-reports and hafe_lost_reports_total
// show it.
func TestPostgresFailoverAsynchronousLosesNothingSilently(t *testing.T) {
	c := startPGFailoverCluster(t, false)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	r := c.startRuns(ctx, t)
	for _, s := range []*capture{r.mtcp, r.http} {
		if err := s.waitLines(ctx, 15); err != nil {
			t.Fatal(err)
		}
	}
	// The standby stops receiving: what the primary commits from now on
	// is reported and exists nowhere else. (docker pause would not do:
	// the frozen standby's kernel still takes the WAL into its socket
	// buffer, and it is all replayed before the promotion.)
	if err := c.standby.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	pausedM, pausedH := r.mtcp.lineCount(), r.http.lineCount()
	for _, s := range []*capture{r.mtcp, r.http} {
		if err := s.waitLines(ctx, max(pausedM, pausedH)+10); err != nil {
			t.Fatal(err)
		}
	}
	_, promotion := c.failOver(ctx, t, func() {
		if err := c.standby.Reconnect(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("standby cut off after %d/%d lines, primary killed after %d/%d, promotion took %s", pausedM, pausedH,
		r.mtcp.lineCount(), r.http.lineCount(), promotion.Round(time.Millisecond))
	for name, s := range map[string]*capture{"MTCP": r.mtcp, "HTTP": r.http} {
		if err := s.waitEnd(ctx, 2*time.Minute); err != nil {
			t.Fatalf("%s stream: %v", name, err)
		}
		last := lastLine(s.bytes())
		t.Logf("%s stream: %d lines, last %s", name, s.lineCount(), last)
		if !strings.Contains(string(last), `"code":"reports_lost"`) {
			t.Errorf("%s stream ends with %s, want a reports_lost line", name, last)
		}
	}
	// Nothing ran again: the new primary holds each slot's effects at
	// most once, and none past what it recorded.
	db := connect(ctx, t, c.standby)
	defer db.Close(context.Background())
	for _, tag := range []string{"mtcp", "http"} {
		rows, err := db.Query(ctx, `SELECT slot, count(*) FROM runs WHERE tag = $1 GROUP BY slot ORDER BY slot`, tag)
		if err != nil {
			t.Fatal(err)
		}
		var slots []int
		var slot, n int
		if _, err := pgx.ForEachRow(rows, []any{&slot, &n}, func() error {
			if n != 1 {
				t.Errorf("%s slot %d ran %d times on the new primary", tag, slot, n)
			}
			slots = append(slots, slot)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d slots' effects survived on the new primary", tag, len(slots))
	}
	lost := 0
	for _, fe := range c.fes {
		v := getJSON(ctx, t, fe.URL+"/admin/lost-reports", pgFailoverAdminToken)
		if l, _ := v["lost_reports"].([]any); len(l) > 0 {
			t.Logf("%s /admin/lost-reports: %v", fe.Alias, v)
			lost += len(l)
		}
		for _, l := range logLines(ctx, fe, "LOST", "durability") {
			t.Logf("%s: %s", fe.Alias, l)
		}
	}
	if lost < 2 {
		t.Errorf("the front-ends list %d lost batches, want both", lost)
	}
}
