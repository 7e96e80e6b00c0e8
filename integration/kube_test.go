package integration

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
)

// The end-to-end test runs etcd and kube-apiserver on node1's loopback (the API server
// allocates ClusterIPs from 10.96.0.0/16 and NodePorts), creates Services and EndpointSlices
// through the API (there is no controller manager), and runs nftproxy in node1 with the
// RBAC of deploy/ only, talking to the API server with a ServiceAccount's identity.

// kubeHarness is the traffic harness plus an API server.
type kubeHarness struct {
	*harness
	srv   *apiserver.Server
	admin kubernetes.Interface
}

// newKubeHarness starts the harness and an API server with the extra kube-apiserver flags.
func newKubeHarness(t *testing.T, apiserverArgs ...string) *kubeHarness {
	t.Helper()
	h := newHarness(t)
	srv := apiserver.Start(t, apiserver.Options{NetNS: h.tp.Node1, ExtraArgs: apiserverArgs})
	k := &kubeHarness{harness: h, srv: srv, admin: kubernetes.NewForConfigOrDie(srv.AdminConfig())}
	k.applyDeployRBAC(t)
	ctx := t.Context()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName}},
		Spec:       corev1.NodeSpec{PodCIDR: topology.Node1PodCIDRv4, PodCIDRs: []string{topology.Node1PodCIDRv4, topology.Node1PodCIDRv6}},
	}
	node, err := k.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: topology.Node1IPv4},
		{Type: corev1.NodeInternalIP, Address: topology.Node1IPv6},
	}
	if _, err := k.admin.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set node addresses: %v", err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	srv.WriteKubeconfig(t, kubeconfig, apiserver.NFTProxyUser)
	h.source = []string{"--kubeconfig", kubeconfig}
	return k
}

// applyDeployRBAC creates the ClusterRole and ClusterRoleBinding of deploy/, so that a
// permission missing there fails the test.
func (k *kubeHarness) applyDeployRBAC(t *testing.T) {
	t.Helper()
	applyDeployRBAC(t, k.admin)
}

// applyDeployRBAC creates the ClusterRole and ClusterRoleBinding of deploy/ with admin.
func applyDeployRBAC(t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	for _, name := range []string{"clusterrole.yaml", "clusterrolebinding.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "deploy", name))
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("decode deploy/%s: %v", name, err)
		}
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			_, err = admin.RbacV1().ClusterRoles().Create(t.Context(), o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = admin.RbacV1().ClusterRoleBindings().Create(t.Context(), o, metav1.CreateOptions{})
		default:
			t.Fatalf("deploy/%s holds a %T", name, obj)
		}
		if err != nil {
			t.Fatalf("create deploy/%s: %v", name, err)
		}
	}
}

// slice returns the EndpointSlice of Service svc with the given pods as ready endpoints.
func kubeSlice(svc string, port int32, pods ...*topology.Pod) *discoveryv1.EndpointSlice {
	name, proto, ready := "http", corev1.ProtocolTCP, true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		Endpoints:   []discoveryv1.Endpoint{},
	}
	for _, p := range pods {
		node := nodeName
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.IPv4.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node})
	}
	return es
}

