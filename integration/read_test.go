package integration

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// unrecognized is how Read returns a rule nftproxy would not have written.
var unrecognized = model.Rule{Comment: "nftproxy: unrecognized rule"}

// TestReadGoldenScenarios programs every golden scenario over netlink and reads each table
// back: every element must decode and every rule must be recognized, so the table read
// renders exactly as the ruleset written.
func TestReadGoldenScenarios(t *testing.T) {
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
			ns := topology.NewNetNS(t, "rd")
			be := kernelBackend(t, ns)
			if err := be.Replace(rulesets...); err != nil {
				t.Fatalf("replace: %v", err)
			}
			for _, want := range rulesets {
				got, gen, err := be.Read(want.Family, want)
				if err != nil {
					t.Fatalf("read %s: %v", want.Family, err)
				}
				if got == nil {
					t.Fatalf("read %s: no table", want.Family)
				}
				if g, err := be.Generation(); err != nil || g != gen {
					t.Errorf("read %s at generation %d, now %d (%v)", want.Family, gen, g, err)
				}
				if w, g := model.Render(want), model.Render(got); g != w {
					t.Errorf("%s table read back differs:\n%s", want.Family, scenario.LineDiff(w, g))
				}
				checkSameSets(t, want, got)
			}
		})
	}
}

// checkSameSets checks that got has want's sets in want's order with the same elements, in
// model.CompareElements order (Render sorts by itself, so it does not show the order).
func checkSameSets(t *testing.T, want, got *model.Ruleset) {
	t.Helper()
	if len(got.Sets) != len(want.Sets) {
		t.Errorf("read %d sets, want %d", len(got.Sets), len(want.Sets))
		return
	}
	for i, ws := range want.Sets {
		gs := got.Sets[i]
		if gs.Name != ws.Name || gs.Data != ws.Data || gs.Comment != ws.Comment || !slices.Equal(gs.Key, ws.Key) {
			t.Errorf("set %d is %s, want %s", i, gs.Name, ws.Name)
			continue
		}
		if !slices.IsSortedFunc(gs.Elements, model.CompareElements) {
			t.Errorf("set %s: elements are not sorted", gs.Name)
		}
		wantElems := slices.SortedFunc(slices.Values(ws.Elements), model.CompareElements)
		if !slices.Equal(gs.Elements, wantElems) {
			t.Errorf("set %s: read %d elements that differ from the %d written", gs.Name, len(gs.Elements), len(wantElems))
		}
	}
}

// TestReadNoTable checks that Read of a namespace without nftproxy's table returns nil.
func TestReadNoTable(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-none")
	ns.Run(t, "nft", "add table ip other")
	be := kernelBackend(t, ns)
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		got, _, err := be.Read(fam, model.Build(nil, model.NodeConfig{Family: fam}))
		if err != nil || got != nil {
			t.Errorf("read %s: %v, %v; want no table and no error", fam, got, err)
		}
	}
}

// TestReadIncompatible checks that tables in another layout are reported as ErrIncompatible.
func TestReadIncompatible(t *testing.T) {
	topology.RequirePrivileged(t)
	want := model.Build(scale.Services(5, 2), model.NodeConfig{Family: model.IPv4})
	cases := []struct {
		name string
		// nft is run (each argument as one nft command) after programming want, or
		// instead of it when fresh.
		nft   []string
		fresh bool
	}{
		{name: "created by nft", fresh: true, nft: []string{
			"add table ip nftproxy",
			"add set ip nftproxy service-ips { type ipv4_addr; }",
		}},
		{name: "empty table", fresh: true, nft: []string{"add table ip nftproxy"}},
		{name: "extra set", nft: []string{"add set ip nftproxy extra { type ipv4_addr; }"}},
		{name: "set declared differently", nft: []string{
			"flush chain ip nftproxy cluster-ips-check",
			"delete set ip nftproxy cluster-ips",
			"add set ip nftproxy cluster-ips { type ipv4_addr; flags interval; }",
		}},
		{name: "set without comment", nft: []string{
			"flush chain ip nftproxy cluster-ips-check",
			"delete set ip nftproxy cluster-ips",
			"add set ip nftproxy cluster-ips { type ipv4_addr; }",
		}},
		{name: "base chain at another priority", nft: []string{
			"delete chain ip nftproxy nat-output",
			"add chain ip nftproxy nat-output { type nat hook output priority -99; policy accept; }",
		}},
		{name: "base chain with another policy", nft: []string{
			"delete chain ip nftproxy filter-output",
			"add chain ip nftproxy filter-output { type filter hook output priority -110; policy drop; }",
		}},
		{name: "extra base chain", nft: []string{"add chain ip nftproxy extra { type filter hook input priority 0; }"}},
		{name: "foreign chain", nft: []string{"add chain ip nftproxy my-debugging"}},
		{name: "dormant table", nft: []string{"add table ip nftproxy { flags dormant; }"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := topology.NewNetNS(t, "rd-incompat")
			be := kernelBackend(t, ns)
			if !tc.fresh {
				if err := be.Replace(want); err != nil {
					t.Fatal(err)
				}
			}
			for _, cmd := range tc.nft {
				ns.Run(t, "nft", cmd)
			}
			got, _, err := be.Read(model.IPv4, want)
			if !errors.Is(err, nft.ErrIncompatible) {
				t.Fatalf("read: %v, %v; want ErrIncompatible", got, err)
			}
			t.Logf("read: %v", err)
		})
	}
}

