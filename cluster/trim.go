package cluster

import (
	"unique"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// trimObject drops, before an object enters the informer caches, what the proxy never reads
// and what makes up much of an object's size: managed fields, annotations (kubectl's copy of
// the last applied configuration among them) but an EndpointSlice's last-change trigger time
// (the network programming latency runs from it), owner references and finalizers, labels but
// those the proxy reads (a Service's headless and service-proxy-name labels, a slice's
// service-name; the EndpointSlice controller copies every label of the Service onto its
// slices); a Service's selector; in EndpointSlices, each endpoint's reference to its Pod,
// hostname and deprecated topology; in the Node, its image list and conditions. The Node's
// taints and deletion timestamp stay (health: a node on its way out reports unhealthy), and
// so does every object's UID (events name it).
//
// An EndpointSlice is moreover copied into a compact one (compactSlice): at 10,000 Services
// of 10 endpoints, the slices as decoded hold about 30 MB; compacted, less than half.
func trimObject(obj any) (any, error) {
	if _, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		// Its object is the cache's own, trimmed when it entered, and read meanwhile by
		// others: not to be written.
		return obj, nil
	}
	switch o := obj.(type) {
	case *corev1.Service:
		trimMeta(&o.ObjectMeta, serviceLabels)
		o.Spec.Selector = nil
	case *discoveryv1.EndpointSlice:
		if compacted(o) { // by a streamed LIST (streamList)
			return o, nil
		}
		return compactSlice(o), nil
	case *corev1.Node:
		trimMeta(&o.ObjectMeta, nil)
		o.Status.Images, o.Status.Conditions, o.Status.VolumesAttached, o.Status.VolumesInUse = nil, nil, nil, nil
	case metav1.Object:
		o.SetManagedFields(nil)
		o.SetOwnerReferences(nil)
		o.SetFinalizers(nil)
		o.SetAnnotations(nil)
	}
	return obj, nil
}

// The labels the proxy reads, by kind (nil: every label stays).
var (
	serviceLabels = []string{LabelHeadless, LabelServiceProxyName}
	sliceLabels   = []string{discoveryv1.LabelServiceName}
)

// trimMeta drops from m what trimObject drops from every object; keep lists the labels that
// stay, nil all of them.
func trimMeta(m *metav1.ObjectMeta, keep []string) {
	m.ManagedFields, m.OwnerReferences, m.Finalizers, m.Annotations = nil, nil, nil, nil
	if keep != nil {
		m.Labels = keepLabels(m.Labels, keep)
	}
}

// keepLabels returns the labels of l named in keep, nil when there are none.
func keepLabels(l map[string]string, keep []string) map[string]string {
	var out map[string]string
	for _, k := range keep {
		if v, ok := l[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keep))
			}
			out[k] = v
		}
	}
	return out
}

// Canonical condition values, shared by every compacted endpoint: the caches are read-only.
var (
	condTrue  = true
	condFalse = false
)

// canonBool returns a pointer to the canonical value of *b, nil for nil.
func canonBool(b *bool) *bool {
	switch {
	case b == nil:
		return nil
	case *b:
		return &condTrue
	default:
		return &condFalse
	}
}

// compactSlice returns a copy of es holding only what the proxy reads, in few allocations:
// the endpoints in an array of their exact length (the decoder grows it by doubling), their
// addresses in one array, their node names and zones in another and interned (a cluster has
// few), their conditions pointing at shared values. The metadata keeps the name, namespace,
// UID, resource version, deletion timestamp, the service-name label and the trigger time.
// What it can, it takes from es rather than copy: an array of endpoints already of their
// exact length (as streamList decodes them), the label and annotation maps when they hold
// only what is kept. es is not to be used after.
func compactSlice(es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{
		TypeMeta: es.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: es.Name, Namespace: es.Namespace, UID: es.UID, ResourceVersion: es.ResourceVersion,
			Generation: es.Generation, DeletionTimestamp: es.DeletionTimestamp,
			Labels: es.Labels,
		},
		AddressType: es.AddressType,
		Ports:       es.Ports,
	}
	if _, ok := es.Labels[discoveryv1.LabelServiceName]; !ok || len(es.Labels) > 1 {
		out.Labels = keepLabels(es.Labels, sliceLabels)
	}
	if v, ok := es.Annotations[corev1.EndpointsLastChangeTriggerTime]; ok {
		out.Annotations = es.Annotations
		if len(es.Annotations) > 1 {
			out.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: v}
		}
	}
	if len(es.Endpoints) == 0 {
		return out
	}
	naddr, nstr := 0, 0
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		naddr += len(ep.Addresses)
		if ep.NodeName != nil {
			nstr++
		}
		if ep.Zone != nil {
			nstr++
		}
	}
	eps := es.Endpoints
	if cap(eps) != len(eps) {
		eps = make([]discoveryv1.Endpoint, len(es.Endpoints))
	}
	addrs := make([]string, 0, naddr)
	strs := make([]string, 0, nstr)
	interned := func(s *string) *string {
		if s == nil {
			return nil
		}
		strs = append(strs, unique.Make(*s).Value())
		return &strs[len(strs)-1]
	}
	for i := range es.Endpoints {
		ep, c := &es.Endpoints[i], &eps[i]
		if len(ep.Addresses) > 0 {
			at := len(addrs)
			addrs = append(addrs, ep.Addresses...)
			c.Addresses = addrs[at:len(addrs):len(addrs)]
		}
		c.Conditions = discoveryv1.EndpointConditions{Ready: canonBool(ep.Conditions.Ready),
			Serving: canonBool(ep.Conditions.Serving), Terminating: canonBool(ep.Conditions.Terminating)}
		c.NodeName, c.Zone = interned(ep.NodeName), interned(ep.Zone)
		c.Hints = ep.Hints
		c.Hostname, c.TargetRef, c.DeprecatedTopology = nil, nil, nil // c may be ep
	}
	out.Endpoints = eps
	return out
}

// compacted reports whether es needs no compacting: it holds nothing compactSlice drops and
// its endpoints' conditions point at the canonical values (a slice compactSlice made, which
// a streamed LIST hands the informer's transform again).
func compacted(es *discoveryv1.EndpointSlice) bool {
	if es.ManagedFields != nil || es.OwnerReferences != nil || es.Finalizers != nil ||
		len(es.Labels) > len(sliceLabels) || len(es.Annotations) > 1 {
		return false
	}
	canon := func(b *bool) bool { return b == nil || b == &condTrue || b == &condFalse }
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		if ep.TargetRef != nil || ep.Hostname != nil || ep.DeprecatedTopology != nil ||
			!canon(ep.Conditions.Ready) || !canon(ep.Conditions.Serving) || !canon(ep.Conditions.Terminating) {
			return false
		}
	}
	return true
}
