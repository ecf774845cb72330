package mtcpbench

import "fmt"

// Verdict is one measured figure against its target.
type Verdict struct {
	What   string
	Value  float64
	Target float64
	AtMost bool // the target is an upper bound (else a lower bound)
	Unit   string
}

// Met reports whether the figure meets the target.
func (v Verdict) Met() bool {
	if v.AtMost {
		return v.Value <= v.Target
	}
	return v.Value >= v.Target
}

func (v Verdict) String() string {
	op, word := "≥", "meets"
	if v.AtMost {
		op = "≤"
	}
	if !v.Met() {
		word = "MISSES"
	}
	return fmt.Sprintf("%-58s %8.3f%s  %s the target %s %g%s", v.What, v.Value, v.Unit, word, op, v.Target, v.Unit)
}
