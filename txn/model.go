package txn

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Isolation is the isolation level every transaction of a batch runs at.
type Isolation uint8

const (
	ReadCommitted Isolation = iota
	RepeatableRead
	Serializable
)

var isolationNames = [...]string{"read committed", "repeatable read", "serializable"}

func (i Isolation) String() string {
	if int(i) < len(isolationNames) {
		return isolationNames[i]
	}
	return fmt.Sprintf("Isolation(%d)", uint8(i))
}

// ParseIsolation accepts the SQL names ("read committed", "repeatable
// read", "serializable"), case-insensitive, with "_" or "-" for spaces; ""
// means read committed.
func ParseIsolation(s string) (Isolation, error) {
	norm := strings.NewReplacer("_", " ", "-", " ").Replace(strings.ToLower(strings.TrimSpace(s)))
	if norm == "" {
		return ReadCommitted, nil
	}
	for i, name := range isolationNames {
		if norm == name {
			return Isolation(i), nil
		}
	}
	return 0, fmt.Errorf("unknown isolation level %q (want one of: %s)", s, strings.Join(isolationNames[:], ", "))
}

func (i Isolation) beginSQL() string {
	return "BEGIN ISOLATION LEVEL " + strings.ToUpper(i.String())
}

// Statement is one SQL statement with either positional arguments ($1, $2,
// …) or named arguments (@name), never both.
type Statement struct {
	Query string
	Args  []any
	Named map[string]any
}

// sent returns the statement as it goes to the server: named arguments
// rewritten to positional ones, so that errors pgx reports by SQL text can
// be traced back to the statement.
func (s Statement) sent() (string, []any, error) {
	if s.Named != nil {
		return pgx.NamedArgs(s.Named).RewriteQuery(context.Background(), nil, s.Query, nil)
	}
	return s.Query, s.Args, nil
}

// Transaction is the statements of one slot, run in one database
// transaction together with the slot's outcome row.
type Transaction struct {
	Statements []Statement
	// Raw marks statements a client wrote (raw SQL), as opposed to an
	// operator's template: they run on a session that logs in as the
	// client role (Config.RawSQL), which has no privilege on schema hafe,
	// and that is closed afterwards. Check them with rawsql.Check first.
	Raw bool
}

// Batch is an ordered list of transactions; slot seq (1-based) is
// Transactions[seq-1].
type Batch struct {
	Isolation    Isolation
	Transactions []Transaction
}

// Limits bound what one transaction may return; a transaction past a limit
// is aborted with a clear error instead of growing a report without end.
type Limits struct {
	MaxRows        int // rows per statement result
	MaxReportBytes int // bytes of one rendered report line
}

// DefaultLimits are the limits used where a Config leaves them zero.
var DefaultLimits = Limits{MaxRows: 10000, MaxReportBytes: 1 << 20}
