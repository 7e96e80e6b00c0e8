package sync_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// sizes returns the size of each endpoint map of fam's table in fake.
func sizes(t *testing.T, fake *nft.Fake, fam model.Family) map[string]uint32 {
	t.Helper()
	rs, _, err := fake.ReadTable(fam, nil, func() nft.Expected { return nft.Expected{} })
	if err != nil || rs == nil {
		t.Fatalf("read %s table: %v", fam, err)
	}
	out := map[string]uint32{}
	for _, s := range rs.Sets {
		if model.IsEndpointMap(s) {
			out[s.Name] = s.Size
		}
	}
	return out
}

// replacedSets returns the names of the sets that tx replaces, with their new sizes.
func replacedSets(tx *nft.Transaction) map[string]uint32 {
	out := map[string]uint32{}
	for _, op := range tx.Ops {
		if op.Kind == nft.ReplaceSet {
			out[op.Set.Name] = op.Set.Size
		}
	}
	return out
}

// TestEndpointMapsGrow checks the endpoint maps' sizes, which the kernel enforces (the Fake
// too): created to fit their elements, a map that the Services outgrow is created anew,
// larger, by the partial sync that adds them, with every endpoint (the rules that use it
// flushed before and written again after: the kernel deletes no map in use), and the other
// map is left alone; a map never shrinks; a restart adopts the grown table as it is.
func TestEndpointMapsGrow(t *testing.T) {
	fake := nft.NewFake(1)
	// 100 Services x 100 endpoints, every tenth a NodePort: 10,000 and 1,000 slots.
	s := newScaleSyncer(t, fake, 100, 100)
	least := model.EndpointMapMinSize
	if got := sizes(t, fake, model.IPv4); got[model.MapServiceEndpoints] != least || got[model.MapNodePortEndpoints] != least {
		t.Fatalf("first sync: endpoint map sizes %v, want %d", got, least)
	}
	// 100 more: 20,000 slots do not fit in 16,384.
	more := map[model.ServiceName]*model.Service{}
	all := scale.Services(100, 100)
	for i := 100; i < 200; i++ {
		svc := scale.Service(i, 100, 0)
		more[svc.Name] = &svc
		all = append(all, svc)
	}
	s.Update(more, time.Now())
	res, err := s.Sync()
	if err != nil {
		t.Fatal(err)
	}
	grown := model.EndpointMapSize(20000)
	if res.Full || grown <= least {
		t.Fatalf("the sync that outgrew the map was full (%v), or the size %d is not larger", res.Full, grown)
	}
	if got := replacedSets(fake.Last); len(got) != 1 || got[model.MapServiceEndpoints] != grown {
		t.Errorf("replaced sets %v, want only %s at size %d", got, model.MapServiceEndpoints, grown)
	}
	want := model.Render(model.Build(all, scaleNode))
	if got := fake.Render(model.IPv4); got != want {
		t.Errorf("after growing, the table is not the desired one:\n%s", scenario.LineDiff(want, got))
	}

	// One endpoint changed: no map is replaced any more.
	svc := scale.Service(150, 100, 0)
	svc.Ports[0].Endpoints[99].Addr = netip.MustParseAddr("10.200.0.1")
	s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, time.Now())
	if res, err := s.Sync(); err != nil || res.Objects > 6 || len(replacedSets(fake.Last)) > 0 {
		t.Errorf("a change after growing: %d objects, replaced %v (err %v):\n%s", res.Objects, replacedSets(fake.Last), err, fake.Last)
	}

	// Back to 50 Services: the map keeps its size.
	gone := map[model.ServiceName]*model.Service{}
	for i := 50; i < 200; i++ {
		gone[scale.Name(i)] = nil
	}
	s.Update(gone, time.Now())
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := sizes(t, fake, model.IPv4); got[model.MapServiceEndpoints] != grown || len(replacedSets(fake.Last)) > 0 {
		t.Errorf("after shrinking: sizes %v, replaced %v; want %s kept at %d", got, replacedSets(fake.Last), model.MapServiceEndpoints, grown)
	}
	if got, want := fake.Render(model.IPv4), model.Render(s.Committed(model.IPv4)); got != want {
		t.Errorf("kernel and syncer disagree:\n%s", scenario.LineDiff(want, got))
	}

	// A restart adopts the table, sizes and all.
	restarted := scaleSyncer(fake, 50, 100)
	if res, err := restarted.Sync(); err != nil || res.Objects != 0 {
		t.Errorf("restart over grown maps wrote %d objects (err %v):\n%s", res.Objects, err, fake.Last)
	}
}

