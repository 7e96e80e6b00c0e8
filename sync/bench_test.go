package sync_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// Benchmark sizes: Services with 10 endpoints each.
var benchSizes = []int{1000, 10000}

// heapMB returns the live heap after a collection, in MB.
func heapMB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / 1e6
}

// BenchmarkColdSync measures a first (full) sync of N Services x 10 endpoints into an empty
// Fake, and the heap it leaves (the Fake's own copy of the tables included).
func BenchmarkColdSync(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			var s *sync.Syncer
			for b.Loop() {
				s = newScaleSyncer(b, nft.NewFake(1), n, 10)
			}
			b.ReportMetric(heapMB(), "heap-MB")
			runtime.KeepAlive(s)
		})
	}
}

// BenchmarkOneEndpointChange measures a partial sync after one endpoint of one Service was
// replaced, with N Services x 10 endpoints in place, and reports the objects it writes.
func BenchmarkOneEndpointChange(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			fake := nft.NewFake(1)
			s := newScaleSyncer(b, fake, n, 10)
			i, objects := 0, 0
			for b.Loop() {
				svc := scale.Service(i%n, 10, 0)
				if i/n%2 == 0 {
					// The last endpoint moves to an address past all others, keeping its slot.
					svc.Ports[0].Endpoints[9].Addr = netip.MustParseAddr("10.255.255.254")
				}
				s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, time.Now())
				res, err := s.Sync()
				if err != nil {
					b.Fatal(err)
				}
				objects += res.Objects
				i++
			}
			b.ReportMetric(float64(objects)/float64(i), "objects/op")
		})
	}
}
