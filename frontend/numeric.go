package frontend

import (
	"context"
	"regexp"
	"sync"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	hafesql "hafe.dev/hafe/sql"
)

// templateCall is a template transaction of a request, kept until its
// arguments have been checked against the template's parameter types.
type templateCall struct {
	seq  int
	t    *hafesql.Template
	args map[string]any // as decoded: json.Number, string, …
}

// numberArgs refuses NaN and the infinities for template arguments that
// PostgreSQL takes as numbers (numeric, real, double precision): JSON has
// no such numbers, but a string "NaN" is one for numeric and would pass a
// guard like "amount > 0". Which arguments are numbers is learnt once per
// template by asking PostgreSQL to describe its statements.
type numberArgs struct {
	pool *pgxpool.Pool
	// numeric maps a template name to the set of its arguments that are
	// numbers.
	numeric sync.Map
}

// finiteDecimal is what a string may say for a number argument.
var finiteDecimal = regexp.MustCompile(`^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$`)

func (n *numberArgs) check(ctx context.Context, calls []templateCall) *requestError {
	for _, c := range calls {
		numbers, ok := n.numbers(ctx, c.t)
		if !ok {
			// Not described (no database right now): the demo schema's own
			// checks, and the database being away, still stop it.
			continue
		}
		for name := range numbers {
			if s, isString := c.args[name].(string); isString && !finiteDecimal.MatchString(s) {
				return refuse(422, "bad_arguments", "transaction %d: argument %s of template %s must be a finite number, not %q", c.seq, name, c.t.Name, s)
			}
		}
	}
	return nil
}

// numbers returns the arguments of t that PostgreSQL takes as numbers.
func (n *numberArgs) numbers(ctx context.Context, t *hafesql.Template) (map[string]bool, bool) {
	if v, ok := n.numeric.Load(t.Name); ok {
		return v.(map[string]bool), true
	}
	conn, err := n.pool.Acquire(ctx)
	if err != nil {
		return nil, false
	}
	defer conn.Release()
	numbers := map[string]bool{}
	for i, q := range t.Positional {
		// The unnamed statement: nothing is left prepared on the session.
		sd, err := conn.Conn().PgConn().Prepare(ctx, "", q, nil)
		if err != nil {
			return nil, false
		}
		for j, oid := range sd.ParamOIDs {
			if j < len(t.ArgOrder[i]) && (oid == pgtype.NumericOID || oid == pgtype.Float4OID || oid == pgtype.Float8OID) {
				numbers[t.ArgOrder[i][j]] = true
			}
		}
	}
	n.numeric.Store(t.Name, numbers)
	return numbers, true
}
