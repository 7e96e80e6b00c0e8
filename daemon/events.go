package daemon

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/nftproxy/nftproxy/cluster"
)

// Event reasons and actions nftproxy reports (events.k8s.io/v1). "Starting" and
// "FailedToStartServiceHealthcheck" are kube-proxy's; kube-proxy has no event for a Service
// it cannot proxy.
const (
	// ReasonStarting (Normal, on this node's Node) is emitted once nftproxy has started.
	ReasonStarting = "Starting"
	// ReasonInvalidService (Warning, on the Service) says why a Service is not proxied.
	ReasonInvalidService = "InvalidService"
	// ReasonInvalidEndpointSlice (Warning, on the EndpointSlice) says which of its entries
	// are skipped.
	ReasonInvalidEndpointSlice = "InvalidEndpointSlice"
	// ReasonFailedToStartServiceHealthcheck (Warning, on the Service) says that its
	// healthCheckNodePort cannot be listened on.
	ReasonFailedToStartServiceHealthcheck = "FailedToStartServiceHealthcheck"
	// ReasonFailedToStartMetricServer: --metrics-bind-address cannot be listened on (Node).
	ReasonFailedToStartMetricServer = "FailedToStartMetricServer"
	// ReasonFailedToStartProxierHealthcheck: --healthz-bind-address cannot be listened on
	// (Node).
	ReasonFailedToStartProxierHealthcheck = "FailedToStartProxierHealthcheck"

	actionStart  = "StartProxy"
	actionProxy  = "Proxy"
	actionListen = "Listen"
	// reportingController names nftproxy in its events' reportingController.
	reportingController = "nftproxy"
)

// EventRecorder records events about objects; client-go's events.EventRecorder.
type EventRecorder = events.EventRecorder

// NewEventBroadcaster returns a broadcaster that writes events through the events.k8s.io/v1
// API, as kube-proxy's does. The caller starts it (StartRecordingToSinkWithContext) and
// shuts it down.
func NewEventBroadcaster(client kubernetes.Interface) (events.EventBroadcaster, EventRecorder) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	return b, b.NewRecorder(scheme.Scheme, reportingController)
}

// nodeRef is the reference events about this node carry, as kube-proxy's.
func nodeRef(name string) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: name}
}

// serviceRef is the reference events about a Service carry.
func serviceRef(namespace, name string, uid types.UID) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: namespace, Name: name, UID: uid}
}

// badObjectEvent records a Warning on a Service or EndpointSlice that cannot be turned into
// rules, with the reason as its note. It is called once per distinct problem (reportBad).
func (p *Proxy) badObjectEvent(b cluster.BadObject) {
	if p.Events == nil || b.Err == nil {
		return
	}
	switch b.Kind {
	case cluster.KindService:
		p.Events.Eventf(serviceRef(b.Namespace, b.Name, b.UID), nil, corev1.EventTypeWarning,
			ReasonInvalidService, actionProxy, "Service is not proxied: %v", b.Err)
	case cluster.KindEndpointSlice:
		ref := &corev1.ObjectReference{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice",
			Namespace: b.Namespace, Name: b.Name, UID: b.UID}
		p.Events.Eventf(ref, nil, corev1.EventTypeWarning, ReasonInvalidEndpointSlice, actionProxy,
			"Entries skipped: %v", b.Err)
	}
}
