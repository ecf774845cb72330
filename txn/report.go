package txn

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Outcome statuses.
const (
	StatusCommitted = "committed"
	StatusAborted   = "aborted"
)

// Result is what one statement returned.
type Result struct {
	Command      string `json:"command"`
	RowsAffected int64  `json:"rows_affected"`
	// Columns and Rows are present only for statements that return rows.
	Columns []string `json:"columns,omitempty"`
	Rows    *[][]any `json:"rows,omitempty"`
}

// SlotError says why a slot aborted. Code is the SQLSTATE for database
// errors, or one of hafe's own words (e.g. "result_too_large").
type SlotError struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Statement int    `json:"statement,omitempty"` // 1-based; 0 when not one statement's fault
	Detail    string `json:"detail,omitempty"`
}

func (e *SlotError) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// Report is one slot's line in a batch response.
type Report struct {
	Seq     int        `json:"seq"`
	Status  string     `json:"status"`
	Results []Result   `json:"results,omitempty"`
	Error   *SlotError `json:"error,omitempty"`
}

// Summary is the batch response's last line.
type Summary struct {
	Done         bool   `json:"done"`
	BatchID      string `json:"batch_id"`
	Transactions int    `json:"transactions"`
	Committed    int    `json:"committed"`
	Aborted      int    `json:"aborted"`
}

func renderReport(r Report) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		// Values are converted to JSON-safe types first; this is a bug.
		panic(fmt.Sprintf("render report: %v", err))
	}
	return b
}

// Line renders the summary line.
func (s Summary) Line() []byte {
	b, _ := json.Marshal(s)
	return b
}

// jsonValue converts a value decoded by pgx into one that encoding/json
// renders faithfully and deterministically.
func jsonValue(v any) any {
	switch x := v.(type) {
	case nil, bool, string, int8, int16, int32, int64, int, uint8, uint16, uint32, uint64, uint:
		return x
	case float32:
		return jsonFloat(float64(x))
	case float64:
		return jsonFloat(x)
	case []byte:
		return `\x` + hex.EncodeToString(x)
	case time.Time:
		return x.Format(time.RFC3339Nano)
	case [16]byte:
		return pgtype.UUID{Bytes: x, Valid: true}.String()
	case pgtype.Numeric:
		switch {
		case x.NaN:
			return "NaN"
		case x.InfinityModifier == pgtype.Infinity:
			return "Infinity"
		case x.InfinityModifier == pgtype.NegativeInfinity:
			return "-Infinity"
		}
		if b, err := x.MarshalJSON(); err == nil {
			return json.RawMessage(b)
		}
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonValue(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonValue(e)
		}
		return out
	case json.Marshaler:
		if b, err := x.MarshalJSON(); err == nil && json.Valid(b) {
			return json.RawMessage(b)
		}
	case fmt.Stringer:
		return x.String()
	}
	return fmt.Sprint(v)
}

// jsonFloat renders what JSON has no number for as a string, spelled as
// PostgreSQL spells it (and as numeric values are): "NaN", "Infinity",
// "-Infinity".
func jsonFloat(f float64) any {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return f
}
