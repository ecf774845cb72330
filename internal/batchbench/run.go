package batchbench

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Workload is what the clients send.
type Workload struct {
	// Clients is how many clients send batches at the same time (default 8).
	Clients int
	// BatchSize is the transfers per batch (default 50).
	BatchSize int
	// Accounts: transfers go between accounts 1..Accounts (default 100,
	// the demo bank's).
	Accounts int
	// Keys sends a fresh Idempotency-Key with every batch, as a client
	// that wants to resume after a failure does.
	Keys bool
	// Seed makes the bodies repeatable; both sides of a comparison get the
	// same bodies.
	Seed uint64
	// Header is added to every request (e.g. Authorization).
	Header http.Header
}

func (w Workload) withDefaults() Workload {
	if w.Clients <= 0 {
		w.Clients = 8
	}
	if w.BatchSize <= 0 {
		w.BatchSize = 50
	}
	if w.Accounts < 2 {
		w.Accounts = 100
	}
	return w
}

// Body returns batch n of client c: BatchSize transfers of 0.01 to 1.00
// between random accounts. A transfer always debits the lower account
// first, so concurrent transfers lock accounts in one order and never
// deadlock (a deadlock costs deadlock_timeout, a second by default, and
// would turn the comparison into noise).
func (w Workload) Body(c, n int) []byte {
	w = w.withDefaults()
	r := rand.New(rand.NewPCG(w.Seed, uint64(c)<<32|uint64(n)))
	var b bytes.Buffer
	b.WriteString(`{"transactions":[`)
	for i := range w.BatchSize {
		if i > 0 {
			b.WriteByte(',')
		}
		from := 1 + r.IntN(w.Accounts-1)
		to := from + 1 + r.IntN(w.Accounts-from)
		cents := 1 + r.IntN(100)
		fmt.Fprintf(&b, `{"template":"transfer","args":{"from":%d,"to":%d,"amount":%d.%02d}}`, from, to, cents/100, cents%100)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// Result is what one run measured.
type Result struct {
	Batches      int
	Transactions int
	Committed    int
	Aborted      int
	Elapsed      time.Duration
	// Latencies holds, per transaction, the time from the start of its
	// batch's request to the arrival of its line; sorted.
	Latencies []time.Duration
}

// TxPerSec is the throughput in transactions per second.
func (r Result) TxPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Transactions) / r.Elapsed.Seconds()
}

// Quantile returns the q-quantile (0..1) of the per-transaction latencies.
func (r Result) Quantile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(q * float64(len(r.Latencies)-1))
	return r.Latencies[i]
}

// Merge adds up several runs of one side, e.g. the rounds of a comparison.
func Merge(rs ...Result) Result {
	var m Result
	for _, r := range rs {
		m.Batches += r.Batches
		m.Transactions += r.Transactions
		m.Committed += r.Committed
		m.Aborted += r.Aborted
		m.Elapsed += r.Elapsed
		m.Latencies = append(m.Latencies, r.Latencies...)
	}
	slices.Sort(m.Latencies)
	return m
}

// NewClient returns an HTTP client that keeps one connection per client.
func NewClient(clients int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        clients * 2,
		MaxIdleConnsPerHost: clients * 2,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}}
}

// Run drives the batch API at url (its POST /v1/batches) with w until
// batches batches were sent (batches > 0) or for d. Every batch must stream
// one line per transaction and a done line, or Run fails.
func Run(ctx context.Context, client *http.Client, url string, w Workload, batches int, d time.Duration) (Result, error) {
	w = w.withDefaults()
	if batches <= 0 && d <= 0 {
		return Result{}, errors.New("batchbench: give a number of batches or a duration")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		total    Result
		firstErr error
		next     int // batches handed out
		wg       sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	take := func() (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr != nil || ctx.Err() != nil {
			return 0, false
		}
		if batches > 0 && next >= batches {
			return 0, false
		}
		if batches <= 0 && !time.Now().Before(deadline) {
			return 0, false
		}
		next++
		return next, true
	}
	start := time.Now()
	for c := range w.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine Result
			for n := 0; ; n++ {
				if _, ok := take(); !ok {
					break
				}
				if err := sendBatch(ctx, client, url, w, w.Body(c, n), &mine); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					break
				}
			}
			mu.Lock()
			total = Merge(total, mine)
			mu.Unlock()
		}()
	}
	wg.Wait()
	total.Elapsed = time.Since(start)
	return total, firstErr
}

func sendBatch(ctx context.Context, client *http.Client, url string, w Workload, body []byte, res *Result) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/batches", bytes.NewReader(body))
	if err != nil {
		return err
	}
	for k, v := range w.Header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	if w.Keys {
		var k [16]byte
		crand.Read(k[:])
		req.Header.Set("Idempotency-Key", "bench-"+hex.EncodeToString(k[:]))
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("batchbench: status %d: %s", resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var lines int
	done := false
	for sc.Scan() {
		l := sc.Bytes()
		switch {
		case bytes.HasPrefix(l, []byte(`{"seq":`)):
			res.Latencies = append(res.Latencies, time.Since(start))
			lines++
			if bytes.Contains(l, []byte(`"status":"committed"`)) {
				res.Committed++
			} else {
				res.Aborted++
			}
		case bytes.HasPrefix(l, []byte(`{"done":true`)):
			done = true
		default:
			return fmt.Errorf("batchbench: unexpected line %.200s", l)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !done || lines != w.BatchSize {
		return fmt.Errorf("batchbench: stream had %d of %d lines, done %v", lines, w.BatchSize, done)
	}
	res.Batches++
	res.Transactions += lines
	return nil
}

// ResetAccounts puts every demo account back to 1000.00, so each run
// starts from the same balances.
func ResetAccounts(ctx context.Context, pool *pgxpool.Pool) error {
	_, err := pool.Exec(ctx, "UPDATE accounts SET balance = 1000.00 WHERE balance <> 1000.00")
	return err
}

// Serve serves h on a free loopback port until stop is called.
func Serve(h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// Ratio formats a/b as "0.93x".
func Ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "x"
}
