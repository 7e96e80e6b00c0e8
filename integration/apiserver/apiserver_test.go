package apiserver_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
)

// TestServer starts etcd and kube-apiserver, checks the allocations of a
// NodePort Service, the nftproxy identity's RBAC (forbidden, then allowed
// once bound), a kubeconfig file, and a restart of the API server.
func TestServer(t *testing.T) {
	srv := apiserver.Start(t)
	ctx := t.Context()
	admin := kubernetes.NewForConfigOrDie(srv.AdminConfig())
	user := kubernetes.NewForConfigOrDie(srv.UserConfig())

	svc, err := admin.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP,
				Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix(apiserver.ServiceCIDR).Contains(ip) {
		t.Errorf("ClusterIP %q is not in %s", svc.Spec.ClusterIP, apiserver.ServiceCIDR)
	}
	if np := svc.Spec.Ports[0].NodePort; np < 30000 || np > 32767 {
		t.Errorf("NodePort %d is not in %s", np, apiserver.NodePortRange)
	}

	name, proto, port, ready := "http", corev1.ProtocolTCP, int32(8080), true
	_, err = admin.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.2"},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create endpointslice: %v", err)
	}

	// The nftproxy identity may do nothing until RBAC allows it.
	_, err = user.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("nftproxy lists services without RBAC: err = %v, want Forbidden", err)
	}
	_, err = admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "nftproxy"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create clusterrole: %v", err)
	}
	_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "nftproxy"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "nftproxy"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: apiserver.NFTProxyUser}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create clusterrolebinding: %v", err)
	}
	// RBAC reads roles through an informer: allow a moment.
	waitFor(t, "nftproxy may list services", func() error {
		_, err := user.CoreV1().Services("").List(ctx, metav1.ListOptions{})
		return err
	})
	slices, err := user.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil || len(slices.Items) == 0 {
		t.Fatalf("nftproxy lists endpointslices: %d items, err = %v", len(slices.Items), err)
	}
	if _, err := user.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("nftproxy lists pods: err = %v, want Forbidden", err)
	}

	// A kubeconfig file for the nftproxy binary works.
	path := filepath.Join(t.TempDir(), "kubeconfig")
	srv.WriteKubeconfig(t, path, apiserver.NFTProxyUser)
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	fromFile := kubernetes.NewForConfigOrDie(cfg)
	if _, err := fromFile.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list nodes with the kubeconfig: %v", err)
	}
	if data, _ := os.ReadFile(path); len(data) == 0 {
		t.Fatal("empty kubeconfig")
	}

	// A restart ends open watches, promptly.
	w, err := user.CoreV1().Services("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("watch services: %v", err)
	}
	defer w.Stop()
	// A client that keeps asking during the restart may find the server
	// down, but never half started (refusing what RBAC allows).
	stop := make(chan struct{})
	polled := make(chan []error)
	go func() {
		var forbidden []error
		for {
			select {
			case <-stop:
				polled <- forbidden
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := user.CoreV1().Services("").List(ctx, metav1.ListOptions{}); apierrors.IsForbidden(err) {
				forbidden = append(forbidden, err)
			}
		}
	}()
	begin := time.Now()
	srv.Restart(t)
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("restart with an open watch took %v", d)
	}
	close(stop)
	if forbidden := <-polled; len(forbidden) > 0 {
		t.Errorf("during the restart nftproxy was refused %d times: %v", len(forbidden), forbidden[0])
	}
	select {
	case <-drained(w.ResultChan()):
	case <-time.After(10 * time.Second):
		t.Errorf("the watch is still open after the restart")
	}
	list, err := user.CoreV1().Services("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list services after restart: %v", err)
	}
	found := false
	for _, s := range list.Items {
		found = found || s.Name == "web" && s.Spec.ClusterIP == svc.Spec.ClusterIP
	}
	if !found {
		t.Errorf("service web (%s) missing after restart: %v", svc.Spec.ClusterIP, list.Items)
	}
}

// drained closes its result once ch is closed.
func drained[T any](ch <-chan T) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for range ch {
		}
		close(done)
	}()
	return done
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestServerInNetNS runs the servers inside a network namespace: the
// configurations dial into it, and the port is not open in the test's own
// namespace.
func TestServerInNetNS(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "apiserver")
	srv := apiserver.Start(t, apiserver.Options{NetNS: ns})
	admin := kubernetes.NewForConfigOrDie(srv.AdminConfig())
	if _, err := admin.CoreV1().Namespaces().Get(t.Context(), "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("get namespace default through the namespace: %v", err)
	}
	host := strings.TrimPrefix(srv.URL, "https://")
	if c, err := net.DialTimeout("tcp", host, time.Second); err == nil {
		c.Close()
		t.Errorf("%s answers outside namespace %s", host, ns)
	}
	// What was written before the restart is read back after it. (Not the
	// "kubernetes" Service: the API server creates that asynchronously, and
	// a restart can be ready before it has.)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "before-restart"}, Data: map[string]string{"k": "v"}}
	if _, err := admin.CoreV1().ConfigMaps("default").Create(t.Context(), cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create configmap: %v", err)
	}
	srv.Restart(t)
	got, err := admin.CoreV1().ConfigMaps("default").Get(t.Context(), "before-restart", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get configmap after restart: %v", err)
	}
	if got.Data["k"] != "v" {
		t.Fatalf("configmap after restart holds %v, want k=v", got.Data)
	}
}
