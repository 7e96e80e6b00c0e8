package scalebench

import (
	"context"
	"fmt"
	"math"
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
	// Runs holds the cold sync and restart of each run, run 1 first (see measure). A run whose
	// cold sync or restart ran out of its time limit (ColdDNF, RestartDNF) is the last one.
	Runs                 []runResult
	ChangeMed, ChangeP90 time.Duration
	OwnChange            float64 // own sync-duration metric, median per change (s)
	CPUCold, CPURestart  float64 // CPU seconds of run 1's first process and of its restarted one
	Samples              int
	// CPU per change: CPU seconds (utime+stime) of the restarted process over CPUChanges
	// changes made back to back, and the syncs it counted meanwhile.
	CPUBurst   float64
	CPUChanges int
	CPUSyncs   float64
	// Connect times from a pod to the probe Service's ClusterIP (median and p90), through the
	// rules of a proxy that saw only the probe Service and through those with all N+1 Services;
	// Connects timed of each.
	ConnOne, ConnOneP90 time.Duration
	ConnN, ConnNP90     time.Duration
	Connects            int
	// Time limits a step ran out of: the step did not finish (and the steps after it that need
	// it were not run). Zero: finished or not run. ColdDNF and RestartDNF are of the last run.
	ColdDNF, RestartDNF, ChangeDNF time.Duration
	Err                            string
}

// runResult holds one run's cold sync and restart: their times, the peak RSS (VmHWM) of the
// first process and of the restarted one, and the first process's own sync-duration metric
// after its first sync (s). Zero: not measured (or did not finish).
type runResult struct {
	Cold, Restart       time.Duration
	RSSCold, RSSRestart int64
	OwnCold             float64
}

// figure is one measure over a proxy's runs, in ascending order: the value of each run that
// has one, and +Inf for a run whose step did not finish.
type figure []float64

// figureOf returns the figure of get over r's runs: get's value of each run where it is not
// zero, and +Inf for the last run when dnf.
func (r *result) figureOf(get func(runResult) float64, dnf bool) figure {
	var f figure
	for _, x := range r.Runs {
		if v := get(x); v != 0 {
			f = append(f, v)
		}
	}
	if dnf {
		f = append(f, math.Inf(1))
	}
	slices.Sort(f)
	return f
}

// cold returns the cold sync times over r's runs (s).
func (r *result) cold() figure {
	return r.figureOf(func(x runResult) float64 { return x.Cold.Seconds() }, r.ColdDNF > 0)
}

// restart returns the restart times over r's runs (s).
func (r *result) restart() figure {
	return r.figureOf(func(x runResult) float64 { return x.Restart.Seconds() }, r.RestartDNF > 0)
}

// ownCold returns the own sync-duration metric after the cold sync over r's runs (s).
func (r *result) ownCold() figure {
	return r.figureOf(func(x runResult) float64 { return x.OwnCold }, false)
}

// rssCold returns the peak RSS of the first process over r's runs (bytes).
func (r *result) rssCold() figure {
	return r.figureOf(func(x runResult) float64 { return float64(x.RSSCold) }, false)
}

// rssRestart returns the peak RSS of the restarted process over r's runs (bytes).
func (r *result) rssRestart() figure {
	return r.figureOf(func(x runResult) float64 { return float64(x.RSSRestart) }, false)
}

// rssPeak returns the larger peak RSS of each run's two processes (bytes).
func (r *result) rssPeak() figure {
	return r.figureOf(func(x runResult) float64 { return float64(max(x.RSSCold, x.RSSRestart)) }, false)
}

// median returns the median of f (the mean of the middle two of an even number), or 0 for
// none.
func (f figure) median() float64 {
	switch {
	case len(f) == 0:
		return 0
	case len(f)%2 == 1:
		return f[len(f)/2]
	}
	return (f[len(f)/2-1] + f[len(f)/2]) / 2
}

// over returns how many of f's values exceed limit.
func (f figure) over(limit float64) int {
	k := 0
	for _, v := range f {
		if v > limit {
			k++
		}
	}
	return k
}

// cpuPerChange returns the CPU seconds per change of the back-to-back run, or NaN.
func (r *result) cpuPerChange() float64 {
	if r == nil || r.CPUChanges == 0 {
		return math.NaN()
	}
	return r.CPUBurst / float64(r.CPUChanges)
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
	runs       int // cold syncs and restarts per proxy and N
	samples    int // single changes per proxy
	cpuChanges int // back-to-back changes for CPU per change
	connects   int // timed connects per data-plane measurement
	limit      time.Duration
	// kubeProxy is what `kube-proxy --version` prints (integration/k8s pins the release).
	kubeProxy string
}