// TestReadShowsDrift checks that hand-made changes to the table show in what Read returns,
// and nothing else does.
func TestReadShowsDrift(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-drift")
	be := kernelBackend(t, ns)
	want := model.Build(scale.Services(20, 3), model.NodeConfig{Family: model.IPv4})
	if err := be.Replace(want); err != nil {
		t.Fatal(err)
	}
	expect := cloneRuleset(want)

	// One endpoint slot deleted.
	eps := expect.Set(model.MapServiceEndpoints)
	gone := eps.Elements[4]
	eps.Elements = slices.Delete(eps.Elements, 4, 5)
	ns.Run(t, "nft", fmt.Sprintf("delete element ip nftproxy %s { %s . %s . %d . %d }",
		model.MapServiceEndpoints, gone.Addr, gone.Proto, gone.Port, gone.Slot))
	// One element added to a verdict map, pointing where nftproxy's do.
	sips := expect.Set(model.MapServiceIPs)
	added := sips.Elements[0]
	added.Port = 81
	added.Comment = "by hand"
	sips.Elements = slices.SortedFunc(slices.Values(append(slices.Clone(sips.Elements), added)), model.CompareElements)
	ns.Run(t, "nft", fmt.Sprintf("add element ip nftproxy %s { %s . %s . %d comment %q : goto %s }",
		model.MapServiceIPs, added.Addr, added.Proto, added.Port, added.Comment, added.Verdict.Chain))
	// A rule appended to a chain, one inserted at the head of another.
	ns.Run(t, "nft", "add rule ip nftproxy services counter")
	services := expect.Chain(model.ChainServices)
	services.Rules = append(services.Rules, unrecognized)
	ns.Run(t, "nft", "insert rule ip nftproxy reject-chain ip saddr 192.0.2.1 drop")
	reject := expect.Chain(model.ChainReject)
	reject.Rules = append([]model.Rule{unrecognized}, reject.Rules...)
	// A rule nftproxy writes, but with another comment.
	ns.Run(t, "nft", `add rule ip nftproxy mark-for-masquerade meta mark set meta mark | 0x4000 comment "x"`)
	mark := expect.Chain(model.ChainMarkForMasquerade)
	mark.Rules = append(mark.Rules, unrecognized)
	// A stale endpoint-picking chain, with a rule nft writes as nftproxy does.
	ns.Run(t, "nft", "add chain ip nftproxy cluster-tcp-9")
	ns.Run(t, "nft", "add rule ip nftproxy cluster-tcp-9 jump mark-for-masquerade")
	expect.Chains = append(expect.Chains, &model.Chain{Name: "cluster-tcp-9", Rules: []model.Rule{unrecognized}})

	got, _, err := be.Read(model.IPv4, want)
	if err != nil {
		t.Fatal(err)
	}
	if w, g := model.Render(expect), model.Render(got); g != w {
		t.Errorf("read back:\n%s", scenario.LineDiff(w, g))
	}
	checkSameSets(t, expect, got)
	last := got.Chains[len(got.Chains)-1]
	if last.Name != "cluster-tcp-9" || last.Hook != nil {
		t.Errorf("last chain is %s (hook %v), want the stale cluster-tcp-9", last.Name, last.Hook)
	}
	for _, c := range got.Chains {
		for _, r := range c.Rules {
			if r.Comment == unrecognized.Comment && r.Exprs != nil {
				t.Errorf("chain %s: unrecognized rule with expressions", c.Name)
			}
		}
	}
}

