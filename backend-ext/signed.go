package backendext

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// RecordOutcomeSQL writes a slot's outcome from a session that logs in as
// the client role, which has no privilege on hafe's tables: through
// hafe.record_outcome, which runs as the schema's owner and inserts only
// an outcome signed with the key in hafe.outcome_key. It is otherwise
// InsertOutcomeSQL (the same lease check, the same errors), so its result
// goes to OutcomeInserted too. Take its arguments from SignedOutcomeArgs.
const RecordOutcomeSQL = `SELECT hafe.record_outcome($1, $2, $3, $4, $5, $6, $7, $8)`

// ErrNoOutcomeKey means hafe.outcome_key is missing or unreadable: the
// back-end predates version 1.2, or this role was not granted SELECT on it.
var ErrNoOutcomeKey = errors.New("no outcome key")

// ReadOutcomeKey reads the key front-ends sign raw SQL outcomes with. Only
// the schema's owner and the roles it grants SELECT on hafe.outcome_key to
// can read it.
func ReadOutcomeKey(ctx context.Context, db DB) ([]byte, error) {
	var key []byte
	if err := db.QueryRow(ctx, "SELECT key FROM hafe.outcome_key").Scan(&key); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42501" || pgErr.Code == "42P01") {
			return nil, fmt.Errorf("%w: %s (install hafe %s, and GRANT SELECT ON hafe.outcome_key to this front-end's role if it does not own schema hafe)", ErrNoOutcomeKey, pgErr.Message, DefaultVersion)
		}
		return nil, fmt.Errorf("read outcome key: %w", err)
	}
	if len(key) != sha256.Size {
		return nil, fmt.Errorf("%w: hafe.outcome_key holds %d bytes", ErrNoOutcomeKey, len(key))
	}
	return key, nil
}

// OutcomeMAC is the signature hafe.record_outcome checks: HMAC-SHA256 with
// key over every field it writes, each of variable length prefixed by its
// length, so that no two outcomes share a message.
func OutcomeMAC(key []byte, o Outcome) []byte {
	var id pgtype.UUID
	if err := id.Scan(o.BatchID); err != nil {
		// Not a batch id: no outcome of it can be recorded; sign
		// something that matches nothing.
		return nil
	}
	m := hmac.New(sha256.New, key)
	msg := []byte("hafe outcome v1")
	msg = append(msg, id.Bytes[:]...)
	msg = binary.BigEndian.AppendUint32(msg, uint32(int32(o.Seq)))
	msg = binary.BigEndian.AppendUint64(msg, uint64(o.Epoch))
	msg = binary.BigEndian.AppendUint32(msg, uint32(int32(o.Attempts)))
	for _, f := range [][]byte{[]byte(o.Status), []byte(o.Owner), o.Report} {
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(f)))
		msg = append(msg, f...)
	}
	m.Write(msg)
	return m.Sum(nil)
}

// SignedOutcomeArgs are RecordOutcomeSQL's arguments for o, signed with key.
func SignedOutcomeArgs(o Outcome, key []byte) []any {
	return append(OutcomeArgs(o), OutcomeMAC(key, o))
}
