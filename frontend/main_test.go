package frontend

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/internal/pgtemp/pgtest"
	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/txn"
)

// server is the throwaway PostgreSQL every test and benchmark of this
// package shares; each test gets databases of its own.
var server *pgtemp.Server

func TestMain(m *testing.M) {
	pgtest.Main(m, &server, func(code int) int {
		if code == 0 && bench == nil {
			if leaked := leakedGoroutines(); leaked != "" {
				fmt.Fprintf(os.Stderr, "goroutines left running after the tests:\n%s\n", leaked)
				return 1
			}
		}
		return code
	})
}

// leakedGoroutines waits for the goroutines the tests started (servers,
// batches, pools, clients) to end and describes those that do not.
func leakedGoroutines() string {
	http.DefaultClient.CloseIdleConnections()
	var leaked []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		leaked = leaked[:0]
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			// The shared PostgreSQL server outlives the tests by design.
			if strings.Contains(g, "internal/pgtemp") {
				continue
			}
			if strings.Contains(g, "hafe.dev/hafe/") && !strings.Contains(g, "leakedGoroutines") ||
				strings.Contains(g, "net/http.(*persistConn)") || strings.Contains(g, "net/http.(*conn).serve") ||
				strings.Contains(g, "jackc/puddle") || strings.Contains(g, "jackc/pgx") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
	}
	return strings.Join(leaked, "\n\n")
}

// effectsSchema gives raw SQL tests a table whose rows show what ran, and
// a lock they can hold a transaction on.
const effectsSchema = `CREATE TABLE effects (id serial PRIMARY KEY, note text NOT NULL);`

// holdLock is a raw SQL statement that waits while a test holds advisory
// lock 42, so a test decides when a transaction may end without sleeping.
const holdLock = `SELECT pg_advisory_xact_lock(42)`

// clientGrants lets raw SQL (which runs as the client role) use the
// application's tables, as docs/operations.md tells operators to.
const clientGrants = `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO hafe_client;
	GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO hafe_client;`

// newDB makes a fresh database with hafe installed, the demo bank and the
// effects table, and returns its URL. The client role may log in, with
// clientPassword.
func newDB(t testing.TB) string {
	return pgtest.Database(t, server, "frontend", hafesql.DemoSchema()+effectsSchema+clientGrants+clientLogin)
}

// clientPassword is the client role's, as an operator would set it.
const clientPassword = "client-secret"

const clientLogin = `ALTER ROLE hafe_client LOGIN PASSWORD '` + clientPassword + `';`

// rawSQLFor returns what a front-end on pool needs to run raw SQL: a pool
// of sessions that log in as the client role (at most conns), and the
// outcome key read with pool's own role, as hafe serve does.
func rawSQLFor(t testing.TB, pool *pgxpool.Pool, id string, conns int32) txn.RawSQLConfig {
	t.Helper()
	return rawSQLForRun(t, pool, id, "", conns)
}

// rawSQLForRun is rawSQLFor with the raw sessions named after the run
// (incarnation), as hafe serve names them, so a takeover can fence them.
func rawSQLForRun(t testing.TB, pool *pgxpool.Pool, id, incarnation string, conns int32) txn.RawSQLConfig {
	t.Helper()
	cfg := pool.Config().Copy()
	cfg.ConnConfig.User = backendext.DefaultClientRole
	cfg.ConnConfig.Password = clientPassword
	cfg.MaxConns = conns
	cfg.ConnConfig.RuntimeParams = map[string]string{}
	backendext.ConfigureRawPool(cfg, id, incarnation, time.Minute, txn.DefaultRawSQLTimeout)
	raw, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Close)
	key, err := backendext.ReadOutcomeKey(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return txn.RawSQLConfig{Pool: raw, OutcomeKey: key}
}

// checker reads the database the way a test's assertions need.
type checker struct {
	t    testing.TB
	pool *pgxpool.Pool
}

func newChecker(t testing.TB, url string) *checker {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return &checker{t: t, pool: p}
}

