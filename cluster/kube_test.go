package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nftproxy/nftproxy/model"
)

// webObjects is a Service default/web (ClusterIP 10.96.0.10, port 80 named http) with one
// ready endpoint on port 8080.
func webObjects(endpoint string) Objects {
	ready := true
	name, port := "http", int32(8080)
	return Objects{
		Services: []*corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
				Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
		}},
		EndpointSlices: []*discoveryv1.EndpointSlice{{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{endpoint}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		}},
	}
}

// fakeResources lists and watches the objects of a fake client set, whose REST clients are nil
// (the fake client set answers from memory). Its Nodes are all of them: it applies no field
// selector.
func fakeResources(c kubernetes.Interface) kubeResources {
	svcs, slices, nodes := c.CoreV1().Services(""), c.DiscoveryV1().EndpointSlices(""), c.CoreV1().Nodes()
	return kubeResources{
		services: resource{typ: &corev1.Service{},
			list:  func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return svcs.List(ctx, o) },
			watch: svcs.Watch},
		slices: resource{typ: &discoveryv1.EndpointSlice{},
			list:  func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return slices.List(ctx, o) },
			watch: slices.Watch},
		node: resource{typ: &corev1.Node{},
			list:  func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return nodes.List(ctx, o) },
			watch: nodes.Watch},
		client: c,
	}
}

// TestKubeSource checks that the source delivers a Full Delta once its caches synced, whose
// store holds only this node's Node object; then Deltas naming the Services an event touched:
// a new Service, and the Service of an updated EndpointSlice, whose slices the store finds
// through its index.
func TestKubeSource(t *testing.T) {
	objs := webObjects("10.244.1.2")
	initial := []runtime.Object{objs.Services[0], objs.EndpointSlices[0],
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node2"}}}
	// Enough slices of another Service that the handlers' queue lags behind the cache.
	const extra = 3000
	for i := range extra {
		es := objs.EndpointSlices[0].DeepCopy()
		es.Name = fmt.Sprintf("other-%d", i)
		es.Labels = map[string]string{discoveryv1.LabelServiceName: "other"}
		initial = append(initial, es)
	}
	client := fake.NewClientset(initial...)
	src := &KubeSource{NodeName: "node1", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		resources: func() kubeResources { return fakeResources(client) }}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	deltas := make(chan Delta, 10)
	go func() { _ = src.Run(ctx, func(d Delta) { deltas <- d }) }()

	next := func() Delta {
		t.Helper()
		select {
		case d := <-deltas:
			return d
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery within 10 s")
			return Delta{}
		}
	}
	// waitFor merges deliveries until Services names name and Events counts want.
	var merged Delta
	waitFor := func(what string, name model.ServiceName, want Events) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			merged.Merge(next())
			if _, ok := merged.Services[name]; ok && merged.Events == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s never named, or events %+v, want %+v", what, name, merged.Events, want)
			}
		}
	}
	first := next()
	web := model.ServiceName{Namespace: "default", Name: "web"}
	if o := first.Store.Objects(); !first.Full || len(o.Services) != 1 || len(o.EndpointSlices) != 1+extra {
		t.Fatalf("first delivery: full %v, %d Services and %d EndpointSlices, want full, 1 and %d", first.Full, len(o.Services), len(o.EndpointSlices), 1+extra)
	}
	// The initial lists are counted in the first delivery, not later as changes.
	if want := (Events{Services: 1, EndpointSlices: 1 + extra}); first.Events != want {
		t.Errorf("first delivery counts %+v, want the initial lists, %+v", first.Events, want)
	}
	if esl := first.Store.EndpointSlices(web); len(esl) != 1 || esl[0].Name != "web-1" {
		t.Errorf("the store's slices of %s: %v, want web-1", web, esl)
	}
	// The field selector is applied by the API server, which the fake client does not do;
	// FindNode still picks this node's object by name.
	if _, ok := FindNode(first.Store.Nodes(), "node1"); !ok {
		t.Errorf("the store lacks this node's Node object")
	}
	svc := objs.Services[0].DeepCopy()
	svc.Name = "web2"
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web2 := model.ServiceName{Namespace: "default", Name: "web2"}
	waitFor("a Service added", web2, Events{Services: 1})
	if merged.Store.Service(web2) == nil {
		t.Errorf("the store lacks the new Service %s", web2)
	}

	merged = Delta{}
	es := objs.EndpointSlices[0].DeepCopy()
	es.Endpoints[0].Addresses = []string{"10.244.1.3"}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("an EndpointSlice updated", web, Events{EndpointSlices: 1})
	if esl := merged.Store.EndpointSlices(web); len(esl) != 1 || esl[0].Endpoints[0].Addresses[0] != "10.244.1.3" {
		t.Errorf("after the update the store's slices of %s are %v", web, esl)
	}
	if merged.Full || len(merged.Services) != 1 {
		t.Errorf("an EndpointSlice updated: full %v, Services %v; want only %s", merged.Full, merged.Services, web)
	}
}

