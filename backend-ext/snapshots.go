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

// saveFirstSQL stores a connection's first record, or replaces a stored
// (0, 0) one; saveNextSQL replaces the record at (PrevCounter, PrevSeq).
// Either matches no row when the stored record is another version: the save
// is stale (compare-and-swap, as mtcp.SnapshotStore asks).
const (
	saveFirstSQL = `INSERT INTO hafe.snapshots AS s
		(conn_id, owner, secret, counter, seq, in_offset, out_offset, state, out_tail, updated_at)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
	ON CONFLICT (conn_id) DO UPDATE SET owner = EXCLUDED.owner, secret = EXCLUDED.secret,
		counter = EXCLUDED.counter, seq = EXCLUDED.seq, in_offset = EXCLUDED.in_offset,
		out_offset = EXCLUDED.out_offset, state = EXCLUDED.state, out_tail = EXCLUDED.out_tail, updated_at = now()
	WHERE s.counter = 0 AND s.seq = 0`
	saveNextSQL = `UPDATE hafe.snapshots SET owner = $2, secret = $3, counter = $4, seq = $5,
		in_offset = $6, out_offset = $7, state = $8, out_tail = $9, updated_at = now()
	WHERE conn_id = $1 AND counter = $10 AND seq = $11`
)

// Save implements mtcp.SnapshotStore: durable once it returns.
func (s *SnapshotStore) Save(ctx context.Context, rec *mtcp.SnapshotRecord) error {
	args := []any{rec.ConnID[:], s.owner, rec.Secret, int64(rec.Counter), int64(rec.Seq),
		int64(rec.InOffset), int64(rec.OutOffset), nonNil(rec.State), nonNil(rec.OutTail)}
	query := saveFirstSQL
	if rec.PrevCounter != 0 || rec.PrevSeq != 0 {
		query = saveNextSQL
		args = append(args, int64(rec.PrevCounter), int64(rec.PrevSeq))
	}
	tag, err := s.db.Exec(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("save snapshot %s: %w", rec.ConnID, err)
	}
	if tag.RowsAffected() == 0 {
		return mtcp.ErrStale
	}
	return nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
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

// Delete implements mtcp.SnapshotStore: a record of a later owner (higher
// counter) stays.
func (s *SnapshotStore) Delete(ctx context.Context, id mtcp.ConnID, counter uint64) error {
	_, err := s.db.Exec(ctx, "DELETE FROM hafe.snapshots WHERE conn_id = $1 AND counter <= $2", id[:], int64(counter))
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	return nil
}
