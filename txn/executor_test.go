package txn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/internal/pgtemp/pgtest"
)

var server *pgtemp.Server

func TestMain(m *testing.M) { pgtest.Main(m, &server, nil) }

const testSchema = `
CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL CHECK (balance >= 0));
INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g;
CREATE TABLE runs (slot int, n int NOT NULL DEFAULT 1);
CREATE SEQUENCE tries;
CREATE FUNCTION fail_first(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('tries') <= n THEN
    RAISE EXCEPTION 'injected conflict' USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN 1;
END $$;
`

// newDB makes a fresh database with hafe installed and the test schema.
func newDB(t *testing.T) string { return pgtest.Database(t, server, "txn", testSchema) }

func newPool(t *testing.T, url, owner string) *pgxpool.Pool {
	return newPoolRun(t, url, owner, "")
}

// newPoolRun returns a pool whose sessions belong to run incarnation of owner.
func newPoolRun(t *testing.T, url, owner, incarnation string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	backendext.ConfigurePool(cfg, owner, incarnation, time.Minute)
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func newExecutor(t *testing.T, url, owner string, cfg Config) (*Executor, *pgxpool.Pool) {
	cfg.Incarnation = newUUID()
	p := newPoolRun(t, url, owner, cfg.Incarnation)
	cfg.Owner = owner
	return NewExecutor(p, cfg, testLog(t)), p
}

func transfer(from, to, amount int) Transaction {
	return Transaction{Statements: []Statement{
		{Query: "UPDATE accounts SET balance = balance - @amount WHERE id = @from", Named: map[string]any{"amount": amount, "from": from}},
		{Query: "UPDATE accounts SET balance = balance + @amount WHERE id = @to RETURNING balance", Named: map[string]any{"amount": amount, "to": to}},
	}}
}

// counted records one execution of slot in table runs, so tests can count
// how often each slot's effects committed.
func counted(slot int, more ...Statement) Transaction {
	stmts := append([]Statement{{Query: "INSERT INTO runs (slot) VALUES ($1)", Args: []any{slot}}}, more...)
	return Transaction{Statements: stmts}
}

type stream struct {
	mu    sync.Mutex
	lines [][]byte
}

func (s *stream) emit(line []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, bytes.Clone(line))
	return nil
}

func (s *stream) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(bytes.Join(s.lines, []byte("\n")))
}

func runsPerSlot(t *testing.T, p *pgxpool.Pool) map[int]int {
	t.Helper()
	rows, err := p.Query(context.Background(), "SELECT slot, count(*) FROM runs GROUP BY slot")
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]int{}
	for rows.Next() {
		var slot, n int
		rows.Scan(&slot, &n)
		m[slot] = n
	}
	return m
}

