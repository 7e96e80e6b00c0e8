package scalebench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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
	// Connect times from a pod to the probe Service's ClusterIP (median and p90), through the
	// rules of a proxy that saw only the probe Service and through those with all N+1 Services;
	// Connects timed of each.
	ConnOne, ConnOneP90 time.Duration
	ConnN, ConnNP90     time.Duration
	Connects            int
	Err                 string
}

// proxyKind is one proxy configuration under test.
type proxyKind struct {
	name  string // as shown in the report
	short string // for namespaces and log files
	table string
	args  func(kubeconfig string) []string
	bin   string
	// changeOnly limits the run to the cold sync and the single changes (no data plane, no
	// restart, no resource figures).
	changeOnly bool
}

// Names of the proxy configurations (keys of a run's results).
const (
	nftName         = "nftproxy"
	kubeName        = "kube-proxy"
	nftDefaultsName = "nftproxy (default --min-sync-period)"
)

// config holds the run's parameters.
type config struct {
	m        int // endpoints per Service
	samples  int // single changes per proxy
	connects int // timed connects per data-plane measurement
	// kubeProxy is what `kube-proxy --version` prints (integration/k8s pins the release).
	kubeProxy string
}

// changeGap is the pause after each single change's sync is seen, before the next change: more
// than twice the default --min-sync-period (1 s) of both proxies, so each change finds the proxy
// idle (nftproxy at its default syncs again up to 1 s after a change to delete stale chains).
const changeGap = 2500 * time.Millisecond

// connectWarmup untimed connects from each client pod precede a data-plane measurement.
const connectWarmup = 200

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
	connects, err := envInts(connectsEnv, []int{2000})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{m: ms[0], samples: samples[0], connects: connects[0]}
	if cfg.samples > 1000 {
		t.Fatalf("%s=%d: at most 1000 (the single changes' addresses)", samplesEnv, cfg.samples)
	}
	out := os.Getenv(outEnv)
	if out == "" {
		out = filepath.Join(repoRoot(), "docs", "benchmarks")
	}

	bins := t.TempDir()
	nftBin := buildNFTProxy(t, bins)
	nftArgs := func(minSync ...string) func(string) []string {
		return func(kc string) []string {
			return append([]string{"run", "--kubeconfig", kc, "--hostname-override", scale.NodeName(0),
				"--cluster-cidr", "10.128.0.0/9",
				"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"}, minSync...)
		}
	}
	kubeBin := kubeProxyBin(t)
	if v, err := exec.Command(kubeBin, "--version").Output(); err == nil {
		cfg.kubeProxy = strings.TrimSpace(string(v))
	}
	proxies := []proxyKind{
		{name: nftName, short: "nftproxy", table: "nftproxy", bin: nftBin, args: nftArgs("--min-sync-period=0")},
		{name: kubeName, short: "kube-proxy", table: "kube-proxy", bin: kubeBin, args: func(kc string) []string {
			return []string{"--proxy-mode=nftables", "--conntrack-max-per-core=0",
				"--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
				"--kubeconfig", kc, "--hostname-override", scale.NodeName(0),
				"--cluster-cidr", "10.128.0.0/9",
				"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"}
		}},
		{name: nftDefaultsName, short: "nftproxy-defaults", table: "nftproxy", bin: nftBin, args: nftArgs(), changeOnly: true},
	}
	if only := os.Getenv(proxiesEnv); only != "" {
		// A partial run, for looking into one proxy; the report then lacks the others.
		proxies = slices.DeleteFunc(proxies, func(pk proxyKind) bool { return !slices.Contains(strings.Split(only, ","), pk.short) })
	}

	all := map[int]map[string]*result{}
	var done []int
	for _, n := range ns {
		ok := t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			all[n] = runN(t, n, cfg, proxies)
		})
		if all[n] != nil {
			done = append(done, n)
		}
		writeFile(t, filepath.Join(out, "results.md"), []byte(report(done, cfg, all)))
		writeFile(t, filepath.Join(out, "sync-time.svg"), []byte(svgChart(done, all)))
		img, err := pngChart(done, all)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(out, "sync-time.png"), img)
		if !ok {
			break
		}
	}
}

