package frontend

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"hafe.dev/hafe/api"
	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/txn"
	"hafe.dev/hafe/txn/rawsql"
)

// The body of POST /v1/batches, as the API declares it.
type (
	batchRequest = api.Batch
	txnRequest   = api.Transaction
	sqlStatement = api.Statement
)

// Limits bound what one request may ask for.
type Limits struct {
	MaxBodyBytes      int64 // default 8 MiB
	MaxTransactions   int   // per batch, default 10000
	MaxStatements     int   // per transaction, default 100
	MaxStatementBytes int   // per raw SQL statement, default 64 KiB
	// MaxTxnValues bounds the JSON values in one transaction (its
	// statements, arguments, and the elements of arrays and objects in
	// them); default 65535, as PostgreSQL binds at most that many
	// parameters to a statement.
	MaxTxnValues int
	// MaxBatchValues bounds the JSON values in all transactions of a
	// batch, default 200000: a value costs tens of bytes once decoded, so
	// this, not the body limit, bounds a request's memory.
	MaxBatchValues int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = 8 << 20
	}
	if l.MaxTransactions <= 0 {
		l.MaxTransactions = 10000
	}
	if l.MaxStatements <= 0 {
		l.MaxStatements = 100
	}
	if l.MaxStatementBytes <= 0 {
		l.MaxStatementBytes = 64 << 10
	}
	if l.MaxTxnValues <= 0 {
		l.MaxTxnValues = 65535
	}
	if l.MaxBatchValues <= 0 {
		l.MaxBatchValues = 200000
	}
	return l
}

// requestError is a refusal with its HTTP status and a stable code.
type requestError struct {
	status  int
	code    string
	message string
}

func (e *requestError) Error() string { return e.message }

func refuse(status int, code, format string, args ...any) *requestError {
	return &requestError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// decodedBatch is a validated request, ready to run.
type decodedBatch struct {
	batch txn.Batch
	// hash identifies the request's meaning: the same JSON with other
	// spacing or key order hashes the same.
	hash []byte
	// calls are the template transactions, for checks that need the
	// database (numberArgs).
	calls []templateCall
}

// decodeBatch reads and validates a request body. Nothing is run before
// the whole request is known to be acceptable.
//
// It decodes as a stream, one transaction at a time, so that memory
// follows what the limits allow rather than what the body holds: the
// shape reader under the JSON decoder refuses a transaction, or a batch,
// with more JSON values than the limits, and nesting deeper than
// maxDepth, before the decoder has buffered them; the request's hash is
// built transaction by transaction.
func decodeBatch(body io.Reader, catalog *hafesql.Catalog, allowRawSQL bool, lim Limits) (*decodedBatch, error) {
	shape := &shapeReader{r: &utf8Reader{r: body}, lim: lim}
	dec := json.NewDecoder(shape)
	dec.UseNumber()
	dec.DisallowUnknownFields()
	h := sha256.New()
	var (
		b        txn.Batch
		calls    []templateCall
		iso      string
		seenTxns bool
	)
	tok, err := dec.Token()
	if err != nil {
		return nil, jsonError(err)
	}
	if tok == nil {
		// null decodes to an empty request, which lists no transactions.
		if _, err := dec.Token(); err != io.EOF {
			return nil, refuse(400, "bad_json", "the body must hold one JSON object")
		}
		return nil, refuse(422, "no_transactions", `"transactions" must list at least one transaction`)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, refuse(400, "bad_json", "the body must hold one JSON object")
	}
	// The hash covers the canonical form json.Marshal(batchRequest) gave
	// when the request was decoded whole, so stored batches keep matching.
	h.Write([]byte(`{"transactions":`))
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, jsonError(err)
		}
		switch key {
		case "transactions":
			if seenTxns {
				return nil, refuse(400, "bad_json", `"transactions" appears twice`)
			}
			seenTxns = true
			if err := decodeTransactions(dec, h, &b, &calls, catalog, allowRawSQL, lim); err != nil {
				return nil, err
			}
		case "isolation":
			if err := dec.Decode(&iso); err != nil {
				return nil, jsonError(err)
			}
		default:
			return nil, refuse(400, "bad_json", "unknown field %q (a batch has \"transactions\" and \"isolation\")", key)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		// Padding after the object still counts against the body limit,
		// and must be UTF-8 too.
		var tooLarge *http.MaxBytesError
		var badUTF8 *invalidUTF8Error
		var netErr net.Error
		if errors.As(err, &tooLarge) || errors.As(err, &badUTF8) || errors.As(err, &netErr) {
			return nil, jsonError(err)
		}
		return nil, refuse(400, "bad_json", "the body must hold one JSON object")
	}
	if len(b.Transactions) == 0 {
		return nil, refuse(422, "no_transactions", `"transactions" must list at least one transaction`)
	}
	if b.Isolation, err = txn.ParseIsolation(iso); err != nil {
		return nil, refuse(422, "bad_isolation", "%v", err)
	}
	if iso != "" {
		h.Write([]byte(`,"isolation":`))
		enc, _ := json.Marshal(iso)
		h.Write(enc)
	}
	h.Write([]byte(`}`))
	return &decodedBatch{batch: b, hash: h.Sum(nil), calls: calls}, nil
}

