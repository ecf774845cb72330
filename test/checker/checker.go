package checker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Outcome is one row of hafe.outcomes.
type Outcome struct {
	Seq    int
	Status string // "committed" or "aborted"
	Report []byte // the stored line, without newline
	Epoch  int64
	Owner  string
}

// State is what the database holds about one batch.
type State struct {
	BatchID string
	// NumTxns is the batch's number of slots (hafe.batches.n_txns).
	NumTxns int
	// Outcomes are every outcome row of the batch, in any order.
	Outcomes []Outcome
	// Effects counts the committed executions of each slot as the
	// workload's own table records them; nil when it records none.
	Effects map[int]int
}

// Options tune Load and Verify.
type Options struct {
	// EffectQuery, when set, returns one row per committed execution of a
	// slot of this batch, with the slot's seq as its only (integer)
	// column, e.g. "SELECT slot FROM runs". Every committed slot of the
	// workload must leave exactly one such row and an aborted one none.
	EffectQuery string
	EffectArgs  []any
	// AllowUnfinished accepts that no stream carries the done line (a test
	// that leaves the batch unfinished on purpose).
	AllowUnfinished bool
}

// Querier is what Load needs; *pgx.Conn, *pgxpool.Pool and pgx.Tx have it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Check loads the batch's rows from db and verifies streams against them.
// The error is for failing to read the database; broken guarantees are the
// returned violations.
func Check(ctx context.Context, db Querier, batchID string, streams [][]byte, opt Options) ([]Violation, error) {
	st, err := Load(ctx, db, batchID, opt)
	if err != nil {
		return nil, err
	}
	return Verify(st, streams, opt), nil
}

// Load reads batch batchID's row, its outcome rows and, with
// opt.EffectQuery, the workload's effects.
func Load(ctx context.Context, db Querier, batchID string, opt Options) (*State, error) {
	st := &State{BatchID: batchID}
	err := db.QueryRow(ctx, `SELECT n_txns FROM hafe.batches WHERE batch_id = $1`, batchID).Scan(&st.NumTxns)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("batch %s: no row in hafe.batches", batchID)
	}
	if err != nil {
		return nil, fmt.Errorf("read batch %s: %w", batchID, err)
	}
	rows, err := db.Query(ctx, `SELECT seq, status, report, epoch, owner FROM hafe.outcomes
		WHERE batch_id = $1 ORDER BY seq`, batchID)
	if err != nil {
		return nil, fmt.Errorf("read outcomes of %s: %w", batchID, err)
	}
	st.Outcomes, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Outcome, error) {
		var o Outcome
		var report string
		err := r.Scan(&o.Seq, &o.Status, &report, &o.Epoch, &o.Owner)
		o.Report = []byte(report)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("read outcomes of %s: %w", batchID, err)
	}
	if opt.EffectQuery != "" {
		rows, err := db.Query(ctx, opt.EffectQuery, opt.EffectArgs...)
		if err != nil {
			return nil, fmt.Errorf("effect query: %w", err)
		}
		seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return nil, fmt.Errorf("effect query: %w", err)
		}
		st.Effects = map[int]int{}
		for _, s := range seqs {
			st.Effects[int(s)]++
		}
	}
	return st, nil
}

// Verify judges the captured streams of one batch against its rows. Streams
// may be given in any order; a stream may end cut off (mid-line, or after
// an error line) as long as some stream carries the done line, unless
// opt.AllowUnfinished.
func Verify(st *State, streams [][]byte, opt Options) []Violation {
	v := &verifier{st: st, bySeq: map[int][]Outcome{}}
	for _, o := range st.Outcomes {
		v.bySeq[o.Seq] = append(v.bySeq[o.Seq], o)
	}
	v.checkOutcomes()
	v.checkEffects()
	v.checkStreams(streams, opt)
	return v.out
}

type verifier struct {
	st    *State
	bySeq map[int][]Outcome
	out   []Violation
}

func (v *verifier) add(k Kind, seq, stream int, format string, args ...any) {
	v.out = append(v.out, Violation{Kind: k, Seq: seq, Stream: stream, Detail: fmt.Sprintf(format, args...)})
}

