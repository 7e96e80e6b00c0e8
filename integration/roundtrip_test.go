package integration

import (
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
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

// TestReplaceAndCleanup checks that a second Replace swaps the whole table for one of other
// content, leaving exactly the new one (nothing of the old: the batch deletes the table and
// writes it anew), and that Delete removes nftproxy's tables and nothing else.
func TestReplaceAndCleanup(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rt-clean")
	ns.Run(t, "nft", "add table inet someone-else")
	be := kernelBackend(t, ns)
	// The first tables: 20 Services with 3 endpoints each, and an empty IPv6 table. The
	// second: 10 other Services (other addresses, endpoints and chains) masqueraded all, and
	// an IPv6 table with a Service.
	web6 := model.Service{Name: model.ServiceName{Namespace: "default", Name: "web6"}, Type: model.ClusterIP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00:96::10")},
		Ports: []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
			{Addr: netip.MustParseAddr("fd00:244:1::a"), Port: 8080, Ready: true, Serving: true},
		}}}}
	var others []model.Service
	for i := range 10 {
		others = append(others, scale.Service(100+i, 2, 1))
	}
	first := []*model.Ruleset{
		model.Build(scale.Services(20, 3), model.NodeConfig{Family: model.IPv4}),
		model.Build(nil, model.NodeConfig{Family: model.IPv6}),
	}
	second := []*model.Ruleset{
		model.Build(others, model.NodeConfig{Family: model.IPv4, MasqueradeAll: true}),
		model.Build([]model.Service{web6}, model.NodeConfig{Family: model.IPv6}),
	}
	for i, step := range []struct {
		name     string
		rulesets []*model.Ruleset
	}{{"first replace", first}, {"second replace", second}} {
		if err := be.Replace(step.rulesets...); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		for j, rs := range step.rulesets {
			want := model.Render(rs)
			if i == 1 && want == model.Render(first[j]) {
				t.Fatalf("the second %s table is the first one", rs.Family)
			}
			if got := ns.Run(t, "nft", "list", "table", rs.Family.String(), model.TableName); got != want {
				t.Errorf("after the %s, the %s table differs from it:\n%s", step.name, rs.Family, scenario.LineDiff(want, got))
			}
		}
	}
	// Exact equality above already excludes them; this names what would be left over.
	got := ns.Run(t, "nft", "list", "ruleset")
	var left []string
	for i := range 20 {
		old := scale.ClusterIP(i).String()
		if regexp.MustCompile(`(^|[^0-9.])` + regexp.QuoteMeta(old) + `([^0-9]|$)`).MatchString(got) {
			left = append(left, old)
		}
	}
	if len(left) > 0 {
		t.Errorf("after the second replace, the ruleset still holds the first one's ClusterIPs %v", left)
	}
	if err := be.Delete(model.IPv4, model.IPv6); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := be.Delete(model.IPv4, model.IPv6); err != nil {
		t.Fatalf("delete when already gone: %v", err)
	}
	got = ns.Run(t, "nft", "list", "tables")
	if strings.Contains(got, "nftproxy") || !strings.Contains(got, "table inet someone-else") {
		t.Errorf("after cleanup, tables are:\n%s\nwant only inet someone-else", got)
	}
}