// decodeTransactions decodes the "transactions" array one element at a
// time, resolving each and adding its canonical form to the hash.
func decodeTransactions(dec *json.Decoder, h hash.Hash, b *txn.Batch, calls *[]templateCall, catalog *hafesql.Catalog, allowRawSQL bool, lim Limits) error {
	tok, err := dec.Token()
	if err != nil {
		return jsonError(err)
	}
	if tok == nil { // null: no transactions
		h.Write([]byte(`null`))
		return nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return refuse(400, "bad_json", `field "transactions" must be an array, not a JSON %s`, tokenKind(tok))
	}
	h.Write([]byte(`[`))
	enc := json.NewEncoder(valueWriter{h})
	for dec.More() {
		seq := len(b.Transactions) + 1
		if seq > lim.MaxTransactions {
			return refuse(413, "too_many_transactions", "the batch has more than %d transactions, the limit", lim.MaxTransactions)
		}
		var tr txnRequest
		if err := dec.Decode(&tr); err != nil {
			return jsonError(err)
		}
		t, err := resolve(seq, tr, catalog, allowRawSQL, lim)
		if err != nil {
			return err
		}
		b.Transactions = append(b.Transactions, t)
		if tmpl, ok := catalog.Get(tr.Template); ok && tr.Template != "" {
			*calls = append(*calls, templateCall{seq: seq, t: tmpl, args: tr.Args})
		}
		if seq > 1 {
			h.Write([]byte(`,`))
		}
		// An Encoder reuses its buffer, where Marshal would leave one the
		// size of the transaction behind for each.
		if err := enc.Encode(tr); err != nil {
			return refuse(400, "bad_json", "%v", err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing bracket
		return jsonError(err)
	}
	h.Write([]byte(`]`))
	return nil
}

// valueWriter passes an Encoder's output on without the newline it ends
// each value with, so that the hash sees json.Marshal's bytes.
type valueWriter struct{ w io.Writer }

func (v valueWriter) Write(p []byte) (int, error) {
	if n := len(p); n > 0 && p[n-1] == '\n' {
		if _, err := v.w.Write(p[:n-1]); err != nil {
			return 0, err
		}
		return n, nil
	}
	return v.w.Write(p)
}

// tokenKind names a JSON token's kind for an error message.
func tokenKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "object"
		}
		return "array"
	case string:
		return "string"
	case json.Number, float64:
		return "number"
	case bool:
		return "boolean"
	}
	return "null"
}