// TestReadRecognizesRulesWrittenByNft checks that Read recognizes rules that nft writes from
// the text nftproxy's rules render as: both encode them the same way.
func TestReadRecognizesRulesWrittenByNft(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-nft")
	be := kernelBackend(t, ns)
	want := model.Build(scale.Services(3, 2), model.NodeConfig{Family: model.IPv4})
	if err := be.Replace(want); err != nil {
		t.Fatal(err)
	}
	expect := cloneRuleset(want)
	for _, name := range []string{model.ChainMarkForMasquerade, model.ChainMasquerading, model.ChainReject} {
		c := expect.Chain(name)
		for _, r := range slices.Clone(c.Rules) {
			ns.Run(t, "nft", "add rule ip nftproxy "+name+" "+model.RenderRule(model.IPv4, r))
			c.Rules = append(c.Rules, r)
		}
	}
	got, _, err := be.Read(model.IPv4, want)
	if err != nil {
		t.Fatal(err)
	}
	if w, g := model.Render(expect), model.Render(got); g != w {
		t.Errorf("read back:\n%s", scenario.LineDiff(w, g))
	}
	for _, c := range got.Chains {
		for _, r := range c.Rules {
			if r.Comment == unrecognized.Comment {
				t.Errorf("chain %s: a rule written by nft was not recognized", c.Name)
			}
		}
	}
}

// TestGenerationChanges checks that every commit changes the generation, and that Read reports
// the generation it read at.
func TestGenerationChanges(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-gen")
	be := kernelBackend(t, ns)
	g0, err := be.Generation()
	if err != nil {
		t.Fatal(err)
	}
	want := model.Build(nil, model.NodeConfig{Family: model.IPv4})
	if err := be.Replace(want); err != nil {
		t.Fatal(err)
	}
	g1, err := be.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if g1 == g0 {
		t.Errorf("generation %d did not change after a commit", g0)
	}
	_, g2, err := be.Read(model.IPv4, want)
	if err != nil || g2 != g1 {
		t.Errorf("read at generation %d (%v), want %d", g2, err, g1)
	}
	ns.Run(t, "nft", "add table ip other")
	g3, err := be.Generation()
	if err != nil || g3 == g1 {
		t.Errorf("generation %d (%v) did not change after nft committed", g3, err)
	}
}