func (v *verifier) seqs() []int {
	var s []int
	for seq := range v.bySeq {
		s = append(s, seq)
	}
	slices.Sort(s)
	return s
}

// committed reports whether slot seq has a committed outcome row.
func (v *verifier) committed(seq int) bool {
	for _, o := range v.bySeq[seq] {
		if o.Status == "committed" {
			return true
		}
	}
	return false
}

// checkOutcomes: at most one row per slot, inside the batch, written under
// epochs that never go back (G1, G4).
func (v *verifier) checkOutcomes() {
	var (
		maxEpoch int64
		maxAt    Outcome
	)
	for _, seq := range v.seqs() {
		rows := v.bySeq[seq]
		if seq < 1 || seq > v.st.NumTxns {
			v.add(OutcomeOutOfRange, seq, -1, "the batch has slots 1..%d", v.st.NumTxns)
		}
		if len(rows) > 1 {
			var who []string
			for _, o := range rows {
				who = append(who, fmt.Sprintf("%s by %s at epoch %d", o.Status, o.Owner, o.Epoch))
			}
			v.add(DuplicateOutcome, seq, -1, "%d rows: %s", len(rows), strings.Join(who, "; "))
		}
		for _, o := range rows {
			if o.Epoch < maxEpoch {
				v.add(EpochRegression, seq, -1, "written by %s at epoch %d after slot %d was written by %s at epoch %d",
					o.Owner, o.Epoch, maxAt.Seq, maxAt.Owner, maxAt.Epoch)
			}
		}
		for _, o := range rows {
			if o.Epoch > maxEpoch {
				maxEpoch, maxAt = o.Epoch, o
			}
		}
	}
}

// checkEffects: a committed slot ran exactly once, any other slot left no
// trace (G1).
func (v *verifier) checkEffects() {
	if v.st.Effects == nil {
		return
	}
	seqs := map[int]bool{}
	for seq := 1; seq <= v.st.NumTxns; seq++ {
		seqs[seq] = true
	}
	for seq := range v.st.Effects {
		seqs[seq] = true
	}
	for _, seq := range slices.Sorted(func(yield func(int) bool) {
		for s := range seqs {
			if !yield(s) {
				return
			}
		}
	}) {
		n := v.st.Effects[seq]
		switch c := v.committed(seq); {
		case c && n > 1:
			v.add(ExecutedTwice, seq, -1, "the workload recorded %d committed executions", n)
		case c && n == 0:
			v.add(CommittedWithoutEffect, seq, -1, "the outcome row says committed; the workload recorded no execution")
		case !c && n > 0:
			status := "no outcome row"
			if rows := v.bySeq[seq]; len(rows) > 0 {
				status = "outcome " + rows[0].Status
			}
			v.add(EffectWithoutCommit, seq, -1, "%s, yet the workload recorded %d committed execution(s)", status, n)
		}
	}
}

// seen is the first stream's bytes for one line, to compare the others with.
type seen struct {
	raw    []byte
	stream int
}