// TestKubernetesEndToEnd drives nftproxy through the API server: a Service and its slice
// appear, endpoints scale up and down, the type goes ClusterIP → NodePort → LoadBalancer and
// back, the API server restarts, and the Service is deleted; real connections follow each step.
func TestKubernetesEndToEnd(t *testing.T) {
	k := newKubeHarness(t)
	ctx := t.Context()
	client := k.tp.AddPod(t, 1, "client").NS
	pod1 := k.pod(1, "pod1", 8080)
	pod2 := k.pod(2, "pod2", 8080)
	k.start("--min-sync-period=0")

	svcs := k.admin.CoreV1().Services("default")
	slices := k.admin.DiscoveryV1().EndpointSlices("default")
	svc, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP,
			Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)
	if !netip.MustParsePrefix("10.96.0.0/16").Contains(clusterIP) {
		t.Fatalf("the API server allocated ClusterIP %s, outside 10.96.0.0/16", clusterIP)
	}
	target := netip.AddrPortFrom(clusterIP, 80)
	if _, err := slices.Create(ctx, kubeSlice("web", 8080, pod1), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create slice: %v", err)
	}
	ep1, ep2 := netip.AddrPortFrom(pod1.IPv4, 8080), netip.AddrPortFrom(pod2.IPv4, 8080)

	step := func(name string, change func() error, check func(t *testing.T)) {
		t.Helper()
		if change != nil {
			if err := change(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		t.Run(name, func(t *testing.T) {
			k.checkProxy(t)
			check(t)
		})
	}
	updateSlice := func(pods ...*topology.Pod) func() error {
		return func() error {
			es, err := slices.Get(ctx, "web-1", metav1.GetOptions{})
			if err != nil {
				return err
			}
			es.Endpoints = kubeSlice("web", 8080, pods...).Endpoints
			_, err = slices.Update(ctx, es, metav1.UpdateOptions{})
			return err
		}
	}
	setType := func(typ corev1.ServiceType, lbIP string) func() error {
		return func() error {
			s, err := svcs.Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Spec.Type = typ
			if typ == corev1.ServiceTypeClusterIP {
				for i := range s.Spec.Ports {
					s.Spec.Ports[i].NodePort = 0
				}
			}
			if s, err = svcs.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
				return err
			}
			s.Status.LoadBalancer.Ingress = nil
			if lbIP != "" {
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
			}
			_, err = svcs.UpdateStatus(ctx, s, metav1.UpdateOptions{})
			return err
		}
	}
	// follows waits until connections from ns to to reach exactly the endpoints want.
	follows := func(t *testing.T, ns *topology.NetNS, to netip.AddrPort, want ...netip.AddrPort) {
		t.Helper()
		k.waitReply(t, ns, "tcp", to)
		deadline := time.Now().Add(readyTimeout)
		for {
			seen := countServers(dialN(t, "probe", ns, "tcp", to, 20))
			ok := len(seen) == len(want)
			for _, w := range want {
				ok = ok && seen[w] > 0
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s → %s reaches %v, want exactly %v", ns, to, seen, want)
			}
			time.Sleep(pollInterval)
		}
	}
	nodePort := func() netip.AddrPort {
		s, err := svcs.Get(ctx, "web", metav1.GetOptions{})
		if err != nil || s.Spec.Ports[0].NodePort == 0 {
			t.Fatalf("no NodePort allocated: %v", err)
		}
		return netip.AddrPortFrom(netip.MustParseAddr(topology.Node1IPv4), uint16(s.Spec.Ports[0].NodePort))
	}

	step("clusterIP", nil, func(t *testing.T) { follows(t, client, target, ep1) })
	step("scale up", updateSlice(pod1, pod2), func(t *testing.T) { follows(t, client, target, ep1, ep2) })
	step("scale down", updateSlice(pod2), func(t *testing.T) { follows(t, client, target, ep2) })
	step("nodePort", setType(corev1.ServiceTypeNodePort, ""), func(t *testing.T) {
		follows(t, k.tp.Client, nodePort(), ep2)
	})
	step("loadBalancer", setType(corev1.ServiceTypeLoadBalancer, "198.51.100.20"), func(t *testing.T) {
		follows(t, k.tp.Client, netip.MustParseAddrPort("198.51.100.20:80"), ep2)
	})
	var oldNodePort netip.AddrPort
	step("back to clusterIP", func() error { oldNodePort = nodePort(); return setType(corev1.ServiceTypeClusterIP, "")() }, func(t *testing.T) {
		follows(t, client, target, ep2)
		if r, err := topology.Dial(k.tp.Client, "tcp", oldNodePort, probeTimeout); err == nil {
			t.Errorf("the former NodePort %s still answers: %v", oldNodePort, r)
		}
	})
	// Every permission the proxy uses must be in deploy/'s RBAC. (Right after an API server
	// restart, RBAC refuses everyone for a moment, so look only before it.)
	if out := k.proxy.log.String(); strings.Contains(out, "forbidden") {
		t.Errorf("the proxy was refused something by RBAC:\n%s", out)
	}
	step("API server restarted", func() error { k.srv.Restart(t); return updateSlice(pod1)() }, func(t *testing.T) {
		follows(t, client, target, ep1)
	})
	step("deleted", func() error { return svcs.Delete(ctx, "web", metav1.DeleteOptions{}) }, func(t *testing.T) {
		deadline := time.Now().Add(readyTimeout)
		for {
			_, err := topology.Dial(client, "tcp", target, probeTimeout)
			if err != nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still answers after the Service was deleted", target)
			}
			time.Sleep(pollInterval)
		}
	})
}