func open(t *testing.T, e *Executor, key string, n int) *Lease {
	t.Helper()
	l, err := e.Open(context.Background(), OpenRequest{IdempotencyKey: key, RequestHash: []byte("hash-" + key), NumTxns: n})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestBatchReportsEachSlotInOrder(t *testing.T) {
	e, p := newExecutor(t, newDB(t), "fe1", Config{})
	b := Batch{Transactions: []Transaction{transfer(1, 2, 30), transfer(2, 3, 500), transfer(3, 1, 10)}}
	var s stream
	sum, err := e.Run(context.Background(), open(t, e, "k1", 3), b, s.emit)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Committed != 2 || sum.Aborted != 1 || !sum.Done {
		t.Fatalf("summary %+v", sum)
	}
	want := []string{
		`{"seq":1,"status":"committed","results":[{"command":"UPDATE","rows_affected":1},{"command":"UPDATE","rows_affected":1,"columns":["balance"],"rows":[[130]]}]}`,
		`{"seq":2,"status":"aborted","error":{"code":"23514","message":"new row for relation \"accounts\" violates check constraint \"accounts_balance_check\"","statement":1,"detail":"Failing row contains (2, -370)."}}`,
		`{"seq":3,"status":"committed","results":[{"command":"UPDATE","rows_affected":1},{"command":"UPDATE","rows_affected":1,"columns":["balance"],"rows":[[80]]}]}`,
	}
	if got := s.text(); got != strings.Join(want, "\n") {
		t.Fatalf("stream:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	var total int
	p.QueryRow(context.Background(), "SELECT sum(balance) FROM accounts").Scan(&total)
	if total != 1000 {
		t.Fatalf("sum of balances %d, want 1000", total)
	}
}

func TestOutcomeIsDurableBeforeItIsReported(t *testing.T) {
	url := newDB(t)
	e, p := newExecutor(t, url, "fe1", Config{})
	b := Batch{Transactions: []Transaction{transfer(1, 2, 1), transfer(1, 2, 1000), transfer(1, 2, 1)}}
	l := open(t, e, "durable", 3)
	seq := 0
	_, err := e.Run(context.Background(), l, b, func(line []byte) error {
		seq++
		// Another session must already see the outcome, exactly as reported.
		o, ok, err := backendext.GetOutcome(context.Background(), p, l.BatchID, seq)
		if err != nil || !ok {
			return fmt.Errorf("slot %d reported before its outcome was durable (err %v)", seq, err)
		}
		if !bytes.Equal(o.Report, line) {
			return fmt.Errorf("slot %d: reported %s, recorded %s", seq, line, o.Report)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSlotCommitsOnceWhenTwoExecutorsRace(t *testing.T) {
	url := newDB(t)
	e1, p := newExecutor(t, url, "fe1", Config{})
	e2, _ := newExecutor(t, url, "fe1", Config{})
	const n = 40
	var txns []Transaction
	for i := 1; i <= n; i++ {
		txns = append(txns, counted(i, transfer(i%10+1, (i+3)%10+1, 7).Statements...))
	}
	l := open(t, e1, "race", n)
	// A split brain: both executors believe they hold the same lease.
	twin := *l
	var s1, s2 stream
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, errs[0] = e1.Run(context.Background(), l, Batch{Transactions: txns}, s1.emit)
	}()
	go func() {
		defer wg.Done()
		_, errs[1] = e2.Run(context.Background(), &twin, Batch{Transactions: txns}, s2.emit)
	}()
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if s1.text() != s2.text() {
		t.Fatalf("executors reported differently:\n%s\n---\n%s", s1.text(), s2.text())
	}
	for slot, runs := range runsPerSlot(t, p) {
		if runs != 1 {
			t.Errorf("slot %d committed %d times", slot, runs)
		}
	}
	var total int
	p.QueryRow(context.Background(), "SELECT sum(balance) FROM accounts").Scan(&total)
	if total != 1000 {
		t.Fatalf("sum of balances %d, want 1000", total)
	}
}

var errClientGone = errors.New("client went away")

func TestResumeReportsRecordedSlotsWithIdenticalBytes(t *testing.T) {
	url := newDB(t)
	e1, p := newExecutor(t, url, "fe1", Config{})
	var txns []Transaction
	for i := 1; i <= 6; i++ {
		txns = append(txns, counted(i, transfer(1, 2, 40).Statements...))
	}
	b := Batch{Transactions: txns}
	var first stream
	_, err := e1.Run(context.Background(), open(t, e1, "resume", 6), b, func(line []byte) error {
		first.emit(line)
		if len(first.lines) == 3 {
			return errClientGone
		}
		return nil
	})
	if !errors.Is(err, errClientGone) {
		t.Fatalf("first run: %v", err)
	}
	e2, _ := newExecutor(t, url, "fe2", Config{})
	l := open(t, e2, "resume", 6)
	if !l.Resumed || l.Epoch != 2 {
		t.Fatalf("lease %+v, want resumed at epoch 2", l)
	}
	var second stream
	sum, err := e2.Run(context.Background(), l, b, second.emit)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(second.text(), first.text()) {
		t.Fatalf("resumed stream does not start with the first stream's bytes:\n%s\n---\n%s", first.text(), second.text())
	}
	if sum.Committed != 2 || sum.Aborted != 4 {
		t.Fatalf("summary %+v: transfers of 40 from 100 commit twice", sum)
	}
	for slot, runs := range runsPerSlot(t, p) {
		if runs != 1 {
			t.Errorf("slot %d ran %d times", slot, runs)
		}
	}
	// A finished batch replays without running anything.
	l3 := open(t, e1, "resume", 6)
	if !l3.Finished {
		t.Fatalf("lease %+v, want finished", l3)
	}
	var third stream
	sum3, err := e1.Run(context.Background(), l3, b, third.emit)
	if err != nil || third.text() != second.text() || sum3 != sum {
		t.Fatalf("replay differs (err %v):\n%s\n---\n%s", err, second.text(), third.text())
	}
}

func TestKeyReusedWithOtherRequestIsRefused(t *testing.T) {
	e, _ := newExecutor(t, newDB(t), "fe1", Config{})
	l := open(t, e, "k", 1)
	e.Release(l)
	_, err := e.Open(context.Background(), OpenRequest{IdempotencyKey: "k", RequestHash: []byte("other"), NumTxns: 1})
	if !errors.Is(err, ErrKeyReused) {
		t.Fatalf("got %v, want ErrKeyReused", err)
	}
}

func TestBatchOfLiveOwnerIsBusyAndOfDeadOwnerIsTakenOver(t *testing.T) {
	url := newDB(t)
	e1, p := newExecutor(t, url, "fe1", Config{OwnerLiveness: time.Hour})
	e2, _ := newExecutor(t, url, "fe2", Config{OwnerLiveness: time.Hour})
	ctx := context.Background()
	if err := backendext.Heartbeat(ctx, p, backendext.Member{ID: "fe1", Incarnation: e1.Incarnation()}); err != nil {
		t.Fatal(err)
	}
	l1 := open(t, e1, "busy", 1)
	_, err := e2.Open(ctx, OpenRequest{IdempotencyKey: "busy", RequestHash: []byte("hash-busy"), NumTxns: 1})
	var busy *BusyError
	if !errors.As(err, &busy) || busy.Owner != "fe1" {
		t.Fatalf("got %v, want busy on fe1", err)
	}
	// The same front-end refuses a second concurrent request for the key.
	if _, err := e1.Open(ctx, OpenRequest{IdempotencyKey: "busy", RequestHash: []byte("hash-busy"), NumTxns: 1}); !errors.As(err, &busy) {
		t.Fatalf("second open on owner: %v", err)
	}
	// fe1 dies: its membership goes away.
	if err := backendext.Leave(ctx, p, "fe1"); err != nil {
		t.Fatal(err)
	}
	l2 := open(t, e2, "busy", 1)
	if l2.Epoch != 2 {
		t.Fatalf("takeover epoch %d", l2.Epoch)
	}
	// The old owner is fenced: its next slot fails and commits nothing.
	_, err = e1.Run(ctx, l1, Batch{Transactions: []Transaction{counted(1)}}, (&stream{}).emit)
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("old owner ran on: %v", err)
	}
	if runs := runsPerSlot(t, p); len(runs) != 0 {
		t.Fatalf("fenced owner committed: %v", runs)
	}
}

func TestClaimTerminatesStuckOwnerSession(t *testing.T) {
	url := newDB(t)
	ctx := context.Background()
	e1, _ := newExecutor(t, url, "old", Config{})
	l1 := open(t, e1, "stuck", 1)
	// The old owner is in the middle of a slot transaction and hangs.
	cfg, _ := pgx.ParseConfig(url)
	cfg.RuntimeParams["application_name"] = backendext.ApplicationName("old", e1.Incarnation())
	stuck, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close(ctx)
	tx, err := stuck.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO runs (slot) VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	o := backendext.Outcome{BatchID: l1.BatchID, Seq: 1, Status: StatusCommitted, Report: []byte(`{}`), Epoch: l1.Epoch, Owner: "old", Attempts: 1}
	if err := backendext.OutcomeInserted(tx.Exec(ctx, backendext.InsertOutcomeSQL, backendext.OutcomeArgs(o)...)); err != nil {
		t.Fatalf("old owner's outcome: %v", err)
	}

	var seen recorder
	e2, p := newExecutor(t, url, "new", Config{FenceGrace: 200 * time.Millisecond, Observer: &seen})
	l2 := open(t, e2, "stuck", 1)
	if l2.Epoch != 2 || !l2.TakenOver || l2.PreviousOwner != "old" {
		t.Fatalf("lease %+v", l2)
	}
	if seen.count("takeover") != 1 || seen.count("fence blocker") != 1 {
		t.Fatalf("observed %v, want one takeover and one blocker fenced", &seen)
	}
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("the stuck owner's transaction committed after the takeover")
	}
	if runs := runsPerSlot(t, p); len(runs) != 0 {
		t.Fatalf("stuck owner's slot committed: %v", runs)
	}
}

func TestSerializationFailuresAreRetried(t *testing.T) {
	var seen recorder
	e, p := newExecutor(t, newDB(t), "fe1", Config{MaxAttempts: 5, RetryBackoff: time.Millisecond, Observer: &seen})
	b := Batch{Isolation: Serializable, Transactions: []Transaction{
		counted(1, Statement{Query: "SELECT fail_first(2)"}),
	}}
	l := open(t, e, "retry", 1)
	sum, err := e.Run(context.Background(), l, b, (&stream{}).emit)
	if err != nil || sum.Committed != 1 {
		t.Fatalf("sum %+v err %v", sum, err)
	}
	o, _, _ := backendext.GetOutcome(context.Background(), p, l.BatchID, 1)
	if o.Attempts != 3 {
		t.Fatalf("attempts %d, want 3", o.Attempts)
	}
	if runs := runsPerSlot(t, p); runs[1] != 1 {
		t.Fatalf("runs %v", runs)
	}
	if seen.count("retry serialization_failure") != 2 || seen.count("outcome committed executed") != 1 {
		t.Fatalf("observed %v, want 2 serialization retries and 1 executed commit", &seen)
	}
}

func TestRetriesAreBounded(t *testing.T) {
	e, _ := newExecutor(t, newDB(t), "fe1", Config{MaxAttempts: 3, RetryBackoff: time.Millisecond})
	b := Batch{Transactions: []Transaction{{Statements: []Statement{{Query: "SELECT fail_first(100)"}}}}}
	var s stream
	sum, err := e.Run(context.Background(), open(t, e, "bounded", 1), b, s.emit)
	if err != nil || sum.Aborted != 1 || !strings.Contains(s.text(), `"code":"40001"`) {
		t.Fatalf("sum %+v err %v stream %s", sum, err, s.text())
	}
}

func TestResultLimitsAbortTheSlot(t *testing.T) {
	e, _ := newExecutor(t, newDB(t), "fe1", Config{Limits: Limits{MaxRows: 5, MaxReportBytes: 300}})
	b := Batch{Transactions: []Transaction{
		{Statements: []Statement{{Query: "SELECT g FROM generate_series(1, 6) g"}}},
		{Statements: []Statement{{Query: "SELECT repeat('x', 400)"}}},
		{Statements: []Statement{{Query: "SELECT g FROM generate_series(1, 5) g"}}},
	}}
	var s stream
	sum, err := e.Run(context.Background(), open(t, e, "limits", 3), b, s.emit)
	if err != nil || sum.Aborted != 2 || sum.Committed != 1 {
		t.Fatalf("sum %+v err %v\n%s", sum, err, s.text())
	}
	if strings.Count(s.text(), "result_too_large") != 2 {
		t.Fatalf("stream %s", s.text())
	}
}

func TestBadArgumentsAbortTheSlotOnly(t *testing.T) {
	e, _ := newExecutor(t, newDB(t), "fe1", Config{})
	b := Batch{Transactions: []Transaction{
		{Statements: []Statement{{Query: "SELECT $1::int", Args: []any{"not a number"}}}},
		{Statements: []Statement{{Query: "SELECT $1::int", Args: []any{make(chan int)}}}},
		{Statements: []Statement{{Query: "SELECT g FROM generate_series(1, 0) g"}}},
		{Statements: []Statement{{Query: "SELECT 1"}}},
	}}
	var s stream
	sum, err := e.Run(context.Background(), open(t, e, "badargs", 3), b, s.emit)
	if err != nil || sum.Aborted != 2 || sum.Committed != 2 {
		t.Fatalf("sum %+v err %v\n%s", sum, err, s.text())
	}
	if !strings.Contains(s.text(), `"columns":["g"],"rows":[]`) {
		t.Fatalf("an empty result should list its columns and no rows:\n%s", s.text())
	}
}

func TestStatementThatFailsToPrepareAbortsOnlyItsSlot(t *testing.T) {
	e, p := newExecutor(t, newDB(t), "fe1", Config{})
	b := Batch{Transactions: []Transaction{
		counted(1, Statement{Query: "SELEC 1"}),
		counted(2, Statement{Query: "SELECT * FROM no_such_table WHERE id = @id", Named: map[string]any{"id": 1}}),
		counted(3, Statement{Query: "SELECT $1::int", Args: []any{make(chan int)}}),
		counted(4),
	}}
	var s stream
	sum, err := e.Run(context.Background(), open(t, e, "prepare", 4), b, s.emit)
	if err != nil || sum.Aborted != 3 || sum.Committed != 1 {
		t.Fatalf("sum %+v err %v\n%s", sum, err, s.text())
	}
	for _, want := range []string{`"code":"42601"`, `"code":"42P01"`, `"code":"invalid_arguments"`} {
		if !strings.Contains(s.text(), want+`,`) || !strings.Contains(s.text(), `"statement":2`) {
			t.Fatalf("stream lacks %s at statement 2:\n%s", want, s.text())
		}
	}
	if runs := runsPerSlot(t, p); len(runs) != 1 || runs[4] != 1 {
		t.Fatalf("runs %v: aborted slots left effects", runs)
	}
}

func TestBatchOfEarlierRunUnderSameNameIsTakenOver(t *testing.T) {
	url := newDB(t)
	ctx := context.Background()
	first, p := newExecutor(t, url, "fe1", Config{OwnerLiveness: time.Hour})
	if err := backendext.Heartbeat(ctx, p, backendext.Member{ID: "fe1", Incarnation: first.Incarnation()}); err != nil {
		t.Fatal(err)
	}
	open(t, first, "orphan", 1) // fe1 crashes while running it
	// fe1 restarts under the same name and heartbeats again.
	again, _ := newExecutor(t, url, "fe1", Config{OwnerLiveness: time.Hour})
	if err := backendext.Heartbeat(ctx, p, backendext.Member{ID: "fe1", Incarnation: again.Incarnation()}); err != nil {
		t.Fatal(err)
	}
	other, _ := newExecutor(t, url, "fe2", Config{OwnerLiveness: time.Hour})
	l, err := other.Open(ctx, OpenRequest{IdempotencyKey: "orphan", RequestHash: []byte("hash-orphan"), NumTxns: 1})
	if err != nil {
		t.Fatalf("the orphaned batch was not taken over: %v", err)
	}
	if l.Epoch != 2 {
		t.Fatalf("epoch %d", l.Epoch)
	}
}

func TestTakeoverEndsDeadOwnersTransactionStuckMidStatement(t *testing.T) {
	url := newDB(t)
	ctx := context.Background()
	e1, _ := newExecutor(t, url, "old", Config{})
	open(t, e1, "midstatement", 1)
	// The old owner is cut off in the middle of a slot: its transaction
	// holds account 1's row and has not reached its outcome insert.
	cfg, _ := pgx.ParseConfig(url)
	cfg.RuntimeParams["application_name"] = backendext.ApplicationName("old", e1.Incarnation())
	stuck, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close(ctx)
	tx, err := stuck.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}

	e2, p := newExecutor(t, url, "new", Config{})
	l := open(t, e2, "midstatement", 1)
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sum, err := e2.Run(runCtx, l, Batch{Transactions: []Transaction{transfer(1, 2, 5)}}, (&stream{}).emit)
	if err != nil || sum.Committed != 1 {
		t.Fatalf("the new owner could not run the slot past the dead owner's lock: %+v %v", sum, err)
	}
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("the dead owner's transaction committed after the takeover")
	}
	var balance int
	p.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&balance)
	if balance != 95 {
		t.Fatalf("account 1 holds %d, want 95", balance)
	}
}

// TestBatchIsFinishedWhenItsClientLeavesAfterTheLastSlot: a client that
// hangs up once the last line is reported (its request context is
// cancelled then) must not leave the batch "running" under a live owner:
// its bookkeeping runs on a context of its own.
func TestBatchIsFinishedWhenItsClientLeavesAfterTheLastSlot(t *testing.T) {
	url := newDB(t)
	e, p := newExecutor(t, url, "fe1", Config{})
	const n = 3
	b := Batch{Transactions: []Transaction{counted(1), counted(2), counted(3)}}
	l := open(t, e, "leaves-at-end", n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var lines int
	e.Run(ctx, l, b, func([]byte) error {
		if lines++; lines == n {
			cancel() // the client is gone just before the summary
		}
		return nil
	})
	got, err := backendext.GetBatch(context.Background(), p, l.BatchID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != backendext.BatchDone || got.Owner != "" {
		t.Fatalf("batch left %s under owner %q, want done and unowned", got.State, got.Owner)
	}
	other, _ := newExecutor(t, url, "fe2", Config{})
	again := open(t, other, "leaves-at-end", n)
	var s stream
	sum, err := other.Run(context.Background(), again, b, s.emit)
	if err != nil || !sum.Done || sum.Committed != n {
		t.Fatalf("retry: %+v %v", sum, err)
	}
	for slot, runs := range runsPerSlot(t, p) {
		if runs != 1 {
			t.Errorf("slot %d committed %d times", slot, runs)
		}
	}
}
