package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
)

// `go test ./cmd/nftproxy -update` rewrites the expected tables of testdata/ (see package
// scenario for the layout); review the diff.
var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

func TestGolden(t *testing.T) {
	scenarios, err := scenario.Load("../../testdata")
	if err != nil {
		t.Fatal(err)
	}
	if len(scenarios) < 12 {
		t.Fatalf("found %d golden scenarios, want at least 12", len(scenarios))
	}
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			rulesets, err := sc.Render()
			if err != nil {
				t.Fatal(err)
			}
			var all strings.Builder
			for _, rs := range rulesets {
				got := model.Render(rs)
				all.WriteString(got)
				path := sc.GoldenPath(rs.Family)
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
					t.Errorf("%s table differs from %s:\n%s", rs.Family, path, scenario.LineDiff(string(want), got))
				}
			}

			// The render command prints exactly these tables.
			var stdout, stderr bytes.Buffer
			args := append([]string{"render", "--manifests", sc.Dir}, sc.Args...)
			if err := run(context.Background(), args, &stdout, &stderr); err != nil {
				t.Fatalf("nftproxy render: %v\n%s", err, stderr.String())
			}
			if stdout.String() != all.String() {
				t.Errorf("nftproxy render output differs from the rendered tables:\n%s", scenario.LineDiff(all.String(), stdout.String()))
			}
		})
	}
}