// goal holds the targets for nftproxy at one shape, stated for n Services.
type goal struct {
	n             int
	cold, restart time.Duration
	coldFactor    float64 // cold sync at least this many times faster than kube-proxy; 0: no such target
	change        time.Duration
	rss           int64
	connect       float64 // connect median at N at most this many times the 1-Service one
}

// shape is a form of cluster, N Services x m endpoints, measured at each N of ns.
type shape struct {
	name  string // in SCALEBENCH_SHAPES
	title string
	m     int
	ns    []int
	goal  goal
}

// shapeRun holds a shape's results: by N (those in done finished), then by proxy name.
type shapeRun struct {
	shape
	done []int
	res  map[int]map[string]*result
	pop  map[int]*population
}

// population holds what populating the API server took at one N.
type population struct {
	Services, Endpoints int
	Took                time.Duration
	// RSS of etcd and kube-apiserver right after, their peak (VmHWM) at the end of the N's run,
	// and etcd's database size after.
	EtcdRSS, APIRSS, EtcdPeak, APIPeak, EtcdDB int64
}

// The shapes of the issue, with its targets for nftproxy.
func shapes(smallNs, largeNs []int, smallM, largeM int) []shape {
	return []shape{
		{name: "small", title: "Services x %d endpoints", m: smallM, ns: smallNs,
			goal: goal{n: 10000, cold: 800 * time.Millisecond, restart: time.Second, coldFactor: 20, change: 20 * time.Millisecond, rss: 150e6, connect: 1.1}},
		{name: "large", title: "Services x %d endpoints (large Services)", m: largeM, ns: largeNs,
			goal: goal{n: 10000, cold: 5 * time.Second, restart: 5 * time.Second, change: 50 * time.Millisecond, rss: 1e9, connect: 1.1}},
	}
}

// changeGap is the pause after each single change's sync is seen, before the next change: more
// than twice the default --min-sync-period (1 s) of both proxies, so each change finds the proxy
// idle (nftproxy at its default syncs again up to 1 s after a change to delete stale chains).
const changeGap = 2500 * time.Millisecond

// cpuBudget bounds the back-to-back changes for CPU per change: fewer than
// $SCALEBENCH_CPU_CHANGES when a proxy takes long per change.
const cpuBudget = 2 * time.Minute

// connectWarmup untimed connects from each client pod precede a data-plane measurement.
const connectWarmup = 200

