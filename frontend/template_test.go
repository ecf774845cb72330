package frontend

import (
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