func (c *checker) count(query string, args ...any) int {
	c.t.Helper()
	var n int
	if err := c.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		c.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// state is everything a request could have changed.
type dbState struct {
	Batches, Outcomes, Effects, ChangedAccounts int
	Balances                                    string
}

func (c *checker) state() dbState {
	c.t.Helper()
	var s dbState
	s.Batches = c.count("SELECT count(*) FROM hafe.batches")
	s.Outcomes = c.count("SELECT count(*) FROM hafe.outcomes")
	s.Effects = c.count("SELECT count(*) FROM effects")
	s.ChangedAccounts = c.count("SELECT count(*) FROM accounts WHERE balance <> 1000")
	if err := c.pool.QueryRow(context.Background(), "SELECT string_agg(balance::text, ',' ORDER BY id) FROM accounts").Scan(&s.Balances); err != nil {
		c.t.Fatal(err)
	}
	return s
}

// untouched fails unless the database is as newDB left it.
func (c *checker) untouched() {
	c.t.Helper()
	if s := c.state(); s.Batches != 0 || s.Outcomes != 0 || s.Effects != 0 || s.ChangedAccounts != 0 {
		c.t.Fatalf("the database was written: %d batches, %d outcomes, %d effects, %d accounts changed", s.Batches, s.Outcomes, s.Effects, s.ChangedAccounts)
	}
}

// balanceSum is the demo bank's total; transfers keep it at 100000.
func (c *checker) balanceSum() string {
	c.t.Helper()
	var s string
	if err := c.pool.QueryRow(context.Background(), "SELECT sum(balance)::text FROM accounts").Scan(&s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

// waitFor polls cond until it holds. The deadline only stops a hung test;
// nothing here measures speed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockHolder holds advisory lock 42 in a session of its own until release.
type lockHolder struct {
	conn *pgx.Conn
	once sync.Once
}

func holdAdvisoryLock(t testing.TB, url string) *lockHolder {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_advisory_lock(42)"); err != nil {
		t.Fatal(err)
	}
	h := &lockHolder{conn: c}
	t.Cleanup(h.release)
	return h
}

func (h *lockHolder) release() {
	h.once.Do(func() { h.conn.Close(context.Background()) })
}

// waiters counts sessions waiting for advisory lock 42.
func (c *checker) lockWaiters() int {
	return c.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42 AND NOT granted")
}

// frontendUnderTest is a Server behind a real HTTP server on loopback.
type frontendUnderTest struct {
	*Server
	url  string
	http *httptest.Server
}

// startFrontend runs a front-end with cfg on the database at url. With
// member set it also heartbeats, as hafe serve does.
func startFrontend(t testing.TB, url string, cfg Config, member bool) *frontendUnderTest {
	t.Helper()
	if cfg.ID == "" {
		cfg.ID = "fe-test"
	}
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	// Sessions are named after the run as hafe serve names them when the
	// test sets cfg.Executor.Incarnation, so a takeover can fence them.
	backendext.ConfigurePool(pcfg, cfg.ID, cfg.Executor.Incarnation, time.Minute)
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if cfg.ControlPool == nil {
		cfg.ControlPool = controlPool(t, url, cfg.ID)
	}
	f := startFrontendOn(t, pool, cfg)
	if member {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { f.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return f
}

// controlPool is the few connections a front-end keeps for its
// heartbeat, readiness and admin routes, as hafe serve gives it.
func controlPool(t testing.TB, url, id string) *pgxpool.Pool {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 2
	backendext.ConfigurePool(pcfg, id, "", time.Minute)
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// startFrontendOn runs a front-end with cfg on pool behind a loopback HTTP
// server, closed when the test ends.
func startFrontendOn(t testing.TB, pool *pgxpool.Pool, cfg Config) *frontendUnderTest {
	t.Helper()
	if cfg.ID == "" {
		cfg.ID = "fe-test"
	}
	if cfg.AllowRawSQL && cfg.Executor.RawSQL.Pool == nil {
		timeout := cfg.Executor.RawSQL.Timeout
		cfg.Executor.RawSQL = rawSQLForRun(t, pool, cfg.ID, cfg.Executor.Incarnation, 4)
		cfg.Executor.RawSQL.Timeout = timeout
	}
	s, err := New(pool, cfg, testLogger(t, cfg.ID))
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, s)
}

// startServer serves s on loopback until the test ends.
func startServer(t testing.TB, s *Server) *frontendUnderTest {
	t.Helper()
	hs := httptest.NewUnstartedServer(nil)
	s.ConfigureHTTP(hs.Config)
	hs.Start()
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
	})
	return &frontendUnderTest{Server: s, url: hs.URL, http: hs}
}

// request is one HTTP request a test sends. A POST goes as
// application/json unless header says otherwise; a Content-Type of "-"
// sends none. more adds header lines, e.g. a header twice.
type request struct {
	method string
	path   string
	body   string
	header map[string]string
	more   http.Header
}

func (f *frontendUnderTest) do(t testing.TB, r request) *http.Response {
	t.Helper()
	resp, err := f.doContext(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func (f *frontendUnderTest) doContext(ctx context.Context, r request) (*http.Response, error) {
	if r.method == "" {
		r.method = http.MethodPost
	}
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, f.url+r.path, body)
	if err != nil {
		return nil, err
	}
	if r.body != "" || r.method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	if req.Header.Get("Content-Type") == "-" {
		req.Header.Del("Content-Type")
	}
	for k, vs := range r.more {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	return http.DefaultClient.Do(req)
}

// post sends a batch and returns the response with its body read.
func (f *frontendUnderTest) post(t testing.TB, body string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	resp := f.do(t, request{path: "/v1/batches", body: body, header: header})
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func (f *frontendUnderTest) getJSON(t testing.TB, path string, header map[string]string, wantStatus int) map[string]any {
	t.Helper()
	resp := f.do(t, request{method: http.MethodGet, path: path, header: header})
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: status %d, want %d: %s", path, resp.StatusCode, wantStatus, b)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("GET %s: body is not a JSON object: %v: %s", path, err, b)
	}
	return v
}

// refusal is the JSON body of every 4xx/5xx answer.
type refusal struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// checkRefusal asserts a refusal's status, content type and error code.
func checkRefusal(t testing.TB, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	var r refusal
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("refusal body %s: %v", body, err)
	}
	if r.Error.Code != code {
		t.Fatalf("error code %q, want %q (message %q)", r.Error.Code, code, r.Error.Message)
	}
	if r.Error.Message == "" {
		t.Fatalf("refusal %s has no message", code)
	}
}

// streamReader reads an NDJSON response line by line.
type streamReader struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func newStreamReader(resp *http.Response) *streamReader {
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	return &streamReader{resp: resp, sc: sc}
}

// next returns the next line without its newline, or fails the test.
func (s *streamReader) next(t testing.TB) []byte {
	t.Helper()
	if !s.sc.Scan() {
		t.Fatalf("stream ended early: %v", s.sc.Err())
	}
	return bytes.Clone(s.sc.Bytes())
}

// line is a decoded response line: a transaction report or the summary.
type line struct {
	Seq     int               `json:"seq"`
	Status  string            `json:"status"`
	Results []json.RawMessage `json:"results"`
	Error   *struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		Statement int    `json:"statement"`
		Detail    string `json:"detail"`
	} `json:"error"`
	Done         bool   `json:"done"`
	BatchID      string `json:"batch_id"`
	Transactions int    `json:"transactions"`
	Committed    int    `json:"committed"`
	Aborted      int    `json:"aborted"`
}

func parseLines(t testing.TB, body []byte) []line {
	t.Helper()
	if !bytes.HasSuffix(body, []byte("\n")) {
		t.Fatalf("stream does not end with a newline: %q", body)
	}
	var out []line
	for _, raw := range bytes.Split(bytes.TrimSuffix(body, []byte("\n")), []byte("\n")) {
		var l line
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("line %s: %v", raw, err)
		}
		out = append(out, l)
	}
	return out
}

// transferTxn is one call of the demo bank's transfer template.
func transferTxn(from, to int, amount string) string {
	return fmt.Sprintf(`{"template":"transfer","args":{"from":%d,"to":%d,"amount":%s}}`, from, to, amount)
}

func batchBody(txns ...string) string {
	return `{"transactions":[` + strings.Join(txns, ",") + `]}`
}

// rawTxn is a raw SQL transaction of the given queries.
func rawTxn(queries ...string) string {
	stmts := make([]string, len(queries))
	for i, q := range queries {
		b, _ := json.Marshal(q)
		stmts[i] = `{"query":` + string(b) + `}`
	}
	return `{"sql":[` + strings.Join(stmts, ",") + `]}`
}

func isCanceled(err error) bool {
	return errors.Is(err, context.Canceled)
}

// withRawSQLTimeout sets how long a raw SQL transaction may run.
func withRawSQLTimeout(cfg *Config, d time.Duration) { cfg.Executor.RawSQL.Timeout = d }
