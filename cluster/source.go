package cluster

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftproxy/nftproxy/model"
)

// Source delivers the cluster objects a node's proxy reads, as Deltas: where to read the
// objects and which of them changed. KubeSource watches the API server; ManifestSource polls
// a directory of manifests.
type Source interface {
	// Run calls onChange with a Delta marked Full once the source has every object, then
	// with a Delta after every change, until ctx is done. It returns nil when ctx ends and
	// an error only when it cannot start. Deltas are delivered one at a time; onChange must
	// not block for long.
	Run(ctx context.Context, onChange func(Delta)) error
}

var (
	_ Source = (*KubeSource)(nil)
	_ Source = (*ManifestSource)(nil)
)

// Store reads a source's current objects. Its methods may be called from any goroutine, and
// what they return must not be modified. A store may change after a Delta was delivered
// (the informer caches do), but then the change is named in a later Delta.
type Store interface {
	// Service returns the Service named name, nil when there is none.
	Service(name model.ServiceName) *corev1.Service
	// EndpointSlices returns the EndpointSlices labelled kubernetes.io/service-name with
	// name's Service, in no particular order, found through an index.
	EndpointSlices(name model.ServiceName) []*discoveryv1.EndpointSlice
	// Nodes returns the Node objects the source holds (KubeSource: this node's only).
	Nodes() []*corev1.Node
	// Objects returns a full snapshot: it lists every object, so costs as much as their
	// number. For the first conversion and for the commands that look once.
	Objects() Objects
}

// Delta is one delivery of a Source: the store that holds its objects now, and what changed
// since the previous delivery. Two Deltas merge (Merge) into one that says what both said,
// so a consumer may fold the ones that arrive while it is busy.
type Delta struct {
	Store Store
	// Full marks a delivery that names no change: every Service of the store is to be
	// converted (a source's first delivery).
	Full bool
	// Services names the Services whose Service object or EndpointSlices were added,
	// updated or deleted; a slice names the Service of its kubernetes.io/service-name label
	// (before and after an update that changed it).
	Services map[model.ServiceName]struct{}
	// Node is set when a Node object was added, updated or deleted.
	Node bool
	// Bad lists everything the source itself cannot read as of this delivery (a manifest
	// that does not decode, a duplicate object); it replaces the previous delivery's.
	Bad []BadObject
	// Events counts what the source saw change since its previous delivery.
	Events Events
}

// Merge folds the later delivery d into a, as if both had been one.
func (a *Delta) Merge(d Delta) {
	a.Store, a.Bad = d.Store, d.Bad
	a.Full = a.Full || d.Full
	a.Node = a.Node || d.Node
	a.Events.Services += d.Events.Services
	a.Events.EndpointSlices += d.Events.EndpointSlices
	if a.Full {
		a.Services = nil
		return
	}
	if a.Services == nil {
		a.Services = make(map[model.ServiceName]struct{}, len(d.Services))
	}
	for name := range d.Services {
		a.Services[name] = struct{}{}
	}
}

// FullDelta is a Full delivery of a snapshot, read through a Snapshot store.
func FullDelta(objs Objects) Delta {
	snap := NewSnapshot(objs)
	return Delta{Store: snap, Full: true, Bad: snap.Bad(), Events: objs.Events}
}

// Kinds named in BadObject.Kind.
const (
	KindService       = "Service"
	KindEndpointSlice = "EndpointSlice"
	KindNode          = "Node"
	// KindDocument is a manifest document whose kind is unknown or that does not decode.
	KindDocument = "Document"
	// KindFile is a manifest file that cannot be read.
	KindFile = "File"
)

// Objects is a full snapshot of the objects a source holds.
type Objects struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Nodes          []*corev1.Node
	// Bad lists what the source itself could not read (a manifest that does not decode);
	// conversion adds the objects it cannot turn into rules.
	Bad []BadObject
	// Events counts what the source saw change since its previous snapshot.
	Events Events
}

// Events counts the changes a source saw (KubeSource: informer events; ManifestSource:
// objects added, changed or removed between two readings of the directory), for the
// metrics kubeproxy_sync_proxy_rules_service_changes_total and ..._endpoint_changes_total.
type Events struct {
	Services, EndpointSlices int
}

// BadObject describes an object skipped because it cannot be turned into rules. Skipping it
// never affects any other object.
type BadObject struct {
	Kind      string
	Namespace string
	Name      string
	// UID is the object's, when it came from the API server (events name it).
	UID types.UID
	Err error
}

// String names the object and the reason, as in "Service default/foo: <err>".
func (b BadObject) String() string {
	kind := b.Kind
	if kind == "" {
		kind = "Object"
	}
	name := b.Name
	if b.Namespace != "" {
		name = b.Namespace + "/" + b.Name
	}
	s := kind
	if name != "" {
		s += " " + name
	}
	if b.Err != nil {
		s += ": " + b.Err.Error()
	}
	return s
}
