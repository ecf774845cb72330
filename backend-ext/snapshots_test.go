package backendext

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"hafe.dev/hafe/mtcp"
)

func TestSnapshotStoreSavesByCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	s := NewSnapshotStore(c, "fe1")
	id := mtcp.ConnID{1, 2, 3}
	if _, err := s.Load(ctx, id); !errors.Is(err, mtcp.ErrNoSnapshot) {
		t.Fatalf("load of a missing record: %v", err)
	}
	first := &mtcp.SnapshotRecord{ConnID: id, Secret: []byte("k"), Counter: 1, Seq: 1, InOffset: 10, OutOffset: 20, State: []byte("state"), OutTail: []byte("tail")}
	if err := s.Save(ctx, first); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx, id)
	if err != nil || got.Counter != 1 || got.Seq != 1 || got.InOffset != 10 || got.OutOffset != 20 ||
		!bytes.Equal(got.State, first.State) || !bytes.Equal(got.OutTail, first.OutTail) || !bytes.Equal(got.Secret, first.Secret) {
		t.Fatalf("load: %+v %v", got, err)
	}
	// A second "first" save (another server that thinks it is new) is stale.
	if err := s.Save(ctx, first); !errors.Is(err, mtcp.ErrStale) {
		t.Fatalf("second first save: %v", err)
	}
	next := &mtcp.SnapshotRecord{ConnID: id, Secret: []byte("k"), Counter: 1, Seq: 2, PrevCounter: 1, PrevSeq: 1, State: nil}
	if err := s.Save(ctx, next); err != nil {
		t.Fatal(err)
	}
	// Replacing a version that is no longer stored is stale.
	if err := s.Save(ctx, next); !errors.Is(err, mtcp.ErrStale) {
		t.Fatalf("save over a replaced version: %v", err)
	}
	if got, _ := s.Load(ctx, id); got.Seq != 2 || len(got.State) != 0 {
		t.Fatalf("after next save: %+v", got)
	}
	// An owner at an older counter cannot delete the record.
	moved := &mtcp.SnapshotRecord{ConnID: id, Secret: []byte("k"), Counter: 2, Seq: 1, PrevCounter: 1, PrevSeq: 2}
	if err := s.Save(ctx, moved); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, id); err != nil {
		t.Fatalf("a stale owner deleted its successor's record: %v", err)
	}
	if err := s.Delete(ctx, id, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, id, 2); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.Load(ctx, id); !errors.Is(err, mtcp.ErrNoSnapshot) {
		t.Fatalf("load after delete: %v", err)
	}
}
