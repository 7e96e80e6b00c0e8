package cluster

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Source delivers snapshots of the cluster objects a node's proxy reads. KubeSource watches
// the API server; ManifestSource polls a directory of manifests.
type Source interface {
	// Run calls onChange with a full snapshot once the source has one, then after every
	// change, until ctx is done. It returns nil when ctx ends and an error only when it
	// cannot start. Snapshots are delivered one at a time; onChange must not block for long.
	Run(ctx context.Context, onChange func(Objects)) error
}

var (
	_ Source = (*KubeSource)(nil)
	_ Source = (*ManifestSource)(nil)
)

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