func resolve(seq int, tr txnRequest, catalog *hafesql.Catalog, allowRawSQL bool, lim Limits) (txn.Transaction, error) {
	switch {
	case tr.Template != "" && tr.SQL != nil:
		return txn.Transaction{}, refuse(422, "bad_transaction", "transaction %d has both \"template\" and \"sql\"; give one", seq)
	case tr.Template != "":
		t, ok := catalog.Get(tr.Template)
		if !ok {
			return txn.Transaction{}, refuse(422, "unknown_template", "transaction %d: unknown template %q (known: %s)", seq, tr.Template, strings.Join(catalog.Names(), ", "))
		}
		if err := t.CheckArgs(tr.Args); err != nil {
			return txn.Transaction{}, refuse(422, "bad_arguments", "transaction %d: %v", seq, err)
		}
		named := make(map[string]any, len(tr.Args))
		for k, v := range tr.Args {
			named[k] = argValue(v)
		}
		stmts := make([]txn.Statement, len(t.Statements))
		for i := range t.Statements {
			q, args := t.Call(i, named)
			stmts[i] = txn.Statement{Query: q, Args: args}
		}
		return txn.Transaction{Statements: stmts}, nil
	case tr.SQL != nil:
		if !allowRawSQL {
			return txn.Transaction{}, refuse(403, "raw_sql_disabled", "transaction %d: raw SQL is disabled on this front-end (use a template, or start it with --allow-raw-sql)", seq)
		}
		if tr.Args != nil {
			return txn.Transaction{}, refuse(422, "bad_transaction", "transaction %d: \"args\" belongs to templates; raw SQL takes per-statement \"args\"", seq)
		}
		if len(tr.SQL) == 0 {
			return txn.Transaction{}, refuse(422, "bad_transaction", "transaction %d: \"sql\" is empty", seq)
		}
		if len(tr.SQL) > lim.MaxStatements {
			return txn.Transaction{}, refuse(413, "too_many_statements", "transaction %d has %d statements; the limit is %d", seq, len(tr.SQL), lim.MaxStatements)
		}
		stmts := make([]txn.Statement, len(tr.SQL))
		for i, s := range tr.SQL {
			if strings.TrimSpace(s.Query) == "" {
				return txn.Transaction{}, refuse(422, "bad_transaction", "transaction %d, statement %d: empty query", seq, i+1)
			}
			if len(s.Query) > lim.MaxStatementBytes {
				return txn.Transaction{}, refuse(413, "statement_too_large", "transaction %d, statement %d is %d bytes; the limit is %d", seq, i+1, len(s.Query), lim.MaxStatementBytes)
			}
			if err := rawsql.Check(s.Query); err != nil {
				return txn.Transaction{}, refuse(422, "statement_not_allowed", "transaction %d, statement %d: %v", seq, i+1, err)
			}
			args := make([]any, len(s.Args))
			for j, a := range s.Args {
				args[j] = argValue(a)
			}
			stmts[i] = txn.Statement{Query: s.Query, Args: args}
		}
		return txn.Transaction{Statements: stmts, Raw: true}, nil
	default:
		return txn.Transaction{}, refuse(422, "bad_transaction", "transaction %d needs \"template\" or \"sql\"", seq)
	}
}

// argValue turns a decoded JSON value into a query argument: integers stay
// exact (int64), other numbers go as their decimal text so that numeric
// columns keep every digit; objects and arrays go as JSON.
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

func jsonError(err error) *requestError {
	var re *requestError
	if errors.As(err, &re) { // the shape reader's refusal
		return re
	}
	var tooLarge *http.MaxBytesError
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	var badUTF8 *invalidUTF8Error
	var netErr net.Error
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		return refuse(408, "body_timeout", "the body did not arrive within the body read timeout; send it at once")
	case errors.As(err, &badUTF8):
		return refuse(400, "bad_json", "%v", badUTF8)
	case errors.As(err, &syntax):
		return refuse(400, "bad_json", "malformed JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typeErr):
		return refuse(400, "bad_json", "field %q must be %s, not a JSON %s", typeErr.Field, jsonKind(typeErr.Type), typeErr.Value)
	case errors.Is(err, io.EOF):
		return refuse(400, "bad_json", "the body is empty; send {\"transactions\":[…]}")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return refuse(400, "bad_json", "the body ends in the middle of the JSON")
	case errors.As(err, &tooLarge):
		return refuse(413, "body_too_large", "the body is larger than the limit of %d bytes", tooLarge.Limit)
	default:
		return refuse(400, "bad_json", "%v", err)
	}
}

