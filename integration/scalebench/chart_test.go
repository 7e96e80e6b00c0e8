package scalebench

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The charts: cold sync and restart time against N (log scale on the time axis: the proxies
// differ by orders of magnitude) and peak RSS against N, both proxies and both shapes; RSS and
// CPU time over the churn. Each goes to an SVG (hand-written) and a PNG (image/png with the
// bitmap font of font_test.go, so no dependency beyond the standard library).

// point is one value y at x (Services, or minutes). When hi > lo, y is the median of values
// from lo to hi (hi +Inf: one did not finish), drawn as a bar.
type point struct{ x, y, lo, hi float64 }

// medianPoint returns f's median at x, with its range as a bar, all scaled by scale.
func medianPoint(f figure, x, scale float64) point {
	return point{x: x, y: f.median() * scale, lo: f[0] * scale, hi: f[len(f)-1] * scale}
}

// bar returns the ends of p's range bar on axes a, and ok false when p has no range. A range up
// to a run that did not finish ends at the top of the y axis without a cap (capped false).
func (p point) bar(a axes) (lo, hi float64, capped, ok bool) {
	if !(p.hi > p.lo) {
		return 0, 0, false, false
	}
	if math.IsInf(p.hi, 1) {
		return p.lo, a.hi, false, true
	}
	return p.lo, p.hi, true, true
}

// series is one line of a chart.
type series struct {
	label  string
	color  color.RGBA
	dashed bool // dashed line, square markers
	pts    []point
}

// chart is one chart: its series over an x axis with grid lines at xTicks, and a y axis in log
// scale or linear from 0.
type chart struct {
	file          string // base name of the .svg and .png
	title, xLabel string
	yLabel        string
	xTicks        []float64
	logY          bool
	yFormat       func(float64) string // a y grid value's label
	series        []series
}

var (
	blue   = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	red    = color.RGBA{0xd6, 0x27, 0x28, 0xff}
	green  = color.RGBA{0x2c, 0xa0, 0x2c, 0xff}
	orange = color.RGBA{0xff, 0x7f, 0x0e, 0xff}
)

// shapeColors gives each proxy a colour per shape (by the shape's place in the run).
var shapeColors = map[string][]color.RGBA{
	nftName:  {blue, green},
	kubeName: {red, orange},
}

// churnColors and churnLabels name the churn's proxies in its charts.
var (
	churnColors = map[string]color.RGBA{nftName: blue, kubeName: red, nftDefaultsName: green}
	churnLabels = map[string]string{nftName: "nftproxy, min-sync 0", kubeName: "kube-proxy", nftDefaultsName: "nftproxy, min-sync 1 s"}
)

// charts returns the charts of the runs: time and RSS against N (medians over the runs, with
// their range), and the churn's when it ran.
func charts(runs []*shapeRun, churn *churnRun) []chart {
	timeC := chart{file: "sync-time", title: "Cold sync and restart time vs number of Services", xLabel: "Services (N)",
		yLabel: "time (log scale)", logY: true, yFormat: func(v float64) string { return xLabel(v) + " s" }}
	rssC := chart{file: "rss", title: "Peak RSS vs number of Services", xLabel: "Services (N)", yLabel: "peak RSS (MB)",
		yFormat: xLabel}
	ticks := map[int]bool{}
	for si, sr := range runs {
		for _, name := range proxyNames {
			col := shapeColors[name][si%2]
			tag := fmt.Sprintf("%s x%d", name, sr.m)
			cold := series{label: tag + ", cold sync", color: col}
			restart := series{label: tag + ", restart", color: col, dashed: true}
			rss := series{label: tag, color: col}
			for _, n := range sr.done {
				x := sr.res[n][name]
				if x == nil {
					continue
				}
				ticks[n] = true
				if f := x.cold(); len(f) > 0 && !math.IsInf(f.median(), 1) {
					cold.pts = append(cold.pts, medianPoint(f, float64(n), 1))
				}
				if f := x.restart(); len(f) > 0 && !math.IsInf(f.median(), 1) {
					restart.pts = append(restart.pts, medianPoint(f, float64(n), 1))
				}
				// The process with the larger median, as the targets judge it.
				f := x.rssCold()
				if r := x.rssRestart(); r.median() > f.median() {
					f = r
				}
				if len(f) > 0 {
					rss.pts = append(rss.pts, medianPoint(f, float64(n), 1e-6))
				}
			}
			timeC.series = append(timeC.series, cold, restart)
			rssC.series = append(rssC.series, rss)
		}
	}
	for n := range ticks {
		timeC.xTicks = append(timeC.xTicks, float64(n))
	}
	slices.Sort(timeC.xTicks)
	rssC.xTicks = timeC.xTicks
	out := []chart{timeC, rssC}
	if churn == nil {
		return out
	}
	mins := churn.cfg.dur.Minutes()
	step := niceStep(mins / 6)
	var mticks []float64
	for i := 0.0; i*step <= mins+step/2; i++ {
		mticks = append(mticks, i*step)
	}
	churnRSS := chart{file: "churn-rss", title: "RSS under churn", xLabel: "minutes", yLabel: "RSS (MB)", xTicks: mticks,
		yFormat: xLabel}
	churnCPU := chart{file: "churn-cpu", title: "CPU time under churn (cumulative)", xLabel: "minutes", yLabel: "CPU time (s)", xTicks: mticks,
		yFormat: xLabel}
	for _, name := range churn.names {
		r := churn.res[name]
		rs := series{label: churnLabels[name], color: churnColors[name]}
		cs := rs
		for _, sm := range r.Samples {
			rs.pts = append(rs.pts, point{x: sm.At.Minutes(), y: float64(sm.RSS) / 1e6})
			cs.pts = append(cs.pts, point{x: sm.At.Minutes(), y: sm.CPU})
		}
		churnRSS.series = append(churnRSS.series, rs)
		churnCPU.series = append(churnCPU.series, cs)
	}
	return append(out, churnRSS, churnCPU)
}

// niceStep returns the smallest of 1, 2 and 5 times a power of ten that is at least v.
func niceStep(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, f := range []float64{1, 2, 5, 10} {
		if f*p >= v*0.999 {
			return f * p
		}
	}
	return 10 * p
}

// axes holds the value ranges of a chart: x from 0 to maxX, y from lo to hi (powers of ten on a
// log axis; 0 and a multiple of step on a linear one).
type axes struct {
	maxX   float64
	lo, hi float64
	log    bool
	step   float64
}

func (c chart) axes() axes {
	a := axes{maxX: 1, lo: math.Inf(1), hi: math.Inf(-1), log: c.logY}
	for _, x := range c.xTicks {
		a.maxX = max(a.maxX, x)
	}
	for _, s := range c.series {
		for _, p := range s.pts {
			a.lo, a.hi = math.Min(a.lo, p.y), math.Max(a.hi, p.y)
			if p.hi > p.lo {
				a.lo = math.Min(a.lo, p.lo)
				if !math.IsInf(p.hi, 1) {
					a.hi = math.Max(a.hi, p.hi)
				}
			}
			a.maxX = max(a.maxX, p.x)
		}
	}
	if !a.log {
		if math.IsInf(a.hi, 0) || a.hi <= 0 {
			a.hi = 1
		}
		a.step = niceStep(a.hi / 5)
		a.lo, a.hi = 0, a.step*math.Ceil(a.hi/a.step)
		return a
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

// gridValues returns the y axis' grid lines and whether each gets a label: on a log axis 1, 2
// and 5 times each power of ten in range, labelled at every power of ten (2 and 5 too when the
// axis spans ≤ 2 decades); on a linear one every step, all labelled.
func (a axes) gridValues() (vals []float64, labelled []bool) {
	if !a.log {
		for i := 0.0; a.lo+i*a.step <= a.hi+a.step/2; i++ {
			vals = append(vals, a.lo+i*a.step)
			labelled = append(labelled, true)
		}
		return vals, labelled
	}
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

// xLabel formats a grid value.
func xLabel(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

// markersUpTo is the number of points up to which a series gets a marker at each point.
const markersUpTo = 20

// frame maps values to pixels within a plot area.
type frame struct {
	a                        axes
	left, right, top, bottom float64
}

func (f frame) x(v float64) float64 {
	return f.left + (f.right-f.left)*v/(f.a.maxX*1.04)
}

func (f frame) y(v float64) float64 {
	if !f.a.log {
		return f.top + (f.bottom-f.top)*(1-(v-f.a.lo)/(f.a.hi-f.a.lo))
	}
	return f.top + (f.bottom-f.top)*(1-(math.Log10(v)-math.Log10(f.a.lo))/(math.Log10(f.a.hi)-math.Log10(f.a.lo)))
}

// legendChars returns the length of the longest series label.
func (c chart) legendChars() int {
	n := 0
	for _, s := range c.series {
		n = max(n, len([]rune(s.label)))
	}
	return n
}

// svg draws the chart as SVG.
func (c chart) svg() string {
	legend := 60 + 7*float64(c.legendChars())
	w, h := 590+legend, 420.0
	f := frame{a: c.axes(), left: 70, right: w - legend, top: 40, bottom: h - 50}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%.0f" height="%.0f" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%.0f" y="20" text-anchor="middle" font-size="14">%s</text>`+"\n", (f.left+f.right)/2, c.title)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s</text>`+"\n", 8.0, f.top-12, c.yLabel)
	vals, labelled := f.a.gridValues()
	for i, v := range vals {
		y := f.y(v)
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", f.left, y, f.right, y)
		if labelled[i] {
			fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", f.left-6, y+4, c.yFormat(v))
		}
	}
	for _, v := range c.xTicks {
		x := f.x(v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#e4e4e4"/>`+"\n", x, f.top, x, f.bottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x, f.bottom+18, xLabel(v))
	}
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", f.left, f.bottom, f.right, f.bottom)
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", f.left, f.top, f.left, f.bottom)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", (f.left+f.right)/2, h-12, c.xLabel)
	for i, s := range c.series {
		col := fmt.Sprintf("#%02x%02x%02x", s.color.R, s.color.G, s.color.B)
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="7 4"`
		}
		var pts []string
		for _, p := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", f.x(p.x), f.y(p.y)))
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
			if lo, hi, capped, ok := p.bar(f.a); ok {
				x, y0, y1 := f.x(p.x), f.y(lo), f.y(hi)
				d := fmt.Sprintf("M%.1f %.1fV%.1fM%.1f %.1fh8", x, y0, y1, x-4, y0)
				if capped {
					d += fmt.Sprintf("M%.1f %.1fh8", x-4, y1)
				}
				fmt.Fprintf(&b, `<path d="%s" stroke="%s" stroke-width="1.5"/>`+"\n", d, col)
			}
			if len(s.pts) <= markersUpTo {
				marker(f.x(p.x), f.y(p.y))
			}
		}
		y := f.top + 20 + 22*float64(i)
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"%s/>`+"\n", f.right+12, y, f.right+42, y, col, dash)
		marker(f.right+27, y)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s</text>`+"\n", f.right+48, y+4, s.label)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// png draws the chart as a PNG image.
func (c chart) png() ([]byte, error) {
	const ts = 2 // text scale (the font's pixels are ts x ts)
	legend := 90 + float64((glyphW+1)*ts*c.legendChars())
	w, h := int(750+legend), 580
	f := frame{a: c.axes(), left: 100, right: float64(w) - legend, top: 84, bottom: float64(h) - 80}
	cv := newCanvas(w, h)
	black := color.RGBA{0, 0, 0, 0xff}
	grid := color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	cv.text((f.left+f.right)/2, 18, c.title, ts, black, 0)
	vals, labelled := f.a.gridValues()
	for i, v := range vals {
		y := math.Round(f.y(v))
		cv.fillRect(f.left, y, f.right, y+1, grid)
		if labelled[i] {
			cv.text(f.left-10, y-7, c.yFormat(v), ts, black, 1)
		}
	}
	for _, v := range c.xTicks {
		x := math.Round(f.x(v))
		cv.fillRect(x, f.top, x+1, f.bottom, grid)
		cv.fillRect(x, f.bottom, x+1, f.bottom+6, black)
		cv.text(x, f.bottom+12, xLabel(v), ts, black, 0)
	}
	cv.fillRect(f.left, f.bottom, f.right, f.bottom+2, black)
	cv.fillRect(f.left-1, f.top, f.left+1, f.bottom+2, black)
	cv.text((f.left+f.right)/2, float64(h)-34, c.xLabel, ts, black, 0)
	cv.text(f.left-60, f.top-34, c.yLabel, ts, black, -1)
	for i, s := range c.series {
		for j := 1; j < len(s.pts); j++ {
			p, q := s.pts[j-1], s.pts[j]
			cv.line(f.x(p.x), f.y(p.y), f.x(q.x), f.y(q.y), 2.5, s.color, s.dashed)
		}
		for _, p := range s.pts {
			if lo, hi, capped, ok := p.bar(f.a); ok {
				x, y0, y1 := math.Round(f.x(p.x)), math.Round(f.y(lo)), math.Round(f.y(hi))
				cv.fillRect(x-1, y1, x+1, y0+1, s.color)
				cv.fillRect(x-6, y0-1, x+6, y0+1, s.color)
				if capped {
					cv.fillRect(x-6, y1-1, x+6, y1+1, s.color)
				}
			}
			if len(s.pts) <= markersUpTo {
				cv.marker(f.x(p.x), f.y(p.y), s.color, s.dashed)
			}
		}
		y := f.top + 24 + 30*float64(i)
		cv.line(f.right+16, y, f.right+56, y, 2.5, s.color, s.dashed)
		cv.marker(f.right+36, y, s.color, s.dashed)
		cv.text(f.right+66, y-7, s.label, ts, black, -1)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, cv.img); err != nil {
		return nil, fmt.Errorf("encode chart %s: %w", c.file, err)
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
