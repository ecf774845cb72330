package frontend

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestOverloadPlansMovesToLighterPeers(t *testing.T) {
	a, b, c := peerLoad{"a:1", 0}, peerLoad{"b:1", 2}, peerLoad{"c:1", 5}
	for _, tt := range []struct {
		name      string
		running   int
		peers     []peerLoad
		max       int
		threshold float64
		want      []string
	}{
		{"off", 9, []peerLoad{a}, 0, 0, nil},
		{"under the limit", 3, []peerLoad{a}, 3, 0, nil},
		{"over the limit", 5, []peerLoad{a, b}, 3, 0, []string{"a:1", "a:1"}},
		{"spread over peers", 8, []peerLoad{a, b}, 4, 0, []string{"a:1", "a:1", "a:1", "b:1"}},
		{"no peer", 9, nil, 3, 0, nil},
		{"peers as busy", 6, []peerLoad{c, {"d:1", 6}}, 3, 0, nil},
		{"above the average", 10, []peerLoad{a, b}, 0, 2, []string{"a:1", "a:1", "a:1", "b:1", "a:1", "b:1"}}, // 4, 4 and 4 then
		{"near the average", 3, []peerLoad{a, b}, 0, 2, nil},
		{"idle", 0, []peerLoad{a}, 1, 1, nil},
	} {
		got := overload(tt.running, tt.peers, tt.max, tt.threshold)
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: overload(%d, %v, %d, %v) = %v, want %v", tt.name, tt.running, tt.peers, tt.max, tt.threshold, got, tt.want)
		}
	}
}

// TestOverloadedFrontEndMovesRunningBatches: a front-end with
// --max-batches 1 running two batches over MTCP moves one connection to
// its idle peer, where that batch goes on; both finish, every slot once.
func TestOverloadedFrontEndMovesRunningBatches(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	mc := startMTCPCluster(t, url, 2, false, func(c *Config) {
		if c.ID == "fe-0" {
			c.MaxBatches = 1
		}
	})
	slow := func(tag string) string {
		txns := make([]string, 30)
		for i := range txns {
			txns[i] = rawTxn(fmt.Sprintf("INSERT INTO effects (note) VALUES ('%s-%d')", tag, i+1), "SELECT pg_sleep(0.05)")
		}
		return batchBody(txns...)
	}
	var wg sync.WaitGroup
	for _, tag := range []string{"o1", "o2"} {
		wg.Go(func() {
			cl := newMTCPClient(t, mc.addrs[:1])
			req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(slow(tag)))
			req.Header.Set("Content-Type", "application/json")
			resp, err := cl.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			checkExactlyOnce(t, db, tag, 30, readBatch(t, resp, func(int) {}))
		})
	}
	wg.Wait()
	if got := mc.fes[1].metric(t, "hafe_batch_takeovers_total", "via", "migration"); got != 1 {
		t.Errorf("%v batches moved to the idle front-end, want 1", got)
	}
}
