package frontend

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/client"
	"hafe.dev/hafe/mtcp"
	"hafe.dev/hafe/txn"
)

// trackingListener remembers the transport connections it accepted, so a
// test can cut them all at once as a crash would.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) cutAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

type mtcpCluster struct {
	fes   []*frontendUnderTest
	lns   []*mtcp.Listener
	raw   []*trackingListener
	addrs []string
}

// startMTCPCluster runs n front-ends on the database at url, each serving
// over MTCP too; eager ones save snapshots in the database.
func startMTCPCluster(t testing.TB, url string, n int, eager bool, mod func(*Config)) *mtcpCluster {
	return startMTCPClusterWith(t, url, n, mtcpOptions{eager: eager, peers: true}, mod)
}

// mtcpOptions: eager saves snapshots in the database; without peers the
// front-ends have no cluster key, so every move takes the state from the
// database; onMigration hears every front-end's migrations.
type mtcpOptions struct {
	eager, peers bool
	onMigration  func(mtcp.MigrationStats)
	// dbURL, when set, is front-end i's database URL (default url).
	dbURL func(i int) string
}

func startMTCPClusterWith(t testing.TB, url string, n int, o mtcpOptions, mod func(*Config)) *mtcpCluster {
	t.Helper()
	eager := o.eager
	key := []byte("test cluster key, 32 bytes long!")
	if !o.peers {
		key = nil
	}
	mc := &mtcpCluster{}
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		mc.raw = append(mc.raw, &trackingListener{Listener: ln})
		mc.addrs = append(mc.addrs, ln.Addr().String())
	}
	for i := range n {
		cfg := Config{ID: fmt.Sprintf("fe-%d", i), MTCPAddr: mc.addrs[i], AllowRawSQL: true, HeartbeatInterval: 200 * time.Millisecond,
			Executor: txn.Config{Incarnation: rand.Text()}}
		if mod != nil {
			mod(&cfg)
		}
		feURL := url
		if o.dbURL != nil {
			feURL = o.dbURL(i)
		}
		fe := startFrontend(t, feURL, cfg, true)
		lcfg := mtcp.ListenConfig{Logger: testLogger(t, "mtcp-"+cfg.ID), Self: mc.addrs[i], Servers: mc.addrs, ClusterKey: key, PeerTimeout: 500 * time.Millisecond,
			OnMigration: func(s mtcp.MigrationStats) {
				fe.ObserveMigration(s)
				if o.onMigration != nil {
					o.onMigration(s)
				}
			}}
		if eager {
			pool, err := pgxpool.New(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			lcfg.Store = backendext.NewSnapshotStore(pool, cfg.ID)
		}
		ln := mtcp.NewListener(mc.raw[i], lcfg)
		go fe.ServeMTCP(ln)
		t.Cleanup(func() { ln.Close() })
		mc.fes = append(mc.fes, fe)
		mc.lns = append(mc.lns, ln)
	}
	for _, fe := range mc.fes {
		waitFor(t, "every front-end to list every MTCP address", func() bool { return len(fe.MTCPServers()) == n })
	}
	return mc
}

// crash stops front-end i's MTCP side the hard way: its transport
// connections vanish and its peer channel is gone. Its batches go on
// writing into the void until they find they were fenced, as a process
// that is merely cut off would.
func (mc *mtcpCluster) crash(i int) {
	mc.raw[i].cutAll()
	mc.lns[i].Close()
}

// mtcpClient is an HTTP client over MTCP, remembering its connection.
type mtcpClient struct {
	*http.Client
	mu         sync.Mutex
	conn       *mtcp.Conn
	migrations []mtcp.MigrationStats
}

