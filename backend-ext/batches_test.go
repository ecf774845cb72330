package backendext

import (
	"context"
	"errors"
	"testing"
	"time"
)

// installed returns a connection to a fresh database with hafe installed.
func installed(t *testing.T) DB {
	t.Helper()
	c := connect(t)
	if _, err := Install(context.Background(), c, InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	return c
}

func record(t *testing.T, db DB, batch string, seq int, status, owner string, epoch int64) {
	t.Helper()
	o := Outcome{BatchID: batch, Seq: seq, Status: status, Report: []byte(`{}`), Epoch: epoch, Owner: owner, Attempts: 1}
	if err := OutcomeInserted(db.Exec(context.Background(), InsertOutcomeSQL, OutcomeArgs(o)...)); err != nil {
		t.Fatal(err)
	}
}

func TestBatchesAreListedAsRunningDoneOrAbandoned(t *testing.T) {
	ctx := context.Background()
	db := installed(t)
	const (
		done      = "00000000-0000-0000-0000-00000000000d"
		running   = "00000000-0000-0000-0000-00000000000a"
		abandoned = "00000000-0000-0000-0000-00000000000b"
	)
	if err := Heartbeat(ctx, db, Member{ID: "fe1", Incarnation: "run1"}); err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct{ id, key, owner, run string }{
		{done, "open:order-1", "fe1", "run1"},
		{running, "token:abcd:order-2", "fe1", "run1"},
		{abandoned, "", "fe9", "run9"}, // fe9 never heartbeats: it is gone
	} {
		if _, _, err := CreateBatch(ctx, db, b.id, b.key, []byte{1}, 3, b.owner, b.run, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	record(t, db, done, 1, "committed", "fe1", 1)
	record(t, db, done, 2, "aborted", "fe1", 1)
	record(t, db, done, 3, "committed", "fe1", 1)
	if err := FinishBatch(ctx, db, done, 1); err != nil {
		t.Fatal(err)
	}
	record(t, db, running, 1, "committed", "fe1", 1)
	db.Exec(ctx, "UPDATE hafe.batches SET created_at = now() - interval '1 hour' WHERE batch_id = $1", abandoned)

	for _, c := range []struct {
		name string
		f    BatchFilter
		want []string
	}{
		{"all, last changed first", BatchFilter{}, []string{done, abandoned, running}},
		{"running", BatchFilter{State: BatchRunning}, []string{running}},
		{"done", BatchFilter{State: BatchDone}, []string{done}},
		{"abandoned", BatchFilter{State: BatchAbandoned}, []string{abandoned}},
		{"owner", BatchFilter{Owner: "fe9"}, []string{abandoned}},
		{"older than", BatchFilter{OlderThan: 30 * time.Minute}, []string{abandoned}},
		{"key, any client", BatchFilter{KeySuffix: "order-2"}, []string{running}},
		{"key not a prefix", BatchFilter{KeySuffix: "order"}, nil},
		{"key not a middle", BatchFilter{KeySuffix: "abcd:order"}, nil},
		{"limit", BatchFilter{Limit: 1}, []string{done}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ListBatches(ctx, db, c.f, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, b := range got {
				ids = append(ids, b.ID)
			}
			if len(ids) != len(c.want) {
				t.Fatalf("got %v, want %v", ids, c.want)
			}
			for i := range ids {
				if ids[i] != c.want[i] {
					t.Fatalf("got %v, want %v", ids, c.want)
				}
			}
		})
	}
	if _, err := ListBatches(ctx, db, BatchFilter{State: "lost"}, time.Minute); !errors.Is(err, ErrUnknownState) {
		t.Fatalf("unknown state: %v", err)
	}

	b, err := GetBatchInfo(ctx, db, done, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b.State != BatchDone || b.SlotsDone != 3 || b.Committed != 2 || b.Aborted != 1 || b.Transactions != 3 ||
		b.IdemKey != "open:order-1" || b.Owner != "" {
		t.Fatalf("done batch %+v", b)
	}
	b, err = GetBatchInfo(ctx, db, running, time.Minute)
	if err != nil || b.State != BatchRunning || b.SlotsDone != 1 || !b.OwnerAlive || b.Owner != "fe1" || b.IdemKey != "token:abcd:order-2" {
		t.Fatalf("running batch %+v (err %v)", b, err)
	}
	if _, err := GetBatchInfo(ctx, db, "00000000-0000-0000-0000-000000000fff", time.Minute); !errors.Is(err, ErrNoBatch) {
		t.Fatalf("missing batch: %v", err)
	}
}

func TestClaimRecordsTheTakeover(t *testing.T) {
	ctx := context.Background()
	db := installed(t)
	const id = "00000000-0000-0000-0000-000000000001"
	if _, _, err := CreateBatch(ctx, db, id, "", []byte{1}, 2, "fe1", "run1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if ts, err := ListTakeovers(ctx, db, id); err != nil || len(ts) != 0 {
		t.Fatalf("a new batch has takeovers %v (err %v)", ts, err)
	}
	epoch, err := ClaimBatch(ctx, db, id, "fe2", "run2")
	if err != nil || epoch != 2 {
		t.Fatalf("claim: epoch %d, err %v", epoch, err)
	}
	if err := RecordFence(ctx, db, id, epoch, 2); err != nil {
		t.Fatal(err)
	}
	if err := ReleaseBatch(ctx, db, id, epoch); err != nil {
		t.Fatal(err)
	}
	if _, err := ClaimBatch(ctx, db, id, "fe3", "run3"); err != nil {
		t.Fatal(err)
	}
	ts, err := ListTakeovers(ctx, db, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 ||
		ts[0].Epoch != 2 || ts[0].PreviousOwner != "fe1" || ts[0].Owner != "fe2" || ts[0].FencedSessions != 2 || ts[0].At.IsZero() ||
		ts[1].Epoch != 3 || ts[1].PreviousOwner != "" || ts[1].Owner != "fe3" || ts[1].FencedSessions != 0 {
		t.Fatalf("takeovers %+v", ts)
	}
	recent, err := ListRecentTakeovers(ctx, db, 1)
	if err != nil || len(recent) != 1 || recent[0].BatchID != id || recent[0].Epoch != 3 || recent[0].Owner != "fe3" {
		t.Fatalf("the most recent takeover: %+v (err %v)", recent, err)
	}
	if _, err := ClaimBatch(ctx, db, "00000000-0000-0000-0000-000000000fff", "fe2", "run2"); !errors.Is(err, ErrNoBatch) {
		t.Fatalf("claim of a missing batch: %v", err)
	}

	// GC removes a finished batch's takeovers with it.
	if err := FinishBatch(ctx, db, id, 3); err != nil {
		t.Fatal(err)
	}
	db.Exec(ctx, "UPDATE hafe.batches SET updated_at = now() - interval '2 days'")
	if n, err := GC(ctx, db, 24*time.Hour); err != nil || n != 3 {
		t.Fatalf("gc removed %d rows (err %v), want the batch and its 2 takeovers", n, err)
	}
}

// A database at 1.1 with a running batch upgrades in place; the batch can
// then be taken over, and the takeover is recorded.
func TestUpgradeFrom11RecordsLaterTakeovers(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true, Version: "1.1"}, nil); err != nil {
		t.Fatal(err)
	}
	const id = "00000000-0000-0000-0000-000000000001"
	if _, _, err := CreateBatch(ctx, c, id, "", []byte{1}, 1, "fe1", "run1", time.Minute); err != nil {
		t.Fatal(err)
	}
	res, err := Install(ctx, c, InstallOptions{}, nil)
	if err != nil || res.From != "1.1" || res.To != DefaultVersion {
		t.Fatalf("upgrade %+v: %v", res, err)
	}
	if _, err := ClaimBatch(ctx, c, id, "fe2", "run2"); err != nil {
		t.Fatal(err)
	}
	if ts, err := ListTakeovers(ctx, c, id); err != nil || len(ts) != 1 || ts[0].PreviousOwner != "fe1" {
		t.Fatalf("takeovers %+v (err %v)", ts, err)
	}
}
