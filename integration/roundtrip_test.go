package integration

import (
	"os"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
)

// TestKernelRoundTrip programs every golden scenario over netlink into a fresh network
// namespace and checks that `nft list table` there prints exactly the golden file, and exactly
// what `nft -f` of the golden file gives in another fresh namespace. This proves the netlink
// encoding and keeps the golden files honest.
func TestKernelRoundTrip(t *testing.T) {
	topology.RequirePrivileged(t)
	scenarios, err := scenario.Load("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	if len(scenarios) == 0 {
		t.Fatal("no golden scenarios in ../testdata")
	}
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			t.Parallel()
			rulesets, err := sc.Render()
			if err != nil {
				t.Fatal(err)
			}

			viaNetlink := topology.NewNetNS(t, "rt-nl")
			if err := kernelBackend(t, viaNetlink).Replace(rulesets...); err != nil {
				t.Fatalf("program over netlink: %v", err)
			}
			viaNft := topology.NewNetNS(t, "rt-nft")
			for _, rs := range rulesets {
				golden := sc.GoldenPath(rs.Family)
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatal(err)
				}
				viaNft.Run(t, "nft", "-f", golden)
				fromNft := viaNft.Run(t, "nft", "list", "table", rs.Family.String(), model.TableName)
				fromNetlink := viaNetlink.Run(t, "nft", "list", "table", rs.Family.String(), model.TableName)
				if fromNft != string(want) {
					t.Errorf("%s: nft -f then nft list differs from the golden file:\n%s", golden, scenario.LineDiff(string(want), fromNft))
				}
				if fromNetlink != string(want) {
					t.Errorf("%s: table programmed over netlink differs from the golden file:\n%s", golden, scenario.LineDiff(string(want), fromNetlink))
				}
			}
		})
	}
}

// TestReplaceAndCleanup checks that a second Replace swaps the whole table atomically and that
// Delete removes nftproxy's tables and nothing else.
func TestReplaceAndCleanup(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rt-clean")
	ns.Run(t, "nft", "add table inet someone-else")
	be := kernelBackend(t, ns)
	cfg := model.NodeConfig{Family: model.IPv4}
	empty := model.Build(nil, cfg)
	for range 2 {
		if err := be.Replace(empty, model.Build(nil, model.NodeConfig{Family: model.IPv6})); err != nil {
			t.Fatalf("replace: %v", err)
		}
	}
	if got := ns.Run(t, "nft", "list", "table", "ip", "nftproxy"); got != model.Render(empty) {
		t.Errorf("after two replaces the table is:\n%s", got)
	}
	if err := be.Delete(model.IPv4, model.IPv6); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := be.Delete(model.IPv4, model.IPv6); err != nil {
		t.Fatalf("delete when already gone: %v", err)
	}
	got := ns.Run(t, "nft", "list", "tables")
	if strings.Contains(got, "nftproxy") || !strings.Contains(got, "table inet someone-else") {
		t.Errorf("after cleanup, tables are:\n%s\nwant only inet someone-else", got)
	}
}
