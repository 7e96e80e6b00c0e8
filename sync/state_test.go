package sync_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// TestRestartReadsOnlyWhatChanged restarts the syncer (a new one, on the kernel's table) at
// 5,000 Services x 20 endpoints, as a restarted daemon does: with nothing changed meanwhile
// it reads no endpoint back and writes nothing; with one Service's endpoints changed it reads
// only the slots of that Service's buckets and programs the change; when someone else changed
// the table (the generation moved past the sync-state set's) it reads every endpoint and
// repairs what they did.
func TestRestartReadsOnlyWhatChanged(t *testing.T) {
	const n, m = 5000, 20
	fake := nft.NewFake(1)
	first := scaleSyncer(fake, n, m)
	cold, err := first.Sync()
	if err != nil {
		t.Fatal(err)
	}
	all := scale.Services(n, m)
	want := model.Render(model.Build(all, scaleNode))
	if got := fake.Render(model.IPv4); got != want {
		t.Fatalf("the cold sync:\n%s", scenario.LineDiff(want, got))
	}
	total := cold.Elements[model.IPv4][model.MapServiceEndpoints] + cold.Elements[model.IPv4][model.MapNodePortEndpoints]

	restart := func(what string, services []model.Service) sync.SyncResult {
		t.Helper()
		s := sync.NewSyncer(fake, model.IPv4)
		s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: scaleNode})
		changes := map[model.ServiceName]*model.Service{}
		for i := range services {
			changes[services[i].Name] = &services[i]
		}
		s.Update(changes, time.Now())
		res, err := s.Sync()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got, want := fake.Render(model.IPv4), model.Render(model.Build(services, scaleNode)); got != want {
			t.Fatalf("%s: the table is not the desired one:\n%s", what, scenario.LineDiff(want, got))
		}
		return res
	}

	// Nothing changed.
	if res := restart("quiet restart", all); res.EndpointsRead != 0 || res.Objects != 0 {
		t.Errorf("a quiet restart read %d endpoints and wrote %d objects, want none", res.EndpointsRead, res.Objects)
	}

	// One Service's endpoints changed while nobody ran.
	changed := scale.Services(n, m)
	changed[1234].Ports[0].Endpoints[7].Addr = netip.MustParseAddr("10.200.0.7")
	res := restart("restart after a change", changed)
	if res.Objects == 0 {
		t.Errorf("the change was not written")
	}
	// The map has 32 buckets: the Service's ClusterIP and NodePort frontends fall in one of
	// each map.
	if res.EndpointsRead == 0 || res.EndpointsRead > total/16 {
		t.Errorf("a restart after one change read %d of %d endpoints, want those of two buckets", res.EndpointsRead, total)
	}
	if res := restart("second quiet restart", changed); res.EndpointsRead != 0 || res.Objects != 0 {
		t.Errorf("a restart after the restart that wrote the change read %d endpoints, wrote %d objects, want none", res.EndpointsRead, res.Objects)
	}

	// Someone else removes a slot: the generation moves on, everything is read.
	fake.Tamper(model.IPv4, func(rs *model.Ruleset) {
		s := rs.Set(model.MapServiceEndpoints)
		s.Elements = s.Elements[1:]
	})
	if res := restart("restart after tampering", changed); res.EndpointsRead != total-1 || res.Objects != 1 {
		t.Errorf("a restart after tampering read %d of %d endpoints and wrote %d objects, want all of them, 1", res.EndpointsRead, total-1, res.Objects)
	}
	if res := restart("quiet restart after the repair", changed); res.EndpointsRead != 0 {
		t.Errorf("the repair left a sync-state set that the next restart does not trust: %d endpoints read", res.EndpointsRead)
	}
}

// TestSyncStateWrittenInBothFamilies checks that a commit touching one family's table records
// its generation in the other's too: every commit moves the generation, and a restart trusts
// a table's sync-state set only at the generation it records.
func TestSyncStateWrittenInBothFamilies(t *testing.T) {
	fake := nft.NewFake(1)
	s := sync.NewSyncer(fake, model.IPv4, model.IPv6)
	nodes := map[model.Family]model.NodeConfig{model.IPv4: scaleNode, model.IPv6: {Family: model.IPv6, NodeName: scaleNode.NodeName}}
	s.SetNode(nodes)
	svc := scale.Service(1, 3, 0)
	s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, time.Now())
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	moved := scale.Service(1, 3, 0) // not svc: the syncer keeps it
	moved.Ports[0].Endpoints[0].Addr = netip.MustParseAddr("10.200.0.9")
	s.Update(map[model.ServiceName]*model.Service{moved.Name: &moved}, time.Now())
	res, err := s.Sync()
	if err != nil || res.Full || res.Objects == 0 || res.FamilyObjects[model.IPv6] != 0 {
		t.Fatalf("the change: full %v, objects %v, err %v; want a partial sync of IPv4 alone", res.Full, res.FamilyObjects, err)
	}
	gen, err := fake.Generation()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		st, err := model.ParseSyncState(fake.SyncState(fam))
		if err != nil || st.Generation != gen {
			t.Errorf("%s sync-state records generation %d (err %v), want the current %d", fam, st.Generation, err, gen)
		}
	}
	restarted := sync.NewSyncer(fake, model.IPv4, model.IPv6)
	restarted.SetNode(nodes)
	restarted.Update(map[model.ServiceName]*model.Service{moved.Name: &moved}, time.Now())
	if res, err := restarted.Sync(); err != nil || res.Objects != 0 || res.EndpointsRead != 0 {
		t.Errorf("restart: %d objects written, %d endpoints read (err %v), want none", res.Objects, res.EndpointsRead, err)
	}
}