// TestReadDuringCommits checks that Read never returns a table that mixes two generations:
// while another socket keeps replacing the table with one of two versions, every read must be
// exactly one of them.
func TestReadDuringCommits(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-race")
	be := kernelBackend(t, ns)
	cfg := model.NodeConfig{Family: model.IPv4}
	var svcA, svcB []model.Service
	for i := range 300 {
		svcA = append(svcA, scale.Service(i, 4, 0))
		svcB = append(svcB, scale.Service(i, 4, 1)) // other endpoint ports, same chains
	}
	a, b := model.Build(svcA, cfg), model.Build(svcB, cfg)
	renderA, renderB := model.Render(a), model.Render(b)
	if err := be.Replace(a); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		writer := kernelBackend(t, ns)
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			next := a
			if i%2 == 0 {
				next = b
			}
			if err := writer.Replace(next); err != nil {
				done <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	reads, changing := 0, 0
	for range 50 {
		got, _, err := be.Read(model.IPv4, a)
		if err != nil {
			// Read gives up when every attempt saw a commit; the writer commits often.
			if errors.Is(err, nft.ErrGenerationChanged) {
				changing++
				continue
			}
			t.Fatalf("read: %v", err)
		}
		if g := model.Render(got); g != renderA && g != renderB {
			t.Fatalf("read a table that is neither version:\n%s", scenario.LineDiff(renderA, g))
		}
		reads++
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("replace: %v", err)
	}
	t.Logf("%d consistent reads, %d reads gave up", reads, changing)
	if reads == 0 {
		t.Error("no read succeeded")
	}
}

// BenchmarkRead10k reads back the table of 10,000 Services with 10 endpoints each.
func BenchmarkRead10k(b *testing.B) {
	topology.RequirePrivileged(b)
	ns := topology.NewNetNS(b, "rd-bench")
	be := kernelBackend(b, ns)
	want := model.Build(scale.Services(10000, 10), model.NodeConfig{Family: model.IPv4})
	if err := be.Replace(want); err != nil {
		b.Fatal(err)
	}
	elems := 0
	for _, s := range want.Sets {
		elems += len(s.Elements)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		got, _, err := be.Read(model.IPv4, want)
		if err != nil || got == nil {
			b.Fatalf("read: %v", err)
		}
	}
	b.StopTimer()
	got, _, _ := be.Read(model.IPv4, want)
	if model.Render(got) != model.Render(want) {
		b.Fatal("read back differs from the table written")
	}
	b.ReportMetric(float64(elems), "elements")
	b.ReportMetric(float64(len(want.Chains)), "chains")
}

// cloneRuleset deep-copies the parts of a ruleset the tests change.
func cloneRuleset(rs *model.Ruleset) *model.Ruleset {
	out := &model.Ruleset{Family: rs.Family}
	for _, s := range rs.Sets {
		c := *s
		c.Elements = slices.Clone(s.Elements)
		out.Sets = append(out.Sets, &c)
	}
	for _, c := range rs.Chains {
		cc := *c
		cc.Rules = slices.Clone(c.Rules)
		out.Chains = append(out.Chains, &cc)
	}
	return out
}

// TestCommitsAfterRejectedBatches checks that the backend's long-lived socket survives
// rejected batches: a commit conditional on a stale generation and one the kernel refuses
// fail with their own errors and change nothing, and the next commit on the same backend
// applies.
func TestCommitsAfterRejectedBatches(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-reject")
	be := kernelBackend(t, ns)
	want := model.Build(scale.Services(2, 1), benchNode)
	if err := be.Replace(want); err != nil {
		t.Fatal(err)
	}
	var ips *model.Set
	for _, s := range want.Sets {
		if s.Name == model.MapServiceIPs {
			ips = s
		}
	}
	if ips == nil || len(ips.Elements) < 2 {
		t.Fatalf("the ruleset of 2 Services has no two service-ips elements")
	}
	gone := *ips
	gone.Elements = ips.Elements[:1]
	del := &nft.Transaction{Ops: []nft.Op{{Kind: nft.DeleteElements, Family: model.IPv4, Set: &gone}}}

	gen, err := be.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Apply(del, gen+1); !errors.Is(err, nft.ErrGenerationChanged) {
		t.Errorf("commit on a stale generation: %v, want %v", err, nft.ErrGenerationChanged)
	}
	missing := &nft.Transaction{Ops: []nft.Op{{Kind: nft.DeleteChain, Family: model.IPv4, Chain: &model.Chain{Name: "no-such-chain"}}}}
	if err := be.Apply(missing, 0); !errors.Is(err, unix.ENOENT) {
		t.Errorf("deleting a missing chain: %v, want ENOENT", err)
	}
	if got := ns.Run(t, "nft", "list", "table", "ip", "nftproxy"); got != model.Render(want) {
		t.Errorf("rejected batches changed the table:\n%s", scenario.LineDiff(model.Render(want), got))
	}

	if gen, err = be.Generation(); err != nil {
		t.Fatal(err)
	}
	if err := be.Apply(del, gen); err != nil {
		t.Fatalf("commit after rejected batches: %v", err)
	}
	ips.Elements = ips.Elements[1:]
	if got := ns.Run(t, "nft", "list", "table", "ip", "nftproxy"); got != model.Render(want) {
		t.Errorf("after the commit:\n%s", scenario.LineDiff(model.Render(want), got))
	}
}

// TestReadEndpointMapsByKey checks that the endpoint maps, which Read looks up by key
// rather than dumping when they are larger than DumpMax, read back as the kernel holds them
// whatever the desired table says: frontends with fewer desired slots than the kernel has
// (one with 40 more, found over several rounds of probes), frontends only the kernel has,
// frontends only the desired table has, other endpoints in the same slots, and no desired
// table at all; and that a map dumped because it was expected small is looked up by key once
// the dump passes twice DumpMax.
func TestReadEndpointMapsByKey(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-bykey")
	be := kernelBackend(t, ns)
	cfg := model.NodeConfig{Family: model.IPv4}
	var inKernel, desired []model.Service
	for i := range 200 {
		m := 1 + i%7
		if i == 7 {
			m = 42
		}
		if i < 150 {
			inKernel = append(inKernel, scale.Service(i, m, 0))
		}
		switch {
		case i < 50: // fewer desired slots (at least one)
			desired = append(desired, scale.Service(i, max(1, m/3), 0))
		case i < 100: // same slots, other endpoints
			desired = append(desired, scale.Service(i, m, 1))
		case i < 150: // only in the kernel
		default: // only desired
			desired = append(desired, scale.Service(i, m, 0))
		}
	}
	have := model.Build(inKernel, cfg)
	if err := be.Replace(have); err != nil {
		t.Fatal(err)
	}
	// An endpoint for a slot past the frontend's last (as an operator's nft command could
	// add) is found; one whose frontend no map names is not: no packet reaches it.
	ns.Run(t, "nft", "add element ip nftproxy service-endpoints { "+
		scale.ClusterIP(3).String()+" . tcp . 80 . 4 : 10.9.9.9 . 80 }")
	ns.Run(t, "nft", "add element ip nftproxy service-endpoints { 10.8.8.8 . tcp . 80 . 0 : 10.9.9.9 . 80 }")
	haveSet := have.Set("service-endpoints")
	haveSet.Elements = append(haveSet.Elements, model.Element{Addr: scale.ClusterIP(3), Proto: model.TCP,
		Port: 80, Slot: 4, Endpoint: netip.MustParseAddrPort("10.9.9.9:80")})
	slices.SortFunc(haveSet.Elements, model.CompareElements)

	// The dump (below DumpMax) also finds the element no frontend names.
	dumped := slices.Clone(haveSet.Elements)
	orphan := model.Element{Addr: netip.MustParseAddr("10.8.8.8"), Proto: model.TCP, Port: 80,
		Endpoint: netip.MustParseAddrPort("10.9.9.9:80")}
	dumped = append(dumped, orphan)
	slices.SortFunc(dumped, model.CompareElements)

	for _, tc := range []struct {
		name    string
		dumpMax int
		want    *model.Ruleset
		dumped  bool
	}{
		{"by key, desired table differs", -1, model.Build(desired, cfg), false},
		{"by key, no desired elements", -1, model.Skeleton(cfg), false},
		{"dumped", 0, model.Build(desired, cfg), true},
		{"dump past twice DumpMax, then by key", 100, model.Skeleton(cfg), false},
	} {
		be.DumpMax = tc.dumpMax
		got, _, err := be.Read(model.IPv4, tc.want)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, name := range []string{"service-endpoints", "nodeport-endpoints"} {
			want := have.Set(name)
			if tc.dumped && name == "service-endpoints" {
				want = &model.Set{Name: want.Name, Key: want.Key, Data: want.Data, Size: want.Size, Comment: want.Comment, Elements: dumped}
			}
			w, g := renderSet(want), renderSet(got.Set(name))
			if w != g {
				t.Errorf("%s: map %s read back:\n%s", tc.name, name, scenario.LineDiff(w, g))
			}
		}
	}
}

// TestReadWithPrefetch checks that a read that follows Prefetch returns the endpoint maps as
// the kernel holds them: the prefetched ones (all the frontends' slots, whatever the desired
// table) when nothing was committed in between, and freshly read ones when another socket
// replaced the table after the prefetch; and that PrefetchFound tells a restart (the table in
// place) from a first start.
func TestReadWithPrefetch(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-prefetch")
	be := kernelBackend(t, ns)
	cfg := model.NodeConfig{Family: model.IPv4}
	var svcA, svcB []model.Service
	for i := range 300 {
		svcA = append(svcA, scale.Service(i, 1+i%6, 0))
		svcB = append(svcB, scale.Service(i, 2, 1)) // other slots and endpoint ports
	}
	a, b := model.Build(svcA, cfg), model.Build(svcB, cfg)
	// Before the table exists, a prefetch finds nothing (a first start).
	be.Prefetch(model.IPv4)
	be.Prefetch(model.IPv6)
	if be.PrefetchFound() {
		t.Error("PrefetchFound without a table")
	}
	if err := be.Replace(a); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		commitAfter *model.Ruleset
		want, have  *model.Ruleset
	}{
		{"prefetched, desired alike", nil, a, a},
		{"prefetched, desired other", nil, b, a},
		{"another commit after the prefetch", b, b, b},
	} {
		be.Prefetch(model.IPv4)
		if !be.PrefetchFound() {
			t.Errorf("%s: PrefetchFound is false with the table in place (a restart)", tc.name)
		}
		if tc.commitAfter != nil {
			if err := kernelBackend(t, ns).Replace(tc.commitAfter); err != nil {
				t.Fatal(err)
			}
		}
		got, _, err := be.Read(model.IPv4, tc.want)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, name := range []string{"service-endpoints", "nodeport-endpoints"} {
			w, g := renderSet(tc.have.Set(name)), renderSet(got.Set(name))
			if w != g {
				t.Errorf("%s: map %s read back:\n%s", tc.name, name, scenario.LineDiff(w, g))
			}
		}
	}
}

