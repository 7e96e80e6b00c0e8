package scalebench

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
)

// The churn: a steady stream of endpoint changes on random Services, each proxy in turn, with its
// CPU time and RSS sampled as it goes.

// churnConfig holds the churn's parameters.
type churnConfig struct {
	n, m int           // Services x endpoints
	rate int           // endpoint changes a second
	dur  time.Duration // per proxy
}

// churnSampleEvery is the interval between samples of CPU time and RSS.
const churnSampleEvery = 10 * time.Second

// churnWorkers is the number of updates the churn keeps in flight at most.
const churnWorkers = 8

// churnSample is one sample of a proxy under churn.
type churnSample struct {
	At  time.Duration // since the churn began
	CPU float64       // CPU seconds (utime+stime) since the churn began
	RSS int64         // VmRSS, bytes
}

// churnResult is one proxy's figures under churn.
type churnResult struct {
	Dur          time.Duration // how long the churn ran
	Sent, Failed int           // updates accepted by the API server, and refused or not sent in time
	Syncs        float64       // syncs the proxy counted during the churn
	EndpointChgs float64       // EndpointSlice changes the proxy saw (kubeproxy_sync_proxy_rules_endpoint_changes_total)
	Pending      float64       // of those, not yet taken by a sync churnDrain after the churn
	SyncSum      float64       // seconds spent in those syncs by the proxy's own metric
	Samples      []churnSample
	ColdDNF      time.Duration // the cold sync ran out of this limit: no churn
	Err          string
}

// cpuPerMinute returns the CPU seconds per minute over the whole churn.
func (r *churnResult) cpuPerMinute() float64 {
	if len(r.Samples) < 2 {
		return 0
	}
	last := r.Samples[len(r.Samples)-1]
	return last.CPU / last.At.Minutes()
}

// rssAt returns the RSS of the first sample at or after d (the last if none), and whether there
// is one.
func (r *churnResult) rssAt(d time.Duration) (int64, bool) {
	for _, s := range r.Samples {
		if s.At >= d {
			return s.RSS, true
		}
	}
	if len(r.Samples) == 0 {
		return 0, false
	}
	return r.Samples[len(r.Samples)-1].RSS, true
}

// churnRun holds the churn's results by proxy name, in the order run.
type churnRun struct {
	cfg     churnConfig
	names   []string
	res     map[string]*churnResult
	populat *population
}

// runChurn populates a fresh API server with cc.n Services x cc.m endpoints and runs each proxy
// in turn under churn.
func runChurn(t *testing.T, cc churnConfig, cfg config, proxies []proxyKind) *churnRun {
	apiNS := topology.NewNetNS(t, "api")
	srv := apiserver.Start(t, apiserver.Options{NetNS: apiNS})
	cs := clientset(srv)
	setup(t, cs)
	cr := &churnRun{cfg: cc, res: map[string]*churnResult{}, populat: populateMeasured(t, srv, apiNS, cc.n, cc.m)}
	var next atomic.Int64 // the churn's addresses, one after the other across proxies
	for i, pk := range proxies {
		r := &churnResult{}
		cr.names = append(cr.names, pk.name)
		cr.res[pk.name] = r
		if err := churnOne(t, srv, cs, pk, cc, cfg, uint64(i+1), &next, r); err != nil {
			r.Err = err.Error()
			t.Errorf("%s, churn: %v", pk.name, err)
		}
		t.Logf("%s churn: sent %d (failed %d), %.0f syncs, %.0f endpoint changes, %.2f CPU-s/min", pk.name, r.Sent, r.Failed, r.Syncs, r.EndpointChgs, r.cpuPerMinute())
	}
	cr.populat.peaks(apiNS)
	return cr
}

