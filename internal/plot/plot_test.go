package plot

import (
	"bytes"
	"image/png"
	"testing"
)

func TestRenderDrawsSeriesInsideThePlotArea(t *testing.T) {
	c := Chart{
		Title: "received bytes", XLabel: "seconds", YLabel: "bytes",
		Series:  []Series{{Name: "client", X: []float64{0, 1, 2}, Y: []float64{0, 1000, 4000}}},
		Markers: []Marker{{X: 1, Label: "migration"}},
		Width:   300, Height: 200,
	}
	var buf bytes.Buffer
	if err := c.WritePNG(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 300 || b.Dy() != 200 {
		t.Fatalf("size %v", b)
	}
	// The series' first point is the plot area's bottom-left corner: it
	// must carry the series colour.
	r, g, b, _ := img.At(marginLeft, 200-marginBottom).RGBA()
	if r>>8 != 31 || g>>8 != 119 || b>>8 != 180 {
		t.Fatalf("bottom-left pixel is %d,%d,%d, want the first palette colour", r>>8, g>>8, b>>8)
	}
}

func TestEmptyChartRenders(t *testing.T) {
	if img := (Chart{}).Render(); img.Bounds().Dx() != 900 {
		t.Fatal("default size not used")
	}
}

func TestNiceStep(t *testing.T) {
	for raw, want := range map[float64]float64{0.3: 0.5, 1: 1, 1.5: 2, 214: 250, 3000: 5000, 7: 10, 0: 1} {
		if got := niceStep(raw); got != want {
			t.Errorf("niceStep(%v) = %v, want %v", raw, got, want)
		}
	}
}
