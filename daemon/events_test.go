package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/internal/kubeclient"
	"github.com/nftproxy/nftproxy/nft"
)

// TestBadServiceEvent checks that a Service skipped as bad gets one Warning event naming the
// reason, not one per sync, and a new one when the problem comes back after a fix.
func TestBadServiceEvent(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	p := newTestProxy(nft.NewFake(1))
	p.Events = rec
	bad := func() cluster.Objects {
		objs := proxyObjects("10.244.1.2")
		objs.Services[0].Spec.Ports[0].Protocol = "ICMP"
		return objs
	}
	sync := func(objs cluster.Objects) {
		t.Helper()
		p.Update(cluster.FullDelta(objs))
		if err := p.SyncOnce(); err != nil {
			t.Fatal(err)
		}
	}
	want := `Warning InvalidService Service is not proxied: spec.ports[0]: unknown protocol "ICMP"`
	sync(bad())
	sync(bad())
	sync(proxyObjects("10.244.1.2"))
	sync(bad())
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	if len(got) != 2 || got[0] != want || got[1] != want {
		t.Errorf("events: %q, want twice %q (first problem, and its return after a fix)", got, want)
	}
}

// eventServer is an events.k8s.io/v1 endpoint: it answers each POST with the next of codes
// (0: drops the connection unanswered; past the end: 201), and hands each body it read over.
type eventServer struct {
	codes []int
	mu    sync.Mutex
	n     int
	got   chan *eventsv1.Event
}

func (s *eventServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	code := http.StatusCreated
	if s.n < len(s.codes) {
		code = s.codes[s.n]
	}
	s.n++
	s.mu.Unlock()
	if r.Method != http.MethodPost || r.URL.Path != "/apis/events.k8s.io/v1/namespaces/"+strings.Split(r.URL.Path, "/")[5]+"/events" {
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
		return
	}
	ev := &eventsv1.Event{}
	body, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(body, ev); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if code == 0 {
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
		return
	}
	s.got <- ev
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if code == http.StatusCreated {
		w.Write(body)
		return
	}
	st := apierrors.NewInvalid(schema.GroupKind{Group: "events.k8s.io", Kind: "Event"}, ev.Name, nil).Status()
	st.APIVersion, st.Kind = "v1", "Status"
	out, _ := json.Marshal(st)
	w.Write(out)
}

// TestEventWriter checks the events written to the API server: an event about a Service in
// its namespace and one about the Node in "default", named, typed and attributed as
// kube-proxy's recorder names them, the note formatted and cut to the API server's limit; an
// event sent again when the API server could not be reached, and one the API server refused
// not sent again.
func TestEventWriter(t *testing.T) {
	srv := &eventServer{codes: []int{0, http.StatusCreated, http.StatusUnprocessableEntity}, got: make(chan *eventsv1.Event, 10)}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	client, err := kubeclient.New(&rest.Config{Host: hs.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}})
	if err != nil {
		t.Fatal(err)
	}
	w := newEventWriter(client.Events, slog.New(slog.NewTextHandler(io.Discard, nil)))
	w.retry = time.Millisecond
	at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	w.now = func() time.Time { return at }
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go w.Run(ctx)

	long := strings.Repeat("é", maxNoteBytes) // two bytes each
	w.Eventf(serviceRef("shop", "web", "uid-1"), nil, corev1.EventTypeWarning, ReasonInvalidService, actionProxy,
		"Service is not proxied: %s", long)
	w.Eventf(nodeRef("node-0"), nil, corev1.EventTypeNormal, ReasonStarting, actionStart, "%s", "")
	w.Eventf(nodeRef("node-0"), nil, corev1.EventTypeNormal, ReasonStarting, actionStart, "%s", "after the refused one")

	next := func() *eventsv1.Event {
		t.Helper()
		select {
		case ev := <-srv.got:
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no event written within 10 s")
			return nil
		}
	}
	host, _ := os.Hostname()
	svc := next() // the first try's connection was dropped: this is the second
	wantNote := "Service is not proxied: " + strings.Repeat("é", (maxNoteBytes-len("Service is not proxied: "))/2)
	if svc.Namespace != "shop" || svc.Name != fmt.Sprintf("web.%x", at.UnixNano()) || svc.Type != corev1.EventTypeWarning ||
		svc.Reason != ReasonInvalidService || svc.Action != actionProxy || svc.Note != wantNote ||
		svc.ReportingController != "nftproxy" || svc.ReportingInstance != "nftproxy-"+host ||
		svc.Regarding.Kind != "Service" || svc.Regarding.Name != "web" || svc.Regarding.UID != "uid-1" ||
		!svc.EventTime.Time.Equal(at) {
		t.Errorf("Service event: %+v", svc)
	}
	if len(svc.Note) > maxNoteBytes {
		t.Errorf("note of %d bytes, over the API server's limit of %d", len(svc.Note), maxNoteBytes)
	}
	if node := next(); node.Namespace != "default" || node.Regarding.Kind != "Node" || node.Reason != ReasonStarting {
		t.Errorf("Node event: %+v (the refused one)", node)
	}
	if after := next(); after.Note != "after the refused one" {
		t.Errorf("after the refused event came %q, want the next event, not the refused one again", after.Note)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.n != 4 {
		t.Errorf("%d requests, want 4: the Service event twice (first unanswered), the refused Node event once, the last", srv.n)
	}
}

// TestEventName checks that an event's name is the object's and the time's, as client-go's,
// and still a valid object name when the object's name is as long as a name may be (a Node's
// or an EndpointSlice's: 253 characters), which the API server would otherwise refuse.
func TestEventName(t *testing.T) {
	at := time.Unix(0, 0x18eef060d21c4000)
	if got := eventName("node-0", at); got != "node-0.18eef060d21c4000" {
		t.Errorf("eventName(node-0) = %q, want node-0.18eef060d21c4000", got)
	}
	long := strings.Repeat("a", 253)
	got := eventName(long, at)
	if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 || got == eventName(long, at) {
		t.Errorf("eventName of a 253-character name = %q: %v (want a valid name, another each time)", got, errs)
	}
}