// churnAddr returns the k-th churn address: 10.112.0.0/12 counted up, outside every
// other address of the benchmark.
func churnAddr(k int64) string {
	b := netip.MustParseAddr("10.112.0.0").As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(k%(1<<20)+1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// churnOne runs one proxy in a fresh namespace: cold sync, 2 s to settle, then cc.rate changes
// a second for cc.dur, each replacing the first endpoint of a random Service's EndpointSlice
// with a fresh address (seed picks the Services), sampling CPU and RSS every churnSampleEvery.
func churnOne(t *testing.T, srv *apiserver.Server, cs kubernetes.Interface, pk proxyKind, cc churnConfig, cfg config, seed uint64, next *atomic.Int64, r *churnResult) error {
	ns := proxyNS(t, pk.short[:2]+"c", srv)
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	srv.WriteKubeconfig(t, kc, apiserver.AdminUser)
	start := time.Now()
	p := startProc(t, ns, filepath.Join(dir, pk.short+"-churn.log"), pk.bin, pk.args(kc)...)
	defer p.kill()
	if _, err := waitSynced(ns, p, pk.table, cc.n+1, start, cfg.limit); err != nil {
		if d, ok := dnfLimit(err); ok {
			r.ColdDNF = d
			t.Logf("%s: cold sync did not finish in %v: no churn", pk.name, d)
			return nil
		}
		return fmt.Errorf("cold sync: %w", err)
	}
	time.Sleep(2 * time.Second)
	m0, err := metrics(ns)
	if err != nil {
		return err
	}
	u0, err := usageOf(p.cmd.Process.Pid)
	if err != nil {
		return err
	}

	// The driver: a tick every 1/rate s hands the changes due to the workers; a change that
	// finds them all busy is counted as failed, so the rate stays what it says or the report
	// shows it.
	ctx := t.Context()
	work := make(chan int, churnWorkers)
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	for range churnWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := scale.Name(i)
				es := slice(i, cc.m, 0, churnAddr(next.Add(1)))
				if _, err := cs.DiscoveryV1().EndpointSlices(name.Namespace).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
					failed.Add(1)
					continue
				}
				sent.Add(1)
			}
		}()
	}
	rng := rand.New(rand.NewPCG(seed, 16))
	tick := time.NewTicker(time.Second / time.Duration(cc.rate))
	sample := time.NewTicker(churnSampleEvery)
	begin := time.Now()
	end := time.NewTimer(cc.dur)
	r.Samples = append(r.Samples, churnSample{RSS: u0.rss})
	issued := 0
	var serr error
loop:
	for {
		select {
		case <-tick.C:
			// As many changes as are due by now: a tick the loop missed (the ticker drops
			// them when it runs late on a busy machine) is made up at the next.
			for due := int(time.Since(begin).Seconds() * float64(cc.rate)); issued < due; issued++ {
				select {
				case work <- rng.IntN(cc.n):
				default:
					failed.Add(1)
				}
			}
		case <-sample.C:
			u, err := usageOf(p.cmd.Process.Pid)
			if err != nil {
				serr = fmt.Errorf("proxy gone: %w:\n%s", err, p.tail())
				break loop
			}
			r.Samples = append(r.Samples, churnSample{At: time.Since(begin), CPU: u.cpu - u0.cpu, RSS: u.rss})
		case <-end.C:
			break loop
		}
	}
	tick.Stop()
	sample.Stop()
	close(work)
	wg.Wait()
	r.Dur = time.Since(begin)
	if serr == nil {
		if u, err := usageOf(p.cmd.Process.Pid); err == nil && r.Dur-r.Samples[len(r.Samples)-1].At > time.Second {
			r.Samples = append(r.Samples, churnSample{At: r.Dur, CPU: u.cpu - u0.cpu, RSS: u.rss})
		}
	}
	r.Sent, r.Failed = int(sent.Load()), int(failed.Load())
	if serr != nil {
		return serr
	}
	time.Sleep(churnDrain) // the last changes' syncs, past both proxies' default --min-sync-period
	m1, err := metrics(ns)
	if err != nil {
		return err
	}
	r.Pending = metric(m1, endpointChangesPending)
	r.Syncs = metric(m1, syncCount) - metric(m0, syncCount)
	r.SyncSum = metric(m1, syncSum) - metric(m0, syncSum)
	r.EndpointChgs = metric(m1, endpointChanges) - metric(m0, endpointChanges)
	return nil
}

// The proxies' counter of EndpointSlice changes seen, and their gauge of those not yet synced.
const (
	endpointChanges        = "kubeproxy_sync_proxy_rules_endpoint_changes_total"
	endpointChangesPending = "kubeproxy_sync_proxy_rules_endpoint_changes_pending"
)

// churnDrain is the wait after the churn before the proxy's counters are read.
const churnDrain = 3 * time.Second
