package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/nftproxy/nftproxy/internal/kubeclient"
)

// listObjects returns Services and EndpointSlices holding everything the API server may send:
// managed fields, owner references, finalizers, annotations, labels, selectors, endpoints
// with hostnames, target references, deprecated topology, zones, hints, every condition, a
// slice without endpoints, one with many.
func listObjects() (*corev1.ServiceList, *discoveryv1.EndpointSliceList) {
	managed := []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate,
		APIVersion: "v1", FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{}}`)},
		Time: &metav1.Time{Time: time.Unix(1700000000, 0)}}}
	owner := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: "web", UID: "u1"}}
	yes, no := true, false
	svcs := &corev1.ServiceList{ListMeta: metav1.ListMeta{ResourceVersion: "4711", Continue: "next-page"}}
	slices := &discoveryv1.EndpointSliceList{ListMeta: metav1.ListMeta{ResourceVersion: "4712"}}
	for i := range 600 { // more than a chunk of items
		name := fmt.Sprintf("web-%d", i)
		svc := corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: "svc-uid", ResourceVersion: "7",
				Labels:      map[string]string{"app": name, LabelServiceProxyName: "nftproxy"},
				Annotations: map[string]string{corev1.LastAppliedConfigAnnotation: `{"big":"json"}`},
				Finalizers:  []string{"service.kubernetes.io/load-balancer-cleanup"}, ManagedFields: managed},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10",
				ClusterIPs: []string{"10.96.0.10"}, Selector: map[string]string{"app": name},
				ExternalIPs: []string{"192.0.2.1"}, SessionAffinity: corev1.ServiceAffinityClientIP,
				Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
					TargetPort: intstr.FromString("http"), NodePort: 30080}}},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "198.51.100.1"}}}},
		}
		svcs.Items = append(svcs.Items, svc)
		port, pname, proto := int32(8080), "http", corev1.ProtocolTCP
		zone, host := "zone-a", "pod-a"
		es := discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-abc", Namespace: "default", UID: "es-uid", ResourceVersion: "8",
				Labels:          map[string]string{discoveryv1.LabelServiceName: name, "app": name},
				Annotations:     map[string]string{corev1.EndpointsLastChangeTriggerTime: "2026-11-24T00:00:00Z"},
				OwnerReferences: owner, ManagedFields: managed},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &port}},
		}
		for j := range i % 12 { // none, one, many
			node := fmt.Sprintf("node-%d", j%3)
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.244.%d.%d", i%250, j+1)},
				Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
				Hostname:   &host, NodeName: &node, Zone: &zone,
				TargetRef:          &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: fmt.Sprintf("pod-%d", j)},
				DeprecatedTopology: map[string]string{"kubernetes.io/hostname": node},
				Hints:              &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}},
			})
		}
		if i%5 == 0 {
			es.Labels = map[string]string{discoveryv1.LabelServiceName: name} // only what is kept
			es.Annotations["note"] = "x"
		}
		slices.Items = append(slices.Items, es)
	}
	return svcs, slices
}

// trimmedItems returns what the informers' caches hold of list's items when client-go lists
// them: each item passed through trimObject.
func trimmedItems[T any](items []T) []any {
	var out []any
	for i := range items {
		o, err := trimObject(any(&items[i]))
		if err != nil {
			panic(err)
		}
		out = append(out, o)
	}
	return out
}

// trimmedPtrs is trimmedItems of a list of pointers.
func trimmedPtrs[T any](items []*T) []any {
	var out []any
	for _, it := range items {
		o, err := trimObject(any(it))
		if err != nil {
			panic(err)
		}
		out = append(out, o)
	}
	return out
}

// listServer serves lists as the API server does: protobuf when the client accepts it,
// else JSON; body, when set, replaces a protobuf response.
type listServer struct {
	objs map[string]runtime.Object // by resource
	body func(pb []byte) []byte
	// status, when not 0, fails every request with that code and an API status.
	status int
}

func (s *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	resource := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
	if s.status != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(s.status)
		st := apierrors.NewResourceExpired("too old resource version").Status()
		st.Code = int32(s.status)
		st.APIVersion, st.Kind = "v1", "Status"
		data, _ := runtime.Encode(scheme.Codecs.LegacyCodec(metav1.SchemeGroupVersion), &st)
		w.Write(data)
		return
	}
	obj := s.objs[resource]
	var buf bytes.Buffer
	if strings.Contains(r.Header.Get("Accept"), "protobuf") {
		if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(obj, &buf); err != nil {
			panic(err)
		}
		w.Header().Set("Content-Type", runtime.ContentTypeProtobuf)
		data := buf.Bytes()
		if s.body != nil {
			data = s.body(data)
		}
		w.Write(data)
		return
	}
	gv := corev1.SchemeGroupVersion
	if resource == "endpointslices" {
		gv = discoveryv1.SchemeGroupVersion
	}
	data, err := runtime.Encode(scheme.Codecs.LegacyCodec(gv), obj)
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", runtime.ContentTypeJSON)
	w.Write(data)
}

// listClient returns a client of srv speaking contentType, as the daemon's does.
func listClient(t *testing.T, srv *httptest.Server, contentType string) *kubeclient.Client {
	t.Helper()
	cfg := &rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{ContentType: contentType,
		AcceptContentTypes: contentType}}
	c, err := kubeclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStreamList checks that a streamed LIST gives the informers what client-go's LIST and
// their transform would: every Service and EndpointSlice of the response, trimmed the same
// way (what the proxy reads intact, what it does not read gone), and the list's metadata (the
// resource version the watch starts from, the continue token of a paged list), from
// protobuf and from JSON.
func TestStreamList(t *testing.T) {
	svcs, slices := listObjects()
	wantSvcs, wantSlices := trimmedItems(svcs.DeepCopy().Items), trimmedItems(slices.DeepCopy().Items)
	ls := &listServer{objs: map[string]runtime.Object{"services": svcs, "endpointslices": slices}}
	srv := httptest.NewServer(ls)
	defer srv.Close()
	for _, ct := range []string{runtime.ContentTypeProtobuf, runtime.ContentTypeJSON} {
		c := listClient(t, srv, ct)
		got, err := streamList(t.Context(), c.Core, "services", metav1.ListOptions{}, &serviceList{})
		if err != nil {
			t.Fatalf("%s: %v", ct, err)
		}
		gs := got.(*objectList[corev1.Service, *corev1.Service])
		if gs.ResourceVersion != "4711" || gs.Continue != "next-page" {
			t.Errorf("%s: Service list metadata %+v, want resource version 4711, continue next-page", ct, gs.ListMeta)
		}
		if items := trimmedPtrs(gs.Items); !reflect.DeepEqual(items, wantSvcs) {
			t.Errorf("%s: streamed Services differ from the trimmed list: first %+v, want %+v", ct, items[0], wantSvcs[0])
		}
		if s := gs.Items[1]; s.Annotations != nil || s.ManagedFields != nil || s.Spec.Selector != nil ||
			len(s.Labels) != 1 || s.Spec.Ports[0].NodePort != 30080 || s.Status.LoadBalancer.Ingress[0].IP != "198.51.100.1" {
			t.Errorf("%s: a streamed Service kept what is dropped or lost what is read: %+v", ct, s)
		}

		got, err = streamList(t.Context(), c.Discovery, "endpointslices", metav1.ListOptions{}, &sliceList{})
		if err != nil {
			t.Fatalf("%s: %v", ct, err)
		}
		ge := got.(*objectList[discoveryv1.EndpointSlice, *discoveryv1.EndpointSlice])
		if ge.ResourceVersion != "4712" {
			t.Errorf("%s: EndpointSlice list resource version %q, want 4712", ct, ge.ResourceVersion)
		}
		items := trimmedPtrs(ge.Items)
		if len(items) != len(wantSlices) {
			t.Fatalf("%s: %d slices, want %d", ct, len(items), len(wantSlices))
		}
		for i := range items {
			if !reflect.DeepEqual(items[i], wantSlices[i]) {
				t.Fatalf("%s: slice %d is\n%+v\nwant\n%+v", ct, i, items[i], wantSlices[i])
			}
		}
		es := ge.Items[11]
		if len(es.Endpoints) != 11 || es.Endpoints[3].TargetRef != nil || es.Endpoints[3].Hostname != nil ||
			es.ManagedFields != nil || es.OwnerReferences != nil || *es.Endpoints[3].NodeName != "node-0" ||
			es.Endpoints[3].Hints == nil || es.Endpoints[3].Addresses[0] != "10.244.11.4" {
			t.Errorf("%s: a streamed slice kept what is dropped or lost what is read: %+v", ct, es)
		}
		if at, ok := ParseTriggerTime(ge.Items[10]); !ok || !at.Equal(time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)) {
			t.Errorf("%s: the trigger time did not survive: %v", ct, ge.Items[10].Annotations)
		}
	}
}

// TestStreamListItemsKept checks that the items of a streamed list, from protobuf and from
// JSON, reach the informer's store as they were decoded: client-go's reflector takes them from
// the list with meta.ExtractListWithAlloc, which copies each item of a list of values into an
// allocation of its own (at 10,000 Services, 6 MB of garbage at once) but takes
// runtime.Objects as they are.
func TestStreamListItemsKept(t *testing.T) {
	svcs, slices := listObjects()
	ls := &listServer{objs: map[string]runtime.Object{"services": svcs, "endpointslices": slices}}
	srv := httptest.NewServer(ls)
	defer srv.Close()
	for _, ct := range []string{runtime.ContentTypeProtobuf, runtime.ContentTypeJSON} {
		c := listClient(t, srv, ct)
		for _, r := range []struct {
			rc       rest.Interface
			resource string
			into     listInto
		}{{c.Core, "services", &serviceList{}}, {c.Discovery, "endpointslices", &sliceList{}}} {
			what := ct + " " + r.resource
			got, err := streamList(t.Context(), r.rc, r.resource, metav1.ListOptions{}, r.into)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			items, err := meta.ExtractListWithAlloc(got)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			listed := reflect.ValueOf(got).Elem().FieldByName("Items")
			if len(items) != 600 || listed.Len() != len(items) {
				t.Fatalf("%s: %d items extracted of %d listed, want 600", what, len(items), listed.Len())
			}
			for i, it := range items {
				if it != listed.Index(i).Interface() {
					t.Fatalf("%s: item %d was copied on its way to the store", what, i)
				}
			}
			if _, err := meta.ListAccessor(got); err != nil {
				t.Errorf("%s: the reflector cannot read the list's metadata: %v", what, err)
			}
			if cp := got.DeepCopyObject(); !reflect.DeepEqual(cp, got) {
				t.Errorf("%s: a deep copy differs", what)
			}
		}
	}
}

// TestStreamListErrors checks that a LIST that cannot be read whole fails, rather than giving
// the informer a partial cluster (a truncated body), that fields the decoder
// does not know are skipped, and that an API status is client-go's error (a 410 has the
// informer list again).
func TestStreamListErrors(t *testing.T) {
	svcs, _ := listObjects()
	ls := &listServer{objs: map[string]runtime.Object{"services": svcs}}
	srv := httptest.NewServer(ls)
	defer srv.Close()
	c := listClient(t, srv, runtime.ContentTypeProtobuf)
	list := func() (*objectList[corev1.Service, *corev1.Service], error) {
		got, err := streamList(t.Context(), c.Core, "services", metav1.ListOptions{}, &serviceList{})
		l, _ := got.(*objectList[corev1.Service, *corev1.Service])
		return l, err
	}

	// A field of the envelope that this decoder does not know (a newer API server's).
	ls.body = func(pb []byte) []byte {
		return protowire.AppendVarint(protowire.AppendTag(pb, 9, protowire.VarintType), 1)
	}
	if got, err := list(); err != nil || len(got.Items) != len(svcs.Items) {
		t.Errorf("an unknown envelope field: %v, %d Services", err, len(got.Items))
	}

	// One that claims more bytes than a length can be: not a body to trust.
	ls.body = func(pb []byte) []byte {
		return protowire.AppendVarint(protowire.AppendTag(pb, 9, protowire.BytesType), 1<<63)
	}
	if got, err := list(); err == nil || got != nil {
		t.Errorf("an envelope field of 2^63 bytes: %v (list %v), want an error", err, got != nil)
	}

	for _, cut := range []int{5, 100, 10_000, -1} {
		ls.body = func(pb []byte) []byte {
			if cut < 0 {
				cut = len(pb) - 1
			}
			return pb[:cut]
		}
		if got, err := list(); !errors.Is(err, io.ErrUnexpectedEOF) || got != nil {
			t.Errorf("a body cut at byte %d: %v (list %v), want an unexpected end of input", cut, err, got != nil)
		}
	}
	ls.body, ls.status = nil, http.StatusGone
	if _, err := list(); !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
		t.Errorf("a 410: %v, want the API status", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := streamList(ctx, c.Core, "services", metav1.ListOptions{}, &serviceList{}); err == nil {
		t.Error("a cancelled LIST succeeded")
	}
}

// TestNodeResource checks the requests that fill and follow the Node cache: a list and a
// watch of /api/v1/nodes selecting this node by name (a proxy must not cache every Node of a
// large cluster), carrying the reflector's resource version, and the watch's timeout.
func TestNodeResource(t *testing.T) {
	var mu sync.Mutex
	var got []*http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		w.Header().Set("Content-Type", runtime.ContentTypeJSON)
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK) // a watch that ends at once
			return
		}
		fmt.Fprint(w, `{"apiVersion":"v1","kind":"NodeList","metadata":{"resourceVersion":"7"},"items":[{"metadata":{"name":"node-0"}}]}`)
	}))
	defer srv.Close()
	c := listClient(t, srv, runtime.ContentTypeJSON)
	res := nodeResource(c.Core, "node-0")
	obj, err := res.list(t.Context(), metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := obj.(*corev1.NodeList); !ok || len(l.Items) != 1 || l.Items[0].Name != "node-0" || l.ResourceVersion != "7" {
		t.Errorf("list gave %#v, want the NodeList of node-0 at resource version 7", obj)
	}
	timeout := int64(300)
	w, err := res.watch(t.Context(), metav1.ListOptions{ResourceVersion: "7", TimeoutSeconds: &timeout, AllowWatchBookmarks: true})
	if err != nil {
		t.Fatal(err)
	}
	w.Stop()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("%d requests, want a list and a watch", len(got))
	}
	for i, want := range []map[string]string{
		{"fieldSelector": "metadata.name=node-0", "resourceVersion": "0", "watch": ""},
		{"fieldSelector": "metadata.name=node-0", "resourceVersion": "7", "watch": "true", "timeoutSeconds": "300", "allowWatchBookmarks": "true"},
	} {
		r := got[i]
		if r.Method != http.MethodGet || r.URL.Path != "/api/v1/nodes" {
			t.Errorf("request %d: %s %s, want GET /api/v1/nodes", i, r.Method, r.URL.Path)
		}
		for k, v := range want {
			if g := r.URL.Query().Get(k); g != v {
				t.Errorf("request %d: %s=%q, want %q (%s)", i, k, g, v, r.URL.RawQuery)
			}
		}
	}
}
