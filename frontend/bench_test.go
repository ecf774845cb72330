package frontend

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/batchbench"
	hafesql "hafe.dev/hafe/sql"
)

// The batch benchmarks send batches of 50 demo-bank transfers among 100
// accounts from 8 concurrent clients over loopback HTTP, to hafe and to
// the plain baselines (internal/batchbench), on one PostgreSQL. ns/op is
// per batch; tx/s and the per-transaction latencies are custom metrics.
// BenchmarkBatchesRatio runs both sides alternately in one run and reports
// hafe/plain ratios. Keep runs short on shared machines, e.g.
//
//	go test -run '^$' -bench Batches -benchtime 5s ./frontend

var benchWorkload = batchbench.Workload{Clients: 8, BatchSize: 50, Accounts: 100, Keys: true, Seed: 1}

const benchPoolSize = 16

// benchEnv is one database with a hafe front-end and the plain baseline
// in front of it; the benchmarks share it.
type benchEnv struct {
	pool   *pgxpool.Pool // for resets
	hafe   string        // base URLs
	plain  string        // pipelined: BEGIN, statements, COMMIT in one round trip
	plainI string        // interactive: one round trip per statement
	client *http.Client
}

var (
	benchOnce sync.Once
	bench     *benchEnv
	benchErr  error
)

func getBenchEnv(b *testing.B) *benchEnv {
	benchOnce.Do(func() { bench, benchErr = newBenchEnv(newDB(b)) })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return bench
}

func newBenchEnv(url string) (*benchEnv, error) {
	ctx := context.Background()
	newPool := func(id string) (*pgxpool.Pool, error) {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			return nil, err
		}
		cfg.MaxConns = benchPoolSize
		backendext.ConfigurePool(cfg, id, "", time.Minute)
		return pgxpool.NewWithConfig(ctx, cfg)
	}
	hp, err := newPool("bench-hafe")
	if err != nil {
		return nil, err
	}
	fe, err := New(hp, Config{ID: "bench-hafe"}, nil)
	if err != nil {
		return nil, err
	}
	pp, err := newPool("bench-plain")
	if err != nil {
		return nil, err
	}
	e := &benchEnv{pool: pp, client: batchbench.NewClient(benchWorkload.Clients)}
	// The servers live as long as the test binary.
	if e.hafe, _, err = batchbench.Serve(fe.Handler()); err != nil {
		return nil, err
	}
	if e.plain, _, err = batchbench.Serve(batchbench.NewPlain(pp, hafesql.Builtin(), batchbench.Pipelined)); err != nil {
		return nil, err
	}
	if e.plainI, _, err = batchbench.Serve(batchbench.NewPlain(pp, hafesql.Builtin(), batchbench.Interactive)); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *benchEnv) run(b *testing.B, url string, batches int) batchbench.Result {
	if err := batchbench.ResetAccounts(context.Background(), e.pool); err != nil {
		b.Fatal(err)
	}
	res, err := batchbench.Run(context.Background(), e.client, url, benchWorkload, batches, 0)
	if err != nil {
		b.Fatal(err)
	}
	return res
}

func reportSide(b *testing.B, suffix string, r batchbench.Result) {
	b.ReportMetric(r.TxPerSec(), "tx/s"+suffix)
	b.ReportMetric(float64(r.Quantile(0.50).Microseconds())/1000, "p50-ms"+suffix)
	b.ReportMetric(float64(r.Quantile(0.99).Microseconds())/1000, "p99-ms"+suffix)
}

func BenchmarkBatchesHafe(b *testing.B) {
	e := getBenchEnv(b)
	b.ResetTimer()
	reportSide(b, "", e.run(b, e.hafe, b.N))
}

func BenchmarkBatchesPlain(b *testing.B) {
	e := getBenchEnv(b)
	b.ResetTimer()
	reportSide(b, "", e.run(b, e.plain, b.N))
}

// BenchmarkBatchesPlainInteractive is the baseline most handlers are:
// pool.BeginTx, one Query per statement, Commit.
func BenchmarkBatchesPlainInteractive(b *testing.B) {
	e := getBenchEnv(b)
	b.ResetTimer()
	reportSide(b, "", e.run(b, e.plainI, b.N))
}

// BenchmarkBatchesRatio sends b.N batches to each side, in halves and
// alternating, so both see the same machine load; it reports hafe/plain
// ratios (throughput: ≥ 0.85 is the target).
func BenchmarkBatchesRatio(b *testing.B) {
	e := getBenchEnv(b)
	b.ResetTimer()
	half := max(1, b.N/2)
	var hafe, plain []batchbench.Result
	hafe = append(hafe, e.run(b, e.hafe, half))
	plain = append(plain, e.run(b, e.plain, half))
	plain = append(plain, e.run(b, e.plain, max(1, b.N-half)))
	hafe = append(hafe, e.run(b, e.hafe, max(1, b.N-half)))
	h, p := batchbench.Merge(hafe...), batchbench.Merge(plain...)
	reportSide(b, "-hafe", h)
	reportSide(b, "-plain", p)
	b.ReportMetric(h.TxPerSec()/p.TxPerSec(), "tput-ratio")
	b.ReportMetric(float64(h.Quantile(0.5))/float64(p.Quantile(0.5)), "p50-ratio")
	b.ReportMetric(float64(h.Quantile(0.99))/float64(p.Quantile(0.99)), "p99-ratio")
	if b.N >= 100 {
		b.Log("\n" + fmt.Sprint(batchbench.Table(
			batchbench.Side{Name: "hafe", Result: h}, batchbench.Side{Name: "plain", Result: p})))
	}
}
