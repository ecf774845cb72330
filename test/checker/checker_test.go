package checker

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
)

const batchID = "6f1d0c4e-8a0b-4c1e-9a57-2b1f3c4d5e6f"

func committedLine(seq int) string {
	return fmt.Sprintf(`{"seq":%d,"status":"committed","results":[{"command":"INSERT","rows_affected":1},{"command":"UPDATE","rows_affected":1,"columns":["balance"],"rows":[[%d.00]]}]}`, seq, 1000-5*seq)
}

func abortedLine(seq int) string {
	return fmt.Sprintf(`{"seq":%d,"status":"aborted","error":{"code":"22012","message":"division by zero","statement":3}}`, seq)
}

const goodDone = `{"done":true,"batch_id":"` + batchID + `","transactions":5,"committed":4,"aborted":1}`

// world is a batch of 5 slots where slot 3 aborted; fe1 wrote slots 1-2 at
// epoch 1, then fe2 took over at epoch 2. Stream 0 is fe1's, cut off in the
// middle of slot 3's line; stream 1 is the retry on fe2, complete.
type world struct {
	st      *State
	streams [][]string // lines without newlines; a last element "~…" is an unterminated tail
	opt     Options
}

func goodWorld() *world {
	w := &world{st: &State{BatchID: batchID, NumTxns: 5, Effects: map[int]int{}}}
	for seq := 1; seq <= 5; seq++ {
		o := Outcome{Seq: seq, Status: "committed", Report: []byte(committedLine(seq)), Epoch: 1, Owner: "fe1"}
		if seq == 3 {
			o.Status, o.Report = "aborted", []byte(abortedLine(seq))
		} else {
			w.st.Effects[seq] = 1
		}
		if seq >= 3 {
			o.Epoch, o.Owner = 2, "fe2"
		}
		w.st.Outcomes = append(w.st.Outcomes, o)
	}
	w.streams = [][]string{
		{committedLine(1), committedLine(2), "~" + abortedLine(3)[:20]},
		{committedLine(1), committedLine(2), abortedLine(3), committedLine(4), committedLine(5), goodDone},
	}
	return w
}

func (w *world) raw() [][]byte {
	var out [][]byte
	for _, s := range w.streams {
		var b bytes.Buffer
		for _, l := range s {
			if tail, ok := strings.CutPrefix(l, "~"); ok {
				b.WriteString(tail)
				continue
			}
			b.WriteString(l)
			b.WriteByte('\n')
		}
		out = append(out, b.Bytes())
	}
	return out
}

func (w *world) outcome(seq int) *Outcome {
	for i := range w.st.Outcomes {
		if w.st.Outcomes[i].Seq == seq {
			return &w.st.Outcomes[i]
		}
	}
	return nil
}

func (w *world) dropOutcome(seq int) {
	w.st.Outcomes = slices.DeleteFunc(w.st.Outcomes, func(o Outcome) bool { return o.Seq == seq })
	delete(w.st.Effects, seq)
}

func TestVerifyAcceptsACorrectFailover(t *testing.T) {
	for name, w := range map[string]*world{
		"cut mid-line": goodWorld(),
		"cut after an error line": func() *world {
			w := goodWorld()
			w.streams[0] = []string{committedLine(1), committedLine(2), `{"error":{"code":"interrupted","message":"lost"}}`}
			return w
		}(),
		"cut in the error line": func() *world {
			w := goodWorld()
			w.streams[0] = []string{committedLine(1), committedLine(2), `~{"err`}
			return w
		}(),
		"cut in the done line, replayed in full": func() *world {
			w := goodWorld()
			w.streams[0] = append(slices.Clone(w.streams[1][:5]), "~"+goodDone[:30])
			w.streams = append(w.streams, w.streams[1])
			return w
		}(),
		"one uninterrupted stream, no effect table": func() *world {
			w := goodWorld()
			w.st.Effects = nil
			w.streams = w.streams[1:]
			return w
		}(),
		"unfinished on purpose": func() *world {
			w := goodWorld()
			w.streams = w.streams[:1]
			w.opt.AllowUnfinished = true
			return w
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			for _, v := range Verify(w.st, w.raw(), w.opt) {
				t.Errorf("unexpected violation: %s", v)
			}
		})
	}
}

