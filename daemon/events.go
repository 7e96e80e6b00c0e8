package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/internal/logkey"
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

// EventRecorder records events about objects. Its method is client-go's
// events.EventRecorder's.
type EventRecorder interface {
	// Eventf records an event of type eventtype about regarding (and related, which may be
	// nil), its note formatted from note and args.
	Eventf(regarding runtime.Object, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// Limits of the eventWriter.
const (
	// eventQueue is how many events may wait to be written.
	eventQueue = 256
	// eventTries is how many times an event is sent when the API server cannot be reached
	// (client-go's events library's limit), eventRetry the wait between two tries.
	eventTries = 12
	eventRetry = 10 * time.Second
	// maxNoteBytes is the API server's limit on an event's note.
	maxNoteBytes = 1024
)

// eventWriter is the EventRecorder of a proxy reading the API server: it writes each event as
// an events.k8s.io/v1 Event, as kube-proxy's recorder does (the same name, namespace, type,
// reporting controller and instance), from a queue that one goroutine (Run) empties, so that
// recording never waits for the API server. Events are written one at a time: while the API
// server cannot be reached, the first waits (up to eventTries) and the others wait behind it,
// rather than each giving up on its own as client-go's do.
//
// It takes the place of client-go's events library, which links a client of every API group
// (about 10 MB of resident memory; see package kubeclient). What it leaves out, nftproxy does
// not need: it reports a problem once, not at every sync, so there are no series of repeated
// events to fold into one and no rate of them to limit. The queue is bounded; an event that
// does not fit is dropped, and logged.
type eventWriter struct {
	client   rest.Interface // of events.k8s.io/v1
	instance string         // reportingInstance
	log      *slog.Logger
	queue    chan *eventsv1.Event
	retry    time.Duration
	now      func() time.Time
}

// newEventWriter returns an eventWriter over client, a REST client of events.k8s.io/v1. Its
// reporting instance is "nftproxy-" and the host name, as kube-proxy's is "kube-proxy-" and
// the host name.
func newEventWriter(client rest.Interface, log *slog.Logger) *eventWriter {
	host, _ := os.Hostname()
	return &eventWriter{client: client, instance: reportingController + "-" + host, log: log,
		queue: make(chan *eventsv1.Event, eventQueue), retry: eventRetry, now: time.Now}
}

// Eventf queues an event about regarding, which is an object reference (every event nftproxy
// records names its object by reference); related is one too, or nil.
func (w *eventWriter) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	ref, ok := regarding.(*corev1.ObjectReference)
	if !ok || ref == nil {
		w.log.Error("event not recorded: it is about no object reference", logkey.Reason, reason, logkey.Regarding, fmt.Sprintf("%T", regarding))
		return
	}
	rel, _ := related.(*corev1.ObjectReference)
	now := w.now()
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault // events about cluster-scoped objects, as client-go's
	}
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: eventName(ref.Name, now), Namespace: ns},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: reportingController,
		ReportingInstance:   w.instance,
		Action:              action,
		Reason:              reason,
		Regarding:           *ref,
		Related:             rel,
		Note:                truncateNote(fmt.Sprintf(note, args...)),
		Type:                eventtype,
	}
	select {
	case w.queue <- ev:
	default:
		w.log.Error("event dropped: too many waiting to be written", logkey.Reason, reason, logkey.Note, ev.Note)
	}
}

// Run writes the queued events until ctx is done.
func (w *eventWriter) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-w.queue:
			w.write(ctx, ev)
		}
	}
}

// write creates ev, trying again while the API server cannot be reached; an event the API
// server refuses is not sent again (it would be refused again).
func (w *eventWriter) write(ctx context.Context, ev *eventsv1.Event) {
	for try := 1; ; try++ {
		err := w.client.Post().Namespace(ev.Namespace).Resource("events").Body(ev).Do(ctx).Error()
		if err == nil {
			return
		}
		// Not sent again: what the API server refused, and a request that cannot be made.
		var status apierrors.APIStatus
		var construction *rest.RequestConstructionError
		if errors.As(err, &status) || errors.As(err, &construction) || try == eventTries {
			w.log.Error("event not written", logkey.Reason, ev.Reason, logkey.Note, ev.Note, logkey.Error, err, logkey.Tries, try)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.retry):
		}
	}
}

// eventName names an event about the object named name, as client-go's recorder does: the
// name and the time, in hexadecimal nanoseconds, unless that is no valid object name (a Node
// or EndpointSlice name may take up to 253 characters), then a random UUID.
func eventName(name string, at time.Time) string {
	out := fmt.Sprintf("%s.%x", name, at.UnixNano())
	if len(validation.IsDNS1123Subdomain(out)) > 0 {
		return string(uuid.NewUUID())
	}
	return out
}

// truncateNote cuts note to the API server's limit, at a character's start.
func truncateNote(note string) string {
	if len(note) <= maxNoteBytes {
		return note
	}
	n := maxNoteBytes
	for n > 0 && !utf8.RuneStart(note[n]) {
		n--
	}
	return note[:n]
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
