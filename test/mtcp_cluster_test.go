package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hafe.dev/hafe/mtcp"
	"hafe.dev/hafe/test/harness"
)

// The MTCP fault tests run the failover workload over Migratory TCP: the
// client (in the test process) sends one request per batch on one MTCP
// connection and never retries; when its front-end dies, freezes, drops off
// the network or drains, the connection moves to another front-end, which
// goes on writing the same response. Each response is checked by the
// checker against the database (G1-G4, the money) and line by line against
// a fault-free reference run of the same batch on a fresh copy of the
// database, served by its own front-end "ref".

// mtcpCluster is a failoverCluster whose front-ends serve MTCP, plus the
// reference front-end.
type mtcpCluster struct {
	*failoverCluster
	ref *harness.Hafe
}

// refDatabase is the reference runs' database: a copy of the test database
// taken before any front-end touched it.
const refDatabase = "hafe_ref"

// startMTCPCluster starts PostgreSQL and frontEnds front-ends fe1, fe2, …
// serving MTCP in mode ("eager" or "lazy") with frontEndFlags and extra,
// and the reference front-end, then waits until every front-end gives its
// clients the whole server list.
func startMTCPCluster(t *testing.T, frontEnds int, slow slowPoint, mode string, extra ...string) *mtcpCluster {
	t.Helper()
	nw, pg := startFailoverDB(t, slow)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, pg.URLFor(pg.Config.User, pg.Config.Password, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Exec(ctx, `CREATE DATABASE `+refDatabase+` TEMPLATE `+pg.Config.Database)
	admin.Close(context.Background())
	if err != nil {
		t.Fatalf("copy the fresh database for the reference runs: %v", err)
	}
	all := harness.StartHafes(t, nw, frontEnds+1, func(i int) harness.HafeConfig {
		id, db, raw := fmt.Sprintf("fe%d", i+1), pg.NetworkURL, pg.NetworkURLFor("hafe_client", clientPassword)
		if i == frontEnds {
			id, db, raw = "ref", withDatabase(db, refDatabase), withDatabase(raw, refDatabase)
		}
		flags := append(slices.Clone(frontEndFlags), "--raw-sql-db", raw)
		return harness.HafeConfig{Alias: id, Args: harness.ServeArgs(db, id, append(flags, extra...)...),
			MTCP: &harness.MTCPConfig{Mode: mode}}
	})
	c := &mtcpCluster{
		failoverCluster: &failoverCluster{pg: pg, fes: all[:frontEnds], body: failoverBatch(failoverSlots, slow, "")},
		ref:             all[frontEnds],
	}
	for _, fe := range c.fes {
		c.waitServerList(ctx, t, fe)
	}
	return c
}

func withDatabase(u, database string) string {
	pu, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	pu.Path = "/" + database
	return pu.String()
}

// waitServerList waits until fe hands its MTCP clients every front-end's
// address (the members table is read on heartbeats), so that a client
// knows where to go when fe fails.
func (c *mtcpCluster) waitServerList(ctx context.Context, t *testing.T, fe *harness.Hafe) {
	t.Helper()
	want := mtcpAddrs(c.fes)
	d := &mtcp.Dialer{DialPath: harness.MTCPDialPath(c.fes...)}
	var got []string
	for range 100 { // 10s
		conn, err := d.DialMTCP(ctx, fe.MTCPAddr)
		if err != nil {
			t.Fatalf("MTCP to %s: %v", fe.Alias, err)
		}
		got = conn.Servers()
		conn.Close()
		if len(got) == len(want) && !slices.ContainsFunc(want, func(a string) bool { return !slices.Contains(got, a) }) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s gives its MTCP clients %v, want %v", fe.Alias, got, want)
}

func mtcpAddrs(fes []*harness.Hafe) []string {
	var out []string
	for _, fe := range fes {
		out = append(out, fe.MTCPAddr)
	}
	return out
}

// mtcpClient is one client of the tests: an http.Client whose only
// transport is an mtcp.Dialer, so a request is sent once and never
// retried, with counts of what it did.
type mtcpClient struct {
	name string
	http *http.Client

	dials    atomic.Int64 // MTCP connections opened
	requests atomic.Int64 // requests sent

	mu         sync.Mutex
	conns      []*mtcp.Conn
	migrations []mtcp.MigrationStats
}

// newMTCPClient dials the front-ends fes over MTCP (their advertised
// addresses, mapped to published ports by harness.MTCPDialPath).
//
// It notices a frozen path after 1.5s of silence (pings every 250ms);
// the default 5s would only make the tests slower.
func newMTCPClient(t *testing.T, name string, fes []*harness.Hafe) *mtcpClient {
	cl := &mtcpClient{name: name}
	d := &mtcp.Dialer{
		Servers:  mtcpAddrs(fes),
		DialPath: harness.MTCPDialPath(fes...),
		OnMigration: func(s mtcp.MigrationStats) {
			cl.mu.Lock()
			cl.migrations = append(cl.migrations, s)
			cl.mu.Unlock()
		},
	}
	d.Triggers.KeepAlive = 250 * time.Millisecond
	d.Triggers.PathTimeout = 1500 * time.Millisecond
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			cl.dials.Add(1)
			c, err := d.DialMTCP(ctx, addr)
			if err == nil {
				cl.mu.Lock()
				cl.conns = append(cl.conns, c)
				cl.mu.Unlock()
			}
			return c, err
		},
		DisableKeepAlives: true,
	}
	cl.http = &http.Client{Transport: countingTransport{tr, &cl.requests}}
	t.Cleanup(tr.CloseIdleConnections)
	return cl
}

