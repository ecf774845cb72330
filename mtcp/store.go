package mtcp

import (
	"bytes"
	"context"
	"errors"
	"sync"
)

// SnapshotRecord is what a SnapshotStore keeps per connection: enough for a
// server that never saw the connection to verify a MIGRATE and reinstate it.
// All fields are plain bytes and integers so a store can map them to columns.
type SnapshotRecord struct {
	ConnID ConnID
	// Secret is the connection's MAC key.
	Secret []byte
	// Counter is the migration counter the owning server accepted; Seq
	// counts the application's snapshots over the connection's life (it
	// goes on across migrations; 0: the application never exported one,
	// and ImportState says so). Together they are the record's version,
	// which only grows.
	Counter uint64
	Seq     uint64
	// PrevCounter and PrevSeq are the version rec replaces: Save is a
	// compare-and-swap on them (0, 0 also creates a missing record).
	PrevCounter uint64
	PrevSeq     uint64
	// InOffset and OutOffset are the input-read and output-write offsets the
	// application state corresponds to.
	InOffset  uint64
	OutOffset uint64
	State     []byte
	// OutTail is output the client may not have yet: the bytes at offsets
	// [OutOffset-len(OutTail), OutOffset).
	OutTail []byte
}

// Store errors.
var (
	// ErrNoSnapshot: the store has no record of the connection.
	ErrNoSnapshot = errors.New("mtcp: no snapshot for connection")
	// ErrStale: Save was refused because the stored record is not at the
	// version the caller expected — typically another server owns the
	// connection now.
	ErrStale = errors.New("mtcp: snapshot is stale")
)

// SnapshotStore keeps durable snapshots for eager migration, used when the
// origin server is unreachable. Implementations must be safe for concurrent
// use.
type SnapshotStore interface {
	// Save stores rec if the stored record's (Counter, Seq) equals
	// (rec.PrevCounter, rec.PrevSeq), or if there is none and both are 0;
	// otherwise it returns ErrStale. It returns once the record is
	// durable. rec and its slices must not be retained after Save returns.
	Save(ctx context.Context, rec *SnapshotRecord) error
	// Load returns the connection's record or ErrNoSnapshot.
	Load(ctx context.Context, id ConnID) (*SnapshotRecord, error)
	// Delete forgets the connection if the stored record's Counter is at
	// most counter (a stale owner cannot delete its successor's record);
	// deleting a missing record is no error.
	Delete(ctx context.Context, id ConnID, counter uint64) error
}

// MemStore is an in-memory SnapshotStore, for tests and single-process use.
type MemStore struct {
	mu   sync.Mutex
	recs map[ConnID]*SnapshotRecord
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{recs: make(map[ConnID]*SnapshotRecord)} }

func (s *MemStore) Save(ctx context.Context, rec *SnapshotRecord) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.recs[rec.ConnID]
	if ok && (old.Counter != rec.PrevCounter || old.Seq != rec.PrevSeq) ||
		!ok && (rec.PrevCounter != 0 || rec.PrevSeq != 0) {
		return ErrStale
	}
	s.recs[rec.ConnID] = cloneRecord(rec)
	return nil
}

func (s *MemStore) Load(ctx context.Context, id ConnID) (*SnapshotRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.recs[id]
	if !ok {
		return nil, ErrNoSnapshot
	}
	return cloneRecord(rec), nil
}

func (s *MemStore) Delete(ctx context.Context, id ConnID, counter uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec, ok := s.recs[id]; ok && rec.Counter <= counter {
		delete(s.recs, id)
	}
	return nil
}

// Len reports how many connections have a record.
func (s *MemStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs)
}

func cloneRecord(r *SnapshotRecord) *SnapshotRecord {
	c := *r
	c.Secret = bytes.Clone(r.Secret)
	c.State = bytes.Clone(r.State)
	c.OutTail = bytes.Clone(r.OutTail)
	return &c
}
