package batchbench

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// Side is one named set of results in a comparison.
type Side struct {
	Name   string
	Result Result
}

// Table renders the sides next to each other, then the first side's
// ratios to each other side: throughput (higher is better for the first)
// and latencies (lower is better).
func Table(sides ...Side) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "side\tbatches\ttransactions\taborted\ttx/s\tp50\tp99\t")
	for _, s := range sides {
		r := s.Result
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.0f\t%s\t%s\t\n", s.Name, r.Batches, r.Transactions, r.Aborted,
			r.TxPerSec(), ms(r.Quantile(0.5)), ms(r.Quantile(0.99)))
	}
	for _, s := range sides[min(1, len(sides)):] {
		a, o := sides[0].Result, s.Result
		fmt.Fprintf(tw, "%s/%s\t\t\t\t%s\t%s\t%s\t\n", sides[0].Name, s.Name,
			Ratio(a.TxPerSec(), o.TxPerSec()),
			Ratio(float64(a.Quantile(0.5)), float64(o.Quantile(0.5))),
			Ratio(float64(a.Quantile(0.99)), float64(o.Quantile(0.99))))
	}
	tw.Flush()
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }
