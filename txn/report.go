package txn

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"hafe.dev/hafe/api"
)

// Outcome statuses.
const (
	StatusCommitted = api.StatusCommitted
	StatusAborted   = api.StatusAborted
)

// The response lines' types are the API's.
type (
	Result    = api.Result
	SlotError = api.SlotError
	Report    = api.Report
	Summary   = api.Summary
)

func renderReport(r Report) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		// Values are converted to JSON-safe types first; this is a bug.
		panic(fmt.Sprintf("render report: %v", err))
	}
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
