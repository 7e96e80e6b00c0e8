package integration

import (
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/daemon"
	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
)

// Objects of the render test: two nodes, a ClusterIP Service with an endpoint on each, and a
// LoadBalancer Service with externalTrafficPolicy Local and an endpoint on each.
const (
	renderWebNode1 = "10.244.1.10"
	renderWebNode2 = "10.244.2.10"
	renderLBNode1  = "10.244.1.20"
	renderLBNode2  = "10.244.2.20"
	renderLBIP     = "198.51.100.20"
)

// readySlice returns the IPv4 EndpointSlice svc-1 of Service svc, port "http" 8080, with a
// ready endpoint per address on the node named next to it (addrNode: address, node, ...).
func readySlice(svc string, addrNode ...string) *discoveryv1.EndpointSlice {
	name, proto, port, ready := "http", corev1.ProtocolTCP, int32(8080), true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
	for i := 0; i+1 < len(addrNode); i += 2 {
		node := addrNode[i+1]
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{addrNode[i]},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node})
	}
	return es
}

// createRenderObjects creates the render test's Nodes, Services and EndpointSlices through
// the API and returns them as the API server holds them (ClusterIPs and NodePorts
// allocated).
func createRenderObjects(t *testing.T, admin kubernetes.Interface) cluster.Objects {
	t.Helper()
	ctx := t.Context()
	var objs cluster.Objects
	for name, ip := range map[string]string{nodeName: topology.Node1IPv4, node2Name: topology.Node2IPv4} {
		n, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create node %s: %v", name, err)
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
		if n, err = admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set addresses of node %s: %v", name, err)
		}
		objs.Nodes = append(objs.Nodes, n)
	}
	port := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}
	svcs := admin.CoreV1().Services("default")
	web, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{port}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service web: %v", err)
	}
	lb, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "local-lb", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{port},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service local-lb: %v", err)
	}
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: renderLBIP}}
	if lb, err = svcs.UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set the load balancer of local-lb: %v", err)
	}
	objs.Services = []*corev1.Service{web, lb}
	for _, es := range []*discoveryv1.EndpointSlice{
		readySlice("web", renderWebNode1, nodeName, renderWebNode2, node2Name),
		readySlice("local-lb", renderLBNode1, nodeName, renderLBNode2, node2Name),
	} {
		es, err := admin.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create slice %s: %v", es.Name, err)
		}
		objs.EndpointSlices = append(objs.EndpointSlices, es)
	}
	return objs
}

// waitKubernetesSlice waits until the API server has written the EndpointSlice of the
// kubernetes Service.
func waitKubernetesSlice(t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := admin.DiscoveryV1().EndpointSlices("default").Get(t.Context(), "kubernetes", metav1.GetOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server wrote no EndpointSlice for the kubernetes Service: %v", err)
		}
		time.Sleep(pollInterval)
	}
}

// listObjects lists every Service, EndpointSlice and Node the API server holds.
func listObjects(t *testing.T, admin kubernetes.Interface) cluster.Objects {
	t.Helper()
	ctx := t.Context()
	var objs cluster.Objects
	svcs, err := admin.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list services: %v", err)
	}
	for i := range svcs.Items {
		objs.Services = append(objs.Services, &svcs.Items[i])
	}
	slices, err := admin.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list endpointslices: %v", err)
	}
	for i := range slices.Items {
		objs.EndpointSlices = append(objs.EndpointSlices, &slices.Items[i])
	}
	nodes, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	for i := range nodes.Items {
		objs.Nodes = append(objs.Nodes, &nodes.Items[i])
	}
	return objs
}

