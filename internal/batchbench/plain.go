package batchbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	hafesql "hafe.dev/hafe/sql"
)

// Mode is how Plain talks to PostgreSQL.
type Mode uint8

const (
	// Pipelined sends BEGIN, the statements and COMMIT in one round trip:
	// the fastest a handler without hafe's records can be.
	Pipelined Mode = iota
	// Interactive runs pool.BeginTx, one Query per statement, Commit: what
	// most handlers do, one round trip per statement.
	Interactive
)

func (m Mode) String() string {
	if m == Interactive {
		return "interactive"
	}
	return "pipelined"
}

// maxAttempts bounds retries of serialization failures and deadlocks, as
// hafe's executor does by default.
const maxAttempts = 5

// NewPlain returns the baseline handler: POST /v1/batches with hafe's body
// ({"transactions":[{"template":…,"args":{…}}],"isolation":…}; templates
// only), each transaction run as BEGIN, its statements, COMMIT, and one
// NDJSON line streamed per transaction, then a done line.
func NewPlain(pool *pgxpool.Pool, catalog *hafesql.Catalog, mode Mode) http.Handler {
	p := &plain{pool: pool, catalog: catalog, mode: mode}
	r := chi.NewRouter()
	r.Post("/v1/batches", p.post)
	return r
}

type plain struct {
	pool    *pgxpool.Pool
	catalog *hafesql.Catalog
	mode    Mode
}

type plainRequest struct {
	Transactions []struct {
		Template string         `json:"template"`
		Args     map[string]any `json:"args"`
	} `json:"transactions"`
	Isolation string `json:"isolation"`
}

type plainTxn struct {
	stmts []string
	args  pgx.NamedArgs
}

type plainResult struct {
	Command      string   `json:"command"`
	RowsAffected int64    `json:"rows_affected"`
	Columns      []string `json:"columns,omitempty"`
	Rows         [][]any  `json:"rows,omitempty"`
}

type plainLine struct {
	Seq     int           `json:"seq"`
	Status  string        `json:"status"`
	Results []plainResult `json:"results,omitempty"`
	Error   *plainError   `json:"error,omitempty"`
}

type plainError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (p *plain) post(w http.ResponseWriter, r *http.Request) {
	dec := json.NewDecoder(r.Body)
	dec.UseNumber()
	var req plainRequest
	if err := dec.Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	iso, err := isoLevel(req.Isolation)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	txns := make([]plainTxn, len(req.Transactions))
	for i, t := range req.Transactions {
		tmpl, ok := p.catalog.Get(t.Template)
		if !ok {
			http.Error(w, fmt.Sprintf("transaction %d: unknown template %q", i+1, t.Template), http.StatusUnprocessableEntity)
			return
		}
		if err := tmpl.CheckArgs(t.Args); err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		named := make(pgx.NamedArgs, len(t.Args))
		for k, v := range t.Args {
			named[k] = argValue(v)
		}
		txns[i] = plainTxn{stmts: tmpl.Statements, args: named}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var committed, aborted int
	for i, t := range txns {
		l := p.run(r.Context(), i+1, t, iso)
		if l.Status == "committed" {
			committed++
		} else {
			aborted++
		}
		b, _ := json.Marshal(l)
		if _, err := w.Write(append(b, '\n')); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
	fmt.Fprintf(w, `{"done":true,"transactions":%d,"committed":%d,"aborted":%d}`+"\n", len(txns), committed, aborted)
}

// run brings one transaction to commit or abort, retrying serialization
// failures and deadlocks.
func (p *plain) run(ctx context.Context, seq int, t plainTxn, iso pgx.TxIsoLevel) plainLine {
	var err error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		var results []plainResult
		if p.mode == Interactive {
			results, err = p.interactive(ctx, t, iso)
		} else {
			results, err = p.pipelined(ctx, t, iso)
		}
		if err == nil {
			return plainLine{Seq: seq, Status: "committed", Results: results}
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "40001" && pgErr.Code != "40P01") {
			break
		}
		time.Sleep(time.Duration(attempt) * 10 * time.Millisecond)
	}
	e := &plainError{Code: "error", Message: err.Error()}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		e = &plainError{Code: pgErr.Code, Message: pgErr.Message}
	}
	return plainLine{Seq: seq, Status: "aborted", Error: e}
}

func (p *plain) pipelined(ctx context.Context, t plainTxn, iso pgx.TxIsoLevel) (results []plainResult, err error) {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL " + strings.ToUpper(string(iso)))
	for _, q := range t.stmts {
		b.Queue(q, t.args)
	}
	b.Queue("COMMIT")
	br := conn.Conn().SendBatch(ctx, b)
	results, err = func() ([]plainResult, error) {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
		results := make([]plainResult, 0, len(t.stmts))
		for range t.stmts {
			rows, err := br.Query()
			if err != nil {
				return nil, err
			}
			res, err := collect(rows)
			if err != nil {
				return nil, err
			}
			results = append(results, res)
		}
		tag, err := br.Exec()
		if err == nil && tag.String() != "COMMIT" {
			err = fmt.Errorf("COMMIT answered %s", tag)
		}
		return results, err
	}()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// After an error in the pipeline the session may sit in a failed
		// transaction; end it before the connection goes back.
		if _, rerr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
			conn.Conn().Close(context.WithoutCancel(ctx))
		}
		return nil, err
	}
	return results, nil
}

func (p *plain) interactive(ctx context.Context, t plainTxn, iso pgx.TxIsoLevel) ([]plainResult, error) {
	tx, err := p.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: iso})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	results := make([]plainResult, 0, len(t.stmts))
	for _, q := range t.stmts {
		rows, err := tx.Query(ctx, q, t.args)
		if err != nil {
			return nil, err
		}
		res, err := collect(rows)
		if err != nil {
			return nil, err
		}
		results = append(results, res)
	}
	return results, tx.Commit(ctx)
}

func collect(rows pgx.Rows) (plainResult, error) {
	defer rows.Close()
	var res plainResult
	for _, fd := range rows.FieldDescriptions() {
		res.Columns = append(res.Columns, fd.Name)
	}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return res, err
		}
		res.Rows = append(res.Rows, vals)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, err
	}
	tag := rows.CommandTag()
	res.Command, _, _ = strings.Cut(tag.String(), " ")
	res.RowsAffected = tag.RowsAffected()
	return res, nil
}

func isoLevel(s string) (pgx.TxIsoLevel, error) {
	switch strings.NewReplacer("_", " ", "-", " ").Replace(strings.ToLower(strings.TrimSpace(s))) {
	case "", "read committed":
		return pgx.ReadCommitted, nil
	case "repeatable read":
		return pgx.RepeatableRead, nil
	case "serializable":
		return pgx.Serializable, nil
	}
	return "", fmt.Errorf("unknown isolation level %q", s)
}

// argValue converts JSON values to query arguments the way hafe does:
// integers exact, other numbers as decimal text, objects as JSON.
func argValue(v any) any {
	switch x := v.(type) {
	case json.Number:
		if n, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return n
		}
		return string(x)
	case map[string]any, []any:
		b, _ := json.Marshal(x)
		return string(b)
	default:
		return x
	}
}
