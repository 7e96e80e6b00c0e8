package cluster

import (
	gosync "sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/nftproxy/nftproxy/model"
)

// indexServiceName is the name of the EndpointSlice informer's index by Service: the slice's
// namespace and kubernetes.io/service-name label, as "namespace/name".
const indexServiceName = "service-name"

// sliceIndexers index EndpointSlices by the Service they belong to, so that a Service's slices
// are found without walking every slice.
var sliceIndexers = cache.Indexers{indexServiceName: func(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name, ok := sliceService(es)
	if !ok {
		return nil, nil
	}
	return []string{name.Namespace + "/" + name.Name}, nil
}}

// informerStore is the Store over the informers' caches: a Service by key, its slices through
// the slice index, and the Node objects.
type informerStore struct {
	services, slices, nodes cache.Indexer
}

var _ Store = informerStore{}

// Service returns the cached Service named name, nil when there is none.
func (s informerStore) Service(name model.ServiceName) *corev1.Service {
	obj, ok, err := s.services.GetByKey(name.Namespace + "/" + name.Name)
	if err != nil || !ok {
		return nil
	}
	svc, _ := obj.(*corev1.Service)
	return svc
}

// EndpointSlices returns the cached slices of name's Service, looked up in the index.
func (s informerStore) EndpointSlices(name model.ServiceName) []*discoveryv1.EndpointSlice {
	objs, err := s.slices.ByIndex(indexServiceName, name.Namespace+"/"+name.Name)
	if err != nil {
		return nil
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, es)
		}
	}
	return out
}

// Nodes returns the cached Node objects.
func (s informerStore) Nodes() []*corev1.Node { return listOf[*corev1.Node](s.nodes) }

// Objects lists every cached object.
func (s informerStore) Objects() Objects {
	return Objects{
		Services:       listOf[*corev1.Service](s.services),
		EndpointSlices: listOf[*discoveryv1.EndpointSlice](s.slices),
		Nodes:          s.Nodes(),
	}
}

func listOf[T any](idx cache.Indexer) []T {
	objs := idx.List()
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// tracker collects, from the informers' event handlers, what changed since it was last taken:
// the names of the Services whose object or slices changed, whether a Node did, and the
// event counts. It is kube-proxy's ServiceChangeTracker and EndpointsChangeTracker reduced to
// names: the objects themselves are read from the caches when the change is converted.
type tracker struct {
	mu       gosync.Mutex
	services map[model.ServiceName]struct{}
	node     bool
	events   Events
}

// take returns what changed since the previous take, and forgets it.
func (t *tracker) take() (services map[model.ServiceName]struct{}, node bool, events Events) {
	t.mu.Lock()
	defer t.mu.Unlock()
	services, node, events = t.services, t.node, t.events
	if services == nil {
		services = map[model.ServiceName]struct{}{}
	}
	t.services, t.node, t.events = nil, false, Events{}
	return services, node, events
}

// mark records that the named Services changed; it counts one event of the given kind.
func (t *tracker) mark(slice bool, names ...model.ServiceName) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if slice {
		t.events.EndpointSlices++
	} else {
		t.events.Services++
	}
	if t.services == nil {
		t.services = map[model.ServiceName]struct{}{}
	}
	for _, n := range names {
		t.services[n] = struct{}{}
	}
}

// unwrap returns the object of an event, the last known state for a deletion the informer
// missed.
func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

// serviceName names the Service of an event; false when the event holds no Service.
func serviceName(obj any) (model.ServiceName, bool) {
	svc, ok := unwrap(obj).(*corev1.Service)
	if !ok || svc == nil {
		return model.ServiceName{}, false
	}
	return model.ServiceName{Namespace: svc.Namespace, Name: svc.Name}, true
}

// sliceServiceName names the Service of an EndpointSlice event; false when the event holds no
// slice or the slice belongs to no Service.
func sliceServiceName(obj any) (model.ServiceName, bool) {
	es, ok := unwrap(obj).(*discoveryv1.EndpointSlice)
	if !ok {
		return model.ServiceName{}, false
	}
	return sliceService(es)
}

// eventHandlers record the informers' events in t and call after after each one (to wake
// the source's loop). The adds of an informer's initial list are counted but name nothing:
// the source's first Delta is Full, and converts every Service of the caches, which hold
// these objects before their handlers run; naming them again would have the proxy convert
// and sync every Service a second time, right after the first sync.
type eventHandlers struct {
	t     *tracker
	after func()
}

// services is the handler of the Service informer.
func (h eventHandlers) services() cache.ResourceEventHandler {
	one := func(obj any) {
		name, ok := serviceName(obj)
		if ok {
			h.t.mark(false, name)
		} else {
			h.t.mark(false)
		}
		h.after()
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if initial {
				h.t.mark(false)
				return
			}
			one(obj)
		},
		UpdateFunc: func(_, obj any) { one(obj) },
		DeleteFunc: one,
	}
}

// slices is the handler of the EndpointSlice informer: a slice whose service-name label
// changed names both Services.
func (h eventHandlers) slices() cache.ResourceEventHandler {
	names := func(objs ...any) []model.ServiceName {
		var out []model.ServiceName
		for _, o := range objs {
			if n, ok := sliceServiceName(o); ok {
				out = append(out, n)
			}
		}
		return out
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if initial {
				h.t.mark(true)
				return
			}
			h.t.mark(true, names(obj)...)
			h.after()
		},
		UpdateFunc: func(old, obj any) { h.t.mark(true, names(old, obj)...); h.after() },
		DeleteFunc: func(obj any) { h.t.mark(true, names(obj)...); h.after() },
	}
}

// nodes is the handler of the Node informer; Node events are not counted, and the initial
// list's add is not recorded (the Full Delta reads the Node anyway).
func (h eventHandlers) nodes() cache.ResourceEventHandler {
	one := func(any) {
		h.t.mu.Lock()
		h.t.node = true
		h.t.mu.Unlock()
		h.after()
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if !initial {
				one(obj)
			}
		},
		UpdateFunc: func(_, obj any) { one(obj) },
		DeleteFunc: one,
	}
}
