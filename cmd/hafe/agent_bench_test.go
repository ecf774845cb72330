package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp"
)

// TestAgentBenchmark compares small batches sent by Go's net/http through
// hafe agent with the same client straight to one front-end, over plain
// HTTP and over MTCP with the mtcp package linked in: throughput with
// several connections, and each request's latency on one connection.
// Set HAFE_AGENT_BENCH=1 to run it (HAFE_AGENT_BENCH_N: requests per
// connection, default 300).
func TestAgentBenchmark(t *testing.T) {
	if os.Getenv("HAFE_AGENT_BENCH") == "" {
		t.Skip("set HAFE_AGENT_BENCH=1 to run the agent's benchmark")
	}
	n := 300
	if v, err := strconv.Atoi(os.Getenv("HAFE_AGENT_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	ac := startAgentCluster(t, 1)
	plain := &http.Transport{MaxIdleConnsPerHost: 64}
	d := &mtcp.Dialer{Servers: ac.mtcp, Limits: mtcp.Limits{MaxSendBuffer: 16 << 20}}
	viaMTCP := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64}
	defer plain.CloseIdleConnections()
	defer viaMTCP.CloseIdleConnections()
	ways := []benchWay{
		{"plain HTTP to the front-end", "http://" + ac.http[0], plain},
		{"Go client over MTCP (mtcp package)", "http://" + ac.mtcp[0], viaMTCP},
		{"through hafe agent (plain HTTP to it)", "http://" + ac.agentAddr, plain},
	}
	results := measureBatches(t, n, ways)
	t.Logf("small batches (2 transactions), %d per connection, one front-end (eager MTCP), loopback:", n)
	logBenchTable(t, ways, results)
	agent, direct := results[ways[2].name], results[ways[1].name]
	t.Logf("the agent's added latency per request (p50, against the Go client over MTCP): %v", (agent.p50 - direct.p50).Round(time.Microsecond))
}

// benchWay is one way to send batches to a front-end.
type benchWay struct {
	name string
	url  string
	rt   http.RoundTripper
}

type benchResult struct {
	rate          float64
	p50, p99, max time.Duration
}

// measureBatches sends small batches each way, side by side: the latency
// of n requests one at a time on one connection, and the throughput of
// 16 connections sending n each. The first of two rounds warms up.
func measureBatches(t *testing.T, n int, ways []benchWay) map[string]benchResult {
	body := []byte(`{"transactions":[{"template":"balance","args":{"id":1}},{"template":"transfer","args":{"from":1,"to":2,"amount":1}}]}`)
	send := func(hc *http.Client, url string) error {
		resp, err := hc.Post(url+"/v1/batches", "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"done":true`)) {
			return fmt.Errorf("status %d, %v: %.200s", resp.StatusCode, err, b)
		}
		return nil
	}
	results := map[string]benchResult{}
	for round := range 2 { // the first round warms up
		for _, w := range ways {
			hc := &http.Client{Transport: w.rt}
			// Latency: one connection, one request at a time.
			lat := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				if err := send(hc, w.url); err != nil {
					t.Fatalf("%s: %v", w.name, err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			// Throughput: 16 connections.
			const conns = 16
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			t0 := time.Now()
			for range conns {
				wg.Go(func() {
					for range n {
						if err := send(hc, w.url); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			took := time.Since(t0)
			close(errs)
			for err := range errs {
				t.Fatalf("%s: %v", w.name, err)
			}
			if round == 1 {
				results[w.name] = benchResult{rate: float64(conns*n) / took.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], max: lat[len(lat)-1]}
			}
		}
	}
	return results
}

// logBenchTable logs the results, throughput as a ratio to the first way's.
func logBenchTable(t *testing.T, ways []benchWay, results map[string]benchResult) {
	base := results[ways[0].name]
	t.Logf("%-40s %12s %10s %10s %10s %8s", "", "batches/s", "p50", "p99", "max", "× "+strings.Fields(ways[0].name)[0])
	for _, w := range ways {
		r := results[w.name]
		t.Logf("%-40s %12.0f %10v %10v %10v %8.2f", w.name, r.rate, r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.max.Round(time.Microsecond), r.rate/base.rate)
	}
}

// TestAgentFailoverStall measures the stall curl -N sees through the
// agent when the front-end serving its batch is killed: the time from
// the SIGKILL to the next response line, or the longest wait between two
// lines after it when lines already on their way came first, over HAFE_AGENT_BENCH_KILLS
// runs (default 10), each on a fresh cluster of two front-ends. Slots
// are fast (a read-only template), so the stall is the failover, not a
// slot's own work. Set HAFE_AGENT_BENCH=1 to run it.
func TestAgentFailoverStall(t *testing.T) {
	if os.Getenv("HAFE_AGENT_BENCH") == "" {
		t.Skip("set HAFE_AGENT_BENCH=1 to run the agent's benchmark")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	runs := 10
	if v, err := strconv.Atoi(os.Getenv("HAFE_AGENT_BENCH_KILLS")); err == nil && v > 0 {
		runs = v
	}
	var stalls []time.Duration
	for run := range runs {
		// A run's cluster goes at its end, not loading the next runs.
		t.Run(strconv.Itoa(run), func(t *testing.T) {
			stalls = append(stalls, measureStall(t, run, startAgentCluster(t, 2), curlClient))
		})
	}
	if len(stalls) == runs {
		logStalls(t, "curl -N through hafe agent", stalls)
	}
}

// stallBatch is 2000 fast read-only slots: a stall in its stream is the
// failover, not a slot's own work.
func stallBatch() []byte {
	txns := make([]string, 2000)
	for i := range txns {
		txns[i] = fmt.Sprintf(`{"template":"balance","args":{"id":%d}}`, i%10+1)
	}
	return []byte(`{"transactions":[` + strings.Join(txns, ",") + `]}`)
}

// measureStall sends stallBatch with client through ac's agent, SIGKILLs
// the serving front-end at line 200 and returns the stall: the time from
// the kill to the next line, or the longest wait between two lines after
// it when lines already on their way came first.
func measureStall(t *testing.T, run int, ac *agentCluster, client agentClient) time.Duration {
	const n, killAt = 2000, 200
	s := client(t, ac.agentAddr, stallBatch())
	victim := ac.procs[s.frontEnd]
	if s.status != 200 || victim == nil {
		t.Fatalf("status %d from %q", s.status, s.frontEnd)
	}
	var killed, last time.Time
	var maxGap, stall time.Duration
	lines := 0
	for {
		raw, err := s.body.ReadBytes('\n')
		if err == io.EOF && len(raw) == 0 {
			break
		}
		if err != nil {
			t.Fatalf("run %d, after %d lines: %v", run, lines, err)
		}
		now := time.Now()
		lines++
		switch {
		case lines == killAt+1:
			stall = now.Sub(killed)
		case lines > killAt+1:
			// Lines already on their way when the kill came arrive
			// at once; the stall is the longest wait after it.
			stall = max(stall, now.Sub(last))
		case lines > 1:
			maxGap = max(maxGap, now.Sub(last))
		}
		last = now
		if lines == killAt {
			killed = time.Now()
			victim.Process.Kill()
		}
	}
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	if lines != n+1 {
		t.Fatalf("run %d: %d lines, want %d", run, lines, n+1)
	}
	t.Logf("run %d: stall %v after the kill (longest gap before it %v)", run, stall.Round(time.Microsecond), maxGap.Round(time.Microsecond))
	return stall
}

func logStalls(t *testing.T, what string, stalls []time.Duration) {
	slices.Sort(stalls)
	p := func(q float64) time.Duration { return stalls[min(len(stalls)-1, int(q*float64(len(stalls))))] }
	t.Logf("%s, front-end SIGKILLed mid-batch, %d runs: stall p50 %v, p99 %v (max), min %v",
		what, len(stalls), p(0.5).Round(time.Microsecond), stalls[len(stalls)-1].Round(time.Microsecond), stalls[0].Round(time.Microsecond))
}