// TestAdoptionSizesUnsizedMaps checks a restart over the table of an earlier nftproxy, whose
// endpoint maps had no size (the kernel's resizable hash): the first full sync creates them
// anew, sized, with the same elements, and the next full sync finds nothing to change.
func TestAdoptionSizesUnsizedMaps(t *testing.T) {
	fake := nft.NewFake(1)
	newScaleSyncer(t, fake, 20, 3)
	fake.Tamper(model.IPv4, func(rs *model.Ruleset) {
		for _, s := range rs.Sets {
			if model.IsEndpointMap(s) {
				s.Size = 0
			}
		}
	})
	restarted := scaleSyncer(fake, 20, 3)
	if _, err := restarted.Sync(); err != nil {
		t.Fatal(err)
	}
	least := model.EndpointMapMinSize
	if got := replacedSets(fake.Last); len(got) != 2 || got[model.MapServiceEndpoints] != least || got[model.MapNodePortEndpoints] != least {
		t.Errorf("replaced sets %v, want both endpoint maps at %d", got, least)
	}
	if got, want := fake.Render(model.IPv4), model.Render(model.Build(scale.Services(20, 3), scaleNode)); got != want {
		t.Errorf("after adoption, the table is not the desired one:\n%s", scenario.LineDiff(want, got))
	}
	restarted.RequestFull()
	if res, err := restarted.Sync(); err != nil || res.Objects != 0 {
		t.Errorf("the next full sync wrote %d objects (err %v), want none", res.Objects, err)
	}
}

// dualService returns a dual-stack NodePort Service i with m endpoints in each family.
func dualService(i, m int) model.Service {
	svc := model.Service{Name: scale.Name(i), Type: model.NodePort, ClusterIPs: []netip.Addr{
		netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}),
		netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x96, 14: byte(i >> 8), 15: byte(i)}),
	}}
	port := model.ServicePort{Name: "http", Protocol: model.TCP, Port: 80, NodePort: uint16(30000 + i)}
	for j := range m {
		port.Endpoints = append(port.Endpoints,
			model.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 200 + byte(i>>8), byte(i), byte(j)}), Port: 8080, Ready: true, Serving: true},
			model.Endpoint{Addr: netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x24, 12: byte(i >> 8), 13: byte(i), 15: byte(j)}), Port: 8080, Ready: true, Serving: true})
	}
	svc.Ports = []model.ServicePort{port}
	return svc
}

// TestEndpointMapsGrowDualStack checks growth in both families and both maps at once, in a
// sync that also adds picking chains, through commits that fail half the time (the retries
// are full syncs, which find the maps too small in the kernel's read-back): the tables end
// as model.Build has them, and a full sync after finds nothing to change.
func TestEndpointMapsGrowDualStack(t *testing.T) {
	fake := nft.NewFake(7)
	nodes := map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4}, model.IPv6: {Family: model.IPv6}}
	s := sync.NewSyncer(fake, families...)
	s.SetNode(nodes)
	var all []model.Service
	changes := map[model.ServiceName]*model.Service{}
	for i := range 100 {
		svc := dualService(i, 100)
		all = append(all, svc)
		changes[svc.Name] = &svc
	}
	s.Update(changes, time.Now())
	syncUntilDone(t, s)
	// 100 more, of 101 endpoints (a picking chain of its own): 20,100 slots in each map.
	changes = map[model.ServiceName]*model.Service{}
	for i := 100; i < 200; i++ {
		svc := dualService(i, 101)
		all = append(all, svc)
		changes[svc.Name] = &svc
	}
	fake.SetFailRate(0.5)
	s.Update(changes, time.Now())
	syncUntilDone(t, s)
	fake.SetFailRate(0)
	grown := model.EndpointMapSize(20100)
	for _, fam := range families {
		if got := sizes(t, fake, fam); got[model.MapServiceEndpoints] != grown || got[model.MapNodePortEndpoints] != grown {
			t.Errorf("%s: endpoint map sizes %v, want both %d", fam, got, grown)
		}
		want := model.Render(model.Build(all, nodes[fam]))
		if got := fake.Render(fam); got != want {
			t.Errorf("%s table after growing:\n%s", fam, scenario.LineDiff(want, got))
		}
	}
	s.RequestFull()
	if res, err := s.Sync(); err != nil || res.Objects != 0 {
		t.Errorf("a full sync after growing wrote %d objects (err %v)", res.Objects, err)
	}
}

// TestEndpointMapGrowsAsItsChainGoes checks growth in a sync that also flushes a picking
// chain that uses the map (no Service has 100 endpoints any more): the chain is flushed
// before the map is replaced and not written again, and the next sync deletes it.
func TestEndpointMapGrowsAsItsChainGoes(t *testing.T) {
	fake := nft.NewFake(1)
	s := newScaleSyncer(t, fake, 100, 100)
	changes := map[model.ServiceName]*model.Service{}
	var all []model.Service
	for i := range 200 {
		svc := scale.Service(i, 101, 0)
		all = append(all, svc)
		changes[svc.Name] = &svc
	}
	s.Update(changes, time.Now())
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := replacedSets(fake.Last); got[model.MapServiceEndpoints] == 0 {
		t.Fatalf("the sync to 20,200 slots replaced %v, want %s", got, model.MapServiceEndpoints)
	}
	if !strings.Contains(fake.Render(model.IPv4), "chain cluster-tcp-100 {\n\t}") {
		t.Errorf("the unused chain cluster-tcp-100 is not left empty:\n%s", fake.Last)
	}
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, want := fake.Render(model.IPv4), model.Render(model.Build(all, scaleNode)); got != want {
		t.Errorf("the table after the next sync:\n%s", scenario.LineDiff(want, got))
	}
}
