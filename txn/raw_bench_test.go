package txn

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp/pgtest"
)

// BenchmarkRawSQLSlots measures raw SQL slots per second, one batch of 20
// after another, when each raw SQL session is closed after its slot (what
// hafe does: a fresh session carries nothing of the last client) against
// reusing it after DISCARD ALL and a new random seed. Four batches run at
// once, on a raw SQL pool of four sessions.
func BenchmarkRawSQLSlots(b *testing.B) {
	for _, mode := range []struct {
		name  string
		reuse bool
	}{{"close", false}, {"discard", true}} {
		b.Run(mode.name, func(b *testing.B) {
			reuseRawSessions = mode.reuse
			defer func() { reuseRawSessions = false }()
			url := pgtest.Database(b, server, "txnbench", testSchema+"GRANT SELECT ON accounts TO hafe_client;")
			ctx := context.Background()
			cfg, err := pgxpool.ParseConfig(url)
			if err != nil {
				b.Fatal(err)
			}
			backendext.ConfigurePool(cfg, "fe-bench", "", time.Minute)
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			e := NewExecutor(pool, Config{Owner: "fe-bench", RawSQL: rawSQLConfig(b, url, 4)}, nil)
			const slots = 20
			batch := Batch{}
			for i := range slots {
				batch.Transactions = append(batch.Transactions, Transaction{Raw: true, Statements: []Statement{
					{Query: "SELECT balance FROM accounts WHERE id = $1", Args: []any{i%10 + 1}},
				}})
			}
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			next := make(chan struct{})
			for range 4 {
				wg.Go(func() {
					for range next {
						l, err := e.Open(ctx, OpenRequest{RequestHash: []byte{1}, NumTxns: slots})
						if err != nil {
							panic(err)
						}
						sum, err := e.Run(ctx, l, batch, func([]byte) error { return nil })
						if err != nil || sum.Committed != slots {
							panic(fmt.Sprint(sum, err))
						}
					}
				})
			}
			for range b.N {
				next <- struct{}{}
			}
			close(next)
			wg.Wait()
			b.ReportMetric(float64(b.N*slots)/time.Since(start).Seconds(), "slots/s")
		})
	}
}

// rawSQLConfig lets the client role log in on the database at url and
// returns what an executor there needs to run raw SQL, with at most conns
// raw SQL sessions.
func rawSQLConfig(tb testing.TB, url string, conns int32) RawSQLConfig {
	tb.Helper()
	ctx := context.Background()
	admin, err := pgxpool.New(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(ctx, "ALTER ROLE hafe_client LOGIN PASSWORD 'client-secret'"); err != nil {
		tb.Fatal(err)
	}
	key, err := backendext.ReadOutcomeKey(ctx, admin)
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(strings.Replace(url, "postgres://postgres@", "postgres://hafe_client:client-secret@", 1))
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = conns
	backendext.ConfigureRawPool(cfg, "fe-test", "", time.Minute, DefaultRawSQLTimeout)
	raw, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(raw.Close)
	return RawSQLConfig{Pool: raw, OutcomeKey: key}
}
