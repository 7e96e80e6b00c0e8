package scalebench

import (
	"bytes"
	"image/png"
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
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	fake := func(n, m int) map[string]*result {
		f := float64(n*m) / 10000
		return map[string]*result{
			nftName: {ColdSync: ms(90 * f), Restart: ms(70 * f), ChangeMed: ms(11), ChangeP90: ms(15), OwnCold: 0.012 * f,
				OwnChange: 0.0012, RSSCold: 60e6 + int64(f*6e6), RSSRestart: 62e6 + int64(f*6e6), CPUCold: 0.3 * f, CPURestart: 0.5 * f,
				CPUBurst: 0.2, CPUChanges: 100, CPUSyncs: 100,
				Samples: 20, ConnOne: ms(0.061), ConnOneP90: ms(0.080), ConnN: ms(0.063), ConnNP90: ms(0.083), Connects: 2000},
			kubeName: {ColdSync: ms(1300 * f), Restart: ms(2000 * f), ChangeMed: ms(380 * f), ChangeP90: ms(480 * f), OwnCold: 0.58 * f,
				OwnChange: 0.38 * f, RSSCold: 88e6 * int64(f+1), RSSRestart: 113e6 * int64(f+1), CPUCold: 0.6 * f, CPURestart: 3 * f,
				CPUBurst: 0.3 * f, CPUChanges: 80, CPUSyncs: 80,
				Samples: 20, ConnOne: ms(0.064), ConnOneP90: ms(0.09), ConnN: ms(0.066), ConnNP90: ms(0.095), Connects: 2000},
			nftDefaultsName: {ColdSync: ms(95 * f), ChangeMed: ms(12), ChangeP90: ms(17), OwnChange: 0.0013, Samples: 20},
		}
	}
	sh := shapes([]int{100, 1000, 5000, 10000}, []int{10000}, 10, 100)
	var runs []*shapeRun
	for _, s := range sh {
		sr := &shapeRun{shape: s, done: s.ns, res: map[int]map[string]*result{}, pop: map[int]*population{}}
		for _, n := range s.ns {
			sr.res[n] = fake(n, s.m)
			sr.pop[n] = &population{Services: n, Endpoints: n * s.m, Took: time.Duration(n) * time.Millisecond, EtcdRSS: 200e6, APIRSS: 900e6, EtcdPeak: 250e6, APIPeak: 1.5e9, EtcdDB: 300e6}
		}
		runs = append(runs, sr)
	}
	runs[0].res[10000][kubeName].Err = "restart: exited:\nlog"
	large := runs[1].res[10000][kubeName]
	large.Restart, large.RestartDNF, large.ChangeMed, large.CPUChanges = 0, 10*time.Minute, 0, 0
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
	md := report(config{samples: 20, cpuChanges: 100, connects: 2000, limit: 10 * time.Minute}, runs, churn)
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