func runN(t *testing.T, n int, cfg config, proxies []proxyKind) map[string]*result {
	if n > 65000 {
		t.Fatalf("N=%d: the service CIDR %s holds ~65k ClusterIPs", n, apiserver.ServiceCIDR)
	}
	apiNS := topology.NewNetNS(t, "api")
	srv := apiserver.Start(t, apiserver.Options{NetNS: apiNS})
	rc := srv.AdminConfig()
	rc.QPS, rc.Burst = 1000, 2000
	cs := kubernetes.NewForConfigOrDie(rc)
	setup(t, cs)

	res := map[string]*result{}
	for _, pk := range proxies {
		res[pk.name] = &result{}
	}
	// Data plane with 1 Service: a fresh proxy in a fresh namespace programs the probe Service
	// while the API server holds only it (and default/kubernetes); the proxy is then killed and
	// its rules stay, to be measured against the N Services' namespace later, interleaved.
	one := map[string]*topology.NetNS{}
	for _, pk := range proxies {
		if pk.changeOnly {
			continue
		}
		client, err := programOne(t, srv, pk)
		if err != nil {
			res[pk.name].Err = err.Error()
			t.Errorf("%s, 1 Service: %v", pk.name, err)
			continue
		}
		one[pk.name] = client
	}

	begin := time.Now()
	populate(t, cs, n, cfg.m)
	t.Logf("created %d Services and EndpointSlices (x%d endpoints) in %v", n, cfg.m, time.Since(begin).Round(time.Millisecond))

	for i, pk := range proxies {
		r := res[pk.name]
		if err := measure(t, srv, cs, pk, n, i, cfg, one[pk.name], r); err != nil {
			if r.Err != "" {
				r.Err += "; "
			}
			r.Err += err.Error()
			t.Errorf("%s: %v", pk.name, err)
		}
		t.Logf("%s N=%d: %+v", pk.name, n, *r)
	}
	return res
}

// setup creates the benchmark Node and the probe Service with its EndpointSlice (one ready
// endpoint on this node: the server pod's listener).
func setup(t *testing.T, cs kubernetes.Interface) {
	ctx := t.Context()
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: scale.NodeName(0),
		Labels: map[string]string{"kubernetes.io/hostname": scale.NodeName(0)}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("node status: %v", err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: probeNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: probeName, Namespace: probeNamespace},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: probeVIP.Addr().String(),
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: int32(probeVIP.Port()),
				TargetPort: intstr.FromInt32(int32(probeBackend.Port()))}},
		},
	}
	if _, err := cs.CoreV1().Services(probeNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create probe service: %v", err)
	}
	port, pname, proto, ready, nodeName := int32(probeBackend.Port()), "http", corev1.ProtocolTCP, true, scale.NodeName(0)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: probeName + "-1", Namespace: probeNamespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: probeName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{probeBackend.Addr().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &nodeName}},
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(probeNamespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create probe slice: %v", err)
	}
}

// populate creates the Namespaces and N Services with one EndpointSlice
// of m ready endpoints each (internal/scale's addresses), with many requests in flight.
func populate(t *testing.T, cs kubernetes.Interface, n, m int) {
	ctx := t.Context()
	for i := range min(n, 100) {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", i)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create namespace: %v", err)
		}
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

// syncTimeout bounds each wait for a proxy's sync at N Services ($SCALEBENCH_SYNC_TIMEOUT).
func syncTimeout(n int) time.Duration {
	if d, err := time.ParseDuration(os.Getenv("SCALEBENCH_SYNC_TIMEOUT")); err == nil {
		return d
	}
	return 10*time.Minute + time.Duration(n)*10*time.Millisecond
}