// TestRenderKubeconfig previews two nodes' rules from a real API server with `nftproxy
// render --kubeconfig` (as the ServiceAccount of deploy/'s RBAC, from outside the nodes):
// the output must be the model's ruleset for the objects the API server holds, and name
// each node's own endpoints, its own under externalTrafficPolicy Local and in the hairpin
// set, and its primary IP as the address of its NodePorts.
func TestRenderKubeconfig(t *testing.T) {
	srv := apiserver.Start(t)
	admin := kubernetes.NewForConfigOrDie(srv.AdminConfig())
	applyDeployRBAC(t, admin)
	created := createRenderObjects(t, admin)
	// The model gets every object the API server holds: also the kubernetes Service and
	// the EndpointSlice the API server writes for itself, a moment after it is ready.
	waitKubernetesSlice(t, admin)
	objs := listObjects(t, admin)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	srv.WriteKubeconfig(t, kubeconfig, apiserver.NFTProxyUser)
	lb := created.Services[1]
	clusterIP, nodePort := lb.Spec.ClusterIP, lb.Spec.Ports[0].NodePort

	for _, tc := range []struct {
		node, nodeIP string
		local, other string // local-lb's endpoints on this node and the other
		hairpin      []string
	}{
		{nodeName, topology.Node1IPv4, renderLBNode1, renderLBNode2, []string{renderLBNode1, renderWebNode1}},
		{node2Name, topology.Node2IPv4, renderLBNode2, renderLBNode1, []string{renderLBNode2, renderWebNode2}},
	} {
		t.Run(tc.node, func(t *testing.T) {
			flags := []string{"--hostname-override", tc.node, "--cluster-cidr", topology.PodCIDRv4}
			cmd := exec.Command(proxyBin, append([]string{"render", "--kubeconfig", kubeconfig}, flags...)...)
			out, err := cmd.Output()
			if err != nil {
				var stderr []byte
				if exit, ok := err.(*exec.ExitError); ok {
					stderr = exit.Stderr
				}
				t.Fatalf("nftproxy render --kubeconfig: %v\n%s", err, stderr)
			}
			got := string(out)

			// The model's rules for the same objects and flags.
			o, _, err := daemon.Parse(flags, false, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			rulesets, bad := o.Config.Preview(objs, tc.node)
			if len(bad) != 0 {
				t.Fatalf("the test's objects are bad: %v", bad)
			}
			var want strings.Builder
			for _, rs := range rulesets {
				want.WriteString(model.Render(rs))
			}
			if got != want.String() {
				t.Errorf("render --kubeconfig differs from the model's rules for the API server's objects:\n%s",
					scenario.LineDiff(want.String(), got))
			}

			// Each element is on a line of its own, as nft prints it.
			for _, line := range []string{
				// This node's primary IP accepts NodePorts (--nodeport-addresses primary).
				"elements = { " + tc.nodeIP + " }",
				// The LoadBalancer IP sends outside traffic to the one endpoint on this
				// node, in slot 2 after both endpoints (the cluster set, for pods).
				renderLBIP + ` . tcp . 80 comment "default/local-lb:http" : goto external-local-tcp-2-1`,
				renderLBIP + ` . tcp . 80 . 2 : ` + tc.local + ` . 8080`,
				"tcp . " + strconv.Itoa(int(nodePort)) + ` . 2 : ` + tc.local + ` . 8080`,
				// Cluster traffic spreads over both nodes' endpoints.
				clusterIP + ` . tcp . 80 comment "default/local-lb:http" : goto cluster-tcp-2`,
			} {
				if !strings.Contains(got, line) {
					t.Errorf("the rules of %s do not hold %q:\n%s", tc.node, line, got)
				}
			}
			for _, ep := range tc.hairpin {
				if !strings.Contains(got, ep+" . "+ep) {
					t.Errorf("the hairpin set of %s lacks its endpoint %s", tc.node, ep)
				}
			}
			if strings.Contains(got, tc.other+" . "+tc.other) || strings.Contains(got, ". 2 : "+tc.other) {
				t.Errorf("the rules of %s treat the other node's endpoint %s as local:\n%s", tc.node, tc.other, got)
			}
		})
	}
}