func newMTCPClient(t testing.TB, addrs []string) *mtcpClient {
	mc := &mtcpClient{}
	d := &mtcp.Dialer{Logger: testLogger(nil, "client"), Servers: addrs, OnMigration: func(s mtcp.MigrationStats) {
		mc.mu.Lock()
		mc.migrations = append(mc.migrations, s)
		mc.mu.Unlock()
	}}
	d.Triggers.PathTimeout = 500 * time.Millisecond
	mc.Client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		c, err := d.DialMTCP(ctx, addr)
		if err == nil {
			mc.mu.Lock()
			mc.conn = c
			mc.mu.Unlock()
		}
		return c, err
	}}}
	t.Cleanup(mc.CloseIdleConnections)
	return mc
}

// effectBatch is n raw SQL transactions, each leaving one effect named
// after its slot, so the database shows whether any ran twice.
func effectBatch(tag string, n int) string {
	txns := make([]string, n)
	for i := range txns {
		txns[i] = rawTxn(fmt.Sprintf("INSERT INTO effects (note) VALUES ('%s-%d')", tag, i+1))
	}
	return batchBody(txns...)
}

// readBatch reads a batch response line by line, calling at after each.
func readBatch(t *testing.T, resp *http.Response, at func(n int)) []line {
	t.Helper()
	br := bufio.NewReader(resp.Body)
	var lines []line
	for {
		raw, err := br.ReadBytes('\n')
		if err == io.EOF && len(raw) == 0 {
			return lines
		}
		if err != nil {
			t.Fatalf("after %d lines: %v", len(lines), err)
		}
		var l line
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatalf("line %d %q: %v", len(lines)+1, raw, err)
		}
		lines = append(lines, l)
		at(len(lines))
	}
}

// checkExactlyOnce checks a finished batch's lines and what the database
// recorded for it: every slot reported once in order, a summary that adds
// up, no effect twice and every reported commit's effect there.
func checkExactlyOnce(t *testing.T, db *checker, tag string, n int, lines []line) {
	t.Helper()
	if len(lines) != n+1 {
		t.Fatalf("%d lines, want %d and a summary", len(lines), n)
	}
	committed := 0
	for i, l := range lines[:n] {
		if l.Seq != i+1 {
			t.Fatalf("line %d reports slot %d", i+1, l.Seq)
		}
		if l.Status == "committed" {
			committed++
			if got := db.count("SELECT count(*) FROM effects WHERE note = $1", fmt.Sprintf("%s-%d", tag, l.Seq)); got != 1 {
				t.Errorf("slot %d reported committed; its effect is there %d times", l.Seq, got)
			}
		}
	}
	sum := lines[n]
	if !sum.Done || sum.Committed != committed || sum.Committed+sum.Aborted != n {
		t.Errorf("summary %+v, %d committed lines", sum, committed)
	}
	if dup := db.count("SELECT count(*) FROM (SELECT note FROM effects WHERE note LIKE $1 GROUP BY note HAVING count(*) > 1) x", tag+"-%"); dup != 0 {
		t.Errorf("%d effects of %s ran more than once", dup, tag)
	}
	if got := db.count("SELECT count(*) FROM effects WHERE note LIKE $1", tag+"-%"); got != committed {
		t.Errorf("%d effects of %s in the database, %d reported committed", got, tag, committed)
	}
}

