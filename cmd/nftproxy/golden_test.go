package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/sync"
)

// Golden scenarios live in testdata/<scenario>/: manifests (*.yaml), an optional "flags" file
// with the render flags (one per line or space-separated; --hostname-override defaults to
// "node1"), and the expected tables expected-ip.nft and expected-ip6.nft, exactly as
// `nft list table` prints them. `go test ./cmd/nftproxy -update` rewrites the expected files.
var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

const testdataDir = "../../testdata"

// Scenario is one golden scenario.
type scenario struct {
	name, dir string
	args      []string
}

func scenarios(t *testing.T) []scenario {
	t.Helper()
	entries, err := os.ReadDir(testdataDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []scenario
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(testdataDir, e.Name())
		args := []string{"--hostname-override", "node1"}
		if b, err := os.ReadFile(filepath.Join(dir, "flags")); err == nil {
			args = append(args, strings.Fields(string(b))...)
		}
		out = append(out, scenario{name: e.Name(), dir: dir, args: args})
	}
	if len(out) < 12 {
		t.Fatalf("found %d golden scenarios in %s, want at least 12", len(out), testdataDir)
	}
	return out
}

func goldenPath(dir string, fam model.Family) string {
	return filepath.Join(dir, "expected-"+fam.String()+".nft")
}

func TestGolden(t *testing.T) {
	for _, sc := range scenarios(t) {
		t.Run(sc.name, func(t *testing.T) {
			var cfg sync.Config
			fs := flag.NewFlagSet(sc.name, flag.ContinueOnError)
			cfg.BindFlags(fs)
			if err := fs.Parse(sc.args); err != nil {
				t.Fatalf("flags: %v", err)
			}
			rulesets, _, err := cfg.RenderDir(sc.dir, cfg.HostnameOverride)
			if err != nil {
				t.Fatal(err)
			}
			var all strings.Builder
			for _, rs := range rulesets {
				got := model.Render(rs)
				all.WriteString(got)
				path := goldenPath(sc.dir, rs.Family)
				if *update {
					if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./cmd/nftproxy -update)", err)
				}
				if got != string(want) {
					t.Errorf("%s table differs from %s:\n%s", rs.Family, path, lineDiff(string(want), got))
				}
			}

			// The render command prints exactly these tables.
			var stdout, stderr bytes.Buffer
			args := append([]string{"render", "--manifests", sc.dir}, sc.args...)
			if err := run(context.Background(), args, &stdout, &stderr); err != nil {
				t.Fatalf("nftproxy render: %v\n%s", err, stderr.String())
			}
			if stdout.String() != all.String() {
				t.Errorf("nftproxy render output differs from the rendered tables:\n%s", lineDiff(all.String(), stdout.String()))
			}
		})
	}
}

// lineDiff shows the first differing lines of want and got.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 10; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
			shown++
		}
	}
	return b.String()
}
