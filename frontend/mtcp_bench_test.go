package frontend

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp"
)

// BenchmarkMigrateMidBatch is the seed's migration microbenchmark on a
// batch connection: a batch of demo-bank transfers streams over MTCP from
// one of two front-ends, and every 20 lines the client moves the
// connection to the other (Conn.Migrate), lazily (the origin hands the
// state over the peer channel) or eagerly (no peer channel: the new
// front-end takes the state from the database). One op is one migration.
// It reports the mean of every phase on the three parties, in µs, and the
// stall: from the Migrate call to the next line. Run it with e.g.
//
//	go test -run '^$' -bench MigrateMidBatch -benchtime 100x ./frontend
func BenchmarkMigrateMidBatch(b *testing.B) {
	for _, mode := range []string{"lazy", "eager"} {
		b.Run(mode, func(b *testing.B) {
			var (
				mu    sync.Mutex
				stats []mtcp.MigrationStats
			)
			url := newDB(b)
			mc := startMTCPClusterWith(b, url, 2, mtcpOptions{eager: mode == "eager", peers: mode == "lazy",
				onMigration: func(s mtcp.MigrationStats) {
					mu.Lock()
					stats = append(stats, s)
					mu.Unlock()
				}}, nil)
			cl := newMTCPClient(b, mc.addrs)
			txns := make([]string, 5000)
			for i := range txns {
				txns[i] = transferTxn(1+i%50, 51+i%50, "0.01")
			}
			body := batchBody(txns...)
			var stall time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := cl.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				br := bufio.NewReader(resp.Body)
				for n := 1; ; n++ {
					if _, err := br.ReadBytes('\n'); err != nil {
						break
					}
					if n%20 != 0 || done == b.N {
						continue
					}
					cl.mu.Lock()
					c := cl.conn
					cl.mu.Unlock()
					to := mc.addrs[0]
					if c.Server() == to {
						to = mc.addrs[1]
					}
					t0 := time.Now()
					if err := c.Migrate(context.Background(), to); err != nil {
						b.Fatal(err)
					}
					if _, err := br.ReadBytes('\n'); err != nil {
						b.Fatal(err)
					}
					n++
					stall += time.Since(t0)
					done++
				}
				resp.Body.Close()
			}
			b.StopTimer()
			mu.Lock()
			defer mu.Unlock()
			cl.mu.Lock()
			defer cl.mu.Unlock()
			mean := func(role mtcp.Role, f func(mtcp.MigrationStats) time.Duration, from []mtcp.MigrationStats) float64 {
				var sum time.Duration
				k := 0
				for _, s := range from {
					if s.Role == role && s.Err == nil {
						sum += f(s)
						k++
					}
				}
				if k == 0 {
					return 0
				}
				return float64(sum.Microseconds()) / float64(k)
			}
			b.ReportMetric(float64(stall.Microseconds())/float64(b.N), "stall-µs")
			b.ReportMetric(mean(mtcp.RoleClient, func(s mtcp.MigrationStats) time.Duration { return s.Initiate }, cl.migrations), "client-initiate-µs")
			b.ReportMetric(mean(mtcp.RoleClient, func(s mtcp.MigrationStats) time.Duration { return s.Wait }, cl.migrations), "client-wait-µs")
			b.ReportMetric(mean(mtcp.RoleClient, func(s mtcp.MigrationStats) time.Duration { return s.Complete }, cl.migrations), "client-complete-µs")
			b.ReportMetric(mean(mtcp.RoleNewServer, func(s mtcp.MigrationStats) time.Duration { return s.PrepareRequest }, stats), "new-prepare-µs")
			b.ReportMetric(mean(mtcp.RoleNewServer, func(s mtcp.MigrationStats) time.Duration { return s.WaitReply }, stats), "new-wait-µs")
			b.ReportMetric(mean(mtcp.RoleNewServer, func(s mtcp.MigrationStats) time.Duration { return s.Reinstate }, stats), "new-reinstate-µs")
			b.ReportMetric(mean(mtcp.RoleOrigin, func(s mtcp.MigrationStats) time.Duration { return s.PrepareReply }, stats), "origin-prepare-reply-µs")
		})
	}
}