// TestConverterChanges checks the incremental conversion: only Services whose objects changed
// are converted again and reported, a copy with the same content is no change, and a deleted
// Service is reported as nil.
func TestConverterChanges(t *testing.T) {
	a, b := webObjects("10.244.1.2"), webObjects("10.244.1.3")
	b.Services[0].Name = "api"
	b.EndpointSlices[0].Name = "api-1"
	b.EndpointSlices[0].Labels = map[string]string{"kubernetes.io/service-name": "api"}
	snap := Objects{Services: append(a.Services, b.Services...), EndpointSlices: append(a.EndpointSlices, b.EndpointSlices...)}
	var c Converter
	if ch := c.Update(FullDelta(snap)); len(ch) != 2 {
		t.Fatalf("first snapshot: %d changes, want 2", len(ch))
	}
	if ch := c.Update(FullDelta(snap)); len(ch) != 0 {
		t.Errorf("same objects again: %d changes, want none", len(ch))
	}
	snap.EndpointSlices[0] = snap.EndpointSlices[0].DeepCopy()
	if ch := c.Update(FullDelta(snap)); len(ch) != 0 {
		t.Errorf("a copy with the same content: %d changes, want none", len(ch))
	}
	moved := snap.EndpointSlices[1].DeepCopy()
	moved.Endpoints[0].Addresses = []string{"10.244.1.9"}
	snap.EndpointSlices[1] = moved
	ch := c.Update(FullDelta(snap))
	api := ch[model.ServiceName{Namespace: "default", Name: "api"}]
	if len(ch) != 1 || api == nil || api.Ports[0].Endpoints[0].Addr != netip.MustParseAddr("10.244.1.9") {
		t.Errorf("an endpoint of api moved: changes %v", ch)
	}
	snap.Services = snap.Services[:1]
	ch = c.Update(FullDelta(snap))
	if gone, ok := ch[model.ServiceName{Namespace: "default", Name: "api"}]; len(ch) != 1 || !ok || gone != nil {
		t.Errorf("api deleted: changes %v, want only api as nil", ch)
	}
}

// TestConverterManyServices checks that the Services of a large snapshot, converted on every
// CPU, each come out with their own endpoints, and that a second snapshot converts only what
// changed.
func TestConverterManyServices(t *testing.T) {
	const n = 500
	var snap Objects
	for i := range n {
		o := webObjects(fmt.Sprintf("10.244.%d.%d", i/250, i%250+1))
		name := fmt.Sprintf("web-%d", i)
		o.Services[0].Name = name
		o.EndpointSlices[0].Name = name + "-1"
		o.EndpointSlices[0].Labels = map[string]string{discoveryv1.LabelServiceName: name}
		snap.Services = append(snap.Services, o.Services...)
		snap.EndpointSlices = append(snap.EndpointSlices, o.EndpointSlices...)
	}
	var c Converter
	ch := c.Update(FullDelta(snap))
	bad := c.Bad()
	if len(ch) != n || len(bad) != 0 {
		t.Fatalf("%d changes and %v, want %d changes", len(ch), bad, n)
	}
	for i := range n {
		svc := ch[model.ServiceName{Namespace: "default", Name: fmt.Sprintf("web-%d", i)}]
		want := netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", i/250, i%250+1))
		if svc == nil || len(svc.Ports) != 1 || len(svc.Ports[0].Endpoints) != 1 || svc.Ports[0].Endpoints[0].Addr != want {
			t.Fatalf("web-%d converted to %+v, want its endpoint %s", i, svc, want)
		}
	}
	moved := snap.EndpointSlices[321].DeepCopy()
	moved.Endpoints[0].Addresses = []string{"10.244.9.9"}
	snap.EndpointSlices[321] = moved
	ch = c.Update(FullDelta(snap))
	if svc := ch[model.ServiceName{Namespace: "default", Name: "web-321"}]; len(ch) != 1 || svc == nil ||
		svc.Ports[0].Endpoints[0].Addr != netip.MustParseAddr("10.244.9.9") {
		t.Errorf("one endpoint moved: changes %v, want only web-321's", ch)
	}
}

