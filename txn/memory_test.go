package txn

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// allocatedDuring returns the bytes the process allocated while f ran.
func allocatedDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestResultLimitIsAppliedWhileReadingRows: a statement whose result is
// far over the report limit is aborted as soon as the rows read so far
// pass it, not after the whole result was held in memory. The rows are
// 200 MB; the limit 1 MiB. Issue 8 item 9's memory figure.
func TestResultLimitIsAppliedWhileReadingRows(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 200 MB from PostgreSQL")
	}
	url := newDB(t)
	const limit = 1 << 20
	e, p := newExecutor(t, url, "fe1", Config{Limits: Limits{MaxRows: 1 << 30, MaxReportBytes: limit}})
	b := Batch{Transactions: []Transaction{
		counted(1, Statement{Query: "SELECT g, repeat('x', 10000) FROM generate_series(1, 20000) g"}),
		counted(2, Statement{Query: "SELECT repeat('y', 100000000)"}),
		counted(3),
	}}
	var s stream
	var sum Summary
	var err error
	alloc := allocatedDuring(func() {
		sum, err = e.Run(context.Background(), open(t, e, "big-result", 3), b, s.emit)
	})
	t.Logf("a 200 MB result and a 100 MB row over a %d byte limit: %.1f MiB allocated", limit, float64(alloc)/(1<<20))
	if err != nil || sum.Aborted != 2 || sum.Committed != 1 || strings.Count(s.text(), "result_too_large") != 2 {
		t.Fatalf("sum %+v err %v\n%.300s", sum, err, s.text())
	}
	if runs := runsPerSlot(t, p); runs[1] != 0 || runs[2] != 0 || runs[3] != 1 {
		t.Fatalf("runs per slot %v, want only slot 3", runs)
	}
	// The 100 MB row is one protocol message, which the driver reads
	// whole; nothing else may be a copy of a result.
	if alloc > 200<<20 {
		t.Fatalf("%s allocated for results cut at %d bytes", fmt.Sprintf("%.0f MiB", float64(alloc)/(1<<20)), limit)
	}
}

// TestPreparedSQLMemoryIsBounded: the SQL text remembered as prepared
// fine is bounded by count and bytes, least recently used first out, and
// clients' raw SQL (never chained) is not remembered at all.
func TestPreparedSQLMemoryIsBounded(t *testing.T) {
	url := newDB(t)
	e, _ := newExecutor(t, url, "fe1", Config{RawSQL: rawSQLConfig(t, url, 1)})
	e.known = newKnownSQL(3, 1<<20)
	var txns []Transaction
	for i := 1; i <= 6; i++ {
		txns = append(txns, Transaction{Statements: []Statement{{Query: fmt.Sprintf("SELECT %d AS n", i)}}})
	}
	txns = append(txns, Transaction{Raw: true, Statements: []Statement{{Query: "SELECT 'raw' AS r"}}})
	sum, err := e.Run(context.Background(), open(t, e, "known", len(txns)), Batch{Transactions: txns}, (&stream{}).emit)
	if err != nil || sum.Committed != len(txns) {
		t.Fatalf("sum %+v err %v", sum, err)
	}
	if n, _ := e.known.size(); n != 3 {
		t.Fatalf("%d texts remembered, want the bound of 3", n)
	}
	if !e.known.allKnown([]string{"SELECT 6 AS n"}) || e.known.allKnown([]string{"SELECT 1 AS n"}) || e.known.allKnown([]string{"SELECT 'raw' AS r"}) {
		t.Fatal("want the 3 most recent template texts remembered, not older ones or raw SQL")
	}
	k := newKnownSQL(100, 10)
	k.add([]string{"12345", "67890", "abc"})
	if n, b := k.size(); n != 2 || b != 8 {
		t.Fatalf("byte bound: %d texts, %d bytes; want 2 texts, 8 bytes", n, b)
	}
}

// TestReplayReadsOutcomesInPages: replaying a long finished batch holds a
// page of its stored lines at a time, not all of them: 200 lines of 512
// KiB (100 MiB) replay with a small live heap. Issue 8 item 10's figure.
func TestReplayReadsOutcomesInPages(t *testing.T) {
	if testing.Short() {
		t.Skip("stores and replays 100 MiB")
	}
	url := newDB(t)
	e, p := newExecutor(t, url, "fe1", Config{})
	const n, size = 200, 512 << 10
	l := open(t, e, "long-replay", n)
	ctx := context.Background()
	if _, err := p.Exec(ctx, `INSERT INTO hafe.outcomes (batch_id, seq, status, report, epoch, owner)
		SELECT $1, g, 'committed', '{"seq":' || g || ',"pad":"' || repeat('x', $2) || '"}', 1, 'fe1' FROM generate_series(1, $3) g`, l.BatchID, size, n); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Exec(ctx, "UPDATE hafe.batches SET state = 'done', owner = NULL WHERE batch_id = $1", l.BatchID); err != nil {
		t.Fatal(err)
	}
	e.Release(l)
	replay := open(t, e, "long-replay", n)
	if !replay.Finished {
		t.Fatalf("lease %+v, want finished", replay)
	}
	var base runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)
	var peak uint64
	var lines int
	sum, err := e.Run(ctx, replay, Batch{Transactions: make([]Transaction, n)}, func(line []byte) error {
		if lines++; !strings.HasPrefix(string(line), fmt.Sprintf(`{"seq":%d,`, lines)) {
			return fmt.Errorf("line %d is %.20s", lines, line)
		}
		if lines%10 == 0 {
			var m runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
		}
		return nil
	})
	if err != nil || sum.Committed != n || lines != n {
		t.Fatalf("replay: %+v %v, %d lines", sum, err, lines)
	}
	live := float64(peak-min(peak, base.HeapAlloc)) / (1 << 20)
	t.Logf("replaying %d lines of %d KiB (%d MiB): live heap at most %.1f MiB above the start", n, size>>10, n*size>>20, live)
	if live > 40 {
		t.Fatalf("replay held %.1f MiB of a %d MiB batch", live, n*size>>20)
	}
}
