package mtcp

import (
	"context"
	"errors"
	"testing"
)

func TestMemStoreIsCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	s := NewMemStore()
	id := randomID()
	save := func(c, q, pc, pq uint64) error {
		return s.Save(ctx, &SnapshotRecord{ConnID: id, Counter: c, Seq: q, PrevCounter: pc, PrevSeq: pq, State: []byte{byte(q)}})
	}
	if err := save(0, 0, 1, 0); !errors.Is(err, ErrStale) {
		t.Fatalf("create with a previous version: %v", err)
	}
	for _, step := range []struct {
		c, q, pc, pq uint64
		stale        bool
	}{
		{0, 0, 0, 0, false}, // create
		{0, 1, 0, 0, false}, // owner's snapshot
		{0, 2, 0, 0, true},  // lost update: not at (0,0) any more
		{3, 0, 0, 1, false}, // a new server claims at counter 3
		{0, 2, 0, 1, true},  // the old owner cannot save now
		{3, 0, 0, 1, true},  // nor can a second claimer of the same version
		{3, 1, 3, 0, false},
	} {
		err := save(step.c, step.q, step.pc, step.pq)
		if errors.Is(err, ErrStale) != step.stale {
			t.Fatalf("save (%d,%d) over (%d,%d): %v", step.c, step.q, step.pc, step.pq, err)
		}
	}
	if err := s.Delete(ctx, id, 2); err != nil || s.Len() != 1 {
		t.Fatal("a stale owner deleted its successor's record")
	}
	if err := s.Delete(ctx, id, 3); err != nil || s.Len() != 0 {
		t.Fatal("the owner could not delete its record")
	}
	if _, err := s.Load(ctx, id); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("load after delete: %v", err)
	}
}
