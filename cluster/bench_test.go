package cluster

import (
	"fmt"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/nftproxy/nftproxy/model"
)

// benchCluster is services Services of one port, each with one EndpointSlice of endpoints
// ready endpoints, in informer indexers, and a second version of every slice whose first
// endpoint has another address: an endpoint change is swapping a slice for its other version.
type benchCluster struct {
	services, slices, nodes cache.Indexer
	versions                [][2]*discoveryv1.EndpointSlice
	current                 []int
}

func newBenchCluster(b *testing.B, services, endpoints int) *benchCluster {
	bc := &benchCluster{
		services: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		slices:   cache.NewIndexer(cache.MetaNamespaceKeyFunc, sliceIndexers),
		nodes:    cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
	}
	ready, portName, port := true, "http", int32(8080)
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
		}
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
		}
		for j := range endpoints {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.244.%d.%d", i%250, j+1)},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		}
		other := es.DeepCopy()
		other.Endpoints[0].Addresses = []string{fmt.Sprintf("10.127.%d.%d", i/250, i%250+1)}
		if err := bc.services.Add(svc); err != nil {
			b.Fatal(err)
		}
		if err := bc.slices.Add(es); err != nil {
			b.Fatal(err)
		}
		bc.versions = append(bc.versions, [2]*discoveryv1.EndpointSlice{es, other})
		bc.current = append(bc.current, 0)
	}
	return bc
}

// change swaps the slice of Service i for its other version in the cache, as an informer
// does, and returns the old and the new slice.
func (bc *benchCluster) change(b *testing.B, i int) (old, now *discoveryv1.EndpointSlice) {
	old = bc.versions[i][bc.current[i]]
	bc.current[i] ^= 1
	now = bc.versions[i][bc.current[i]]
	if err := bc.slices.Update(now); err != nil {
		b.Fatal(err)
	}
	return old, now
}

// BenchmarkEndpointChange measures one endpoint change from the informer event to the changed
// Services handed to the syncer: the slice replaced in the informer's cache, the event
// handler recording its Service, the Delta taken, and the Converter converting that Service
// again. Its cost must not grow with the number of Services that did not change:
//
//	go test -run '^$' -bench EndpointChange -benchmem ./cluster/
func BenchmarkEndpointChange(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			bc := newBenchCluster(b, n, 10)
			var t tracker
			h := eventHandlers{t: &t, after: func() {}}.slices()
			store := informerStore{services: bc.services, slices: bc.slices, nodes: bc.nodes}
			var c Converter
			if ch := c.Update(Delta{Store: store, Full: true}); len(ch) != n {
				b.Fatalf("first conversion: %d Services, want %d", len(ch), n)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i = (i + 7919) % n // a different Service each time, in no order
				old, now := bc.change(b, i)
				h.OnUpdate(old, now)
				d := Delta{Store: store}
				d.Services, d.Node, d.Events = t.take()
				if ch := c.Update(d); len(ch) != 1 || ch[model.ServiceName{Namespace: "default", Name: fmt.Sprintf("svc-%d", i)}] == nil {
					b.Fatalf("changes %v, want svc-%d's", ch, i)
				}
			}
		})
	}
}

// BenchmarkFullConversion measures a proxy's first conversion: every Service of the informer
// caches, as the Full Delta after the caches have synced asks for. It reports the heap the
// Converter keeps afterwards (retained-B), what the daemon holds until the next change:
//
//	go test -run '^$' -bench FullConversion -benchmem ./cluster/
func BenchmarkFullConversion(b *testing.B) {
	bc := newBenchCluster(b, 10_000, 10)
	store := informerStore{services: bc.services, slices: bc.slices, nodes: bc.nodes}
	b.ReportAllocs()
	var retained uint64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var c Converter
		if ch := c.Update(Delta{Store: store, Full: true}); len(ch) != 10_000 {
			b.Fatalf("%d Services converted, want 10000", len(ch))
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		retained = after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(&c)
		b.StartTimer()
	}
	b.ReportMetric(float64(retained), "retained-B")
}
