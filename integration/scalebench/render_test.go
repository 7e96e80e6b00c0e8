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
	all := map[int]map[string]*result{}
	ns := []int{1000, 5000, 10000}
	for _, n := range ns {
		f := float64(n) / 1000
		all[n] = map[string]*result{
			nftName: {ColdSync: ms(90 * f), Restart: ms(70 * f), ChangeMed: ms(11), ChangeP90: ms(15), OwnCold: 0.012 * f,
				OwnChange: 0.0012, RSSCold: 60e6 + int64(f*6e6), RSSRestart: 62e6 + int64(f*6e6), CPUCold: 0.3 * f, CPURestart: 0.5 * f,
				Samples: 20, ConnOne: ms(0.061), ConnOneP90: ms(0.080), ConnN: ms(0.063), ConnNP90: ms(0.083), Connects: 2000},
			kubeName: {ColdSync: ms(1300 * f), Restart: ms(2000 * f), ChangeMed: ms(380 * f), ChangeP90: ms(480 * f), OwnCold: 0.58 * f,
				OwnChange: 0.38 * f, RSSCold: 88e6 * int64(f), RSSRestart: 113e6 * int64(f), CPUCold: 0.6 * f, CPURestart: 3 * f,
				Samples: 20, ConnOne: ms(0.064), ConnOneP90: ms(0.09), ConnN: ms(0.066), ConnNP90: ms(0.095), Connects: 2000},
			nftDefaultsName: {ColdSync: ms(95 * f), ChangeMed: ms(12), ChangeP90: ms(17), OwnChange: 0.0013, Samples: 20},
		}
	}
	all[10000][kubeName].Err = "restart: timed out waiting for the sync:\nlog"
	md := report(ns, config{m: 10, samples: 20, connects: 2000}, all)
	for _, want := range []string{"## Targets", "N = 10000", "## N = 1000\n", "connect to ClusterIP, 10001 Services, median",
		"single change at defaults, median", "sync-time.png", "kube-proxy failed: `restart: timed out waiting for the sync:`"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(md, "not measured yet") {
		t.Error("report still says the data plane is not measured")
	}
	svg := svgChart(ns, all)
	img, err := pngChart(ns, all)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(img)); err != nil {
		t.Fatalf("PNG does not decode: %v", err)
	}
	// Nothing measured yet: the charts still render.
	if _, err := pngChart(nil, nil); err != nil {
		t.Fatal(err)
	}
	_ = svgChart(nil, nil)
	if dir := os.Getenv("SCALEBENCH_RENDER_OUT"); dir != "" {
		writeFile(t, filepath.Join(dir, "results.md"), []byte(md))
		writeFile(t, filepath.Join(dir, "sync-time.svg"), []byte(svg))
		writeFile(t, filepath.Join(dir, "sync-time.png"), img)
	}
}
