package api

import (
	"encoding/json"
	"testing"
)

// The wire forms are frozen: batches are hashed over Batch's canonical
// JSON, and report lines are stored as rendered and replayed byte for
// byte, so a reordered field or a changed tag would break resumption of
// batches recorded by an earlier version.
func TestWireFormsAreFrozen(t *testing.T) {
	rows := [][]any{{1, "a"}}
	for _, tt := range []struct {
		v    any
		want string
	}{
		{Batch{Transactions: []Transaction{
			{Template: "transfer", Args: map[string]any{"to": 2, "from": 1}},
			{SQL: []Statement{{Query: "SELECT $1", Args: []any{"x"}}}},
		}, Isolation: "serializable"},
			`{"transactions":[{"template":"transfer","args":{"from":1,"to":2}},{"sql":[{"query":"SELECT $1","args":["x"]}]}],"isolation":"serializable"}`},
		{Report{Seq: 3, Status: StatusCommitted, Results: []Result{{Command: "SELECT", RowsAffected: 1, Columns: []string{"id", "v"}, Rows: &rows}}},
			`{"seq":3,"status":"committed","results":[{"command":"SELECT","rows_affected":1,"columns":["id","v"],"rows":[[1,"a"]]}]}`},
		{Report{Seq: 4, Status: StatusAborted, Error: &SlotError{Code: "23514", Message: "no", Statement: 1}},
			`{"seq":4,"status":"aborted","error":{"code":"23514","message":"no","statement":1}}`},
		{Refusal{Error: RefusalError{Code: "bad_json", Message: "m"}}, `{"error":{"code":"bad_json","message":"m"}}`},
	} {
		got, err := json.Marshal(tt.v)
		if err != nil || string(got) != tt.want {
			t.Errorf("%T renders %s (%v), want %s", tt.v, got, err, tt.want)
		}
	}
	if got := string(Summary{Done: true, BatchID: "b", Transactions: 2, Committed: 1, Aborted: 1}.Line()); got != `{"done":true,"batch_id":"b","transactions":2,"committed":1,"aborted":1}` {
		t.Errorf("summary line %s", got)
	}
}
