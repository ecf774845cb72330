package mtcpbench

import (
	"fmt"
	"image/color"
	"io"

	"hafe.dev/hafe/internal/plot"
)

// Chart plots received kilobytes over time, the line the pre-slowdown rate
// would have drawn, and markers at the slow-down and every migration.
func (r *StreamResult) Chart() plot.Chart {
	// basicfont has ASCII only: no arrows or dashes in labels.
	got := plot.Series{Name: "received", X: []float64{0}, Y: []float64{0}}
	for _, p := range r.Trace {
		got.X = append(got.X, ms(p.T))
		got.Y = append(got.Y, float64(p.Received)/1000)
	}
	c := plot.Chart{
		Title: fmt.Sprintf("MTCP streaming, %d kB chunks: s1 slows down %gx after %d kB; the client's rate policy moves to s2",
			r.Config.Chunk>>10, r.Config.Slowdown, r.Config.SlowAfter>>10),
		XLabel: "time since connect (ms)",
		YLabel: "received (kB)",
		Series: []plot.Series{got},
	}
	if len(r.Trace) > 1 && r.PreRate > 0 {
		first, last := r.Trace[0], r.Trace[len(r.Trace)-1]
		c.Series = append(c.Series, plot.Series{
			Name:  "at the pre-slowdown rate",
			X:     []float64{ms(first.T), ms(last.T)},
			Y:     []float64{float64(first.Received) / 1000, (float64(first.Received) + r.PreRate*(last.T-first.T).Seconds()) / 1000},
			Color: color.RGBA{160, 160, 160, 255},
		})
	}
	c.Markers = append(c.Markers, plot.Marker{X: ms(r.SlowdownAt), Label: "slow-down"})
	for _, m := range r.Migrations {
		c.Markers = append(c.Markers, plot.Marker{X: ms(m.T), Label: m.From + "->" + m.To})
	}
	return c
}

// WritePNG renders Chart as a PNG image.
func (r *StreamResult) WritePNG(w io.Writer) error { return r.Chart().WritePNG(w) }
