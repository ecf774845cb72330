package sql

import (
	"reflect"
	"strings"
	"testing"
)

func TestBuiltinTemplatesParse(t *testing.T) {
	c := Builtin()
	tr, ok := c.Get("transfer")
	if !ok {
		t.Fatal("no transfer template")
	}
	if len(tr.Statements) != 2 || !reflect.DeepEqual(tr.Args, []string{"amount", "from", "to"}) {
		t.Fatalf("transfer: %+v", tr)
	}
	if !strings.HasPrefix(tr.Doc, "Move @amount") {
		t.Fatalf("doc %q", tr.Doc)
	}
	if got := c.Names(); !reflect.DeepEqual(got, []string{"balance", "deposit", "open_account", "transfer", "withdraw"}) {
		t.Fatalf("names %v", got)
	}
}

func TestCheckArgs(t *testing.T) {
	tr, _ := Builtin().Get("transfer")
	cases := []struct {
		args map[string]any
		want string
	}{
		{map[string]any{"from": 1, "to": 2, "amount": 3}, ""},
		{map[string]any{"from": 1, "to": 2}, "missing arguments amount"},
		{map[string]any{"from": 1, "to": 2, "amount": 3, "fee": 1}, "unknown arguments fee"},
		{map[string]any{"from": 1, "amount": 3, "x-y": 1}, "missing arguments to; unknown arguments x-y"},
	}
	for _, c := range cases {
		err := tr.CheckArgs(c.args)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("args %v: got %v, want %q", c.args, err, c.want)
		}
	}
}

func TestParseKeepsOperatorsThatLookLikeArgs(t *testing.T) {
	tp, err := Parse("jsonb", "SELECT @doc::jsonb @> '{\"a\":1}';\nSELECT 1;")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tp.Args, []string{"doc"}) || len(tp.Statements) != 2 {
		t.Fatalf("%+v", tp)
	}
	if q, args := tp.Call(0, map[string]any{"doc": "{}"}); q != `SELECT $1::jsonb @> '{"a":1}'` || !reflect.DeepEqual(args, []any{"{}"}) {
		t.Fatalf("call: %q %v", q, args)
	}
	lit, err := Parse("literal", "SELECT '@notarg', @real -- @comment\n;")
	if err != nil || !reflect.DeepEqual(lit.Args, []string{"real"}) {
		t.Fatalf("args inside literals or comments: %+v %v", lit, err)
	}
	if _, err := Parse("empty", "-- nothing\n"); err == nil {
		t.Fatal("a template without statements parsed")
	}
}
