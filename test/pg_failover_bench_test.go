package test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/test/harness"
)

// TestPostgresFailoverStallBenchmark measures, over HAFE_PG_FAILOVER_RUNS
// primary failovers (skipped without it), the stall a client sees — from
// the primary's kill to the line that ends the longest gap in its stream
// after it — against the time the promotion itself takes (pg_promote, wait
// included). One cluster throughout, with two server names, pg and pg2, in
// the front-ends' URL: each round kills the primary and promotes its
// synchronous standby; the next round starts a new standby of the new
// primary under the dead one's name (the dead container is taken off the
// network). Each round runs one MTCP batch and one HTTP batch. It
// measures; it asserts only that every batch finishes.
func TestPostgresFailoverStallBenchmark(t *testing.T) {
	runs, _ := strconv.Atoi(os.Getenv("HAFE_PG_FAILOVER_RUNS"))
	if runs <= 0 {
		t.Skip("set HAFE_PG_FAILOVER_RUNS to measure the stall across that many primary failovers")
	}
	harness.RequireDocker(t)
	nw := harness.NewNetwork(t)
	pgs := []*harness.Postgres{harness.StartPostgres(t, nw, harness.PostgresConfig{InitScripts: []string{harness.ReplicationInitScript(t)}})}
	if code, out := harness.RunHafe(t, nw, time.Minute, "db", "install", "--db", pgs[0].NetworkURL); code != 0 {
		t.Fatalf("hafe db install: exit %d: %s", code, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Duration(runs)*2*time.Minute+3*time.Minute)
	defer cancel()
	db := connect(ctx, t, pgs[0])
	for _, q := range []string{hafesql.DemoSchema(), failoverSchema} {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatalf("schema: %v", err)
		}
	}
	db.Close(context.Background())
	names := []string{"pg", "pg2"}
	url := func(user, password string) string {
		return harness.MultiHostURL(user, password, pgs[0], &harness.Postgres{Container: &harness.Container{Alias: names[1]}})
	}
	dbURL, rawURL := url(pgs[0].Config.User, pgs[0].Config.Password), url("hafe_client", clientPassword)

	standby := func(i int) {
		primary := pgs[i-1]
		alias := names[i%2]
		if i >= 2 {
			// The name's dead holder leaves the network first.
			if err := pgs[i-2].Disconnect(ctx); err != nil {
				t.Fatal(err)
			}
		}
		s := harness.StartStandby(t, nw, primary, alias)
		pgs = append(pgs, s)
		c := connect(ctx, t, primary)
		defer c.Close(context.Background())
		for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = '` + alias + `'`, `SELECT pg_reload_conf()`} {
			if _, err := c.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		for range 200 {
			var state string
			if err := c.QueryRow(ctx, `SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = $1`, alias).Scan(&state); err != nil {
				t.Fatal(err)
			}
			if state == "sync" {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s never became a synchronous standby", alias)
	}
	standby(1)
	fes := harness.StartHafes(t, nw, 3, func(i int) harness.HafeConfig {
		id := fmt.Sprintf("fe%d", i+1)
		flags := append(slices.Clone(frontEndFlags), "--raw-sql-db", rawURL)
		return harness.HafeConfig{Alias: id, Args: harness.ServeArgs(dbURL, id, flags...), MTCP: &harness.MTCPConfig{Mode: "eager"}}
	})
	c := &pgFailoverCluster{failoverCluster: &failoverCluster{pg: pgs[0], fes: fes}}
	mc := &mtcpCluster{failoverCluster: c.failoverCluster}
	for _, fe := range fes {
		mc.waitServerList(ctx, t, fe)
	}

	var mtcpStalls, httpStalls, promotions []time.Duration
	for i := 1; i <= runs; i++ {
		if i > 1 {
			standby(i)
		}
		c.primary, c.standby, c.pg = pgs[i-1], pgs[i], pgs[i-1]
		r := &pgFailoverRun{mtcpAcc: laneAccounts(0, 2), httpAcc: laneAccounts(1, 2)}
		tag := strconv.Itoa(i)
		r.mtcpBody = failoverBatchOn(pgFailoverSlots, noSlowSlot, "mtcp"+tag, r.mtcpAcc)
		r.hBody = failoverBatchOn(pgFailoverSlots, noSlowSlot, "http"+tag, r.httpAcc)
		r.cl = newMTCPClient(t, "client"+tag, fes)
		r.mtcp = r.cl.start(ctx, t, fes[(i-1)%3], r.mtcpBody)
		r.http = mustStartBatch(ctx, t, fes[i%3], "stall-"+tag, r.hBody)
		for _, s := range []*capture{r.mtcp, r.http} {
			if err := s.waitLines(ctx, 20); err != nil {
				t.Fatal(err)
			}
		}
		killedAt, promotion := c.failOver(ctx, t, nil)
		for name, s := range map[string]*capture{"MTCP": r.mtcp, "HTTP": r.http} {
			if err := s.waitEnd(ctx, 2*time.Minute); err != nil || !hasDone(s.bytes()) {
				t.Fatalf("round %d: the %s stream did not finish: %v, last %q", i, name, err, lastLine(s.bytes()))
			}
		}
		sm, sh := stallAfter(r.mtcp, killedAt), stallAfter(r.http, killedAt)
		t.Logf("round %d: %s killed, %s promoted in %s; next line after %s (MTCP), %s (HTTP)", i, pgs[i-1].Alias, pgs[i].Alias,
			promotion.Round(time.Millisecond), sm.Round(time.Millisecond), sh.Round(time.Millisecond))
		mtcpStalls, httpStalls, promotions = append(mtcpStalls, sm), append(httpStalls, sh), append(promotions, promotion)
	}
	all := append(slices.Clone(mtcpStalls), httpStalls...)
	t.Logf("over %d failovers: promotion p50 %s p99 %s; client stall (kill → next line) p50 %s p99 %s (MTCP p50 %s, HTTP p50 %s)", runs,
		pct(promotions, 50), pct(promotions, 99), pct(all, 50), pct(all, 99), pct(mtcpStalls, 50), pct(httpStalls, 50))
}

// pct is the p-th percentile of ds (nearest rank).
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := (p*len(s) + 99) / 100
	return s[max(i-1, 0)].Round(time.Millisecond)
}
