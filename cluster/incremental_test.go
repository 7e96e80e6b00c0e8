package cluster

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/nftproxy/nftproxy/model"
)

// The random cluster of this file: Services svc-0 to svc-11 in namespaces a and b; slices
// named <service>-<n> whose service-name label is usually their Service's, sometimes
// another's or none; ClusterIPs in 10.96.0.0/16 and fd00:96::/64, endpoints in 10.244.0.0/24
// and fd00:244::/64. Some objects are bad (an unknown protocol, an address that does not
// parse) or ignored (headless, ExternalName, another proxy's).

// randomCluster makes random objects and applies them to informer-style indexers, calling the
// event handlers the way an informer does.
type randomCluster struct {
	rng                     *rand.Rand
	services, slices, nodes cache.Indexer
	handlers                eventHandlers
}

func newRandomCluster(seed uint64, t *tracker) *randomCluster {
	return &randomCluster{
		rng:      rand.New(rand.NewPCG(seed, seed)),
		services: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		slices:   cache.NewIndexer(cache.MetaNamespaceKeyFunc, sliceIndexers),
		nodes:    cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		handlers: eventHandlers{t: t, after: func() {}},
	}
}

func (r *randomCluster) store() informerStore {
	return informerStore{services: r.services, slices: r.slices, nodes: r.nodes}
}

func (r *randomCluster) serviceName() (ns, name string) {
	return []string{"a", "b"}[r.rng.IntN(2)], fmt.Sprintf("svc-%d", r.rng.IntN(12))
}

func (r *randomCluster) service() *corev1.Service {
	ns, name := r.serviceName()
	i := r.rng.IntN(250)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: fmt.Sprintf("10.96.0.%d", i), ClusterIPs: []string{fmt.Sprintf("10.96.0.%d", i)},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
	switch r.rng.IntN(12) {
	case 0:
		svc.Spec.Ports[0].Protocol = "ICMP" // bad
	case 1:
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone} // headless
	case 2:
		svc.Labels = map[string]string{LabelServiceProxyName: "other"} // another proxy's
	case 3:
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, fmt.Sprintf("fd00:96::%x", i))
	case 4:
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
	case 5:
		svc.Spec.Type, svc.Spec.Ports[0].NodePort = corev1.ServiceTypeNodePort, int32(30000+i)
	}
	return svc
}