// TestBatchOverMTCPSurvivesItsFrontEnd: a batch streams over MTCP; in the
// middle its front-end crashes (eager: the next one takes the connection
// from the database) or the client moves (lazy: the state comes from the
// origin). The stream goes on from another front-end, with no second
// request, every slot once.
func TestBatchOverMTCPSurvivesItsFrontEnd(t *testing.T) {
	for _, eager := range []bool{true, false} {
		t.Run(fmt.Sprintf("eager=%v", eager), func(t *testing.T) {
			url := newDB(t)
			db := newChecker(t, url)
			mc := startMTCPCluster(t, url, 3, eager, nil)
			cl := newMTCPClient(t, mc.addrs)
			const n = 60
			req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(effectBatch("b", n)))
			req.Header.Set("Content-Type", "application/json")
			resp, err := cl.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Hafe-Front-End") != "fe-0" {
				t.Fatalf("status %d from %q", resp.StatusCode, resp.Header.Get("Hafe-Front-End"))
			}
			lines := readBatch(t, resp, func(k int) {
				if k != 10 {
					return
				}
				if eager {
					mc.crash(0)
					return
				}
				cl.mu.Lock()
				c := cl.conn
				cl.mu.Unlock()
				if err := c.Migrate(context.Background(), mc.addrs[1]); err != nil {
					t.Fatal(err)
				}
			})
			checkExactlyOnce(t, db, "b", n, lines)
			if got := db.count("SELECT count(*) FROM hafe.batches"); got != 1 {
				t.Errorf("%d batches: the client's request ran more than once", got)
			}
			cl.mu.Lock()
			defer cl.mu.Unlock()
			if len(cl.migrations) == 0 {
				t.Fatal("the connection never migrated")
			}
			// The front-ends counted the move and the takeover it caused.
			var viaMigration, taken, handed float64
			for _, fe := range mc.fes {
				viaMigration += fe.metric(t, "hafe_batch_takeovers_total", "via", "migration")
				taken += fe.metric(t, "hafe_mtcp_migrations_total", "role", "new_server", "result", "ok")
				handed += fe.metric(t, "hafe_mtcp_migrations_total", "role", "origin", "result", "ok")
			}
			if viaMigration != 1 || taken < 1 || !eager && handed < 1 {
				t.Errorf("metrics: %v takeovers via migration, %v connections taken, %v handed over", viaMigration, taken, handed)
			}
			// The front-end that took the connection skipped the lines it
			// came with (all the client had, lazily all the origin wrote)
			// instead of reading them from the database to write them again.
			var replayed float64
			for _, fe := range mc.fes {
				replayed += fe.metric(t, "hafe_transactions_total", "source", "replayed")
			}
			if !eager && replayed >= 10 {
				t.Errorf("%v lines replayed after the move; the client had 10 and the origin sent them", replayed)
			}
			for _, m := range cl.migrations {
				t.Logf("migration %s → %s: %v, %v", m.From, m.To, m.Mode, m.Err)
			}
			// The connection carries on: a second batch on it.
			req, _ = http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(effectBatch("c", 5)))
			req.Header.Set("Content-Type", "application/json")
			resp2, err := cl.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp2.Body.Close()
			checkExactlyOnce(t, db, "c", 5, readBatch(t, resp2, func(int) {}))
		})
	}
}

// testLogger logs to the test output when HAFE_TEST_LOG is set.
func testLogger(t testing.TB, name string) *slog.Logger {
	if os.Getenv("HAFE_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", name)
}

// TestMTCPServesEveryRoute: over MTCP the API answers as over plain HTTP,
// refusals and other routes included, all on one kept-alive connection.
func TestMTCPServesEveryRoute(t *testing.T) {
	url := newDB(t)
	mc := startMTCPCluster(t, url, 1, true, nil)
	var dials atomic.Int32
	d := &mtcp.Dialer{Servers: mc.addrs}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
		dials.Add(1)
		return d.DialContext(ctx, n, a)
	}}}
	t.Cleanup(hc.CloseIdleConnections)
	base := "http://" + mc.addrs[0]
	for _, tt := range []struct {
		method, path, ctype, body string
		status                    int
		want                      string
	}{
		{"GET", "/healthz", "", "", 200, `"status":"ok"`},
		{"GET", "/nope", "", "", 404, `"not_found"`},
		{"POST", "/v1/batches", "text/plain", batchBody(transferTxn(1, 2, "1")), 415, `"unsupported_media_type"`},
		{"POST", "/v1/batches", "application/json", `{"transactions":[`, 400, `"error"`},
		{"GET", "/v1/templates", "", "", 200, `"transfer"`},
		{"POST", "/v1/batches", "application/json", batchBody(transferTxn(1, 2, "1")), 200, `"done":true`},
		{"GET", "/metrics", "", "", 200, `hafe_mtcp_connections 1`},
	} {
		req, _ := http.NewRequest(tt.method, base+tt.path, strings.NewReader(tt.body))
		if tt.ctype != "" {
			req.Header.Set("Content-Type", tt.ctype)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.want) || resp.Header.Get("Date") != "" {
			t.Errorf("%s %s: %d %q (Date %q), want %d with %s and no Date", tt.method, tt.path, resp.StatusCode, b, resp.Header.Get("Date"), tt.status, tt.want)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections for the requests, want one kept alive", n)
	}
}

