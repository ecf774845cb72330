package backendext

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"hafe.dev/hafe/mtcp"
)

func TestSnapshotStoreKeepsNewestRecord(t *testing.T) {
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
	rec := &mtcp.SnapshotRecord{ConnID: id, Secret: []byte("k"), Counter: 1, Seq: 2, InOffset: 10, OutOffset: 20, State: []byte("state"), OutTail: []byte("tail")}
	if err := s.Save(ctx, rec); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx, id)
	if err != nil || got.Counter != 1 || got.Seq != 2 || got.InOffset != 10 || got.OutOffset != 20 ||
		!bytes.Equal(got.State, rec.State) || !bytes.Equal(got.OutTail, rec.OutTail) || !bytes.Equal(got.Secret, rec.Secret) {
		t.Fatalf("load: %+v %v", got, err)
	}
	stale := *rec
	stale.Seq = 2
	if err := s.Save(ctx, &stale); !errors.Is(err, mtcp.ErrStale) {
		t.Fatalf("equal (counter, seq) saved: %v", err)
	}
	stale.Counter, stale.Seq = 0, 99
	if err := s.Save(ctx, &stale); !errors.Is(err, mtcp.ErrStale) {
		t.Fatalf("older counter saved: %v", err)
	}
	newer := *rec
	newer.Counter, newer.Seq, newer.State, newer.OutTail = 2, 0, nil, nil
	if err := s.Save(ctx, &newer); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(ctx, id); got.Counter != 2 || len(got.State) != 0 {
		t.Fatalf("after newer save: %+v", got)
	}
	if err := s.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, id); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.Load(ctx, id); !errors.Is(err, mtcp.ErrNoSnapshot) {
		t.Fatalf("load after delete: %v", err)
	}
}