// TestTrimObject checks that what the informers drop from objects changes nothing the proxy
// programs, and that it is dropped.
func TestTrimObject(t *testing.T) {
	objs := webObjects("10.244.1.2")
	svc, es := objs.Services[0], objs.EndpointSlices[0]
	owner := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: "web", UID: "u1"}}
	svc.Labels = map[string]string{"app.kubernetes.io/name": "web"}
	svc.Annotations = map[string]string{corev1.LastAppliedConfigAnnotation: `{"big":"json"}`, "note": "x"}
	svc.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	svc.Finalizers = []string{"service.kubernetes.io/load-balancer-cleanup"}
	svc.Spec.Selector = map[string]string{"app": "web"}
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	es.OwnerReferences = owner
	es.Labels["app.kubernetes.io/name"] = "web" // copied from the Service by the EndpointSlice controller
	es.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-24T00:00:00Z",
		corev1.LastAppliedConfigAnnotation: `{"big":"json"}`}
	host, node, zone := "pod-a", "node1", "zone-a"
	es.Endpoints[0].Hostname, es.Endpoints[0].NodeName, es.Endpoints[0].Zone = &host, &node, &zone
	es.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: "pod-a"}
	es.Endpoints[0].DeprecatedTopology = map[string]string{"kubernetes.io/hostname": "node1"}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"},
			Annotations:       map[string]string{"node.alpha.kubernetes.io/ttl": "0"},
			DeletionTimestamp: &metav1.Time{Time: time.Unix(1700000000, 0)}},
		Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"},
			Taints: []corev1.Taint{{Key: TaintToBeDeleted, Value: "1700000000", Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.2"}},
			Images:     []corev1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	objs.Nodes = []*corev1.Node{n}

	wantSvcs, wantBad := Convert(objs, ConvertOptions{})
	wantNode, _ := FindNode(objs.Nodes, "node1")
	if len(wantSvcs) != 1 || wantSvcs[0].Ports[0].NodePort != 30080 || len(wantSvcs[0].Ports[0].Endpoints) != 1 ||
		wantSvcs[0].Ports[0].Endpoints[0].NodeName != "node1" || wantNode.Zone != "zone-a" || len(wantNode.PodCIDRs) != 1 {
		t.Fatalf("the untrimmed objects convert to %+v and %+v", wantSvcs, wantNode)
	}
	trimmed := Objects{}
	for _, s := range objs.Services {
		o, _ := trimObject(s.DeepCopy())
		trimmed.Services = append(trimmed.Services, o.(*corev1.Service))
	}
	for _, s := range objs.EndpointSlices {
		o, _ := trimObject(s.DeepCopy())
		trimmed.EndpointSlices = append(trimmed.EndpointSlices, o.(*discoveryv1.EndpointSlice))
	}
	o, _ := trimObject(n.DeepCopy())
	trimmed.Nodes = []*corev1.Node{o.(*corev1.Node)}

	gotSvcs, gotBad := Convert(trimmed, ConvertOptions{})
	gotNode, _ := FindNode(trimmed.Nodes, "node1")
	if !reflect.DeepEqual(gotSvcs, wantSvcs) || len(gotBad) != len(wantBad) || !reflect.DeepEqual(gotNode, wantNode) {
		t.Errorf("trimmed objects convert to %+v %v %+v, want %+v %v %+v", gotSvcs, gotBad, gotNode, wantSvcs, wantBad, wantNode)
	}
	ts, tes, tn := trimmed.Services[0], trimmed.EndpointSlices[0], trimmed.Nodes[0]
	if ts.Annotations != nil || ts.ManagedFields != nil || ts.Finalizers != nil || ts.Spec.Selector != nil ||
		len(tes.Annotations) != 1 || tes.OwnerReferences != nil || tes.Endpoints[0].TargetRef != nil ||
		tes.Endpoints[0].Hostname != nil || tes.Endpoints[0].DeprecatedTopology != nil ||
		tn.Status.Images != nil || tn.Status.Conditions != nil || tn.Annotations != nil {
		t.Errorf("left in place: %+v\n%+v\n%+v", ts, tes, tn)
	}
	if tes.Labels[discoveryv1.LabelServiceName] != "web" || tn.Labels[corev1.LabelTopologyZone] != "zone-a" {
		t.Errorf("labels the proxy reads were dropped: %v %v", tes.Labels, tn.Labels)
	}
	if ts.Labels != nil || len(tes.Labels) != 1 {
		t.Errorf("labels the proxy does not read were kept: %v %v", ts.Labels, tes.Labels)
	}
	headless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "h", Labels: map[string]string{
		LabelHeadless: "", LabelServiceProxyName: "other", "app": "h"}}}
	if o, _ := trimObject(headless); !reflect.DeepEqual(o.(*corev1.Service).Labels,
		map[string]string{LabelHeadless: "", LabelServiceProxyName: "other"}) {
		t.Errorf("a Service's headless and service-proxy-name labels did not both survive: %v", o.(*corev1.Service).Labels)
	}
	if ep := tes.Endpoints[0]; ep.Zone == nil || *ep.Zone != zone || ep.NodeName == nil || *ep.NodeName != node ||
		tes.UID != es.UID || tes.Name != es.Name || tes.Namespace != es.Namespace {
		t.Errorf("the compacted slice lost what the proxy reads: %+v", tes)
	}
	if at, ok := ParseTriggerTime(tes); !ok || !at.Equal(time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("the slice's trigger time did not survive: annotations %v", tes.Annotations)
	}
	if !wantNode.Deleting || !wantNode.ToBeDeleted || wantNode.Eligible() {
		t.Errorf("untrimmed Node being deleted and tainted reads as %+v", wantNode)
	}
	if tn.DeletionTimestamp == nil || len(tn.Spec.Taints) != 1 {
		t.Errorf("the Node's deletionTimestamp or taints were dropped: %+v", tn)
	}
}