type countingTransport struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// server is the front-end the client's connection is on now.
func (cl *mtcpClient) server() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if len(cl.conns) == 0 {
		return ""
	}
	return cl.conns[len(cl.conns)-1].Server()
}

func (cl *mtcpClient) migrationLog() []mtcp.MigrationStats {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return slices.Clone(cl.migrations)
}

// start POSTs the batch to fe over MTCP, with no Idempotency-Key (the
// front-ends name it after the connection), and reads the stream in the
// background.
func (cl *mtcpClient) start(ctx context.Context, t *testing.T, fe *harness.Hafe, body []byte) *capture {
	t.Helper()
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, "http://"+fe.MTCPAddr+"/v1/batches", bytes.NewReader(body))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := cl.http.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("%s: POST to %s over MTCP: %v", cl.name, fe.Alias, err)
	}
	c := &capture{
		status:   resp.StatusCode,
		batchID:  resp.Header.Get("Hafe-Batch-Id"),
		frontEnd: resp.Header.Get("Hafe-Front-End"),
		resumed:  resp.Header.Get("Hafe-Resumed") == "true",
		start:    start,
		cancel:   cancel,
		notify:   make(chan struct{}, 1),
		ended:    make(chan struct{}),
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		t.Fatalf("%s: POST to %s over MTCP: %d %s", cl.name, fe.Alias, resp.StatusCode, b)
	}
	t.Cleanup(c.close)
	go c.read(resp.Body)
	return c
}

// mtcpRun is one batch a client sent, for checking.
type mtcpRun struct {
	client   *mtcpClient
	tag      string
	body     []byte
	accounts func(seq int) (from, to int) // nil: failoverAccounts
	stream   *capture
	ref      []byte // the reference run's body
}

