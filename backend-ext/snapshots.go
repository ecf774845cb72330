package backendext

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"hafe.dev/hafe/mtcp"
)

// SnapshotStore keeps MTCP connection snapshots in hafe.snapshots, so that
// a front-end can take over a connection whose origin is unreachable
// (eager transfer). It implements mtcp.SnapshotStore.
type SnapshotStore struct {
	db    DB
	owner string
}

var _ mtcp.SnapshotStore = (*SnapshotStore)(nil)

// NewSnapshotStore returns a store on db; owner is recorded with each save
// for operators.
func NewSnapshotStore(db DB, owner string) *SnapshotStore {
	return &SnapshotStore{db: db, owner: owner}
}

// SaveSnapshotSQL stores a record unless a newer one is stored; it matches
// no row when the save is stale. Arguments come from SnapshotArgs, so a
// caller can pipeline it into its own transaction (a slot's, say).
const SaveSnapshotSQL = `INSERT INTO hafe.snapshots AS s
		(conn_id, owner, secret, counter, seq, in_offset, out_offset, state, out_tail, updated_at)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
	ON CONFLICT (conn_id) DO UPDATE SET owner = EXCLUDED.owner, secret = EXCLUDED.secret,
		counter = EXCLUDED.counter, seq = EXCLUDED.seq, in_offset = EXCLUDED.in_offset,
		out_offset = EXCLUDED.out_offset, state = EXCLUDED.state, out_tail = EXCLUDED.out_tail, updated_at = now()
	WHERE (s.counter, s.seq) < (EXCLUDED.counter, EXCLUDED.seq)`

// SnapshotArgs are SaveSnapshotSQL's arguments.
func SnapshotArgs(owner string, rec *mtcp.SnapshotRecord) []any {
	return []any{rec.ConnID[:], owner, rec.Secret, int64(rec.Counter), int64(rec.Seq),
		int64(rec.InOffset), int64(rec.OutOffset), nonNil(rec.State), nonNil(rec.OutTail)}
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Save implements mtcp.SnapshotStore: durable once it returns.
func (s *SnapshotStore) Save(ctx context.Context, rec *mtcp.SnapshotRecord) error {
	tag, err := s.db.Exec(ctx, SaveSnapshotSQL, SnapshotArgs(s.owner, rec)...)
	if err != nil {
		return fmt.Errorf("save snapshot %s: %w", rec.ConnID, err)
	}
	if tag.RowsAffected() == 0 {
		return mtcp.ErrStale
	}
	return nil
}

// Load implements mtcp.SnapshotStore.
func (s *SnapshotStore) Load(ctx context.Context, id mtcp.ConnID) (*mtcp.SnapshotRecord, error) {
	rec := &mtcp.SnapshotRecord{ConnID: id}
	var counter, seq, in, out int64
	err := s.db.QueryRow(ctx, `SELECT secret, counter, seq, in_offset, out_offset, state, out_tail
		FROM hafe.snapshots WHERE conn_id = $1`, id[:]).Scan(&rec.Secret, &counter, &seq, &in, &out, &rec.State, &rec.OutTail)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, mtcp.ErrNoSnapshot
	}
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", id, err)
	}
	rec.Counter, rec.Seq, rec.InOffset, rec.OutOffset = uint64(counter), uint64(seq), uint64(in), uint64(out)
	return rec, nil
}

// Delete implements mtcp.SnapshotStore.
func (s *SnapshotStore) Delete(ctx context.Context, id mtcp.ConnID) error {
	_, err := s.db.Exec(ctx, "DELETE FROM hafe.snapshots WHERE conn_id = $1", id[:])
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	return nil
}