// TestMTCPLargeBodyInEagerMode: an eager front-end acknowledges a request
// only once it has answered it, so the client keeps the whole body
// buffered meanwhile; the client package's default makes room for bodies
// as large as hafe serve takes.
func TestMTCPLargeBodyInEagerMode(t *testing.T) {
	url := newDB(t)
	mc := startMTCPCluster(t, url, 2, true, nil)
	c, err := client.New(client.Config{FrontEnds: mc.addrs[:1], MTCP: &mtcp.Dialer{}, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	// 100 statements (the most a transaction takes) just under the
	// statement limit: 6 MiB.
	stmts := make([]string, 100)
	for i := range stmts {
		stmts[i] = fmt.Sprintf("SELECT %d AS n /* %s */", i, strings.Repeat("x", 63<<10))
	}
	body := batchBody(rawTxn(stmts...), transferTxn(1, 2, "1"))
	sum, err := c.Submit(context.Background(), client.Request{Body: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Committed != 2 || sum.Attempts != 1 {
		t.Fatalf("summary %+v", sum)
	}
}

// TestDrainMovesRunningBatchesOverMTCP: POST /admin/drain?wait moves the
// MTCP connection of a running batch to the other front-end, where the
// batch goes on in the same response; the drain answers once nothing is
// left.
func TestDrainMovesRunningBatchesOverMTCP(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	mc := startMTCPCluster(t, url, 2, false, func(c *Config) { c.AdminToken = "admin" })
	cl := newMTCPClient(t, mc.addrs)
	const n = 60
	req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(effectBatch("d", n)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var drained map[string]any
	lines := readBatch(t, resp, func(k int) {
		if k == 10 {
			resp := mc.fes[0].do(t, request{path: "/admin/drain?wait=20s", header: map[string]string{"Authorization": "Bearer admin"}})
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("drain: status %d", resp.StatusCode)
			}
			json.NewDecoder(resp.Body).Decode(&drained)
		}
	})
	checkExactlyOnce(t, db, "d", n, lines)
	if drained["status"] != "drained" || drained["mtcp_connections"] != 0.0 || drained["batches_in_flight"] != 0.0 {
		t.Errorf("drain answered %v", drained)
	}
	if got := mc.fes[1].metric(t, "hafe_batch_takeovers_total", "via", "migration"); got != 1 {
		t.Errorf("%v takeovers via migration on the other front-end, want 1", got)
	}
	if got := mc.fes[0].metric(t, "hafe_mtcp_migrations_total", "role", "origin", "trigger", "redirect", "result", "ok"); got != 1 {
		t.Errorf("%v redirected migrations counted by the drained front-end, want 1", got)
	}
}

// TestPipelinedRequestsSurviveAMove: two batches sent back to back in one
// write (HTTP/1.1 pipelining) are both answered, in order, although the
// connection moves during the first: the second request, already read
// into the front-end's buffer when the first answer began, travels in the
// connection's state.
func TestPipelinedRequestsSurviveAMove(t *testing.T) {
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprintf("eager=%v", eager), func(t *testing.T) {
			url := newDB(t)
			db := newChecker(t, url)
			mc := startMTCPCluster(t, url, 3, eager, nil)
			c, err := (&mtcp.Dialer{Servers: mc.addrs}).DialMTCP(context.Background(), mc.addrs[0])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var reqs strings.Builder
			for _, tag := range []string{"p1", "p2"} {
				body := effectBatch(tag, 40)
				fmt.Fprintf(&reqs, "POST /v1/batches HTTP/1.1\r\nHost: hafe\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			}
			if _, err := io.WriteString(c, reqs.String()); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			for i, tag := range []string{"p1", "p2"} {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i+1, err)
				}
				// Away from its front-end during each answer: the second
				// request's bytes are then in the state's unparsed input.
				lines := readBatch(t, resp, func(k int) {
					if k != 5 {
						return
					}
					cur := slices.Index(mc.addrs, c.Server())
					if eager {
						mc.crash(cur)
					} else if err := c.Migrate(context.Background(), mc.addrs[(cur+1)%3]); err != nil {
						t.Fatal(err)
					}
				})
				resp.Body.Close()
				checkExactlyOnce(t, db, tag, 40, lines)
			}
			if got := db.count("SELECT count(*) FROM hafe.batches"); got != 2 {
				t.Errorf("%d batches for two requests", got)
			}
		})
	}
}

// dbProxy is a TCP proxy in front of PostgreSQL that can cut a front-end
// off from the database: cut closes every proxied connection and refuses
// new ones.
type dbProxy struct {
	ln     net.Listener
	to     string
	mu     sync.Mutex
	conns  []net.Conn
	down   bool
	frozen chan struct{} // while set, nothing is forwarded; closed by cut
}

func newDBProxy(t testing.TB, to string) *dbProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dbProxy{ln: ln, to: to}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			down := p.down
			p.mu.Unlock()
			if down {
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go p.pipe(s, c)
			go p.pipe(c, s)
		}
	}()
	return p
}

