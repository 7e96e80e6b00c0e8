package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	gosync "sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"

	"github.com/nftproxy/nftproxy/internal/kubeclient"
)

// KubeSource delivers the cluster from the Kubernetes API: shared informers on Services,
// EndpointSlices (indexed by Service) and this node's Node object, whose caches are the
// Deltas' Store. Its event handlers name the Service each event is about, so that a change
// costs the same however many Services did not change. It delivers nothing before every
// cache has synced, so that a starting proxy never programs a partial view of the cluster.
// When the API server goes away the informers keep retrying and the rules stay as they are;
// when it returns they relist and the events of the relist catch up.
type KubeSource struct {
	// Client reaches the API server.
	Client *kubeclient.Client
	// NodeName is this node's name, whose Node object is watched.
	NodeName string
	// Log receives progress messages; nil means slog.Default().
	Log *slog.Logger
	// Resync is the informers' resync period; zero disables resyncs (the sync loop has its
	// own --sync-period).
	Resync time.Duration

	// resources, when set, replaces Client's Services, EndpointSlices and Node (tests: a
	// fake client set's).
	resources func() kubeResources
}

// kubeResources are the objects a KubeSource lists and watches, and the client whose
// WatchList semantics its informers follow (nil: the API server's).
type kubeResources struct {
	services, slices, node resource
	client                 any
}

// Run calls onChange with a Full Delta once the caches have synced and then with a Delta after
// every change (coalesced: a burst of events gives one Delta naming every Service it touched),
// until ctx is done.
func (k *KubeSource) Run(ctx context.Context, onChange func(Delta)) error {
	res := kubeResources{}
	switch {
	case k.resources != nil:
		res = k.resources()
	case k.Client != nil:
		res = kubeResources{services: servicesResource(k.Client.Core), slices: slicesResource(k.Client.Discovery),
			node: nodeResource(k.Client.Core, k.NodeName)}
	default:
		return errors.New("kubernetes source: no client")
	}
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	var informers [3]cache.SharedIndexInformer
	for i, r := range []resource{res.services, res.slices, res.node} {
		inf, err := r.informer(res.client, k.Resync)
		if err != nil {
			return fmt.Errorf("kubernetes source: informer of %T: %w", r.typ, err)
		}
		informers[i] = inf
	}
	services, slices, nodes := informers[0], informers[1], informers[2]
	if err := slices.AddIndexers(sliceIndexers); err != nil {
		return fmt.Errorf("kubernetes source: index endpointslices: %w", err)
	}

	changed := make(chan struct{}, 1)
	var t tracker
	h := eventHandlers{t: &t, after: func() { signal(changed) }}
	var handled []cache.InformerSynced
	for inf, handler := range map[cache.SharedIndexInformer]cache.ResourceEventHandler{
		services: h.services(), slices: h.slices(), nodes: h.nodes(),
	} {
		reg, err := inf.AddEventHandler(handler)
		if err != nil {
			return fmt.Errorf("kubernetes source: add event handler: %w", err)
		}
		handled = append(handled, reg.HasSynced)
	}
	store := informerStore{services: services.GetIndexer(), slices: slices.GetIndexer(), nodes: nodes.GetIndexer()}
	// The informers stop with ctx, or when Run returns; Run returns once they have.
	ctx, cancel := context.WithCancel(ctx)
	var running gosync.WaitGroup
	defer running.Wait()
	defer cancel()
	for _, inf := range informers {
		running.Go(func() { inf.RunWithContext(ctx) })
	}

	log.Info("waiting for the Kubernetes caches to sync")
	// A synced cache has not yet told its handlers about every object of its initial list:
	// they hear of them from a queue of their own. Wait for that too, so that the first
	// Delta counts the initial list (the changes metrics would otherwise count it late, as
	// changes made after the first sync) and a later Delta holds only later events.
	for _, w := range []struct {
		what   string
		synced []cache.InformerSynced
	}{
		{"the Service cache", []cache.InformerSynced{services.HasSynced}},
		{"the EndpointSlice cache", []cache.InformerSynced{slices.HasSynced}},
		{"the Node cache", []cache.InformerSynced{nodes.HasSynced}},
		{"the event handlers", handled},
	} {
		if !waitSynced(ctx, w.synced...) {
			return fmt.Errorf("kubernetes source: %s did not sync: %w", w.what, ctx.Err())
		}
	}
	log.Info("Kubernetes caches synced")
	// Taken before anything is read: an event taken here is in the store, and a later one
	// is in a later Delta.
	_, _, events := t.take()
	onChange(Delta{Store: store, Full: true, Events: events})
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		d := Delta{Store: store}
		d.Services, d.Node, d.Events = t.take()
		if len(d.Services) == 0 && !d.Node && d.Events == (Events{}) {
			continue // taken by the previous Delta
		}
		onChange(d)
	}
}

// signal wakes the reader of c without ever blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// syncPoll is how often waitSynced checks. client-go's cache.WaitForCacheSync checks every
// 100 ms: up to a tenth of a second of a cold start lost at each wait.
const syncPoll = 5 * time.Millisecond

// waitSynced waits until every synced reports true; false when ctx ended first.
func waitSynced(ctx context.Context, synced ...cache.InformerSynced) bool {
	err := wait.PollUntilContextCancel(ctx, syncPoll, true, func(context.Context) (bool, error) {
		for _, s := range synced {
			if !s() {
				return false, nil
			}
		}
		return true, nil
	})
	return err == nil
}
