package frontend

import (
	"strings"
	"testing"
)

// TestTransferGuardsTheDemoBank: a transfer that would move money out of one
// account into nowhere (or make it from nothing) aborts, whether the missing
// account is the source or the target.
func TestTransferGuardsTheDemoBank(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{}, false)
	resp, out := fe.post(t, batchBody(
		transferTxn(1, 999, "10"),
		transferTxn(999, 1, "10"),
		transferTxn(1, 1, "10"),
		transferTxn(1, 2, "-10"),
		transferTxn(1, 2, "0"),
		transferTxn(1, 2, "10.25"),
	), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	lines := parseLines(t, out)
	want := []struct {
		status, code string
	}{{"aborted", "P0002"}, {"aborted", "P0002"}, {"aborted", "22023"}, {"aborted", "22023"}, {"aborted", "22023"}, {"committed", ""}}
	for i, w := range want {
		l := lines[i]
		code := ""
		if l.Error != nil {
			code = l.Error.Code
		}
		if l.Status != w.status || code != w.code {
			t.Errorf("transfer %d: %s %s, want %s %s", i+1, l.Status, code, w.status, w.code)
		}
	}
	if n := db.count("SELECT (sum(balance) * 100)::int FROM accounts"); n != 100000*100 {
		t.Fatalf("sum of balances %d cents, want %d", n, 100000*100)
	}
	if n := db.count("SELECT (balance * 100)::int FROM accounts WHERE id = 2"); n != 101025 {
		t.Fatalf("account 2 holds %d cents, want 101025", n)
	}
}

// TestNonFiniteNumbersAreRefused: NaN and the infinities are not amounts.
// A numeric template argument that is one is refused before anything
// runs; the demo bank's own checks reject them from raw SQL; and where a
// query returns one, it is rendered as a JSON string (issue 8.11).
func TestNonFiniteNumbersAreRefused(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	fe := startFrontend(t, url, Config{AllowRawSQL: true}, false)
	for _, amount := range []string{`"NaN"`, `"nan"`, `" NaN "`, `"Infinity"`, `"-Infinity"`, `"+inf"`, `"-inf"`, `"1 OR 1"`} {
		for _, call := range []string{
			`{"template":"deposit","args":{"id":1,"amount":` + amount + `}}`,
			`{"template":"transfer","args":{"from":1,"to":2,"amount":` + amount + `}}`,
			`{"template":"open_account","args":{"id":1000,"owner":"x","balance":` + amount + `}}`,
		} {
			resp, out := fe.post(t, batchBody(call), nil)
			checkRefusal(t, resp, out, 422, "bad_arguments")
			if !strings.Contains(string(out), "finite number") {
				t.Fatalf("%s: the refusal does not say why: %s", call, out)
			}
		}
	}
	db.untouched()
	// A text argument may say NaN: Nan is a name.
	resp, out := fe.post(t, batchBody(`{"template":"open_account","args":{"id":1000,"owner":"Nan","balance":"12.50"}}`), nil)
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"committed"`) {
		t.Fatalf("an account for Nan: %d %s", resp.StatusCode, out)
	}
	// The bank itself refuses them too, whoever asks.
	resp, out = fe.post(t, batchBody(
		rawTxn("UPDATE accounts SET balance = 'NaN' WHERE id = 1"),
		rawTxn("UPDATE accounts SET balance = balance + 'NaN' WHERE id = 2"),
		rawTxn("SELECT bank_transfer_allowed(1, 2, 'NaN')"),
		rawTxn("SELECT bank_transfer_allowed(1, 2, 'Infinity')"),
		rawTxn("SELECT 'NaN'::numeric AS a, 'Infinity'::numeric AS b, '-Infinity'::numeric AS c, 'NaN'::float8 AS d, '-Infinity'::float4 AS e, 'Infinity'::float8 AS f, ARRAY['NaN'::numeric, 1.5] AS g, 2.5::float8 AS h"),
	), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	lines := parseLines(t, out)
	for i, code := range []string{"23514", "23514", "22023", "22023"} {
		if lines[i].Status != "aborted" || lines[i].Error == nil || lines[i].Error.Code != code {
			t.Errorf("transaction %d: %+v, want aborted with %s", i+1, lines[i], code)
		}
	}
	wantRow := `"rows":[["NaN","Infinity","-Infinity","NaN","-Infinity","Infinity",["NaN",1.5],2.5]]`
	if !strings.Contains(string(out), wantRow) {
		t.Fatalf("non-finite values rendered as:\n%s\nwant %s", out, wantRow)
	}
	if n := db.count("SELECT count(*) FROM accounts WHERE balance = 'NaN' OR balance = 'Infinity'"); n != 0 {
		t.Fatalf("%d balances are not finite", n)
	}
	if got := db.balanceSum(); got != "100012.50" {
		t.Fatalf("sum of balances %s", got)
	}
}
