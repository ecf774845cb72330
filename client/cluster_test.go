package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/frontend"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/internal/pgtemp/pgtest"
	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/txn"
)

var server *pgtemp.Server

func TestMain(m *testing.M) { pgtest.Main(m, &server, nil) }

// newBank makes a fresh database with hafe installed and the demo bank.
func newBank(t *testing.T) string { return pgtest.Database(t, server, "client", hafesql.DemoSchema()) }

// frontEnd is one front-end served over real TCP by an httptest server,
// heartbeating like a real one. The owner liveness keeps its default (10 s),
// so a busy machine never makes a running front-end look gone.
type frontEnd struct {
	*httptest.Server
	fe  *frontend.Server
	rec *recorder
}

type feOptions struct {
	rawSQL bool
	tokens []frontend.Token
	// wrap, when set, wraps the front-end's handler (e.g. to cut streams).
	wrap func(http.Handler) http.Handler
}

func startFrontEnd(t *testing.T, dbURL, id string, o feOptions) *frontEnd {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	backendext.ConfigurePool(cfg, id, "", time.Minute)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var raw txn.RawSQLConfig
	if o.rawSQL {
		raw = rawSQLFor(t, pool, dbURL, id)
	}
	fe, err := frontend.New(pool, frontend.Config{
		ID: id, AllowRawSQL: o.rawSQL, ClientTokens: o.tokens,
		HeartbeatInterval: 100 * time.Millisecond,
		Executor:          txn.Config{RawSQL: raw},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	var h http.Handler = fe.Handler()
	if o.wrap != nil {
		h = o.wrap(h)
	}
	srv := httptest.NewUnstartedServer(rec.wrap(h))
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	srv.Start()
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { fe.Run(runCtx); close(done) }()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		stop()
		<-done
		pool.Close()
	})
	return &frontEnd{Server: srv, fe: fe, rec: rec}
}

// rawSQLFor lets the client role log in and opens raw SQL's own pool, as
// hafe serve --raw-sql-db does; the outcome key is read with pool's role.
func rawSQLFor(t *testing.T, pool *pgxpool.Pool, dbURL, id string) txn.RawSQLConfig {
	t.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "ALTER ROLE hafe_client LOGIN PASSWORD 'client-secret'"); err != nil {
		t.Fatal(err)
	}
	key, err := backendext.ReadOutcomeKey(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(strings.Replace(dbURL, "postgres://postgres@", "postgres://hafe_client:client-secret@", 1))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	backendext.ConfigureRawPool(cfg, id, "", time.Minute, txn.DefaultRawSQLTimeout)
	raw, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Close)
	return txn.RawSQLConfig{Pool: raw, OutcomeKey: key}
}

type connKey struct{}

// recorder keeps the Idempotency-Key and body of every batch request.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	key  string
	body []byte
}

func (r *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v1/batches" {
			body, _ := io.ReadAll(req.Body)
			req.Body = io.NopCloser(bytes.NewReader(body))
			r.mu.Lock()
			r.reqs = append(r.reqs, recorded{req.Header.Get("Idempotency-Key"), body})
			r.mu.Unlock()
		}
		next.ServeHTTP(w, req)
	})
}

func (r *recorder) requests() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs...)
}

// cutAfter wraps a handler so that the first batch response breaks after
// n lines: half of line n+1 is sent, then the connection is closed, as a
// front-end dying mid-write would leave it.
func cutAfter(n int) func(http.Handler) http.Handler {
	var once sync.Once
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cut := false
			once.Do(func() { cut = true })
			if !cut || r.URL.Path != "/v1/batches" {
				next.ServeHTTP(w, r)
				return
			}
			next.ServeHTTP(&cutWriter{ResponseWriter: w, conn: r.Context().Value(connKey{}).(net.Conn), after: n}, r)
		})
	}
}

type cutWriter struct {
	http.ResponseWriter
	conn  net.Conn
	after int
	lines int
	cut   bool
}

var errCut = fmt.Errorf("test cut the connection")

func (c *cutWriter) Write(b []byte) (int, error) {
	if c.cut {
		return 0, errCut
	}
	if c.lines >= c.after {
		c.cut = true
		c.ResponseWriter.Write(b[:len(b)/2])
		http.NewResponseController(c.ResponseWriter).Flush()
		c.conn.Close()
		return 0, errCut
	}
	n, err := c.ResponseWriter.Write(b)
	c.lines += bytes.Count(b[:n], []byte("\n"))
	return n, err
}

func (c *cutWriter) Flush() {
	if !c.cut {
		http.NewResponseController(c.ResponseWriter).Flush()
	}
}

// transfers is a batch of n transfers between the demo bank's accounts;
// every seventh is too large for any account and aborts.
func transfers(n int) []byte {
	type call struct {
		Template string         `json:"template"`
		Args     map[string]any `json:"args"`
	}
	var b struct {
		Transactions []call `json:"transactions"`
	}
	for i := range n {
		amount := json.Number(fmt.Sprintf("%d.%02d", 1+i%50, i%100))
		if i%7 == 6 {
			amount = "5000.00"
		}
		b.Transactions = append(b.Transactions, call{"transfer", map[string]any{
			"from": 1 + i%100, "to": 1 + (i*37+11)%100, "amount": amount,
		}})
	}
	out, _ := json.Marshal(b)
	return out
}

// checkBank verifies from the database that the batch has exactly one
// outcome per slot, each equal to the line the client received, and that
// money was neither made nor lost.
func checkBank(t *testing.T, dbURL, batchID string, lines map[int][]byte, committed int) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, `SELECT seq, status, report FROM hafe.outcomes WHERE batch_id = $1 ORDER BY seq`, batchID)
	if err != nil {
		t.Fatal(err)
	}
	n, nCommitted := 0, 0
	for rows.Next() {
		var seq int
		var status, report string
		if err := rows.Scan(&seq, &status, &report); err != nil {
			t.Fatal(err)
		}
		n++
		if status == "committed" {
			nCommitted++
		}
		if got := lines[seq]; string(got) != report {
			t.Errorf("seq %d: client got %s; the database recorded %s", seq, got, report)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(lines) || nCommitted != committed {
		t.Errorf("database has %d outcomes, %d committed; client got %d lines, %d committed", n, nCommitted, len(lines), committed)
	}
	var total string
	if err := c.QueryRow(ctx, "SELECT sum(balance)::text FROM accounts").Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != "100000.00" {
		t.Errorf("sum of balances is %s, want 100000.00", total)
	}
}