// jsonKind names a Go type the way a JSON author thinks of it.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Float64:
		return "a number"
	}
	return t.String()
}

// invalidUTF8Error: JSON text is UTF-8, and encoding/json would silently
// replace what is not with U+FFFD, so a client's bytes would not be what
// runs.
type invalidUTF8Error struct{ offset int64 }

func (e *invalidUTF8Error) Error() string {
	return fmt.Sprintf("the body is not valid UTF-8 (at byte %d)", e.offset)
}

// utf8Reader passes bytes on only once they are known to be UTF-8; a
// sequence cut by a read waits for the next one.
type utf8Reader struct {
	r      io.Reader
	buf    [4096]byte
	start  int // buf[start:ready] is checked, not yet passed on
	ready  int
	end    int   // buf[ready:end] is the start of a cut sequence
	offset int64 // bytes passed on so far
	err    error
}

func (u *utf8Reader) Read(p []byte) (int, error) {
	for u.start == u.ready {
		if u.err != nil {
			return 0, u.err
		}
		// Keep the cut sequence, read more after it.
		n := copy(u.buf[:], u.buf[u.ready:u.end])
		u.start, u.ready, u.end = 0, 0, n
		m, err := u.r.Read(u.buf[u.end:])
		u.end += m
		i := 0
		for i < u.end {
			if u.buf[i] < utf8.RuneSelf {
				i++
				continue
			}
			if !utf8.FullRune(u.buf[i:u.end]) {
				if err == nil {
					break
				}
				return 0, &invalidUTF8Error{offset: u.offset + int64(i)}
			}
			r, size := utf8.DecodeRune(u.buf[i:u.end])
			if r == utf8.RuneError && size == 1 {
				return 0, &invalidUTF8Error{offset: u.offset + int64(i)}
			}
			i += size
		}
		u.ready = i
		u.err = err
	}
	n := copy(p, u.buf[u.start:u.ready])
	u.start += n
	u.offset += int64(n)
	return n, nil
}

// maxDepth bounds how deeply a request may nest arrays and objects.
const maxDepth = 32

// shapeReader passes a request body on to the JSON decoder while it
// follows the body's structure: it counts the JSON values inside each
// transaction (commas and opening brackets below the transactions array)
// and refuses, as a read error, a transaction or batch with more than the
// limits allow, or nesting deeper than maxDepth. So the decoder never
// buffers or builds more than the limits allow, whatever the body holds.
type shapeReader struct {
	r   io.Reader
	lim Limits

	depth    int
	inString bool
	escaped  bool
	txn      int // values in the current transaction
	batch    int // values in all transactions so far
	txnSeq   int
	err      error
}

func (s *shapeReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	for i, c := range p[:n] {
		if s.inString {
			switch {
			case s.escaped:
				s.escaped = false
			case c == '\\':
				s.escaped = true
			case c == '"':
				s.inString = false
			}
			continue
		}
		switch c {
		case '"':
			s.inString = true
		case '{', '[':
			s.depth++
			if s.depth > maxDepth {
				s.err = refuse(400, "bad_json", "the body nests arrays and objects more than %d deep", maxDepth)
			} else if s.depth == 3 {
				s.txnSeq++
				s.txn = 0
			}
			s.count()
		case '}', ']':
			s.depth--
		case ',':
			s.count()
		}
		if s.err != nil {
			// Hand over what came before: the decoder reports the
			// refusal once it needs more.
			return i, nil
		}
	}
	return n, err
}

// count adds one value to the current transaction when inside one.
func (s *shapeReader) count() {
	if s.depth < 3 {
		return
	}
	s.txn++
	s.batch++
	switch {
	case s.txn > s.lim.MaxTxnValues:
		s.err = refuse(413, "too_many_values", "transaction %d holds more than %d JSON values (statements, arguments and their elements), the limit", s.txnSeq, s.lim.MaxTxnValues)
	case s.batch > s.lim.MaxBatchValues:
		s.err = refuse(413, "too_many_values", "the batch holds more than %d JSON values in its transactions, the limit", s.lim.MaxBatchValues)
	}
}