func (r *randomCluster) slice() *discoveryv1.EndpointSlice {
	ns, svc := r.serviceName()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", svc, r.rng.IntN(3)), Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	switch r.rng.IntN(10) {
	case 0: // moved to another Service
		_, other := r.serviceName()
		es.Labels[discoveryv1.LabelServiceName] = other
	case 1:
		es.Labels = nil
	case 2, 3:
		es.AddressType = discoveryv1.AddressTypeIPv6
	}
	for _, name := range []string{"http", "dns"}[:1+r.rng.IntN(2)] {
		port := int32(8000 + r.rng.IntN(3))
		proto := corev1.ProtocolTCP
		if name == "dns" {
			proto = corev1.ProtocolUDP
		}
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
	for range r.rng.IntN(5) {
		addr := fmt.Sprintf("10.244.0.%d", r.rng.IntN(8)) // few, so slices share endpoints
		if es.AddressType == discoveryv1.AddressTypeIPv6 {
			addr = fmt.Sprintf("fd00:244::%x", r.rng.IntN(8))
		}
		if r.rng.IntN(20) == 0 {
			addr = "not-an-ip" // bad
		}
		ready, node := r.rng.IntN(4) != 0, fmt.Sprintf("node%d", r.rng.IntN(2))
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return es
}

// set adds or replaces obj in idx and calls the add or update handler; with same it replaces
// the object by a copy with equal content, as a resync or a no-op update does.
func (r *randomCluster) set(idx cache.Indexer, h cache.ResourceEventHandler, obj any) {
	old, ok, err := idx.Get(obj)
	if err != nil {
		panic(err)
	}
	if err := idx.Update(obj); err != nil {
		panic(err)
	}
	if ok {
		h.OnUpdate(old, obj)
	} else {
		h.OnAdd(obj, false)
	}
}

// remove deletes a random object of idx and calls the delete handler, sometimes with the
// tombstone an informer hands over when it missed the deletion.
func (r *randomCluster) remove(idx cache.Indexer, h cache.ResourceEventHandler) {
	keys := idx.ListKeys()
	if len(keys) == 0 {
		return
	}
	slices.Sort(keys)
	key := keys[r.rng.IntN(len(keys))]
	obj, _, _ := idx.GetByKey(key)
	if err := idx.Delete(obj); err != nil {
		panic(err)
	}
	if r.rng.IntN(3) == 0 {
		obj = cache.DeletedFinalStateUnknown{Key: key, Obj: obj}
	}
	h.OnDelete(obj)
}

// copyOf returns a copy of a random object of idx, to update with equal content or a change.
func (r *randomCluster) copyOf(idx cache.Indexer) any {
	keys := idx.ListKeys()
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	obj, _, _ := idx.GetByKey(keys[r.rng.IntN(len(keys))])
	switch o := obj.(type) {
	case *corev1.Service:
		return o.DeepCopy()
	case *discoveryv1.EndpointSlice:
		return o.DeepCopy()
	}
	return nil
}

// step applies one random change.
func (r *randomCluster) step() {
	switch n := r.rng.IntN(10); {
	case n < 2:
		r.set(r.services, r.handlers.services(), r.service())
	case n < 5:
		r.set(r.slices, r.handlers.slices(), r.slice())
	case n == 5:
		r.remove(r.services, r.handlers.services())
	case n == 6:
		r.remove(r.slices, r.handlers.slices())
	case n == 7:
		// The same content in a new object: no change to hand over.
		if obj := r.copyOf(r.slices); obj != nil {
			r.set(r.slices, r.handlers.slices(), obj)
		}
	case n == 8:
		// One endpoint changes its readiness.
		if es, ok := r.copyOf(r.slices).(*discoveryv1.EndpointSlice); ok && len(es.Endpoints) > 0 {
			c := &es.Endpoints[0].Conditions
			ready := c.Ready == nil || !*c.Ready
			c.Ready = &ready
			r.set(r.slices, r.handlers.slices(), es)
		}
	default:
		if svc, ok := r.copyOf(r.services).(*corev1.Service); ok {
			svc.Spec.Ports[0].Port = int32(80 + r.rng.IntN(3))
			r.set(r.services, r.handlers.services(), svc)
		}
	}
}

// copyObjects deep-copies every object, as a ManifestSource reading its files again does.
func copyObjects(o Objects) Objects {
	var out Objects
	for _, s := range o.Services {
		out.Services = append(out.Services, s.DeepCopy())
	}
	for _, es := range o.EndpointSlices {
		out.EndpointSlices = append(out.EndpointSlices, es.DeepCopy())
	}
	return out
}

// TestIncrementalEqualsFull applies thousands of random adds, updates and deletes of Services
// and EndpointSlices through the informer event handlers, and after every few of them checks
// that the Services handed over so far (a syncer's state: each change applied, nil deleting)
// equal a full conversion of the same objects, and so do the bad objects; that no Service is
// handed over unchanged; and that the same holds for the Deltas a ManifestSource computes by
// diffing its readings. The options change now and then, which converts everything again.
func TestIncrementalEqualsFull(t *testing.T) {
	const steps = 4000
	var tr tracker
	r := newRandomCluster(16, &tr)
	kube, manifest := &Converter{}, &Converter{}
	kubeState := map[model.ServiceName]*model.Service{}
	manifestState := map[model.ServiceName]*model.Service{}
	var lastSnap *Snapshot
	var pending Delta // Deltas sometimes fold before a conversion, as in the proxy

	apply := func(what string, step int, state map[model.ServiceName]*model.Service, changes map[model.ServiceName]*model.Service) {
		t.Helper()
		for name, svc := range changes {
			if reflect.DeepEqual(state[name], svc) {
				t.Errorf("step %d, %s: %s handed over without a change", step, what, name)
			}
			if svc == nil {
				delete(state, name)
			} else {
				state[name] = svc
			}
		}
	}
	check := func(what string, step int, state map[model.ServiceName]*model.Service, c *Converter, want []model.Service, wantBad []BadObject) {
		t.Helper()
		got := make([]model.Service, 0, len(state))
		for _, svc := range state {
			got = append(got, *svc)
		}
		slices.SortFunc(got, func(a, b model.Service) int {
			return strings.Compare(a.Name.Namespace+"/"+a.Name.Name, b.Name.Namespace+"/"+b.Name.Name)
		})
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d, %s: the Services handed over differ from a full conversion:\n%s", step, what, serviceDiff(got, want))
		}
		if gotBad := c.Bad(); !reflect.DeepEqual(badStrings(gotBad), badStrings(wantBad)) {
			t.Fatalf("step %d, %s: bad objects\n%q\nwant\n%q", step, what, badStrings(gotBad), badStrings(wantBad))
		}
	}

	opts := ConvertOptions{}
	for step := range steps {
		r.step()
		if r.rng.IntN(4) != 0 {
			continue
		}
		if r.rng.IntN(100) == 0 {
			opts.ServiceProxyName = map[string]string{"": "other", "other": ""}[opts.ServiceProxyName]
		}
		names, _, _ := tr.take()
		d := Delta{Store: r.store(), Services: names, Full: step < 4}
		pending.Merge(d)
		if r.rng.IntN(3) == 0 {
			continue // folded into the next conversion
		}
		kube.Options, manifest.Options = opts, opts
		apply("informers", step, kubeState, kube.Update(pending))
		pending = Delta{}

		objs := r.store().Objects()
		want, wantBad := Convert(objs, opts)
		check("informers", step, kubeState, kube, want, wantBad)

		snap := NewSnapshot(copyObjects(objs))
		md := Delta{Store: snap, Full: true}
		if lastSnap != nil {
			md = snap.Diff(lastSnap)
		}
		lastSnap = snap
		apply("manifests", step, manifestState, manifest.Update(md))
		check("manifests", step, manifestState, manifest, want, wantBad)
	}
	if len(kubeState) < 5 {
		t.Errorf("the random cluster ended with %d Services; the test checks too little", len(kubeState))
	}
}

func badStrings(bad []BadObject) []string {
	out := make([]string, 0, len(bad))
	for _, b := range bad {
		out = append(out, b.String())
	}
	slices.Sort(out)
	return out
}

// serviceDiff names the Services that differ between got and want.
func serviceDiff(got, want []model.Service) string {
	index := func(l []model.Service) map[model.ServiceName]model.Service {
		m := map[model.ServiceName]model.Service{}
		for _, s := range l {
			m[s.Name] = s
		}
		return m
	}
	g, w := index(got), index(want)
	var b strings.Builder
	for name, ws := range w {
		if gs, ok := g[name]; !ok {
			fmt.Fprintf(&b, "- %s missing\n", name)
		} else if !reflect.DeepEqual(gs, ws) {
			fmt.Fprintf(&b, "- %s\n  got  %+v\n  want %+v\n", name, gs, ws)
		}
	}
	for name := range g {
		if _, ok := w[name]; !ok {
			fmt.Fprintf(&b, "- %s not in the full conversion\n", name)
		}
	}
	return b.String()
}
