package checker

import (
	"fmt"
	"strings"
)

// Kind is what a violation breaks.
type Kind uint8

const (
	// DuplicateOutcome: a slot has more than one outcome row (G1).
	DuplicateOutcome Kind = iota + 1
	// OutcomeOutOfRange: an outcome row's seq is outside 1..n (G1).
	OutcomeOutOfRange
	// ExecutedTwice: a slot's effect was committed more than once (G1).
	ExecutedTwice
	// CommittedWithoutEffect: a slot's outcome says committed but its
	// effect is missing, so the outcome was not written in the slot's own
	// transaction (G1).
	CommittedWithoutEffect
	// EffectWithoutCommit: a slot left an effect although it has no
	// committed outcome (G1).
	EffectWithoutCommit
	// ReportedNotDurable: a client received a slot line that has no
	// outcome row (G2).
	ReportedNotDurable
	// ReportMismatch: a received slot line differs from the stored report
	// (G2, G3).
	ReportMismatch
	// StreamsDiverge: two streams carry different bytes for one line (G3).
	StreamsDiverge
	// OutOfOrder: a stream skipped, repeated or reordered slots (G3).
	OutOfOrder
	// Malformed: a complete line that is not a slot, done or error line (G3).
	Malformed
	// LineAfterEnd: a stream went on after its done or error line (G3).
	LineAfterEnd
	// PartialMismatch: the unterminated tail of a cut-off stream is not the
	// beginning of the line it should have been (G3).
	PartialMismatch
	// DoneEarly: a done line before every slot was reported (G3).
	DoneEarly
	// DoneMismatch: a done line whose batch id or totals disagree with the
	// database (G3).
	DoneMismatch
	// MissingOutcome: the batch was reported done but a slot has no outcome
	// row (G2).
	MissingOutcome
	// MissingDone: no stream carries a done line, so no client learned that
	// the batch finished (G3).
	MissingDone
	// EpochRegression: a slot was written under an older lease epoch than a
	// slot before it — a fenced owner wrote after its successor (G4).
	EpochRegression
)

var kindNames = [...]string{
	DuplicateOutcome:       "duplicate outcome",
	OutcomeOutOfRange:      "outcome out of range",
	ExecutedTwice:          "executed twice",
	CommittedWithoutEffect: "committed without effect",
	EffectWithoutCommit:    "effect without commit",
	ReportedNotDurable:     "reported but not durable",
	ReportMismatch:         "report differs from stored outcome",
	StreamsDiverge:         "streams diverge",
	OutOfOrder:             "out of order",
	Malformed:              "malformed line",
	LineAfterEnd:           "line after end of stream",
	PartialMismatch:        "cut-off line differs",
	DoneEarly:              "done before every slot",
	DoneMismatch:           "done line disagrees with database",
	MissingOutcome:         "done but slot has no outcome",
	MissingDone:            "no done line",
	EpochRegression:        "epoch went back",
}

var kindGuarantees = [...]string{
	DuplicateOutcome:       "G1",
	OutcomeOutOfRange:      "G1",
	ExecutedTwice:          "G1",
	CommittedWithoutEffect: "G1",
	EffectWithoutCommit:    "G1",
	ReportedNotDurable:     "G2",
	ReportMismatch:         "G2",
	StreamsDiverge:         "G3",
	OutOfOrder:             "G3",
	Malformed:              "G3",
	LineAfterEnd:           "G3",
	PartialMismatch:        "G3",
	DoneEarly:              "G3",
	DoneMismatch:           "G3",
	MissingOutcome:         "G2",
	MissingDone:            "G3",
	EpochRegression:        "G4",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Guarantee names the guarantee of docs/design.md that k breaks, e.g. "G1".
func (k Kind) Guarantee() string {
	if int(k) < len(kindGuarantees) && kindGuarantees[k] != "" {
		return kindGuarantees[k]
	}
	return "G?"
}

// Violation is one broken promise.
type Violation struct {
	Kind Kind
	// Seq is the slot concerned, 0 when the violation is not about one slot.
	Seq int
	// Stream is the index of the stream concerned in the input, -1 when
	// the violation is about the database alone.
	Stream int
	// Detail says what was seen, with the bytes where they matter.
	Detail string
}

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", v.Kind.Guarantee(), v.Kind)
	if v.Seq != 0 {
		fmt.Fprintf(&b, ", slot %d", v.Seq)
	}
	if v.Stream >= 0 {
		fmt.Fprintf(&b, ", stream %d", v.Stream)
	}
	if v.Detail != "" {
		fmt.Fprintf(&b, ": %s", v.Detail)
	}
	return b.String()
}

// Kinds lists the distinct kinds among vs, in order of first appearance.
func Kinds(vs []Violation) []Kind {
	var out []Kind
	seen := map[Kind]bool{}
	for _, v := range vs {
		if !seen[v.Kind] {
			seen[v.Kind] = true
			out = append(out, v.Kind)
		}
	}
	return out
}

// quote shows a line for a violation's detail, cut to a readable length.
func quote(b []byte) string {
	const max = 200
	if len(b) > max {
		return fmt.Sprintf("%q…(%d bytes)", b[:max], len(b))
	}
	return fmt.Sprintf("%q", b)
}