// TestTriggerTimes checks which EndpointSlice trigger times the Converter reports: the
// stamps of new and changed slices of changed Services, by address family; not those of
// unchanged slices, not a value that does not parse, and not one from before the proxy
// started.
func TestTriggerTimes(t *testing.T) {
	start := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	stamp := func(es *discoveryv1.EndpointSlice, v string) *discoveryv1.EndpointSlice {
		es = es.DeepCopy()
		es.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: v}
		return es
	}
	web := model.ServiceName{Namespace: "default", Name: "web"}
	objs := webObjects("10.244.1.2")
	v6 := objs.EndpointSlices[0].DeepCopy()
	v6.Name, v6.AddressType, v6.Endpoints[0].Addresses = "web-2", discoveryv1.AddressTypeIPv6, []string{"fd00:244::2"}
	objs.Services[0].Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
	c := Converter{TriggerTimesAfter: start}

	objs.EndpointSlices = []*discoveryv1.EndpointSlice{stamp(objs.EndpointSlices[0], "2026-11-24T09:59:59.5Z"), stamp(v6, "2026-11-24T10:00:01.25Z")}
	c.Update(FullDelta(objs))
	want := map[model.ServiceName]map[model.Family][]time.Time{web: {model.IPv6: {start.Add(1250 * time.Millisecond)}}}
	if got := c.TriggerTimes(); !reflect.DeepEqual(got, want) {
		t.Errorf("first snapshot, IPv4 slice stamped before the start: trigger times %v, want %v", got, want)
	}

	// The IPv4 slice gets a new endpoint and a stamp; the IPv6 slice is unchanged.
	v4 := stamp(objs.EndpointSlices[0], "2026-11-24T10:00:09.000000001Z")
	v4.Endpoints[0].Addresses = []string{"10.244.1.3"}
	objs.EndpointSlices[0] = v4
	c.Update(FullDelta(objs))
	want = map[model.ServiceName]map[model.Family][]time.Time{web: {model.IPv4: {start.Add(9*time.Second + 1)}}}
	if got := c.TriggerTimes(); !reflect.DeepEqual(got, want) {
		t.Errorf("one slice changed: trigger times %v, want %v", got, want)
	}

	bad := stamp(v4, "yesterday")
	bad.Endpoints[0].Addresses = []string{"10.244.1.4"}
	objs.EndpointSlices[0] = bad
	if ch := c.Update(FullDelta(objs)); ch[web] == nil {
		t.Fatalf("a slice with a bad stamp did not change the Service: %v", ch)
	}
	if got := c.TriggerTimes(); len(got) != 0 {
		t.Errorf("a stamp that does not parse: trigger times %v, want none", got)
	}
}

// TestInitialListNamesNothing checks that the adds of an informer's initial list are counted
// but name no Service and wake nothing (the Full Delta converts every Service anyway), and
// that later adds name theirs.
func TestInitialListNamesNothing(t *testing.T) {
	var tr tracker
	woke := 0
	h := eventHandlers{t: &tr, after: func() { woke++ }}
	objs := webObjects("10.244.1.2")
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}}
	h.services().OnAdd(objs.Services[0], true)
	h.slices().OnAdd(objs.EndpointSlices[0], true)
	h.nodes().OnAdd(node, true)
	names, nodeChanged, ev := tr.take()
	if len(names) != 0 || nodeChanged || woke != 0 || ev != (Events{Services: 1, EndpointSlices: 1}) {
		t.Errorf("initial list: names %v, node %v, woke %d, events %+v; want none, false, 0, 1 and 1",
			names, nodeChanged, woke, ev)
	}
	h.slices().OnAdd(objs.EndpointSlices[0], false)
	h.nodes().OnAdd(node, false)
	names, nodeChanged, _ = tr.take()
	if _, ok := names[model.ServiceName{Namespace: "default", Name: "web"}]; !ok || !nodeChanged || woke != 2 {
		t.Errorf("later adds: names %v, node %v, woke %d; want default/web, true, 2", names, nodeChanged, woke)
	}
}