// reference runs each batch once on the reference front-end (a fresh copy
// of the database, no fault), all at once, and returns their bodies when
// asked. The batches must not touch the same accounts, so that running
// them together changes nothing in any one's report.
func (c *mtcpCluster) reference(ctx context.Context, t *testing.T, bodies ...[]byte) func() [][]byte {
	t.Helper()
	out := make([][]byte, len(bodies))
	errs := make([]error, len(bodies))
	var wg sync.WaitGroup
	for i, body := range bodies {
		cl := newMTCPClient(t, fmt.Sprintf("ref-%d", i+1), []*harness.Hafe{c.ref})
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.ref.MTCPAddr+"/v1/batches", bytes.NewReader(body))
			if err != nil {
				errs[i] = err
				return
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := cl.http.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			out[i], errs[i] = io.ReadAll(resp.Body)
			if errs[i] == nil && (resp.StatusCode != 200 || !hasDone(out[i])) {
				errs[i] = fmt.Errorf("reference run: %d %q", resp.StatusCode, lastLine(out[i]))
			}
		})
	}
	return func() [][]byte {
		t.Helper()
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("reference run: %v", err)
			}
		}
		return out
	}
}

// checkRuns checks finished runs: each stream complete, from one request
// on one connection (one batch row, named after the connection's first
// request), passing the checker and the money check, and equal line by
// line to its reference run, the done line's batch id aside.
func (c *mtcpCluster) checkRuns(ctx context.Context, t *testing.T, runs ...*mtcpRun) {
	t.Helper()
	var checked []checkedBatch
	for _, r := range runs {
		s := r.stream.bytes()
		if !hasDone(s) {
			t.Errorf("%s: the stream ended without the done line after %d lines: %q", r.client.name, r.stream.lineCount(), lastLine(s))
		}
		if d, q := r.client.dials.Load(), r.client.requests.Load(); d != 1 || q != 1 {
			t.Errorf("%s: %d MTCP connections and %d requests for one batch, want 1 and 1", r.client.name, d, q)
		}
		checked = append(checked, checkedBatch{id: r.stream.batchID, tag: r.tag, streams: [][]byte{s}, accounts: r.accounts})
		compareWithReference(t, r.client.name, s, r.stream.batchID, r.ref)
	}
	c.checkBatches(ctx, t, checked...)

	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	rows, err := db.Query(ctx, `SELECT batch_id::text, coalesce(idem_key, ''), state, epoch FROM hafe.batches ORDER BY created_at`)
	if err != nil {
		t.Fatal(err)
	}
	type batchRow struct {
		id, key, state string
		epoch          int64
	}
	batches, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (batchRow, error) {
		var b batchRow
		return b, r.Scan(&b.id, &b.key, &b.state, &b.epoch)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != len(runs) {
		t.Errorf("%d rows in hafe.batches for %d requests: %+v", len(batches), len(runs), batches)
	}
	for _, b := range batches {
		// Over MTCP a batch without Idempotency-Key is keyed by the
		// connection and the request's number on it: 0, the first.
		if !strings.Contains(b.key, ": mtcp:") || !strings.HasSuffix(b.key, ":0") {
			t.Errorf("batch %s has key %q: not the first request of an MTCP connection", b.id, b.key)
		}
		if b.state != "done" {
			t.Errorf("batch %s is %s, not done", b.id, b.state)
		}
		t.Logf("batch %s: key %s, %s at epoch %d", b.id, b.key, b.state, b.epoch)
	}
}

var doneBatchID = regexp.MustCompile(`"batch_id":"[^"]*"`)

// compareWithReference compares a body with the reference run's line by
// line; only the done line's batch id may differ.
func compareWithReference(t *testing.T, who string, got []byte, batchID string, ref []byte) {
	t.Helper()
	norm := func(b []byte) []string {
		b = doneBatchID.ReplaceAll(b, []byte(`"batch_id":"…"`))
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	if !bytes.Contains(got, []byte(`"batch_id":"`+batchID+`"`)) {
		t.Errorf("%s: the done line does not name batch %s: %q", who, batchID, lastLine(got))
	}
	g, r := norm(got), norm(ref)
	diffs := 0
	for i := range max(len(g), len(r)) {
		var gl, rl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(r) {
			rl = r[i]
		}
		if gl != rl {
			if diffs++; diffs <= 5 {
				t.Errorf("%s: line %d differs from the reference run:\n got %q\nwant %q", who, i+1, gl, rl)
			}
		}
	}
	if diffs > 5 {
		t.Errorf("%s: %d lines differ from the reference run", who, diffs)
	}
	if diffs == 0 {
		t.Logf("%s: %d lines, %d bytes, equal to the reference run's", who, len(g), len(got))
	}
}

// logMigrations logs the client's migrations and returns the successful
// ones.
func logMigrations(t *testing.T, cl *mtcpClient) []mtcp.MigrationStats {
	t.Helper()
	var ok []mtcp.MigrationStats
	for _, m := range cl.migrationLog() {
		// The client does not learn where the new server got the state
		// from (its Mode): see migratedModes.
		t.Logf("%s: migration %s → %s (%s) in %s: err %v", cl.name, m.From, m.To, m.Trigger,
			(m.Initiate + m.Wait + m.Complete).Round(time.Microsecond), m.Err)
		if m.Err == nil {
			ok = append(ok, m)
		}
	}
	return ok
}

// waitNextLine waits until the stream has more than n lines (or ends) and
// says how long that took: the client's stall across a fault.
func waitNextLine(ctx context.Context, c *capture, n int) time.Duration {
	start := time.Now()
	_ = c.waitLines(ctx, n+1)
	return time.Since(start)
}

// laneAccounts gives the lane-th of lanes clients its own accounts among
// the demo schema's 100, so that concurrent batches do not contend and
// each one's report is what it would be alone.
func laneAccounts(lane, lanes int) func(seq int) (from, to int) {
	w := 100 / lanes
	base := lane * w
	return func(seq int) (from, to int) {
		from = seq%w + 1
		to = (seq*7+3)%w + 1
		if to == from {
			to = to%w + 1
		}
		return base + from, base + to
	}
}

// migration is one row of hafe.migrations: a front-end that took an MTCP
// connection in records it.
type migration struct {
	from, to, takenBy, mode, trigger, err string
}

func (m migration) String() string {
	s := fmt.Sprintf("%s → %s (taken by %s, %s, %s)", m.from, m.to, m.takenBy, m.trigger, m.mode)
	if m.err != "" {
		s += ": " + m.err
	}
	return s
}

// migrationsOf waits (at most 10s: front-ends record them in the
// background) until the database holds at least want successful
// migrations of connection conn, and returns them all (failed attempts
// too), oldest first. Where a new server
// got the state from (mode) only it knows, not the client.
func (c *mtcpCluster) migrationsOf(ctx context.Context, t *testing.T, conn string, want int) []migration {
	t.Helper()
	db := connect(ctx, t, c.pg)
	defer db.Close(context.Background())
	var ms []migration
	for range 100 {
		rows, err := db.Query(ctx, `SELECT from_addr, to_addr, taken_by, mode, trigger, coalesce(error, '')
			FROM hafe.migrations WHERE conn_id = $1 ORDER BY id`, conn)
		if err != nil {
			t.Fatal(err)
		}
		ms, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (migration, error) {
			var m migration
			return m, r.Scan(&m.from, &m.to, &m.takenBy, &m.mode, &m.trigger, &m.err)
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(okMigrations(ms)) >= want {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return ms
}

// okMigrations are the successful ones of ms.
func okMigrations(ms []migration) []migration {
	var ok []migration
	for _, m := range ms {
		if m.err == "" {
			ok = append(ok, m)
		}
	}
	return ok
}

// connID is the id of the client's (last) MTCP connection.
func (cl *mtcpClient) connID() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if len(cl.conns) == 0 {
		return ""
	}
	return cl.conns[len(cl.conns)-1].ID().String()
}

// frontEndAt is the front-end of fes advertising addr.
func frontEndAt(fes []*harness.Hafe, addr string) *harness.Hafe {
	for _, fe := range fes {
		if fe.MTCPAddr == addr {
			return fe
		}
	}
	return nil
}
