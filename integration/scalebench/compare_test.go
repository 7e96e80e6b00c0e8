package scalebench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
)

// result holds one proxy's figures at one N.
type result struct {
	ColdSync, Restart    time.Duration
	ChangeMed, ChangeP90 time.Duration
	OwnCold, OwnChange   float64 // own sync-duration metric: cold sync, median per change (s)
	RSSCold, RSSRestart  int64   // peak RSS (VmHWM) of the first process and of the restarted one
	CPUCold, CPURestart  float64 // CPU seconds of the first process and of the restarted one
	Samples              int
	Err                  string
}

type proxyKind struct {
	name, table string
	args        func(kubeconfig string) []string
	bin         string
}

func TestScaleCompare(t *testing.T) {
	if os.Getenv(enableEnv) != "1" {
		t.Skipf("set %s=1 to run the side-by-side scale benchmark (make bench-compare)", enableEnv)
	}
	topology.RequirePrivileged(t)
	ns, err := envInts(nEnv, []int{1000, 5000, 10000})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := envInts(mEnv, []int{10})
	if err != nil {
		t.Fatal(err)
	}
	samples, err := envInts(samplesEnv, []int{20})
	if err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	out := os.Getenv(outEnv)
	if out == "" {
		out = filepath.Join(repoRoot(), "docs", "benchmarks")
	}

	bins := t.TempDir()
	proxies := []proxyKind{
		{name: "nftproxy", table: "nftproxy", bin: buildNFTProxy(t, bins), args: func(kc string) []string {
			return []string{"run", "--kubeconfig", kc, "--hostname-override", scale.NodeName(0),
				"--cluster-cidr", "10.128.0.0/9", "--min-sync-period=0",
				"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"}
		}},
		{name: "kube-proxy", table: "kube-proxy", bin: kubeProxyBin(t), args: func(kc string) []string {
			return []string{"--proxy-mode=nftables", "--conntrack-max-per-core=0",
				"--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
				"--kubeconfig", kc, "--hostname-override", scale.NodeName(0),
				"--cluster-cidr", "10.128.0.0/9",
				"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"}
		}},
	}

	all := map[int]map[string]*result{}
	var done []int
	for _, n := range ns {
		ok := t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			all[n] = runN(t, n, m, samples[0], proxies)
		})
		if all[n] != nil {
			done = append(done, n)
		}
		writeFile(t, filepath.Join(out, "results.md"), []byte(report(done, m, all)))
		writeFile(t, filepath.Join(out, "sync-time.svg"), []byte(chart(done, all)))
		if !ok {
			break
		}
	}
}

func runN(t *testing.T, n, m, samples int, proxies []proxyKind) map[string]*result {
	if n > 65000 {
		t.Fatalf("N=%d: the service CIDR %s holds ~65k ClusterIPs", n, apiserver.ServiceCIDR)
	}
	apiNS := topology.NewNetNS(t, "api")
	srv := apiserver.Start(t, apiserver.Options{NetNS: apiNS})
	cfg := srv.AdminConfig()
	cfg.QPS, cfg.Burst = 1000, 2000
	cs := kubernetes.NewForConfigOrDie(cfg)
	begin := time.Now()
	populate(t, cs, n, m)
	t.Logf("created %d Services and EndpointSlices (x%d endpoints) in %v", n, m, time.Since(begin).Round(time.Millisecond))

	res := map[string]*result{}
	for _, pk := range proxies {
		r := &result{}
		res[pk.name] = r
		if err := measure(t, srv, cs, pk, n, m, samples, r); err != nil {
			r.Err = err.Error()
			t.Errorf("%s: %v", pk.name, err)
		}
		t.Logf("%s N=%d: %+v", pk.name, n, *r)
	}
	return res
}

// populate creates the Namespaces, the benchmark Node, and N Services with one EndpointSlice
// of m ready endpoints each (internal/scale's addresses), with many requests in flight.
func populate(t *testing.T, cs kubernetes.Interface, n, m int) {
	ctx := t.Context()
	for i := range min(n, 100) {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", i)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create namespace: %v", err)
		}
	}
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: scale.NodeName(0),
		Labels: map[string]string{"kubernetes.io/hostname": scale.NodeName(0)}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("node status: %v", err)
	}
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := createService(ctx, cs, i, m); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

func createService(ctx context.Context, cs kubernetes.Interface, i, m int) error {
	name := scale.Name(i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name.Name, Namespace: name.Namespace},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: scale.ClusterIP(i).String(),
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if np := scale.NodePort(i); np != 0 {
		svc.Spec.Type = corev1.ServiceTypeNodePort
		svc.Spec.Ports[0].NodePort = int32(np)
	}
	if _, err := cs.CoreV1().Services(name.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %d: %w", i, err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(name.Namespace).Create(ctx, slice(i, m, -1, ""), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create slice %d: %w", i, err)
	}
	return nil
}