func TestScaleCompare(t *testing.T) {
	if os.Getenv(enableEnv) != "1" {
		t.Skipf("set %s=1 to run the side-by-side scale benchmark (make bench-compare)", enableEnv)
	}
	topology.RequirePrivileged(t)
	env := func(v []int, err error) []int {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	one := func(v int, err error) int {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	smallNs := env(envInts(nEnv, []int{100, 1000, 5000, 10000}))
	largeNs := env(envInts(largeNEnv, []int{10000}))
	all := shapes(smallNs, largeNs, one(envInt(mEnv, 10)), one(envInt(largeMEnv, 100)))
	cfg := config{runs: one(envInt(runsEnv, 3)), samples: one(envInt(samplesEnv, 20)), cpuChanges: one(envInt(cpuChangesEnv, 100)),
		connects: one(envInt(connectsEnv, 2000))}
	var err error
	if cfg.limit, err = envDuration(timeoutEnv, 10*time.Minute); err != nil || cfg.limit == 0 {
		t.Fatalf("%s: want a positive duration (%v)", timeoutEnv, err)
	}
	if cfg.samples > 1000 || cfg.cpuChanges > 1000 {
		t.Fatalf("%s and %s: at most 1000 each (the changes' addresses)", samplesEnv, cpuChangesEnv)
	}
	churnFor, err := envDuration(churnEnv, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cc := churnConfig{n: one(envInt(churnNEnv, 10000)), m: all[0].m, rate: one(envInt(churnRateEnv, 20)), dur: churnFor}
	want := strings.Split(os.Getenv(shapesEnv), ",")
	if os.Getenv(shapesEnv) == "" {
		want = []string{"small", "large"}
	}
	for _, w := range want {
		if w != "none" && !slices.ContainsFunc(all, func(s shape) bool { return s.name == w }) {
			t.Fatalf("%s=%q: unknown shape %q (want small, large or none)", shapesEnv, os.Getenv(shapesEnv), w)
		}
	}
	all = slices.DeleteFunc(all, func(s shape) bool { return !slices.Contains(want, s.name) })
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
		// A partial run, for looking into one proxy; the report then lacks the others. "none"
		// only populates the API server (its time and memory).
		proxies = slices.DeleteFunc(proxies, func(pk proxyKind) bool { return !slices.Contains(strings.Split(only, ","), pk.short) })
	}

	var runs []*shapeRun
	var churn *churnRun
	write := func() {
		writeFile(t, filepath.Join(out, "results.md"), []byte(report(cfg, runs, churn)))
		for _, c := range charts(runs, churn) {
			writeFile(t, filepath.Join(out, c.file+".svg"), []byte(c.svg()))
			img, err := c.png()
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(out, c.file+".png"), img)
		}
	}
	for _, sh := range all {
		sr := &shapeRun{shape: sh, res: map[int]map[string]*result{}, pop: map[int]*population{}}
		runs = append(runs, sr)
		for _, n := range sh.ns {
			ok := t.Run(fmt.Sprintf("%s/N=%d", sh.name, n), func(t *testing.T) {
				sr.res[n], sr.pop[n] = runN(t, n, sh.m, cfg, proxies)
			})
			if sr.res[n] != nil {
				sr.done = append(sr.done, n)
			}
			write()
			if !ok {
				return
			}
		}
	}
	if cc.dur > 0 {
		t.Run(fmt.Sprintf("churn/N=%d", cc.n), func(t *testing.T) {
			churn = runChurn(t, cc, cfg, proxies)
		})
		write()
	}
}

func runN(t *testing.T, n, m int, cfg config, proxies []proxyKind) (map[string]*result, *population) {
	if n > 65000 {
		t.Fatalf("N=%d: the service CIDR %s holds ~65k ClusterIPs", n, apiserver.ServiceCIDR)
	}
	if n*m >= 1<<23-1<<16 {
		t.Fatalf("N*M=%d: the endpoints' range 10.128.0.0/9 holds fewer (below the pods' 10.255.0.0/16)", n*m)
	}
	apiNS := topology.NewNetNS(t, "api")
	srv := apiserver.Start(t, apiserver.Options{NetNS: apiNS})
	cs := clientset(srv)
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

	pop := populateMeasured(t, srv, apiNS, n, m)

	for i, pk := range proxies {
		r := res[pk.name]
		if err := measure(t, srv, cs, pk, n, m, i, cfg, one[pk.name], r); err != nil {
			if r.Err != "" {
				r.Err += "; "
			}
			r.Err += err.Error()
			t.Errorf("%s: %v", pk.name, err)
		}
		t.Logf("%s N=%d: %+v", pk.name, n, *r)
	}
	pop.peaks(apiNS)
	return res, pop
}

// populateMeasured populates srv (running in apiNS) with n Services x m endpoints and returns
// how long that took and the servers' memory right after.
func populateMeasured(t *testing.T, srv *apiserver.Server, apiNS *topology.NetNS, n, m int) *population {
	pop := &population{Services: n, Endpoints: n * m}
	begin := time.Now()
	populate(t, srv, n, m)
	pop.Took = time.Since(begin)
	pop.EtcdRSS, _ = serverMemory(apiNS, "etcd")
	pop.APIRSS, _ = serverMemory(apiNS, "kube-apiserver")
	pop.EtcdDB = etcdDBSize(t, srv)
	t.Logf("created %d Services and EndpointSlices (x%d endpoints) in %v; etcd RSS %s (db %s), kube-apiserver RSS %s",
		n, m, pop.Took.Round(time.Millisecond), mb(pop.EtcdRSS), mb(pop.EtcdDB), mb(pop.APIRSS))
	return pop
}

// peaks records the servers' peak RSS so far.
func (p *population) peaks(apiNS *topology.NetNS) {
	_, p.EtcdPeak = serverMemory(apiNS, "etcd")
	_, p.APIPeak = serverMemory(apiNS, "kube-apiserver")
}

// clientset returns an admin client of srv that may send many requests at once.
func clientset(srv *apiserver.Server) kubernetes.Interface {
	rc := srv.AdminConfig()
	rc.QPS, rc.Burst = 1000, 2000
	return kubernetes.NewForConfigOrDie(rc)
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

// populateWorkers is the number of creates populate keeps in flight.
const populateWorkers = 64

// populate creates the Namespaces and N Services with one EndpointSlice of m ready endpoints
// each (internal/scale's addresses), populateWorkers requests in flight, in protobuf (as the
// controllers that write them speak).
func populate(t *testing.T, srv *apiserver.Server, n, m int) {
	ctx := t.Context()
	rc := srv.AdminConfig()
	rc.QPS, rc.Burst = -1, 0 // no client-side rate limit
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cs := kubernetes.NewForConfigOrDie(rc)
	for i := range min(n, 100) {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", i)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create namespace: %v", err)
		}
	}
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range populateWorkers {
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