// TestReadTableStartedOver checks that a read that sees another commit and starts over hands
// the endpoint maps' elements to Expected.Elements once: those of the attempt that counts.
// The syncer compares what it is handed with the desired elements, and takes an element
// handed twice for one more the kernel holds (a desired one missing, or a stale one deleted
// twice, which fails the commit).
func TestReadTableStartedOver(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "rd-again")
	be := kernelBackend(t, ns)
	cfg := model.NodeConfig{Family: model.IPv4}
	var svcs []model.Service
	for i := range 100 {
		svcs = append(svcs, scale.Service(i, 1+i%5, 0))
	}
	want := model.Build(svcs, cfg)
	if err := be.Replace(want); err != nil {
		t.Fatal(err)
	}
	maps := []string{"service-endpoints", "nodeport-endpoints"}
	for _, tc := range []struct {
		name    string
		dumpMax int
	}{{"looked up", -1}, {"dumped", 0}} {
		be.DumpMax = tc.dumpMax
		attempts := 0
		got := map[string]*model.Set{}
		for _, name := range maps {
			got[name] = &model.Set{Name: name, Key: want.Set(name).Key, Data: want.Set(name).Data, Size: want.Set(name).Size, Comment: want.Set(name).Comment}
		}
		rs, _, err := be.ReadTable(model.IPv4, want.Sets, func() nft.Expected {
			return nft.Expected{
				Chains: want.Chains,
				Keys: func(set string) (iter.Seq[model.Key], int) {
					if set == "service-endpoints" {
						attempts++
						if attempts == 1 {
							// Someone else's table, committed in the middle of the read.
							ns.Run(t, "nft", "add table ip someone-else")
						}
					}
					s := want.Set(set)
					return func(yield func(model.Key) bool) {
						for _, e := range s.Elements {
							if !yield(e.Key()) {
								return
							}
						}
					}, len(s.Elements)
				},
				Elements: func(set string, elems []model.Element) {
					got[set].Elements = append(got[set].Elements, elems...)
				},
			}
		})
		ns.Run(t, "nft", "delete table ip someone-else")
		if err != nil || rs == nil {
			t.Fatalf("%s: read: %v (table %v)", tc.name, err, rs != nil)
		}
		if attempts < 2 {
			t.Fatalf("%s: the read did not start over after the commit (%d attempts)", tc.name, attempts)
		}
		for _, name := range maps {
			slices.SortFunc(got[name].Elements, model.CompareElements)
			if w, g := renderSet(want.Set(name)), renderSet(got[name]); w != g {
				t.Errorf("%s: map %s handed over:\n%s", tc.name, name, scenario.LineDiff(w, g))
			}
		}
	}
}

// renderSet is the nft text of one set.
func renderSet(s *model.Set) string {
	return model.Render(&model.Ruleset{Family: model.IPv4, Sets: []*model.Set{s}})
}