// slice returns Service i's EndpointSlice; endpoint j (if ≥ 0) gets address addr instead.
func slice(i, m, j int, addr string) *discoveryv1.EndpointSlice {
	name := scale.Name(i)
	port, pname, proto, ready := int32(8080), "http", corev1.ProtocolTCP, true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name.Name + "-1", Namespace: name.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: name.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &port}},
	}
	for k := range m {
		a := scale.EndpointIP(i, k, m).String()
		if k == j {
			a = addr
		}
		node := scale.NodeName((i*m + k) % scale.Nodes)
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node})
	}
	return es
}

// measure runs one proxy in a fresh namespace: cold sync, restart, single changes.
func measure(t *testing.T, srv *apiserver.Server, cs kubernetes.Interface, pk proxyKind, n, m, samples int, r *result) error {
	ns := proxyNS(t, pk.name[:2], srv)
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	srv.WriteKubeconfig(t, kc, apiserver.AdminUser)
	logPath := filepath.Join(dir, pk.name+".log")
	timeout := 10*time.Minute + time.Duration(n)*10*time.Millisecond
	if d, err := time.ParseDuration(os.Getenv("SCALEBENCH_SYNC_TIMEOUT")); err == nil {
		timeout = d
	}

	// 1. Cold sync.
	start := time.Now()
	p := startProc(t, ns, logPath, pk.bin, pk.args(kc)...)
	at, err := waitSynced(ns, p, pk.table, n, start, timeout)
	if err != nil {
		return fmt.Errorf("cold sync: %w", err)
	}
	r.ColdSync = at.Sub(start)
	if mm, err := metrics(ns); err == nil {
		r.OwnCold = metric(mm, "kubeproxy_sync_proxy_rules_duration_seconds_sum")
	}
	t.Logf("%s: cold sync %v (own metric %.3fs)", pk.name, r.ColdSync, r.OwnCold)
	time.Sleep(2 * time.Second) // let the proxy settle (deferred work, GC)

	// 2. Restart with the rules in place.
	hwm1, cpu1, _ := p.stats()
	p.kill()
	start = time.Now()
	p = startProc(t, ns, logPath, pk.bin, pk.args(kc)...)
	at, err = waitSynced(ns, p, pk.table, n, start, timeout)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	r.Restart = at.Sub(start)
	t.Logf("%s: restart %v", pk.name, r.Restart)
	time.Sleep(2 * time.Second)

	// 3. Single endpoint replaced, samples times, each on another Service.
	var lat, own []float64
	ctx := t.Context()
	for s := range samples {
		i := (s*7919 + 13) % n
		name := scale.Name(i)
		addr := fmt.Sprintf("10.127.%d.%d", s/250, s%250+1) // outside every other endpoint
		before, err := metrics(ns)
		if err != nil {
			return err
		}
		gen0, err := generation(ns)
		if err != nil {
			return err
		}
		es := slice(i, m, s%m, addr)
		es.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Format(time.RFC3339Nano)}
		t0 := time.Now()
		if _, err := cs.DiscoveryV1().EndpointSlices(name.Namespace).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update slice: %w", err)
		}
		var seen time.Time
		deadline := t0.Add(2 * time.Minute)
		gen := gen0
		for time.Now().Before(deadline) {
			g, err := generation(ns)
			if err != nil {
				return err
			}
			if g != gen {
				seen = time.Now()
				gen = g
				// Confirm that it is the change's sync (not a periodic one): the proxy's
				// sync counter must move within a moment.
				if synced(ns, before, 500*time.Millisecond) {
					break
				}
				seen = time.Time{}
			}
			time.Sleep(2 * time.Millisecond)
		}
		if seen.IsZero() {
			return fmt.Errorf("change %d: no sync seen within 2m:\n%s", s, p.tail())
		}
		lat = append(lat, seen.Sub(t0).Seconds())
		if after, err := metrics(ns); err == nil {
			dc := metric(after, "kubeproxy_sync_proxy_rules_duration_seconds_count") - metric(before, "kubeproxy_sync_proxy_rules_duration_seconds_count")
			ds := metric(after, "kubeproxy_sync_proxy_rules_duration_seconds_sum") - metric(before, "kubeproxy_sync_proxy_rules_duration_seconds_sum")
			if dc > 0 {
				own = append(own, ds/dc)
			}
		}
		time.Sleep(1200 * time.Millisecond) // beyond kube-proxy's default --min-sync-period (1s)
	}
	r.Samples = len(lat)
	r.ChangeMed = time.Duration(median(lat) * float64(time.Second))
	r.ChangeP90 = time.Duration(quantile(lat, 0.9) * float64(time.Second))
	r.OwnChange = median(own)
	hwm2, cpu2, err := p.stats()
	if err != nil {
		return err
	}
	r.RSSCold, r.RSSRestart = hwm1, hwm2
	r.CPUCold, r.CPURestart = cpu1, cpu2
	p.kill()
	return nil
}

// synced reports whether the proxy's sync-duration count rises above before's within d.
func synced(ns *topology.NetNS, before map[string]float64, d time.Duration) bool {
	key := "kubeproxy_sync_proxy_rules_duration_seconds_count"
	deadline := time.Now().Add(d)
	for {
		if m, err := metrics(ns); err == nil && metric(m, key) > metric(before, key) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
