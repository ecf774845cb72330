package backendext

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestOutcomesArePagedByCountAndBytes: pages follow seq order across gaps,
// stop at the row limit or the byte bound (never below one outcome), and
// say when nothing was left out.
func TestOutcomesArePagedByCountAndBytes(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	id := "00000000-0000-0000-0000-000000000009"
	if _, _, err := CreateBatch(ctx, c, id, "", []byte{1}, 9, "fe1", "run1", time.Second); err != nil {
		t.Fatal(err)
	}
	sizes := map[int]int{1: 10, 2: 10, 4: 100, 5: 10, 7: 10, 9: 10} // seq -> report bytes
	for seq, n := range sizes {
		o := Outcome{BatchID: id, Seq: seq, Status: "committed", Report: []byte(strings.Repeat("x", n)), Epoch: 1, Owner: "fe1"}
		if _, err := c.Exec(ctx, InsertOutcomeSQL, OutcomeArgs(o)...); err != nil {
			t.Fatal(err)
		}
	}
	var pages []string
	for after := 0; ; {
		os, complete, err := ListOutcomesPage(ctx, c, id, after, 2, 50)
		if err != nil {
			t.Fatal(err)
		}
		var seqs []string
		for _, o := range os {
			if len(o.Report) != sizes[o.Seq] {
				t.Fatalf("seq %d: report of %d bytes, want %d", o.Seq, len(o.Report), sizes[o.Seq])
			}
			seqs = append(seqs, string(rune('0'+o.Seq)))
			after = o.Seq
		}
		page := strings.Join(seqs, ",")
		if complete {
			page += "."
		}
		pages = append(pages, page)
		if complete {
			break
		}
	}
	if got := strings.Join(pages, " "); got != "1,2 4 5,7 9." {
		t.Fatalf("pages %q, want %q", got, "1,2 4 5,7 9.")
	}
}
