package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// KubeSource delivers snapshots of the cluster from the Kubernetes API: shared informers on
// Services, EndpointSlices and this node's Node object. It delivers nothing before every
// cache has synced, so that a starting proxy never programs a partial view of the cluster.
// When the API server goes away the informers keep retrying and the rules stay as they are;
// when it returns they relist and the next snapshot catches up.
type KubeSource struct {
	Client kubernetes.Interface
	// NodeName is this node's name, whose Node object is watched.
	NodeName string
	// Log receives progress messages; nil means slog.Default().
	Log *slog.Logger
	// Resync is the informers' resync period; zero disables resyncs (the sync loop has its
	// own --sync-period).
	Resync time.Duration
}

// Run calls onChange with a full snapshot once the caches have synced and then after every
// change (coalesced: a burst of events gives one snapshot), until ctx is done.
func (k *KubeSource) Run(ctx context.Context, onChange func(Objects)) error {
	if k.Client == nil {
		return errors.New("kubernetes source: no client")
	}
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	all := informers.NewSharedInformerFactoryWithOptions(k.Client, k.Resync, informers.WithTransform(trimObject))
	node := informers.NewSharedInformerFactoryWithOptions(k.Client, k.Resync, informers.WithTransform(trimObject),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.NodeName).String()
		}))
	services := all.Core().V1().Services()
	slices := all.Discovery().V1().EndpointSlices()
	nodes := node.Core().V1().Nodes()

	changed := make(chan struct{}, 1)
	// Informer events since the last snapshot, per kind (the Node's are not counted).
	var serviceEvents, sliceEvents, nodeEvents atomic.Int64
	notify := func(count *atomic.Int64) cache.ResourceEventHandlerFuncs {
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { count.Add(1); signal(changed) },
			UpdateFunc: func(any, any) { count.Add(1); signal(changed) },
			DeleteFunc: func(any) { count.Add(1); signal(changed) },
		}
	}
	for inf, count := range map[cache.SharedIndexInformer]*atomic.Int64{
		services.Informer(): &serviceEvents, slices.Informer(): &sliceEvents, nodes.Informer(): &nodeEvents,
	} {
		if _, err := inf.AddEventHandler(notify(count)); err != nil {
			return fmt.Errorf("kubernetes source: add event handler: %w", err)
		}
	}
	all.Start(ctx.Done())
	node.Start(ctx.Done())
	defer all.Shutdown()
	defer node.Shutdown()

	log.Info("waiting for the Kubernetes caches to sync")
	for typ, ok := range all.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kubernetes source: %v cache did not sync: %w", typ, ctx.Err())
		}
	}
	for typ, ok := range node.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("kubernetes source: %v cache did not sync: %w", typ, ctx.Err())
		}
	}
	log.Info("Kubernetes caches synced")
	signal(changed)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		// Counted before listing: an event counted here is in the lists below.
		objs := Objects{Events: Events{Services: int(serviceEvents.Swap(0)), EndpointSlices: int(sliceEvents.Swap(0))}}
		var err error
		if objs.Services, err = services.Lister().List(labels.Everything()); err != nil {
			return fmt.Errorf("kubernetes source: list services: %w", err)
		}
		if objs.EndpointSlices, err = slices.Lister().List(labels.Everything()); err != nil {
			return fmt.Errorf("kubernetes source: list endpointslices: %w", err)
		}
		if objs.Nodes, err = nodes.Lister().List(labels.Everything()); err != nil {
			return fmt.Errorf("kubernetes source: list nodes: %w", err)
		}
		onChange(objs)
	}
}

// trimObject drops, before an object enters the informer caches, what the proxy never reads
// and what makes up much of an object's size: managed fields, annotations (kubectl's copy of
// the last applied configuration among them) but an EndpointSlice's last-change trigger time
// (the network programming latency runs from it), owner references and finalizers; a
// Service's selector; in EndpointSlices, each endpoint's reference to its Pod, hostname and
// deprecated topology; in the Node, its image list and conditions. With 10,000 Services and
// their slices this is tens of megabytes of cache. Labels stay (the proxy reads some of
// them), and so do the Node's taints and deletion timestamp (health: a node on its way out
// reports unhealthy) and every object's UID (events name it).
func trimObject(obj any) (any, error) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		inner, err := trimObject(d.Obj)
		d.Obj = inner
		return d, err
	}
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		m.SetOwnerReferences(nil)
		m.SetFinalizers(nil)
		var keep map[string]string
		if _, ok := obj.(*discoveryv1.EndpointSlice); ok {
			if v, ok := m.GetAnnotations()[corev1.EndpointsLastChangeTriggerTime]; ok {
				keep = map[string]string{corev1.EndpointsLastChangeTriggerTime: v}
			}
		}
		m.SetAnnotations(keep)
	}
	switch o := obj.(type) {
	case *corev1.Service:
		o.Spec.Selector = nil
	case *discoveryv1.EndpointSlice:
		for i := range o.Endpoints {
			ep := &o.Endpoints[i]
			ep.TargetRef, ep.Hostname, ep.DeprecatedTopology = nil, nil, nil
		}
	case *corev1.Node:
		o.Status.Images, o.Status.Conditions, o.Status.VolumesAttached, o.Status.VolumesInUse = nil, nil, nil, nil
	}
	return obj, nil
}

// signal wakes the reader of c without ever blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