// TestVerifyCatchesEachFault injects one fault per case into a correct
// failover and expects exactly the listed kinds of violation.
func TestVerifyCatchesEachFault(t *testing.T) {
	cases := []struct {
		name   string
		inject func(w *world)
		want   []Kind
	}{
		{"second outcome row for a slot", func(w *world) {
			w.st.Outcomes = append(w.st.Outcomes, Outcome{Seq: 2, Status: "committed", Report: []byte(committedLine(2)), Epoch: 2, Owner: "fe2"})
		}, []Kind{DuplicateOutcome}},
		{"outcome row past the last slot", func(w *world) {
			w.st.Outcomes = append(w.st.Outcomes, Outcome{Seq: 6, Status: "committed", Report: []byte(committedLine(6)), Epoch: 2, Owner: "fe2"})
			w.st.Effects[6] = 1
		}, []Kind{OutcomeOutOfRange}},
		{"slot executed twice", func(w *world) { w.st.Effects[4] = 2 }, []Kind{ExecutedTwice}},
		{"committed outcome without the slot's effect", func(w *world) { delete(w.st.Effects, 5) }, []Kind{CommittedWithoutEffect}},
		{"aborted slot left an effect", func(w *world) { w.st.Effects[3] = 1 }, []Kind{EffectWithoutCommit}},
		{"effect of a slot with no outcome at all", func(w *world) { w.st.Effects[7] = 1 }, []Kind{EffectWithoutCommit}},
		{"line reported before its outcome was durable", func(w *world) {
			w.dropOutcome(5)
			w.streams = [][]string{{committedLine(1), committedLine(2), abortedLine(3), committedLine(4), committedLine(5)}}
			w.opt.AllowUnfinished = true
		}, []Kind{ReportedNotDurable}},
		{"reported line differs from the stored report", func(w *world) {
			w.streams = w.streams[1:]
			w.streams[0][3] = strings.Replace(w.streams[0][3], "980.00", "975.00", 1)
		}, []Kind{ReportMismatch}},
		{"slot line differs between streams", func(w *world) {
			w.streams[0][1] = strings.Replace(w.streams[0][1], `"status":"committed",`, `"status": "committed",`, 1)
		}, []Kind{ReportMismatch, StreamsDiverge}},
		{"done line differs between streams", func(w *world) {
			w.streams = append(w.streams, slices.Clone(w.streams[1]))
			w.streams[2][5] = strings.Replace(goodDone, `"done":true,`, `"done":true, `, 1)
		}, []Kind{StreamsDiverge}},
		{"slots swapped", func(w *world) {
			s := w.streams[1]
			s[2], s[3] = s[3], s[2]
		}, []Kind{OutOfOrder}},
		{"slot skipped", func(w *world) {
			w.streams[1] = slices.Delete(w.streams[1], 3, 4)
		}, []Kind{OutOfOrder}},
		{"slot repeated", func(w *world) {
			w.streams[1] = slices.Insert(w.streams[1], 2, committedLine(2))
		}, []Kind{OutOfOrder}},
		{"garbage line", func(w *world) {
			w.streams[1] = slices.Insert(w.streams[1], 1, `HTTP/1.1 500 oops`)
		}, []Kind{Malformed}},
		{"slot line with an unknown status", func(w *world) {
			w.streams[0] = []string{committedLine(1), `{"seq":2,"status":"maybe"}`}
		}, []Kind{Malformed}},
		{"line after the error line", func(w *world) {
			w.streams[0] = []string{committedLine(1), `{"error":{"code":"interrupted"}}`, committedLine(2)}
		}, []Kind{LineAfterEnd}},
		{"bytes after the done line", func(w *world) {
			w.streams[1] = append(w.streams[1], "~{")
		}, []Kind{LineAfterEnd}},
		{"cut-off line is not the due slot's report", func(w *world) {
			w.streams[0][2] = "~" + committedLine(3)[:30]
		}, []Kind{PartialMismatch}},
		{"cut-off line is not the done line", func(w *world) {
			w.streams[0] = append(slices.Clone(w.streams[1][:5]), `~{"done":true,"batch_id":"x`)
		}, []Kind{PartialMismatch}},
		{"done before the last slot", func(w *world) {
			w.streams[1] = slices.Delete(w.streams[1], 4, 5)
		}, []Kind{DoneEarly}},
		{"done line totals wrong", func(w *world) {
			w.streams[1][5] = strings.Replace(goodDone, `"committed":4,"aborted":1`, `"committed":5,"aborted":0`, 1)
		}, []Kind{DoneMismatch}},
		{"done line of another batch", func(w *world) {
			w.streams[1][5] = strings.Replace(goodDone, batchID, "00000000-0000-0000-0000-000000000000", 1)
		}, []Kind{DoneMismatch}},
		{"done reported while a slot has no outcome", func(w *world) {
			w.dropOutcome(5)
			w.streams = [][]string{{committedLine(1), committedLine(2), abortedLine(3), committedLine(4),
				strings.Replace(goodDone, `"committed":4`, `"committed":3`, 1)}}
		}, []Kind{DoneEarly, MissingOutcome}},
		{"no stream finished", func(w *world) { w.streams = w.streams[:1] }, []Kind{MissingDone}},
		{"fenced owner wrote after its successor", func(w *world) {
			o := w.outcome(4)
			o.Epoch, o.Owner = 1, "fe1"
		}, []Kind{EpochRegression}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := goodWorld()
			c.inject(w)
			vs := Verify(w.st, w.raw(), w.opt)
			got := Kinds(vs)
			slices.Sort(got)
			want := slices.Clone(c.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("kinds %v, want %v", got, want)
			}
			for _, v := range vs {
				t.Log(v)
			}
		})
	}
}

func TestViolationReadsWell(t *testing.T) {
	v := Violation{Kind: ExecutedTwice, Seq: 7, Stream: -1, Detail: "the workload recorded 2 committed executions"}
	if got, want := v.String(), "G1 executed twice, slot 7: the workload recorded 2 committed executions"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	v = Violation{Kind: StreamsDiverge, Seq: 3, Stream: 1, Detail: "x"}
	if got, want := v.String(), "G3 streams diverge, slot 3, stream 1: x"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for k := DuplicateOutcome; k <= EpochRegression; k++ {
		if strings.HasPrefix(k.String(), "Kind(") || k.Guarantee() == "G?" {
			t.Errorf("kind %d has no name or guarantee", k)
		}
	}
}
