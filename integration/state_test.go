package integration

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/sync"
)

// TestRestartTrustsSyncState restarts the syncer on the kernel's table as a restarted daemon
// does (the endpoint maps prefetched, then a full sync), at 2,000 Services x 10 endpoints,
// every endpoint map looked up by key (DumpMax -1): with nothing changed it reads no endpoint
// back (the sync-state set records the generation and the maps' digests) and writes
// nothing; with one Service changed meanwhile, only the slots of that Service's buckets; when
// someone else deleted a slot with nft, every endpoint, and puts the slot back.
func TestRestartTrustsSyncState(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "syncstate")
	// 22,000 endpoints fill 8 buckets of service-endpoints' digest (2 of nodeport-endpoints').
	// With -short (the Linux 6.1 VM, whose emulated CPU takes minutes for this), 300
	// Services fill 2 of each: enough to see the kernel keep and return the set.
	shape, readShare := benchShape{2000, 10}, 0.35
	if testing.Short() {
		shape, readShare = benchShape{300, 10}, 0.75
	}
	services := shape.build()
	first := kernelBackend(t, ns)
	first.DumpMax = -1
	cold, err := newBenchSyncer(first, services).Sync()
	if err != nil {
		t.Fatal(err)
	}
	total := cold.Elements[model.IPv4][model.MapServiceEndpoints] + cold.Elements[model.IPv4][model.MapNodePortEndpoints]

	restart := func(what string, services map[model.ServiceName]*model.Service) sync.SyncResult {
		t.Helper()
		be := kernelBackend(t, ns)
		be.DumpMax = -1
		be.Prefetch(model.IPv4)
		res, err := newBenchSyncer(be, services).Sync()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: %d of %d endpoints read back, %d objects written", what, res.EndpointsRead, total, res.Objects)
		var list []model.Service
		for _, svc := range services {
			list = append(list, *svc)
		}
		want := model.Render(model.Build(list, benchNode))
		if got := withoutSyncState(ns.Run(t, "nft", "list", "table", "ip", "nftproxy")); got != want {
			t.Fatalf("%s: the kernel's table is not the desired one:\n%s", what, scenario.LineDiff(want, got))
		}
		return res
	}

	if res := restart("quiet restart", services); res.EndpointsRead != 0 || res.Objects != 0 {
		t.Errorf("a quiet restart read %d of %d endpoints back and wrote %d objects, want none", res.EndpointsRead, total, res.Objects)
	}

	changed := shape.build()
	svc := changed[scale.Name(123)]
	svc.Ports[0].Endpoints[3].Addr = netip.MustParseAddr("10.250.1.3")
	res := restart("restart after a change", changed)
	// One bucket of each map holds the Service's frontends.
	if res.Objects == 0 || res.EndpointsRead == 0 || float64(res.EndpointsRead) > readShare*float64(total) {
		t.Errorf("a restart after one change read %d of %d endpoints back and wrote %d objects; want those of a bucket of each map, and the change", res.EndpointsRead, total, res.Objects)
	}

	ns.Run(t, "nft", "delete", "element", "ip", "nftproxy", model.MapServiceEndpoints,
		fmt.Sprintf("{ %s . tcp . %d . 3 }", svc.ClusterIPs[0], svc.Ports[0].Port))
	if res := restart("restart after nft deleted a slot", changed); res.EndpointsRead != total-1 || res.Objects != 1 {
		t.Errorf("a restart after nft deleted a slot read %d of %d endpoints back and wrote %d objects; want all there are, and the slot", res.EndpointsRead, total-1, res.Objects)
	}
	if res := restart("quiet restart after the repair", changed); res.EndpointsRead != 0 || res.Objects != 0 {
		t.Errorf("a quiet restart after the repair read %d endpoints back and wrote %d objects, want none", res.EndpointsRead, res.Objects)
	}
}
