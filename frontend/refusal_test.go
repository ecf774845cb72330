package frontend

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

const (
	clientToken = "client-secret"
	adminToken  = "admin-secret"
)

var (
	asClient = map[string]string{"Authorization": "Bearer " + clientToken}
	asAdmin  = map[string]string{"Authorization": "Bearer " + adminToken}
)

// strictConfig is a front-end with tokens, raw SQL and small limits, so
// every limit can be crossed with a small body.
func strictConfig() Config {
	return Config{
		ID: "fe-strict", AllowRawSQL: true,
		ClientTokens: []Token{{Name: "client", Secret: clientToken}}, AdminToken: adminToken,
		Limits: Limits{MaxBodyBytes: 4096, MaxTransactions: 3, MaxStatements: 2, MaxStatementBytes: 200},
	}
}

func with(h map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// TestRefusalsWriteNothing sends every kind of bad request and checks that
// each is refused with its status and error code and leaves the database
// as it was (G6).
func TestRefusalsWriteNothing(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	strict := startFrontend(t, url, strictConfig(), false)
	// open: no tokens, no admin token, templates only, default limits.
	open := startFrontend(t, url, Config{ID: "fe-open"}, false)

	ok := transferTxn(1, 2, "10")
	valid := batchBody(ok)
	cases := []struct {
		name   string
		fe     *frontendUnderTest
		req    request
		status int
		code   string
		// header, when set, must have this value in the refusal.
		header, headerValue string
	}{
		// The body is not one well-formed JSON object.
		{name: "malformed JSON", req: request{body: `{"transactions":[` + ok + `,}`}, status: 400, code: "bad_json"},
		{name: "JSON cut short", req: request{body: `{"transactions":[` + ok}, status: 400, code: "bad_json"},
		{name: "not JSON at all", req: request{body: `transactions=1`}, status: 400, code: "bad_json"},
		{name: "trailing garbage", req: request{body: valid + ` x`}, status: 400, code: "bad_json"},
		{name: "two objects", req: request{body: valid + valid}, status: 400, code: "bad_json"},
		{name: "trailing closing brace", req: request{body: valid + `}`}, status: 400, code: "bad_json"},
		{name: "empty body", req: request{body: ""}, status: 400, code: "bad_json"},
		{name: "only whitespace", req: request{body: " \n\t "}, status: 400, code: "bad_json"},
		{name: "JSON null", req: request{body: "null"}, status: 422, code: "no_transactions"},
		{name: "unknown top-level field", req: request{body: `{"transactions":[` + ok + `],"priority":1}`}, status: 400, code: "bad_json"},
		{name: "unknown transaction field", req: request{body: batchBody(`{"template":"deposit","args":{"id":1,"amount":1},"retries":3}`)}, status: 400, code: "bad_json"},
		{name: "unknown statement field", req: request{body: batchBody(`{"sql":[{"query":"SELECT 1","params":[]}]}`)}, status: 400, code: "bad_json"},
		{name: "transactions is an object", req: request{body: `{"transactions":{}}`}, status: 400, code: "bad_json"},
		{name: "transactions is a string", req: request{body: `{"transactions":"transfer"}`}, status: 400, code: "bad_json"},
		{name: "template is a number", req: request{body: batchBody(`{"template":5}`)}, status: 400, code: "bad_json"},
		{name: "args is a list", req: request{body: batchBody(`{"template":"deposit","args":[1,2]}`)}, status: 400, code: "bad_json"},
		{name: "isolation is a number", req: request{body: `{"transactions":[` + ok + `],"isolation":3}`}, status: 400, code: "bad_json"},
		{name: "sql is a string", req: request{body: batchBody(`{"sql":"SELECT 1"}`)}, status: 400, code: "bad_json"},
		{name: "body is an array", req: request{body: `[` + ok + `]`}, status: 400, code: "bad_json"},

		// Limits.
		{name: "body over the limit", req: request{body: `{"transactions":[` + ok + strings.Repeat(" ", 5000) + `]}`}, status: 413, code: "body_too_large"},
		{name: "body over the limit in a string", req: request{body: batchBody(`{"template":"open_account","args":{"id":1000,"owner":"` + strings.Repeat("x", 5000) + `","balance":1}}`)}, status: 413, code: "body_too_large"},
		{name: "body over the limit after the object", req: request{body: valid + strings.Repeat(" ", 5000)}, status: 413, code: "body_too_large"},
		{name: "too many transactions", req: request{body: batchBody(ok, ok, ok, ok)}, status: 413, code: "too_many_transactions"},
		{name: "too many statements", req: request{body: batchBody(rawTxn("SELECT 1", "SELECT 2", "SELECT 3"))}, status: 413, code: "too_many_statements"},
		{name: "statement too large", req: request{body: batchBody(rawTxn("SELECT '" + strings.Repeat("x", 300) + "'"))}, status: 413, code: "statement_too_large"},
		{name: "too many statements after a valid transaction", req: request{body: batchBody(rawTxn("INSERT INTO effects (note) VALUES ('first')"), rawTxn("SELECT 1", "SELECT 2", "SELECT 3"))}, status: 413, code: "too_many_statements"},

		// Well-formed but meaningless.
		{name: "no transactions", req: request{body: `{"transactions":[]}`}, status: 422, code: "no_transactions"},
		{name: "empty object", req: request{body: `{}`}, status: 422, code: "no_transactions"},
		{name: "unknown template", req: request{body: batchBody(`{"template":"launder","args":{"amount":1}}`)}, status: 422, code: "unknown_template"},
		{name: "unknown template after a valid one", req: request{body: batchBody(ok, `{"template":"launder"}`)}, status: 422, code: "unknown_template"},
		{name: "missing template argument", req: request{body: batchBody(`{"template":"transfer","args":{"from":1,"to":2}}`)}, status: 422, code: "bad_arguments"},
		{name: "no template arguments", req: request{body: batchBody(`{"template":"transfer"}`)}, status: 422, code: "bad_arguments"},
		{name: "unknown template argument", req: request{body: batchBody(`{"template":"transfer","args":{"from":1,"to":2,"amount":1,"memo":"x"}}`)}, status: 422, code: "bad_arguments"},
		{name: "both template and sql", req: request{body: batchBody(`{"template":"balance","args":{"id":1},"sql":[{"query":"SELECT 1"}]}`)}, status: 422, code: "bad_transaction"},
		{name: "neither template nor sql", req: request{body: batchBody(`{}`)}, status: 422, code: "bad_transaction"},
		{name: "empty sql list", req: request{body: batchBody(`{"sql":[]}`)}, status: 422, code: "bad_transaction"},
		{name: "empty query", req: request{body: batchBody(rawTxn("  "))}, status: 422, code: "bad_transaction"},
		{name: "template args on raw sql", req: request{body: batchBody(`{"sql":[{"query":"SELECT 1"}],"args":{"a":1}}`)}, status: 422, code: "bad_transaction"},
		{name: "bad isolation", req: request{body: `{"transactions":[` + ok + `],"isolation":"snapshot"}`}, status: 422, code: "bad_isolation"},
		{name: "raw SQL disabled", fe: open, req: request{body: batchBody(rawTxn("INSERT INTO effects (note) VALUES ('x')"))}, status: 403, code: "raw_sql_disabled"},
		{name: "raw SQL disabled after a template", fe: open, req: request{body: batchBody(ok, rawTxn("INSERT INTO effects (note) VALUES ('x')"))}, status: 403, code: "raw_sql_disabled"},

		// Headers.
		{name: "Idempotency-Key with a space", req: request{body: valid, header: with(asClient, "Idempotency-Key", "two words")}, status: 400, code: "bad_idempotency_key"},
		{name: "Idempotency-Key not ASCII", req: request{body: valid, header: with(asClient, "Idempotency-Key", "clé")}, status: 400, code: "bad_idempotency_key"},
		{name: "Idempotency-Key too long", req: request{body: valid, header: with(asClient, "Idempotency-Key", strings.Repeat("k", 256))}, status: 400, code: "bad_idempotency_key"},
		{name: "Content-Type text/plain", req: request{body: valid, header: with(asClient, "Content-Type", "text/plain")}, status: 415, code: "unsupported_media_type"},
		{name: "Content-Type CSV", req: request{body: valid, header: with(asClient, "Content-Type", "text/csv")}, status: 415, code: "unsupported_media_type"},
		{name: "Content-Type unparsable", req: request{body: valid, header: with(asClient, "Content-Type", "application/json; charset")}, status: 415, code: "unsupported_media_type"},
		// A cross-site HTML form or no-cors fetch can send these (or none)
		// without the browser asking first.
		{name: "Content-Type form", req: request{body: valid, header: with(asClient, "Content-Type", "application/x-www-form-urlencoded")}, status: 415, code: "unsupported_media_type"},
		{name: "Content-Type multipart", req: request{body: valid, header: with(asClient, "Content-Type", "multipart/form-data; boundary=x")}, status: 415, code: "unsupported_media_type"},
		{name: "Content-Type missing", req: request{body: valid, header: with(asClient, "Content-Type", "-")}, status: 415, code: "unsupported_media_type"},
		{name: "form without a token", fe: open, req: request{body: valid, header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}}, status: 415, code: "unsupported_media_type"},
		{name: "text without a token", fe: open, req: request{body: valid, header: map[string]string{"Content-Type": "text/plain"}}, status: 415, code: "unsupported_media_type"},
		{name: "two Idempotency-Keys", req: request{body: valid, header: asClient, more: http.Header{"Idempotency-Key": {"a", "b"}}}, status: 400, code: "bad_idempotency_key"},
		{name: "two Idempotency-Keys, the same", req: request{body: valid, header: asClient, more: http.Header{"Idempotency-Key": {"a", "a"}}}, status: 400, code: "bad_idempotency_key"},
		{name: "invalid UTF-8 in a string", req: request{body: batchBody(`{"template":"open_account","args":{"id":1000,"owner":"caf` + "\xe9" + `","balance":1}}`)}, status: 400, code: "bad_json"},
		{name: "invalid UTF-8 in raw SQL", req: request{body: batchBody(`{"sql":[{"query":"INSERT INTO effects (note) VALUES ('` + "\xff\xfe" + `')"}]}`)}, status: 400, code: "bad_json"},
		{name: "a surrogate half in UTF-8", req: request{body: batchBody(`{"template":"open_account","args":{"id":1000,"owner":"` + "\xed\xa0\x80" + `","balance":1}}`)}, status: 400, code: "bad_json"},

		// Authentication.
		{name: "no bearer token", req: request{body: valid, header: map[string]string{}}, status: 401, code: "unauthorized", header: "WWW-Authenticate", headerValue: `Bearer realm="hafe"`},
		{name: "wrong bearer token", req: request{body: valid, header: map[string]string{"Authorization": "Bearer guess"}}, status: 401, code: "unauthorized", header: "WWW-Authenticate", headerValue: `Bearer realm="hafe", error="invalid_token"`},
		{name: "basic auth", req: request{body: valid, header: map[string]string{"Authorization": "Basic Y2xpZW50OnNlY3JldA=="}}, status: 401, code: "unauthorized", header: "WWW-Authenticate", headerValue: `Bearer realm="hafe"`},
		{name: "admin token on the batch API", req: request{body: valid, header: asAdmin}, status: 401, code: "unauthorized", header: "WWW-Authenticate", headerValue: `Bearer realm="hafe", error="invalid_token"`},
		{name: "templates without a token", req: request{method: "GET", path: "/v1/templates", header: map[string]string{}}, status: 401, code: "unauthorized"},
		{name: "bad body without a token", req: request{body: "{", header: map[string]string{}}, status: 401, code: "unauthorized"},

		// Admin routes.
		{name: "admin disabled: members", fe: open, req: request{method: "GET", path: "/admin/members", header: asAdmin}, status: 404, code: "admin_disabled"},
		{name: "admin disabled: drain", fe: open, req: request{method: "POST", path: "/admin/drain", header: asAdmin}, status: 404, code: "admin_disabled"},
		{name: "admin disabled: gc", fe: open, req: request{method: "POST", path: "/admin/gc"}, status: 404, code: "admin_disabled"},
		{name: "admin without a token", req: request{method: "GET", path: "/admin/members", header: map[string]string{}}, status: 401, code: "unauthorized", header: "WWW-Authenticate", headerValue: `Bearer realm="hafe"`},
		{name: "admin with a wrong token", req: request{method: "POST", path: "/admin/drain", header: map[string]string{"Authorization": "Bearer guess"}}, status: 401, code: "unauthorized", header: "WWW-Authenticate", headerValue: `Bearer realm="hafe", error="invalid_token"`},
		{name: "admin with the client token", req: request{method: "POST", path: "/admin/gc", header: asClient}, status: 401, code: "unauthorized"},
		{name: "admin batch with a bad id", req: request{method: "GET", path: "/admin/batches/not-a-uuid", header: asAdmin}, status: 400, code: "bad_batch_id"},
		{name: "admin batch unknown", req: request{method: "GET", path: "/admin/batches/6f1c1d4e-0000-4000-8000-000000000000", header: asAdmin}, status: 404, code: "no_such_batch"},

		// Routing.
		{name: "unknown route", req: request{method: "GET", path: "/v2/batches"}, status: 404, code: "not_found"},
		{name: "unknown route under /v1", req: request{method: "POST", path: "/v1/batch", body: valid, header: asClient}, status: 404, code: "not_found"},
		{name: "GET on batches", req: request{method: "GET", path: "/v1/batches", header: asClient}, status: 405, code: "method_not_allowed"},
		{name: "PUT on batches", req: request{method: "PUT", path: "/v1/batches", body: valid, header: asClient}, status: 405, code: "method_not_allowed"},
		{name: "POST on healthz", req: request{method: "POST", path: "/healthz"}, status: 405, code: "method_not_allowed"},
		{name: "GET on drain", req: request{method: "GET", path: "/admin/drain", header: asAdmin}, status: 405, code: "method_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db.t = t
			fe := tc.fe
			if fe == nil {
				fe = strict
			}
			r := tc.req
			if r.path == "" {
				r.path = "/v1/batches"
			}
			if r.header == nil && fe == strict {
				r.header = asClient
			}
			resp := fe.do(t, r)
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			checkRefusal(t, resp, body, tc.status, tc.code)
			if tc.header != "" {
				if got := resp.Header.Get(tc.header); got != tc.headerValue {
					t.Fatalf("%s: %q, want %q", tc.header, got, tc.headerValue)
				}
			}
			if resp.Header.Get("Hafe-Batch-Id") != "" {
				t.Fatalf("a refusal names a batch: %s", resp.Header.Get("Hafe-Batch-Id"))
			}
			db.untouched()
		})
	}
	db.t = t
	if strict.Draining() || open.Draining() {
		t.Fatal("a refused drain request drained the front-end")
	}
	// The refusals are counted by code.
	resp := strict.do(t, request{method: http.MethodGet, path: "/metrics"})
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`hafe_requests_refused_total{code="bad_json"}`, `hafe_requests_refused_total{code="body_too_large"}`} {
		if !strings.Contains(string(m), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestContentTypeJSONWithParametersIsAccepted checks the media type, not
// the header's exact text.
func TestContentTypeJSONWithParametersIsAccepted(t *testing.T) {
	url := newDB(t)
	fe := startFrontend(t, url, Config{}, false)
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON", "application/problem+json"} {
		resp, body := fe.post(t, batchBody(`{"template":"balance","args":{"id":1}}`), map[string]string{"Content-Type": ct})
		if resp.StatusCode != 200 {
			t.Fatalf("Content-Type %q: status %d: %s", ct, resp.StatusCode, body)
		}
	}
}

// TestIdempotencyKeyOfMaximumLengthIsAccepted checks the boundary of the
// key length limit.
func TestIdempotencyKeyOfMaximumLengthIsAccepted(t *testing.T) {
	url := newDB(t)
	fe := startFrontend(t, url, Config{}, false)
	resp, body := fe.post(t, batchBody(`{"template":"balance","args":{"id":1}}`), map[string]string{"Idempotency-Key": strings.Repeat("k", maxKeyLength)})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
}
