package scalebench

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"strings"
)

// The charts: cold sync and restart time against N for both proxies, log scale on the time axis
// (the proxies differ by orders of magnitude), linear in N. The same series go to an SVG
// (hand-written) and a PNG (image/png with the bitmap font of font_test.go, so no
// dependency beyond the standard library).

const chartTitle = "Cold sync and restart time vs number of Services"

// point is one measured time (seconds) at n Services.
type point struct {
	n int
	s float64
}

// series is one line of a chart.
type series struct {
	label  string
	color  color.RGBA
	dashed bool // restart: dashed line, square markers
	pts    []point
}

var proxyColors = map[string]color.RGBA{
	nftName:  {0x1f, 0x77, 0xb4, 0xff},
	kubeName: {0xd6, 0x27, 0x28, 0xff},
}

// chartSeries returns cold sync and restart of each proxy, over the Ns with a figure.
func chartSeries(ns []int, all map[int]map[string]*result) []series {
	var out []series
	for _, name := range proxyNames {
		cold := series{label: name + ", cold sync", color: proxyColors[name]}
		restart := series{label: name + ", restart", color: proxyColors[name], dashed: true}
		for _, n := range ns {
			x := all[n][name]
			if x == nil {
				continue
			}
			if x.ColdSync > 0 {
				cold.pts = append(cold.pts, point{n, x.ColdSync.Seconds()})
			}
			if x.Restart > 0 {
				restart.pts = append(restart.pts, point{n, x.Restart.Seconds()})
			}
		}
		out = append(out, cold, restart)
	}
	return out
}

// axes holds the value ranges of a chart: N from 0 to maxN, time from lo to hi (powers of ten).
type axes struct {
	ns     []int
	maxN   int
	lo, hi float64
}

func chartAxes(ns []int, ss []series) axes {
	a := axes{ns: ns, maxN: 1, lo: math.Inf(1), hi: math.Inf(-1)}
	for _, n := range ns {
		a.maxN = max(a.maxN, n)
	}
	for _, s := range ss {
		for _, p := range s.pts {
			a.lo, a.hi = math.Min(a.lo, p.s), math.Max(a.hi, p.s)
		}
	}
	if math.IsInf(a.lo, 0) {
		a.lo, a.hi = 0.1, 10
	}
	a.lo, a.hi = math.Pow(10, math.Floor(math.Log10(a.lo))), math.Pow(10, math.Ceil(math.Log10(a.hi)))
	if a.hi <= a.lo {
		a.hi = a.lo * 10
	}
	return a
}

// gridValues returns the time axis' grid lines: 1, 2 and 5 times each power of ten in range, and
// whether each gets a label (every power of ten; 2 and 5 too when the axis spans ≤ 2 decades).
func (a axes) gridValues() (vals []float64, labelled []bool) {
	few := math.Log10(a.hi/a.lo) <= 2.01
	for d := a.lo; d <= a.hi*1.001; d *= 10 {
		for _, f := range []float64{1, 2, 5} {
			v := d * f
			if v > a.hi*1.001 {
				break
			}
			vals = append(vals, v)
			labelled = append(labelled, f == 1 || few)
		}
	}
	return vals, labelled
}

// timeLabel formats a grid value of the time axis.
func timeLabel(v float64) string {
	return strings.TrimSuffix(fmt.Sprintf("%.3g", v), ".0") + " s"
}

// frame maps values to pixels within a plot area.
type frame struct {
	a                        axes
	left, right, top, bottom float64
}

func (f frame) x(n int) float64 {
	return f.left + (f.right-f.left)*float64(n)/(float64(f.a.maxN)*1.04)
}

func (f frame) y(s float64) float64 {
	return f.top + (f.bottom-f.top)*(1-(math.Log10(s)-math.Log10(f.a.lo))/(math.Log10(f.a.hi)-math.Log10(f.a.lo)))
}