// programOne runs a fresh proxy in a fresh namespace (with the pods) while the API server holds
// only the probe Service, waits until the probe answers through it, and kills it: its rules stay
// in the namespace. It returns the namespace's client pod.
func programOne(t *testing.T, srv *apiserver.Server, pk proxyKind) (*topology.NetNS, error) {
	ns := proxyNS(t, pk.short[:2]+"1", srv)
	client := attachPods(t, ns)
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	srv.WriteKubeconfig(t, kc, apiserver.AdminUser)
	start := time.Now()
	p := startProc(t, ns, filepath.Join(dir, pk.short+"-1svc.log"), pk.bin, pk.args(kc)...)
	defer p.kill()
	if err := waitProbe(client, p, syncTimeout(1)); err != nil {
		return nil, err
	}
	t.Logf("%s, 1 Service: probe reachable after %v", pk.name, time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // as after the cold sync at N: deferred work (stale chains) done
	return client, nil
}

func dur(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// measure runs one proxy in a fresh namespace with all N+1 Services: cold sync, data plane
// (against one, the client pod of programOne's namespace), restart, single changes; with
// pk.changeOnly only the cold sync and the single changes. idx (the proxy's place in the list)
// keeps the changes' addresses apart from the other proxies' (which changed the same
// EndpointSlices before), so that each change is a real one.
func measure(t *testing.T, srv *apiserver.Server, cs kubernetes.Interface, pk proxyKind, n, idx int, cfg config, one *topology.NetNS, r *result) error {
	ns := proxyNS(t, pk.short[:2], srv)
	var client *topology.NetNS
	if !pk.changeOnly {
		client = attachPods(t, ns)
	}
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	srv.WriteKubeconfig(t, kc, apiserver.AdminUser)
	logPath := filepath.Join(dir, pk.short+".log")
	timeout := syncTimeout(n)

	// 1. Cold sync.
	start := time.Now()
	p := startProc(t, ns, logPath, pk.bin, pk.args(kc)...)
	at, err := waitSynced(ns, p, pk.table, n+1, start, timeout)
	if err != nil {
		return fmt.Errorf("cold sync: %w", err)
	}
	r.ColdSync = at.Sub(start)
	if mm, err := metrics(ns); err == nil {
		r.OwnCold = metric(mm, "kubeproxy_sync_proxy_rules_duration_seconds_sum")
	}
	t.Logf("%s: cold sync %v (own metric %.3fs)", pk.name, r.ColdSync, r.OwnCold)
	time.Sleep(2 * time.Second) // let the proxy settle (deferred work, GC)

	if pk.changeOnly {
		r.Samples, r.ChangeMed, r.ChangeP90, r.OwnChange, err = changes(t, cs, ns, p, n, idx, cfg)
		p.kill()
		return err
	}
	hwm1, cpu1, _ := p.stats()

	// 2. Data plane: with the proxy killed (its rules stay), connects through this namespace
	// (N+1 Services) and through programOne's (1 Service), interleaved. Skipped when
	// programOne failed (one is nil).
	p.kill()
	if one != nil {
		if err := waitProbe(client, nil, time.Minute); err != nil {
			return fmt.Errorf("N Services: %w", err)
		}
		d1, dn, err := connectPair(one, client, cfg.connects)
		if err != nil {
			return err
		}
		r.ConnOne, r.ConnOneP90 = dur(median(d1)), dur(quantile(d1, 0.9))
		r.ConnN, r.ConnNP90 = dur(median(dn)), dur(quantile(dn, 0.9))
		r.Connects = len(dn)
		t.Logf("%s: connect median %v p90 %v (1 Service: %v %v)", pk.name, r.ConnN, r.ConnNP90, r.ConnOne, r.ConnOneP90)
	}

	// 3. Restart with the rules in place.
	start = time.Now()
	p = startProc(t, ns, logPath, pk.bin, pk.args(kc)...)
	at, err = waitSynced(ns, p, pk.table, n+1, start, timeout)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	r.Restart = at.Sub(start)
	t.Logf("%s: restart %v", pk.name, r.Restart)
	time.Sleep(2 * time.Second)

	// 4. Single changes.
	r.Samples, r.ChangeMed, r.ChangeP90, r.OwnChange, err = changes(t, cs, ns, p, n, idx, cfg)
	if err != nil {
		return err
	}
	hwm2, cpu2, err := p.stats()
	if err != nil {
		return err
	}
	r.RSSCold, r.RSSRestart = hwm1, hwm2
	r.CPUCold, r.CPURestart = cpu1, cpu2
	p.kill()
	return nil
}

// changes replaces one endpoint of one EndpointSlice, cfg.samples times, each on another
// Service, and measures from just before the API request until the namespace's ruleset
// generation changes with the proxy's sync counter rising. It returns the number of samples,
// their median and p90, and the median of the proxy's own sync duration per change.
func changes(t *testing.T, cs kubernetes.Interface, ns *topology.NetNS, p *proc, n, idx int, cfg config) (int, time.Duration, time.Duration, float64, error) {
	var lat, own []float64
	ctx := t.Context()
	for s := range cfg.samples {
		i := (s*7919 + 13) % n
		name := scale.Name(i)
		addr := fmt.Sprintf("10.127.%d.%d", idx*4+s/250, s%250+1) // outside every other endpoint
		before, err := metrics(ns)
		if err != nil {
			return 0, 0, 0, 0, err
		}
		gen0, err := generation(ns)
		if err != nil {
			return 0, 0, 0, 0, err
		}
		es := slice(i, cfg.m, s%cfg.m, addr)
		es.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Format(time.RFC3339Nano)}
		t0 := time.Now()
		if _, err := cs.DiscoveryV1().EndpointSlices(name.Namespace).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			return 0, 0, 0, 0, fmt.Errorf("update slice: %w", err)
		}
		var seen time.Time
		deadline := t0.Add(2 * time.Minute)
		gen := gen0
		for time.Now().Before(deadline) {
			g, err := generation(ns)
			if err != nil {
				return 0, 0, 0, 0, err
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
			return 0, 0, 0, 0, fmt.Errorf("change %d: no sync seen within 2m:\n%s", s, p.tail())
		}
		lat = append(lat, seen.Sub(t0).Seconds())
		if after, err := metrics(ns); err == nil {
			dc := metric(after, "kubeproxy_sync_proxy_rules_duration_seconds_count") - metric(before, "kubeproxy_sync_proxy_rules_duration_seconds_count")
			ds := metric(after, "kubeproxy_sync_proxy_rules_duration_seconds_sum") - metric(before, "kubeproxy_sync_proxy_rules_duration_seconds_sum")
			if dc > 0 {
				own = append(own, ds/dc)
			}
		}
		time.Sleep(changeGap)
	}
	return len(lat), dur(median(lat)), dur(quantile(lat, 0.9)), median(own), nil
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
