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
	c.Markers = append(c.Markers, plot.Marker{X: ms(r.SlowdownAt), Label: "slowed"})
	for _, m := range r.Migrations {
		c.Markers = append(c.Markers, plot.Marker{X: ms(m.T), Label: m.From + "->" + m.To})
	}
	return c
}

// WritePNG renders Chart as a PNG image.
func (r *StreamResult) WritePNG(w io.Writer) error { return r.Chart().WritePNG(w) }

// ZoomChart is Chart cut to the interesting start: until three times the
// last migration's time (or the slow-down's, without a migration).
func (r *StreamResult) ZoomChart() plot.Chart {
	c := r.Chart()
	end := 3 * r.SlowdownAt
	if n := len(r.Migrations); n > 0 {
		end = 3 * r.Migrations[n-1].T
	}
	limit := ms(end)
	c.Title += " (start)"
	for i, s := range c.Series {
		k := 0
		for k < len(s.X) && s.X[k] <= limit {
			k++
		}
		if k < len(s.X) && k > 0 && s.X[k] != s.X[k-1] {
			// End the line at the limit, interpolated.
			f := (limit - s.X[k-1]) / (s.X[k] - s.X[k-1])
			s.X = append(s.X[:k:k], limit)
			s.Y = append(s.Y[:k:k], s.Y[k-1]+f*(s.Y[k]-s.Y[k-1]))
		}
		c.Series[i] = s
	}
	return c
}

// WriteZoomPNG renders ZoomChart as a PNG image.
func (r *StreamResult) WriteZoomPNG(w io.Writer) error { return r.ZoomChart().WritePNG(w) }