// svgChart draws the chart as SVG.
func svgChart(ns []int, all map[int]map[string]*result) string {
	const w, h = 790, 420
	ss := chartSeries(ns, all)
	f := frame{a: chartAxes(ns, ss), left: 70, right: w - 200, top: 40, bottom: h - 50}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%.0f" y="20" text-anchor="middle" font-size="14">%s</text>`+"\n", (f.left+f.right)/2, chartTitle)
	vals, labelled := f.a.gridValues()
	for i, v := range vals {
		y := f.y(v)
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", f.left, y, f.right, y)
		if labelled[i] {
			fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", f.left-6, y+4, timeLabel(v))
		}
	}
	for _, n := range ns {
		x := f.x(n)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#e4e4e4"/>`+"\n", x, f.top, x, f.bottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%d</text>`+"\n", x, f.bottom+18, n)
	}
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", f.left, f.bottom, f.right, f.bottom)
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", f.left, f.top, f.left, f.bottom)
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">Services (N)</text>`+"\n", (f.left+f.right)/2, h-12)
	for i, s := range ss {
		col := fmt.Sprintf("#%02x%02x%02x", s.color.R, s.color.G, s.color.B)
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="7 4"`
		}
		var pts []string
		for _, p := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", f.x(p.n), f.y(p.s)))
		}
		if len(pts) > 0 {
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", col, dash, strings.Join(pts, " "))
		}
		marker := func(x, y float64) {
			if s.dashed {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="7" height="7" fill="%s"/>`+"\n", x-3.5, y-3.5, col)
			} else {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", x, y, col)
			}
		}
		for _, p := range s.pts {
			marker(f.x(p.n), f.y(p.s))
		}
		y := f.top + 20 + 22*float64(i)
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"%s/>`+"\n", f.right+12, y, f.right+42, y, col, dash)
		marker(f.right+27, y)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s</text>`+"\n", f.right+48, y+4, s.label)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// pngChart draws the chart as a PNG image.
func pngChart(ns []int, all map[int]map[string]*result) ([]byte, error) {
	const w, h, ts = 1080, 580, 2 // ts: text scale (the font's pixels are ts x ts)
	ss := chartSeries(ns, all)
	f := frame{a: chartAxes(ns, ss), left: 100, right: w - 330, top: 84, bottom: h - 80}
	c := newCanvas(w, h)
	black := color.RGBA{0, 0, 0, 0xff}
	grid := color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	c.text((f.left+f.right)/2, 18, chartTitle, ts, black, 0)
	vals, labelled := f.a.gridValues()
	for i, v := range vals {
		y := math.Round(f.y(v))
		c.fillRect(f.left, y, f.right, y+1, grid)
		if labelled[i] {
			c.text(f.left-10, y-7, timeLabel(v), ts, black, 1)
		}
	}
	for _, n := range ns {
		x := math.Round(f.x(n))
		c.fillRect(x, f.top, x+1, f.bottom, grid)
		c.fillRect(x, f.bottom, x+1, f.bottom+6, black)
		c.text(x, f.bottom+12, fmt.Sprint(n), ts, black, 0)
	}
	c.fillRect(f.left, f.bottom, f.right, f.bottom+2, black)
	c.fillRect(f.left-1, f.top, f.left+1, f.bottom+2, black)
	c.text((f.left+f.right)/2, h-34, "Services (N)", ts, black, 0)
	c.text(f.left-60, f.top-34, "time (log scale)", ts, black, -1)
	for i, s := range ss {
		for j := 1; j < len(s.pts); j++ {
			p, q := s.pts[j-1], s.pts[j]
			c.line(f.x(p.n), f.y(p.s), f.x(q.n), f.y(q.s), 2.5, s.color, s.dashed)
		}
		for _, p := range s.pts {
			c.marker(f.x(p.n), f.y(p.s), s.color, s.dashed)
		}
		y := f.top + 24 + 30*float64(i)
		c.line(f.right+16, y, f.right+56, y, 2.5, s.color, s.dashed)
		c.marker(f.right+36, y, s.color, s.dashed)
		c.text(f.right+66, y-7, s.label, ts, black, -1)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, c.img); err != nil {
		return nil, fmt.Errorf("encode chart: %w", err)
	}
	return buf.Bytes(), nil
}

// canvas is a white RGBA image with a few drawing operations (anti-aliased lines and markers,
// bitmap text).
type canvas struct{ img *image.RGBA }

func newCanvas(w, h int) canvas {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	return canvas{img}
}

// fillRect fills [x0,x1) x [y0,y1).
func (c canvas) fillRect(x0, y0, x1, y1 float64, col color.RGBA) {
	r := image.Rect(int(x0), int(y0), int(x1), int(y1))
	draw.Draw(c.img, r, &image.Uniform{col}, image.Point{}, draw.Src)
}

// paint draws col through a coverage mask covering the whole image.
func (c canvas) paint(mask *image.Alpha, col color.RGBA) {
	draw.DrawMask(c.img, c.img.Bounds(), &image.Uniform{col}, image.Point{}, mask, image.Point{}, draw.Over)
}

// cover raises the coverage of mask to at least v at (x, y).
func cover(mask *image.Alpha, x, y int, v float64) {
	if !(image.Point{x, y}).In(mask.Rect) || v <= 0 {
		return
	}
	a := uint8(math.Min(v, 1) * 255)
	if a > mask.AlphaAt(x, y).A {
		mask.SetAlpha(x, y, color.Alpha{a})
	}
}

// disc adds a filled disc of radius r at (cx, cy) to mask, with soft edges.
func disc(mask *image.Alpha, cx, cy, r float64) {
	for y := int(cy - r - 1); y <= int(cy+r+1); y++ {
		for x := int(cx - r - 1); x <= int(cx+r+1); x++ {
			d := math.Hypot(float64(x)+0.5-cx, float64(y)+0.5-cy)
			cover(mask, x, y, r+0.5-d)
		}
	}
}

// line draws a line of the given width from (x0, y0) to (x1, y1), dashed (8 on, 5 off) or not.
func (c canvas) line(x0, y0, x1, y1, width float64, col color.RGBA, dashed bool) {
	mask := image.NewAlpha(c.img.Bounds())
	length := math.Hypot(x1-x0, y1-y0)
	for d := 0.0; d <= length; d += 0.25 {
		if dashed && math.Mod(d, 13) >= 8 {
			continue
		}
		t := d / math.Max(length, 1e-9)
		disc(mask, x0+(x1-x0)*t, y0+(y1-y0)*t, width/2)
	}
	c.paint(mask, col)
}

// marker draws a filled circle, or a filled square when square (restart series).
func (c canvas) marker(x, y float64, col color.RGBA, square bool) {
	if square {
		c.fillRect(math.Round(x-4), math.Round(y-4), math.Round(x+5), math.Round(y+5), col)
		return
	}
	mask := image.NewAlpha(c.img.Bounds())
	disc(mask, x, y, 5)
	c.paint(mask, col)
}

// text draws s with the bitmap font scaled by scale, its top at y; align -1 puts its left edge at
// x, 0 its centre, 1 its right edge.
func (c canvas) text(x, y float64, s string, scale int, col color.RGBA, align int) {
	adv := (glyphW + 1) * scale
	width := len([]rune(s))*adv - scale
	left := int(math.Round(x))
	switch align {
	case 0:
		left -= width / 2
	case 1:
		left -= width
	}
	top := int(math.Round(y))
	for i, r := range []rune(s) {
		g := glyph(r)
		for gy, row := range g {
			for gx, px := range row {
				if px != '#' {
					continue
				}
				x0, y0 := left+i*adv+gx*scale, top+gy*scale
				draw.Draw(c.img, image.Rect(x0, y0, x0+scale, y0+scale), &image.Uniform{col}, image.Point{}, draw.Src)
			}
		}
	}
}
