package scalebench

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRender renders the report and both charts from made-up figures (no root, no API server):
// the font is well formed, the PNG decodes, the report holds every section. With
// $SCALEBENCH_RENDER_OUT set it writes them there to look at.
func TestRender(t *testing.T) {
	for r, g := range font5x7 {
		for _, row := range g {
			if len(row) != glyphW || strings.Trim(row, ".#") != "" {
				t.Errorf("glyph %q: row %q is not %d of '.' and '#'", r, row, glyphW)
			}
		}
	}
	runs := fakeShapeRuns()
	runs[0].res[10000][kubeName].Err = "restart: exited:\nlog"
	large := runs[1].res[10000][kubeName]
	large.Runs[0].Restart, large.RestartDNF, large.ChangeMed, large.CPUChanges = 0, 10*time.Minute, 0, 0
	churn := &churnRun{cfg: churnConfig{n: 10000, m: 10, rate: 20, dur: 10 * time.Minute}, res: map[string]*churnResult{},
		populat: &population{Services: 10000, Endpoints: 100000, Took: time.Minute}}
	for i, name := range []string{nftName, kubeName, nftDefaultsName} {
		r := &churnResult{Dur: 10 * time.Minute, Sent: 12000, Syncs: 9000, EndpointChgs: 12000, SyncSum: 5}
		for k := range 61 {
			r.Samples = append(r.Samples, churnSample{At: time.Duration(k) * churnSampleEvery, CPU: float64(k*(i+1)) * 0.3, RSS: int64(100e6 + 1e6*float64(i*k))})
		}
		churn.names = append(churn.names, name)
		churn.res[name] = r
	}
	churn.res[kubeName] = &churnResult{ColdDNF: 10 * time.Minute}
	md := report(config{runs: 1, samples: 20, cpuChanges: 100, connects: 2000, limit: 10 * time.Minute}, runs, churn)
	// One run: no medians, ranges or run counts.
	for _, not := range []string{"**runs**", " runs)", "runs alike", " median (worst", "(median;", "A point is"} {
		if strings.Contains(md, not) {
			t.Errorf("one run: the report holds %q", not)
		}
	}
	for _, want := range []string{"## N Services x 10 endpoints\n", "## N Services x 100 endpoints (large Services)\n",
		"### Targets", "cold sync ≤ 5 s |", "peak RSS ≤ 1 GB", "cold sync ≤ 800 ms |", "### N = 100\n", "### CPU per change", "| 100 | 2.00 ms |",
		"one change costs 2.00 ms of CPU at N = 100 and 2.00 ms at N = 10000: 1.00x", "### Populating the API server",
		"| 10000 | 1000000 | 10.00 s |", "connect to ClusterIP, 10001 Services, median", "single change at defaults, median",
		"sync-time.png", "rss.png", "kube-proxy failed: `restart: exited:`", "| did not finish in 10 min |",
		"kube-proxy: the restart did not finish in 10 min; the changes were not run.", "## Steady state under churn",
		"| churn ran | 600.00 s | cold sync did not finish in 10 min | 600.00 s |", "| changes a second, achieved | 20.0 | — | 20.0 |", "| RSS growth after minute 1 | +0 MB (+0%) | — | +108 MB (+96%) |", "churn-rss.png"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	cs := charts(runs, churn)
	if len(cs) != 4 {
		t.Fatalf("%d charts, want 4 (time, RSS, churn RSS, churn CPU)", len(cs))
	}
	// Nothing measured yet: the charts still render.
	cs = append(cs, charts(nil, nil)...)
	var out [][]byte
	for _, c := range cs {
		img, err := c.png()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(bytes.NewReader(img)); err != nil {
			t.Fatalf("%s: PNG does not decode: %v", c.file, err)
		}
		out = append(out, img)
	}
	if dir := os.Getenv("SCALEBENCH_RENDER_OUT"); dir != "" {
		writeFile(t, filepath.Join(dir, "results.md"), []byte(md))
		for i, c := range cs[:4] {
			writeFile(t, filepath.Join(dir, c.file+".svg"), []byte(c.svg()))
			writeFile(t, filepath.Join(dir, c.file+".png"), out[i])
		}
	}
}

// TestRenderRuns renders the report and the charts of results over several runs: the tables
// give each figure's median, range and number of runs, ratios of medians; the targets judge the
// median, with the worst run beside it; a run that did not finish is the slowest; the charts
// plot the medians with the range as a bar.
func TestRenderRuns(t *testing.T) {
	runs := fakeShapeRuns()
	// Small shape at N = 10000 (the targets' N), three runs each, in the order measured.
	a, k := runs[0].res[10000][nftName], runs[0].res[10000][kubeName]
	a.Runs = []runResult{
		{Cold: ms(750), Restart: ms(900), RSSCold: 120e6, RSSRestart: 140e6, OwnCold: 0.2},
		{Cold: ms(700), Restart: ms(1200), RSSCold: 118e6, RSSRestart: 160e6, OwnCold: 0.18},
		{Cold: ms(850), Restart: ms(950), RSSCold: 121e6, RSSRestart: 135e6, OwnCold: 0.22},
	}
	k.Runs = []runResult{
		{Cold: ms(17000), Restart: ms(26000), RSSCold: 300e6, RSSRestart: 310e6, OwnCold: 9},
		{Cold: ms(15000), Restart: ms(24000), RSSCold: 290e6, RSSRestart: 305e6, OwnCold: 8},
		{Cold: ms(16000), RSSCold: 295e6, OwnCold: 8.5}, // its restart did not finish
	}
	k.RestartDNF = 10 * time.Minute
	// Large shape: two runs of nftproxy, the median of an even number.
	l := runs[1].res[10000][nftName]
	l.Runs = []runResult{
		{Cold: ms(6000), Restart: ms(4000), RSSCold: 900e6, RSSRestart: 950e6, OwnCold: 1},
		{Cold: ms(4000), Restart: ms(5000), RSSCold: 900e6, RSSRestart: 950e6, OwnCold: 1},
	}
	md := report(config{runs: 3, samples: 20, cpuChanges: 100, connects: 2000, limit: 10 * time.Minute}, runs, nil)
	for _, want := range []string{
		"- **runs**: the cold sync and the restart are measured 3 times for each proxy at each N",
		"counts as its slowest (\"over 10 min\").",
		"A point is\nthe median over the runs, its bar their range",
		// The table at N = 10000.
		"| cold sync | 750.0 ms (700.0–850.0 ms, 3 runs) | 16.00 s (15.00–17.00 s, 3 runs) | 21.3x |\n",
		"| restart with rules in place | 950.0 ms (900.0 ms – 1.20 s, 3 runs) | 26.00 s (24.00 s – over 10 min, 3 runs) | 27.4x |\n",
		"| own sync duration, cold | 200.0 ms (180.0–220.0 ms, 3 runs) | 8.50 s (8.00–9.00 s, 3 runs) | 42.5x |\n",
		"| peak RSS, first process | 120 MB (118–121 MB, 3 runs) | 295 MB (290–300 MB, 3 runs) | 2.5x |\n",
		"| peak RSS, restarted process | 140 MB (135–160 MB, 3 runs) | 308 MB (305–310 MB, 2 runs) | 2.2x |\n",
		"kube-proxy: the restart of run 3 did not finish in 10 min (the runs end there; it counts as the slowest).",
		// Its targets: met by the median, one run over.
		"| cold sync ≤ 800 ms | 750.0 ms median (worst 850.0 ms) | met (median; 1 of 3 runs over) |\n",
		"| cold sync ≥ 20x faster than kube-proxy | 21.3x median (worst 18.8x; kube-proxy median 16.00 s (15.00–17.00 s, 3 runs)) | met (median; 1 of 3 runs short) |\n",
		"| restart ≤ 1 s | 950.0 ms median (worst 1.20 s) | met (median; 1 of 3 runs over) |\n",
		"| peak RSS ≤ 150 MB | 140 MB median (worst 160 MB; larger of first and restarted process) | met (median; 1 of 3 runs over) |\n",
		"Over more than one run a target is judged by the median",
		// The large shape: the mean of the middle two; alike runs.
		"| cold sync | 5.00 s (4.00–6.00 s, 2 runs) |",
		"| cold sync ≤ 5 s | 5.00 s median (worst 6.00 s) | met (median; 1 of 2 runs over) |\n",
		"| restart ≤ 5 s | 4.50 s median (worst 5.00 s) | met |\n",
		"| peak RSS, first process | 900 MB (2 runs alike) |",
		"| peak RSS ≤ 1 GB | 950 MB median (worst 950 MB; larger of first and restarted process) | met |\n",
		// Single runs elsewhere stay plain.
		"| cold sync | 90.0 ms | 1.30 s | 14.4x |\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}

	// A later run over the target when the median misses it too: missed, no note.
	a.Runs[0].Cold, a.Runs[1].Cold = ms(820), ms(810)
	md = report(config{runs: 3, limit: 10 * time.Minute}, runs, nil)
	if want := "| cold sync ≤ 800 ms | 820.0 ms median (worst 850.0 ms) | **missed** |\n"; !strings.Contains(md, want) {
		t.Errorf("report lacks %q", want)
	}

	cs := charts(runs, nil)
	find := func(c chart, label string) series {
		for _, s := range c.series {
			if s.label == label {
				return s
			}
		}
		t.Fatalf("%s: no series %q", c.file, label)
		return series{}
	}
	last := func(s series) point { return s.pts[len(s.pts)-1] }
	for _, c := range []struct {
		got  point
		want point
	}{
		{last(find(cs[0], "nftproxy x10, cold sync")), point{10000, 0.82, 0.81, 0.85}},
		{last(find(cs[0], "kube-proxy x10, restart")), point{10000, 26, 24, math.Inf(1)}},
		{last(find(cs[1], "nftproxy x10")), point{10000, 140, 135, 160}}, // the restarted process: the larger median
		{last(find(cs[0], "nftproxy x100, cold sync")), point{10000, 5, 4, 6}},
		{find(cs[0], "nftproxy x10, cold sync").pts[0], point{100, 0.009, 0.009, 0.009}},
	} {
		if math.Abs(c.got.y-c.want.y) > 1e-9 || math.Abs(c.got.lo-c.want.lo) > 1e-9 || c.got.x != c.want.x ||
			!(c.got.hi == c.want.hi || math.Abs(c.got.hi-c.want.hi) < 1e-9) {
			t.Errorf("chart point %+v, want %+v", c.got, c.want)
		}
	}
	svg := cs[0].svg()
	if !strings.Contains(svg, "<path d=\"M") {
		t.Error("sync-time.svg: no range bars")
	}
	for _, c := range cs {
		if _, err := c.png(); err != nil {
			t.Fatal(err)
		}
	}
	if dir := os.Getenv("SCALEBENCH_RENDER_OUT"); dir != "" {
		writeFile(t, filepath.Join(dir, "runs", "results.md"), []byte(md))
		for _, c := range cs {
			img, _ := c.png()
			writeFile(t, filepath.Join(dir, "runs", c.file+".svg"), []byte(c.svg()))
			writeFile(t, filepath.Join(dir, "runs", c.file+".png"), img)
		}
	}
}

// ms returns x milliseconds.
func ms(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }

// fakeShapeRuns returns made-up results of both shapes at every default N, one run each.
func fakeShapeRuns() []*shapeRun {
	fake := func(n, m int) map[string]*result {
		f := float64(n*m) / 10000
		return map[string]*result{
			nftName: {Runs: []runResult{{Cold: ms(90 * f), Restart: ms(70 * f), OwnCold: 0.012 * f,
				RSSCold: 60e6 + int64(f*6e6), RSSRestart: 62e6 + int64(f*6e6)}},
				ChangeMed: ms(11), ChangeP90: ms(15), OwnChange: 0.0012, CPUCold: 0.3 * f, CPURestart: 0.5 * f,
				CPUBurst: 0.2, CPUChanges: 100, CPUSyncs: 100,
				Samples: 20, ConnOne: ms(0.061), ConnOneP90: ms(0.080), ConnN: ms(0.063), ConnNP90: ms(0.083), Connects: 2000},
			kubeName: {Runs: []runResult{{Cold: ms(1300 * f), Restart: ms(2000 * f), OwnCold: 0.58 * f,
				RSSCold: 88e6 * int64(f+1), RSSRestart: 113e6 * int64(f+1)}},
				ChangeMed: ms(380 * f), ChangeP90: ms(480 * f), OwnChange: 0.38 * f, CPUCold: 0.6 * f, CPURestart: 3 * f,
				CPUBurst: 0.3 * f, CPUChanges: 80, CPUSyncs: 80,
				Samples: 20, ConnOne: ms(0.064), ConnOneP90: ms(0.09), ConnN: ms(0.066), ConnNP90: ms(0.095), Connects: 2000},
			nftDefaultsName: {Runs: []runResult{{Cold: ms(95 * f)}}, ChangeMed: ms(12), ChangeP90: ms(17), OwnChange: 0.0013, Samples: 20},
		}
	}
	var runs []*shapeRun
	sh := shapes([]int{100, 1000, 5000, 10000}, []int{10000}, 10, 100)
	for _, s := range sh {
		sr := &shapeRun{shape: s, done: s.ns, res: map[int]map[string]*result{}, pop: map[int]*population{}}
		for _, n := range s.ns {
			sr.res[n] = fake(n, s.m)
			sr.pop[n] = &population{Services: n, Endpoints: n * s.m, Took: time.Duration(n) * time.Millisecond, EtcdRSS: 200e6, APIRSS: 900e6, EtcdPeak: 250e6, APIPeak: 1.5e9, EtcdDB: 300e6}
		}
		runs = append(runs, sr)
	}
	return runs
}
