package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
)

// TestDiffTables: a table equal to the cluster's gives no diff; a kernel table with an
// endpoint of one Service changed, a NodePort slot of another, a hairpin pair of a third and a
// ClusterIP of a fourth missing, and a shared chain gone
// gives one group per Service and one for the shared chains, each a unified diff of
// exactly the lines that differ, attributed by element comment, by frontend (endpoint slots,
// a NodePort's too) or by address.
func TestDiffTables(t *testing.T) {
	render := func() *model.Ruleset {
		t.Helper()
		scs, err := scenario.Load("../../testdata")
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(scs, func(s scenario.Scenario) bool { return s.Name == "session-affinity" })
		rulesets, err := scs[i].Render()
		if err != nil {
			t.Fatal(err)
		}
		return rulesets[0]
	}
	want := render()
	if d := diffTables(want, render()); len(d) != 0 {
		t.Fatalf("equal tables differ: %v", d)
	}

	got := render()
	eps := got.Set(model.MapServiceEndpoints)
	for i, e := range eps.Elements {
		if e.Addr == netip.MustParseAddr("10.96.0.110") && e.Slot == 1 {
			eps.Elements[i].Endpoint = netip.MustParseAddrPort("10.244.9.9:8080")
		}
	}
	// A NodePort's slot (no address in its key) goes with the Service its frontend names.
	nps := got.Set(model.MapNodePortEndpoints)
	for i, e := range nps.Elements {
		if e.Port == 30111 && e.Slot == 1 {
			nps.Elements[i].Endpoint = netip.MustParseAddrPort("10.244.9.9:8080")
		}
	}
	// A hairpin pair goes with the Service whose slot holds its endpoint.
	hp := got.Set(model.SetHairpin)
	hp.Elements = nil
	ips := got.Set(model.SetClusterIPs)
	ips.Elements = slices.DeleteFunc(ips.Elements, func(e model.Element) bool { return e.Addr.String() == "10.96.0.114" })
	got.Chains = slices.DeleteFunc(got.Chains, func(c *model.Chain) bool { return c.Name == "cluster-tcp-2" })

	diffs := diffTables(want, got)
	var groups []string
	for _, d := range diffs {
		groups = append(groups, d.Group)
	}
	if !slices.Equal(groups, []string{groupShared, "default/plain", "default/sticky", "default/sticky-local", "default/sticky-short"}) {
		t.Fatalf("groups that differ: %q, want (shared chains), default/plain, default/sticky, default/sticky-local, default/sticky-short", groups)
	}
	if want := "-element ip nftproxy hairpin { 10.244.1.113 . 10.244.1.113 }\n"; !strings.Contains(diffs[3].Diff, want) {
		t.Errorf("default/sticky-local diff lacks its hairpin pair (%q):\n%s", want, diffs[3].Diff)
	}
	if want := "+element ip nftproxy nodeport-endpoints { tcp . 30111 . 1 : 10.244.9.9 . 8080 }\n"; !strings.Contains(diffs[4].Diff, want) {
		t.Errorf("default/sticky-short diff lacks its NodePort slot (%q):\n%s", want, diffs[4].Diff)
	}
	wantSticky := `--- cluster
+++ kernel
@@ -1,5 +1,5 @@
 element ip nftproxy cluster-ips { 10.96.0.110 }
 element ip nftproxy service-ips { 10.96.0.110 . tcp . 80 comment "default/sticky:p" : goto cluster-tcp-2-affinity-10800 }
 element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 0 : 10.244.2.110 . 8080 }
-element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 1 : 10.244.3.110 . 8080 }
+element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 1 : 10.244.9.9 . 8080 }
 element ip nftproxy affinity-services { 10.96.0.110 . tcp . 80 comment "default/sticky:p" : goto affinity-record-tcp-10800 }
`
	if diffs[2].Diff != wantSticky {
		t.Errorf("default/sticky diff:\n%s\nwant:\n%s", diffs[2].Diff, wantSticky)
	}
	wantPlain := "-element ip nftproxy cluster-ips { 10.96.0.114 }\n"
	if !strings.Contains(diffs[1].Diff, wantPlain) {
		t.Errorf("default/plain diff does not remove its ClusterIP (%q):\n%s", wantPlain, diffs[1].Diff)
	}
	if !strings.Contains(diffs[0].Diff, "-chain cluster-tcp-2 {\n") {
		t.Errorf("shared chains diff does not remove cluster-tcp-2:\n%s", diffs[0].Diff)
	}
}
