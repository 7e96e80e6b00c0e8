package integration

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// Kernel benchmarks of the syncer: N Services x M endpoints (every tenth a NodePort, see
// internal/scale) programmed into a fresh network namespace. `make bench` runs them. The
// largest shape holds a million endpoints (1,100,000 elements in the endpoint maps).
var kernelBenchShapes = []benchShape{{1000, 10}, {10000, 10}, {10000, 100}}

// benchShape is a number of Services and of endpoints per Service.
type benchShape struct{ services, endpoints int }

func (sh benchShape) String() string {
	return fmt.Sprintf("services=%d/endpoints=%d", sh.services, sh.endpoints)
}

func (sh benchShape) build() map[model.ServiceName]*model.Service {
	out := make(map[model.ServiceName]*model.Service, sh.services)
	for i := range sh.services {
		svc := scale.Service(i, sh.endpoints, 0)
		out[svc.Name] = &svc
	}
	return out
}

// benchServices returns n Services of 10 endpoints.
func benchServices(n int) map[model.ServiceName]*model.Service {
	return benchShape{n, 10}.build()
}

// benchNode is the node the benchmarks run as: node 0 of internal/scale's 100.
var benchNode = model.NodeConfig{Family: model.IPv4, NodeName: scale.NodeName(0),
	ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.128.0.0/9")}}

func newBenchSyncer(be nft.Backend, services map[model.ServiceName]*model.Service) *sync.Syncer {
	s := sync.NewSyncer(be, model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: benchNode})
	s.Update(services, time.Now())
	return s
}

func liveHeapMB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / 1e6
}

// BenchmarkKernelColdSync measures the first sync into an empty namespace, from the
// Services to the committed transaction, and the heap the syncer keeps afterwards.
func BenchmarkKernelColdSync(b *testing.B) {
	topology.RequirePrivileged(b)
	for _, sh := range kernelBenchShapes {
		b.Run(sh.String(), func(b *testing.B) {
			services := sh.build()
			var s *sync.Syncer
			objects := 0
			for b.Loop() {
				b.StopTimer()
				ns := topology.NewNetNS(b, "bench")
				runtime.GC()
				b.StartTimer()
				s = newBenchSyncer(kernelBackend(b, ns), services)
				res, err := s.Sync()
				if err != nil {
					b.Fatal(err)
				}
				objects = res.Objects
			}
			b.ReportMetric(float64(objects), "objects")
			b.ReportMetric(liveHeapMB(), "heap-MB")
			runtime.KeepAlive(s)
		})
	}
}

// BenchmarkKernelRestart measures a restarted daemon adopting tables that are already up to
// date, and writing nothing: quiet, nothing committed since its last commit, it trusts the
// table's sync-state set and reads no endpoint back; generation-moved, someone else
// committed meanwhile (another table, created or deleted before each restart, untimed), so it
// reads every endpoint back and compares.
func BenchmarkKernelRestart(b *testing.B) {
	topology.RequirePrivileged(b)
	for _, sh := range kernelBenchShapes {
		for _, moved := range []bool{false, true} {
			name := sh.String() + "/quiet"
			if moved {
				name = sh.String() + "/generation-moved"
			}
			b.Run(name, func(b *testing.B) {
				services := sh.build()
				ns := topology.NewNetNS(b, "bench")
				be := kernelBackend(b, ns)
				if _, err := newBenchSyncer(be, services).Sync(); err != nil {
					b.Fatal(err)
				}
				objects, read, i := 0, 0, 0
				for b.Loop() {
					if moved {
						b.StopTimer()
						ns.Run(b, "nft", map[bool]string{true: "add", false: "delete"}[i%2 == 0], "table", "ip", "other")
						b.StartTimer()
					}
					res, err := newBenchSyncer(be, services).Sync()
					if err != nil {
						b.Fatal(err)
					}
					objects += res.Objects
					read += res.EndpointsRead
					i++
				}
				b.ReportMetric(float64(objects)/float64(i), "objects/op")
				b.ReportMetric(float64(read)/float64(i), "endpoints-read/op")
			})
		}
	}
}

// BenchmarkKernelOneEndpointChange measures partial syncs that each replace one endpoint of
// one Service (the last one, by a new address that keeps its slot), with N Services in place.
func BenchmarkKernelOneEndpointChange(b *testing.B) {
	topology.RequirePrivileged(b)
	for _, sh := range kernelBenchShapes {
		b.Run(sh.String(), func(b *testing.B) {
			n := sh.services
			ns := topology.NewNetNS(b, "bench")
			s := newBenchSyncer(kernelBackend(b, ns), sh.build())
			if _, err := s.Sync(); err != nil {
				b.Fatal(err)
			}
			i, objects := 0, 0
			for b.Loop() {
				svc := scale.Service(i%n, sh.endpoints, 0)
				if i/n%2 == 0 {
					svc.Ports[0].Endpoints[sh.endpoints-1].Addr = netip.MustParseAddr("10.255.255.254")
				}
				s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, time.Now())
				res, err := s.Sync()
				if err != nil {
					b.Fatal(err)
				}
				if res.Full {
					b.Fatal("a one-endpoint change caused a full sync")
				}
				objects += res.Objects
				i++
			}
			b.ReportMetric(float64(objects)/float64(i), "objects/op")
		})
	}
}

// TestAdoptIncompatibleTable checks that a table nftproxy did not write in its current layout
// (here: a service-ips set of another type, as an old version might have left) is replaced
// whole, in one transaction, by the first sync.
func TestAdoptIncompatibleTable(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "incompat")
	ns.Run(t, "nft", "add table ip nftproxy")
	ns.Run(t, "nft", "add set ip nftproxy service-ips { type ipv4_addr; }")
	ns.Run(t, "nft", "add chain ip nftproxy leftover")
	services := benchServices(3)
	s := newBenchSyncer(kernelBackend(t, ns), services)
	res, err := s.Sync()
	if err != nil {
		t.Fatalf("sync over an incompatible table: %v", err)
	}
	if !res.Full {
		t.Errorf("the first sync was not a full one")
	}
	var list []model.Service
	for _, svc := range services {
		list = append(list, *svc)
	}
	want := model.Render(model.Build(list, benchNode))
	if got := withoutSyncState(ns.Run(t, "nft", "list", "table", "ip", "nftproxy")); got != want {
		t.Errorf("the incompatible table was not replaced:\n%s", scenario.LineDiff(want, got))
	}
}