// checkStreams: each stream in order and well formed, every slot line
// durable and equal to its stored report, lines equal across streams, the
// done line right (G2, G3).
func (v *verifier) checkStreams(streams [][]byte, opt Options) {
	parsed := make([]parsedStream, len(streams))
	for i, raw := range streams {
		parsed[i] = parseStream(raw)
	}
	var (
		bySeq = map[int]seen{}
		done  *seen
	)
	committed, aborted := 0, 0
	for seq := 1; seq <= v.st.NumTxns; seq++ {
		if rows := v.bySeq[seq]; len(rows) > 0 {
			if rows[0].Status == "committed" {
				committed++
			} else {
				aborted++
			}
		}
	}
	next := make([]int, len(parsed))
	ended := make([]bool, len(parsed))
	for i, ps := range parsed {
		next[i] = 1
		for j, l := range ps.lines {
			if ended[i] {
				v.add(LineAfterEnd, l.seq, i, "%d more lines after the stream's last line, the first %s", len(ps.lines)-j, quote(l.raw))
				break
			}
			switch l.kind {
			case malformedLine:
				v.add(Malformed, 0, i, "line %d %s: %s", j+1, quote(l.raw), l.why)
			case errorLine:
				ended[i] = true
			case doneLine:
				ended[i] = true
				if next[i]-1 != v.st.NumTxns {
					v.add(DoneEarly, 0, i, "done after slot %d of %d", next[i]-1, v.st.NumTxns)
				}
				d := l.done
				if d.BatchID != v.st.BatchID || d.Transactions != v.st.NumTxns || d.Committed != committed || d.Aborted != aborted {
					v.add(DoneMismatch, 0, i, "%s; the database has batch %s with %d slots, %d committed and %d aborted",
						quote(l.raw), v.st.BatchID, v.st.NumTxns, committed, aborted)
				}
				if done == nil {
					done = &seen{raw: l.raw, stream: i}
				} else if !bytes.Equal(done.raw, l.raw) {
					v.add(StreamsDiverge, 0, i, "done line %s, stream %d has %s", quote(l.raw), done.stream, quote(done.raw))
				}
			case slotLine:
				if l.seq != next[i] {
					v.add(OutOfOrder, l.seq, i, "slot %d where slot %d was due", l.seq, next[i])
				}
				next[i] = l.seq + 1
				if rows := v.bySeq[l.seq]; len(rows) == 0 {
					v.add(ReportedNotDurable, l.seq, i, "received %s; no outcome row", quote(l.raw))
				} else if !bytes.Equal(rows[0].Report, l.raw) {
					v.add(ReportMismatch, l.seq, i, "received %s; stored %s", quote(l.raw), quote(rows[0].Report))
				}
				if s, ok := bySeq[l.seq]; !ok {
					bySeq[l.seq] = seen{raw: l.raw, stream: i}
				} else if !bytes.Equal(s.raw, l.raw) {
					v.add(StreamsDiverge, l.seq, i, "%s, stream %d has %s", quote(l.raw), s.stream, quote(s.raw))
				}
			}
		}
	}
	// Cut-off tails, once every complete line is known.
	for i, ps := range parsed {
		if len(ps.tail) == 0 {
			continue
		}
		if ended[i] {
			v.add(LineAfterEnd, 0, i, "unterminated %s after the stream's last line", quote(ps.tail))
			continue
		}
		if why := v.tailProblem(ps.tail, next[i], done); why != "" {
			seq := next[i]
			if seq > v.st.NumTxns {
				seq = 0 // the done line was due
			}
			v.add(PartialMismatch, seq, i, "cut off at %s: %s", quote(ps.tail), why)
		}
	}
	if done == nil && !opt.AllowUnfinished {
		v.add(MissingDone, 0, -1, "none of %d streams has the done line", len(streams))
	}
	if done != nil {
		for seq := 1; seq <= v.st.NumTxns; seq++ {
			if len(v.bySeq[seq]) == 0 {
				v.add(MissingOutcome, seq, -1, "stream %d reported the batch done", done.stream)
			}
		}
	}
}

// tailProblem says why a stream's unterminated tail is not the beginning of
// the line due next ("" when it is): the stored report of slot seq, the
// done line, or an error line.
func (v *verifier) tailProblem(tail []byte, seq int, done *seen) string {
	prefixOf := func(full []byte) bool { return bytes.HasPrefix(full, tail) }
	errStart := []byte(`{"error":`)
	if prefixOf(errStart) || bytes.HasPrefix(tail, errStart) {
		return ""
	}
	if seq > v.st.NumTxns {
		if done != nil {
			if prefixOf(done.raw) {
				return ""
			}
			return "not the beginning of the done line " + quote(done.raw)
		}
		if prefixOf([]byte(`{"done":true,`)) || bytes.HasPrefix(tail, []byte(`{"done":true,`)) {
			return ""
		}
		return "not the beginning of a done line"
	}
	rows := v.bySeq[seq]
	if len(rows) == 0 {
		return fmt.Sprintf("slot %d has no outcome row to report", seq)
	}
	if prefixOf(rows[0].Report) {
		return ""
	}
	return "not the beginning of the stored report " + quote(rows[0].Report)
}