// pipe forwards src to dst, holding the bytes while the proxy is frozen.
func (p *dbProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			frozen := p.frozen
			p.mu.Unlock()
			if frozen != nil {
				<-frozen
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze stops forwarding without closing anything: the front-end and
// PostgreSQL each see a peer that went silent, as across a cut cable.
func (p *dbProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen == nil {
		p.frozen = make(chan struct{})
	}
}

func (p *dbProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen != nil {
		close(p.frozen)
		p.frozen = nil
	}
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestFrontEndCutOffFromTheDatabaseHandsItsBatchesOn: a front-end that
// loses PostgreSQL while its MTCP client's path is fine moves the
// connection to a front-end that still reaches the database (after three
// failed probes), where the batch goes on in the same response: an MTCP
// client has no Idempotency-Key to retry with.
func TestFrontEndCutOffFromTheDatabaseHandsItsBatchesOn(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	host := "127.0.0.1:" + strconv.Itoa(server.Port())
	proxy := newDBProxy(t, host)
	mc := startMTCPClusterWith(t, url, 2, mtcpOptions{eager: true, peers: true, dbURL: func(i int) string {
		if i == 0 {
			return strings.Replace(url, host, proxy.ln.Addr().String(), 1)
		}
		return url
	}}, func(c *Config) { c.Executor.SettleTimeout = time.Minute })
	// The client's triggers as they come: its path stays fine, so only
	// the front-end can decide to move it.
	d := &mtcp.Dialer{Servers: mc.addrs}
	cl := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	t.Cleanup(cl.CloseIdleConnections)
	txns := make([]string, 30)
	for i := range txns {
		txns[i] = rawTxn(fmt.Sprintf("INSERT INTO effects (note) VALUES ('x-%d')", i+1), "SELECT pg_sleep(0.05)")
	}
	req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(batchBody(txns...)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := readBatch(t, resp, func(k int) {
		if k == 5 {
			proxy.cut()
		}
	})
	checkExactlyOnce(t, db, "x", 30, lines)
	if got := mc.fes[1].metric(t, "hafe_batch_takeovers_total", "via", "migration"); got != 1 {
		t.Errorf("%v takeovers via migration on the front-end with the database, want 1", got)
	}
}

// TestMTCPRefusesMalformedAndHugeRequests: bytes that are not HTTP/1.1,
// and headers past 1 MiB, get a JSON refusal and the connection closes;
// the front-end holds no more than the limit.
func TestMTCPRefusesMalformedAndHugeRequests(t *testing.T) {
	url := newDB(t)
	mc := startMTCPCluster(t, url, 1, false, nil)
	for _, tt := range []struct {
		name, req string
		status    int
		code      string
	}{
		{"garbage", "HELLO\r\n\r\n", 400, "bad_request"},
		{"huge header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", 431, "headers_too_large"},
	} {
		c, err := (&mtcp.Dialer{Servers: mc.addrs}).DialMTCP(context.Background(), mc.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		go io.WriteString(c, tt.req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var r refusal
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != tt.status || r.Error.Code != tt.code || !resp.Close {
			t.Errorf("%s: %d %q (close %v), want %d %s and close", tt.name, resp.StatusCode, r.Error.Code, resp.Close, tt.status, tt.code)
		}
		c.Close()
	}
}

// TestTakeoverFencesAnOwnerCutOffMidTransaction: a front-end cut off from
// everything in the middle of a slot (its PostgreSQL session stays open,
// idle in its transaction, holding row locks) hands its connection on;
// the front-end that takes the batch over, whose slot needs those rows,
// terminates the old run's sessions as soon as its heartbeat has aged,
// not after idle_in_transaction_session_timeout: every slot commits.
func TestTakeoverFencesAnOwnerCutOffMidTransaction(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	host := "127.0.0.1:" + strconv.Itoa(server.Port())
	proxy := newDBProxy(t, host)
	mc := startMTCPClusterWith(t, url, 2, mtcpOptions{eager: true, peers: true, dbURL: func(i int) string {
		if i == 0 {
			return strings.Replace(url, host, proxy.ln.Addr().String(), 1)
		}
		return url
	}}, func(c *Config) {
		c.Executor.OwnerLiveness = 2 * time.Second
		c.Executor.RawSQL.Timeout = 15 * time.Second
	})
	t.Cleanup(proxy.cut) // before the front-ends stop: fe-0 need not wait out its calls
	d := &mtcp.Dialer{Servers: mc.addrs}
	cl := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	t.Cleanup(cl.CloseIdleConnections)
	const n = 12
	txns := make([]string, n)
	for i := range txns {
		txns[i] = rawTxn("UPDATE accounts SET balance = balance + 0 WHERE id = 1",
			fmt.Sprintf("INSERT INTO effects (note) VALUES ('o-%d')", i+1), "SELECT pg_sleep(0.3)")
	}
	req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(batchBody(txns...)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := readBatch(t, resp, func(k int) {
		if k == 3 {
			// Once slot 4 is in its pg_sleep, holding account 1's row.
			waitFor(t, "slot 4 to sleep on fe-0", func() bool {
				return db.count(`SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'hafe/fe-0/%'
					AND state = 'active' AND query LIKE '%pg_sleep%'`) == 1
			})
			proxy.freeze()
		}
	})
	checkExactlyOnce(t, db, "o", n, lines)
	if last := lines[len(lines)-1]; last.Committed != n {
		t.Errorf("%d of %d committed: a slot waited for the cut-off owner's locks until it gave up", last.Committed, n)
	}
	if got := mc.fes[1].metric(t, "hafe_fence_terminations_total", "kind", "previous_run"); got < 1 {
		t.Errorf("%v sessions of the cut-off run terminated, want its open transaction's", got)
	}
}

// TestDrainingFrontEndMovesANewBatchOverMTCP: a batch that reaches a
// front-end over MTCP once it has begun to drain is not refused with 503
// (its client has no reason to send it again): the connection moves, and
// the next front-end runs it.
func TestDrainingFrontEndMovesANewBatchOverMTCP(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	mc := startMTCPCluster(t, url, 2, false, nil)
	cl := newMTCPClient(t, mc.addrs)
	resp, err := cl.Get("http://" + mc.addrs[0] + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Draining has begun; the listener has not moved the connection yet.
	mc.fes[0].batches.drain()
	req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(effectBatch("n", 5)))
	req.Header.Set("Content-Type", "application/json")
	resp, err = cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	checkExactlyOnce(t, db, "n", 5, readBatch(t, resp, func(int) {}))
}
