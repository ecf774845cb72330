package frontend

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	hafesql "hafe.dev/hafe/sql"
)

// fuzzLimits are small, so that the fuzzer reaches every limit.
var fuzzLimits = Limits{MaxBodyBytes: 2048, MaxTransactions: 4, MaxStatements: 3, MaxStatementBytes: 64}

// FuzzDecodeBatch checks the request decoder on any body: it never
// panics; it either refuses with a *requestError carrying a 4xx status and
// a code, or returns a batch within the limits; and it is deterministic —
// the same body decodes to the same hash, and so does the canonical form
// of an accepted request (spacing and key order do not change what a
// request means).
func FuzzDecodeBatch(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/requests/*.json")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
		f.Add(b, false)
	}
	for _, s := range []string{
		"", "{", "}", "null", "[]", "{}", `{"transactions":[]}`, `{"transactions":{}}`,
		batchBody(transferTxn(1, 2, "10")) + " x",
		batchBody(transferTxn(1, 2, "10")) + batchBody(transferTxn(1, 2, "10")),
		batchBody(transferTxn(1, 2, "1"), transferTxn(1, 2, "1"), transferTxn(1, 2, "1"), transferTxn(1, 2, "1"), transferTxn(1, 2, "1")),
		batchBody(rawTxn("SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4")),
		batchBody(rawTxn("SELECT '" + strings.Repeat("x", 100) + "'")),
		`{"transactions":[` + transferTxn(1, 2, "1") + `],"isolation":"Repeatable-Read"}`,
		`{"transactions":[{"template":"deposit","args":{"id":1,"amount":1e400}}]}`,
		`{"transactions":[{"template":"deposit","args":{"id":{"a":[1,"\u00e9"]},"amount":-0.0}}]}`,
		`{"transactions":[{"sql":[{"query":"SELECT $1","args":[null,true,"\ud800",1.5,{"k":[]}]}]}]}`,
		`{"transactions":[{"template":"transfer","args":{"from":1,"to":2,"amount":1}},{"sql":[{"query":"x"}],"template":"balance"}]}`,
		`{"transactions":[{"template":"balance","args":{"id":1,"id":2}}]}`,
		"{\"transactions\":[{\"template\":\"balance\",\"args\":{\"id\":\"\xff\"}}]}",
		`{"transactions":[` + strings.Repeat(" ", 3000) + `]}`,
	} {
		f.Add([]byte(s), true)
	}
	catalog := hafesql.Builtin()
	// Template calls arrive as the templates' positional statements.
	templateSQL := map[string]bool{}
	for _, n := range catalog.Names() {
		tp, _ := catalog.Get(n)
		for _, q := range tp.Positional {
			templateSQL[q] = true
		}
	}
	lim := fuzzLimits.withDefaults()
	decode := func(body []byte, raw bool, max int64) (*decodedBatch, error) {
		return decodeBatch(http.MaxBytesReader(nil, nopCloser{bytes.NewReader(body)}, max), catalog, raw, lim)
	}
	f.Fuzz(func(t *testing.T, body []byte, raw bool) {
		d, err := decode(body, raw, lim.MaxBodyBytes)
		d2, err2 := decode(body, raw, lim.MaxBodyBytes)
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) {
				t.Fatalf("error %T %v is not a *requestError", err, err)
			}
			if re.status < 400 || re.status > 499 || re.code == "" || re.message == "" {
				t.Fatalf("refusal %+v", re)
			}
			var re2 *requestError
			if !errors.As(err2, &re2) || re2.code != re.code || re2.status != re.status {
				t.Fatalf("second decode: %v, first: %v", err2, err)
			}
			return
		}
		if err2 != nil || !bytes.Equal(d.hash, d2.hash) {
			t.Fatalf("second decode: err %v, hash %x vs %x", err2, d2.hash, d.hash)
		}
		if int64(len(body)) > lim.MaxBodyBytes {
			t.Fatalf("accepted a body of %d bytes over the limit %d", len(body), lim.MaxBodyBytes)
		}
		n := len(d.batch.Transactions)
		if n < 1 || n > lim.MaxTransactions {
			t.Fatalf("accepted %d transactions (limit %d)", n, lim.MaxTransactions)
		}
		for i, tx := range d.batch.Transactions {
			if len(tx.Statements) == 0 {
				t.Fatalf("transaction %d has no statements", i+1)
			}
			for _, s := range tx.Statements {
				if !templateSQL[s.Query] && !raw {
					t.Fatalf("transaction %d: raw SQL accepted while disabled", i+1)
				}
				if !templateSQL[s.Query] && (len(tx.Statements) > lim.MaxStatements || len(s.Query) > lim.MaxStatementBytes) {
					t.Fatalf("transaction %d: raw SQL past the limits: %d statements, %d bytes", i+1, len(tx.Statements), len(s.Query))
				}
			}
		}
		// The canonical form is the same request.
		var req batchRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&req); err != nil {
			t.Fatalf("accepted body does not decode: %v", err)
		}
		canonical, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		d3, err := decode(canonical, raw, 1<<20)
		if err != nil {
			t.Fatalf("canonical form %s refused: %v", canonical, err)
		}
		if !bytes.Equal(d3.hash, d.hash) {
			t.Fatalf("canonical form %s hashes differently from %s", canonical, body)
		}
	})
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
