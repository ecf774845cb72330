// Package plot draws simple line charts as PNG images, enough for hafe's
// benchmark traces (bytes received over time, with marked events), without
// a plotting dependency.
//
// The invariant: data coordinates map linearly onto the plot area; nothing
// is drawn outside it except axes, ticks and labels.
package plot

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Series is one line of a chart.
type Series struct {
	Name  string
	X, Y  []float64
	Color color.Color
}

// Marker is a vertical line at X, labelled, e.g. "migration".
type Marker struct {
	X     float64
	Label string
}

// Chart is a line chart.
type Chart struct {
	Title          string
	XLabel, YLabel string
	Series         []Series
	Markers        []Marker
	Width, Height  int // pixels; default 900×500
}

const (
	marginLeft   = 80
	marginRight  = 20
	marginTop    = 40
	marginBottom = 50
)

var (
	black = color.RGBA{0, 0, 0, 255}
	grey  = color.RGBA{200, 200, 200, 255}
	red   = color.RGBA{200, 30, 30, 255}
)

// Palette gives series without a colour one of these.
var Palette = []color.Color{
	color.RGBA{31, 119, 180, 255}, color.RGBA{255, 127, 14, 255}, color.RGBA{44, 160, 44, 255}, color.RGBA{148, 103, 189, 255},
}

// WritePNG renders the chart.
func (c Chart) WritePNG(w io.Writer) error {
	img := c.Render()
	return png.Encode(w, img)
}

// Render draws the chart into an image.
func (c Chart) Render() *image.RGBA {
	width, height := c.Width, c.Height
	if width <= 0 {
		width = 900
	}
	if height <= 0 {
		height = 500
	}
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)

	xmin, xmax, ymin, ymax := c.bounds()
	xstep, ystep := niceStep((xmax-xmin)/5), niceStep((ymax-ymin)/5)
	xmin, xmax = math.Floor(xmin/xstep)*xstep, math.Ceil(xmax/xstep)*xstep
	ymin, ymax = math.Floor(ymin/ystep)*ystep, math.Ceil(ymax/ystep)*ystep
	area := image.Rect(marginLeft, marginTop, width-marginRight, height-marginBottom)
	px := func(x float64) int {
		return area.Min.X + int(math.Round((x-xmin)/(xmax-xmin)*float64(area.Dx())))
	}
	py := func(y float64) int {
		return area.Max.Y - int(math.Round((y-ymin)/(ymax-ymin)*float64(area.Dy())))
	}

	// Grid, ticks and tick labels, at round values.
	for i := 0; xmin+float64(i)*xstep <= xmax*(1+1e-9); i++ {
		x := xmin + float64(i)*xstep
		vline(img, px(x), area.Min.Y, area.Max.Y, grey)
		text(img, px(x)-15, area.Max.Y+15, short(x), black)
	}
	for i := 0; ymin+float64(i)*ystep <= ymax*(1+1e-9); i++ {
		y := ymin + float64(i)*ystep
		hline(img, area.Min.X, area.Max.X, py(y), grey)
		text(img, 5, py(y)+4, short(y), black)
	}
	hline(img, area.Min.X, area.Max.X, area.Max.Y, black)
	vline(img, area.Min.X, area.Min.Y, area.Max.Y, black)

	for i, m := range c.Markers {
		x := px(m.X)
		for y := area.Min.Y; y < area.Max.Y; y += 6 {
			vline(img, x, y, min(y+3, area.Max.Y), red)
		}
		text(img, x+3, area.Min.Y+12+12*i, m.Label, red) // one line each: markers may be close
	}
	for i, s := range c.Series {
		col := s.Color
		if col == nil {
			col = Palette[i%len(Palette)]
		}
		for j := 1; j < len(s.X) && j < len(s.Y); j++ {
			line(img, px(s.X[j-1]), py(s.Y[j-1]), px(s.X[j]), py(s.Y[j]), col)
		}
		text(img, area.Min.X+10, area.Min.Y+14+14*(i+len(c.Markers)), "-- "+s.Name, col)
	}
	text(img, marginLeft, 20, c.Title, black)
	text(img, area.Min.X+area.Dx()/2-len(c.XLabel)*3, height-12, c.XLabel, black)
	text(img, 5, marginTop-8, c.YLabel, black)
	return img
}

func (c Chart) bounds() (xmin, xmax, ymin, ymax float64) {
	xmin, ymin = math.Inf(1), 0
	xmax, ymax = math.Inf(-1), math.Inf(-1)
	for _, s := range c.Series {
		for i := range s.X {
			xmin, xmax = math.Min(xmin, s.X[i]), math.Max(xmax, s.X[i])
		}
		for _, y := range s.Y {
			ymin, ymax = math.Min(ymin, y), math.Max(ymax, y)
		}
	}
	if math.IsInf(xmin, 0) || math.IsInf(ymax, 0) {
		return 0, 1, 0, 1
	}
	if xmax == xmin {
		xmax = xmin + 1
	}
	if ymax == ymin {
		ymax = ymin + 1
	}
	return xmin, xmax, ymin, ymax
}

// niceStep rounds a tick spacing up to 1, 2, 2.5 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 || math.IsInf(raw, 0) || math.IsNaN(raw) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func short(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e9:
		return fmt.Sprintf("%.1fG", v/1e9)
	case a >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case a >= 1e3 && math.Mod(a, 1e3) == 0:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case a == math.Trunc(a):
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x <= x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}

// line draws with Bresenham's algorithm, two pixels thick.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	err := dx + dy
	for {
		img.Set(x0, y0, c)
		img.Set(x0, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * err
		if e2 >= dy {
			err += dy
			x0 += sx
		}
		if e2 <= dx {
			err += dx
			y0 += sy
		}
	}
}

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}
