package scalebench

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
)

// dnfError is a wait for a proxy that ran out of its time limit: an outcome to report
// ("did not finish in 10 min"), not a failure of the run.
type dnfError struct {
	limit time.Duration
	tail  string // the end of the proxy's log
}

func (e *dnfError) Error() string {
	return fmt.Sprintf("did not finish in %v:\n%s", e.limit, e.tail)
}

// dnfLimit returns the limit err ran out of, if it is (or wraps) a dnfError.
func dnfLimit(err error) (time.Duration, bool) {
	var e *dnfError
	if errors.As(err, &e) {
		return e.limit, true
	}
	return 0, false
}

// oneServiceTimeout bounds programOne's wait: a proxy that cannot program one Service in this
// long is broken, whatever $SCALEBENCH_SYNC_TIMEOUT allows at N.
const oneServiceTimeout = 2 * time.Minute

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
	if err := waitProbe(client, p, oneServiceTimeout); err != nil {
		return nil, err
	}
	t.Logf("%s, 1 Service: probe reachable after %v", pk.name, time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // as after the cold sync at N: deferred work (stale chains) done
	return client, nil
}

func dur(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// measure measures one proxy with all N+1 Services of m endpoints in cfg.runs runs: run 1 by
// measureFirst, then (unless pk.changeOnly, or run 1's cold sync or restart did not finish or
// failed) each further run by measureRun, until one's cold sync or restart does not finish. A
// step that runs out of cfg.limit is recorded in r (and the steps that need it are skipped),
// not returned.
//
// Each run's namespace, with its rules, stays until the N's end, as run 1's does: the kernel
// frees a deleted namespace's rules (up to a million endpoints') in the background, which
// would overlap the next run's cold sync.
func measure(t *testing.T, srv *apiserver.Server, cs kubernetes.Interface, pk proxyKind, n, m, idx int, cfg config, one *topology.NetNS, r *result) error {
	err := measureFirst(t, srv, cs, pk, n, m, idx, cfg, one, r)
	if err != nil || pk.changeOnly || r.ColdDNF > 0 || r.RestartDNF > 0 {
		return err
	}
	for k := 2; k <= cfg.runs && r.ColdDNF == 0 && r.RestartDNF == 0; k++ {
		if err := measureRun(t, srv, pk, n, k, cfg, r); err != nil {
			return fmt.Errorf("run %d: %w", k, err)
		}
	}
	return nil
}

// measureFirst runs one proxy in a fresh namespace with all N+1 Services of m endpoints (run 1,
// appended to r.Runs): cold sync, data plane (against one, the client pod of programOne's
// namespace), restart, single changes, CPU per change; with pk.changeOnly only the cold sync
// and the single changes. idx (the proxy's place in the list) keeps the changes' addresses
// apart from the other proxies' (which changed the same EndpointSlices before), so that each
// change is a real one.
func measureFirst(t *testing.T, srv *apiserver.Server, cs kubernetes.Interface, pk proxyKind, n, m, idx int, cfg config, one *topology.NetNS, r *result) error {
	r.Runs = append(r.Runs, runResult{})
	run := &r.Runs[len(r.Runs)-1]
	ns := proxyNS(t, pk.short[:2], srv)
	var client *topology.NetNS
	if !pk.changeOnly {
		client = attachPods(t, ns)
	}
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	srv.WriteKubeconfig(t, kc, apiserver.AdminUser)
	logPath := filepath.Join(dir, pk.short+".log")
	dnf := func(step string, err error, limit *time.Duration) bool {
		d, ok := dnfLimit(err)
		if ok {
			*limit = d
			t.Logf("%s: %s did not finish in %v; the steps after it are skipped", pk.name, step, d)
		}
		return ok
	}
	single := changeRun{count: cfg.samples, gap: changeGap, limit: cfg.limit,
		addr: func(s int) string { return fmt.Sprintf("10.127.%d.%d", idx*4+s/250, s%250+1) }} // outside every other endpoint

	// 1. Cold sync.
	start := time.Now()
	p := startProc(t, ns, logPath, pk.bin, pk.args(kc)...)
	defer p.kill()
	at, err := waitSynced(ns, p, pk.table, n+1, start, cfg.limit)
	if dnf("cold sync", err, &r.ColdDNF) {
		return nil
	} else if err != nil {
		return fmt.Errorf("cold sync: %w", err)
	}
	run.Cold = at.Sub(start)
	if mm, err := metrics(ns); err == nil {
		run.OwnCold = metric(mm, syncSum)
	}
	t.Logf("%s: cold sync %v (own metric %.3fs)", pk.name, run.Cold, run.OwnCold)
	time.Sleep(2 * time.Second) // let the proxy settle (deferred work, GC)

	if pk.changeOnly {
		err := single.run(t, cs, ns, p, n, m)
		r.Samples, r.ChangeMed, r.ChangeP90, r.OwnChange = len(single.lat), dur(median(single.lat)), dur(quantile(single.lat, 0.9)), median(single.own)
		if dnf("a single change", err, &r.ChangeDNF) {
			return nil
		}
		return err
	}
	hwm1, cpu1, _ := p.stats()
	run.RSSCold, r.CPUCold = hwm1, cpu1

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
	defer p.kill()
	at, err = waitSynced(ns, p, pk.table, n+1, start, cfg.limit)
	if dnf("restart", err, &r.RestartDNF) {
		return nil
	} else if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	run.Restart = at.Sub(start)
	t.Logf("%s: restart %v", pk.name, run.Restart)
	time.Sleep(2 * time.Second)

	// 4. Single changes.
	err = single.run(t, cs, ns, p, n, m)
	r.Samples, r.ChangeMed, r.ChangeP90, r.OwnChange = len(single.lat), dur(median(single.lat)), dur(quantile(single.lat, 0.9)), median(single.own)
	if dnf("a single change", err, &r.ChangeDNF) {
		return nil
	} else if err != nil {
		return err
	}
	hwm2, cpu2, err := p.stats()
	if err != nil {
		return err
	}
	run.RSSRestart, r.CPURestart = hwm2, cpu2

	// 5. CPU per change: changes back to back, each sent when the previous one's sync is seen,
	// the proxy's metrics scraped only before and after.
	burst := changeRun{count: cfg.cpuChanges, limit: cfg.limit, budget: cpuBudget, quiet: true,
		addr: func(s int) string { return fmt.Sprintf("10.126.%d.%d", idx*4+s/250, s%250+1) }}
	before, err := metrics(ns)
	if err != nil {
		return err
	}
	err = burst.run(t, cs, ns, p, n, m)
	_, cpu3, serr := p.stats()
	after, merr := metrics(ns)
	if dnf("a change of the CPU run", err, &r.ChangeDNF) {
		return nil
	} else if err := errors.Join(err, serr, merr); err != nil {
		return err
	}
	r.CPUBurst, r.CPUChanges = cpu3-cpu2, len(burst.lat)
	r.CPUSyncs = metric(after, syncCount) - metric(before, syncCount)
	t.Logf("%s: CPU %.3fs over %d changes (%.0f syncs): %.2f ms per change", pk.name, r.CPUBurst, r.CPUChanges, r.CPUSyncs, 1e3*r.cpuPerChange())
	return nil
}

// measureRun measures run k (k ≥ 2) of one proxy at N, appended to r.Runs: in a fresh namespace
// (without pods), a cold sync, 2 s for the proxy to settle, its peak RSS and own sync-duration
// metric, SIGKILL; then a restart with the rules in place, 2 s, its peak RSS, SIGKILL. A step
// that runs out of cfg.limit sets r.ColdDNF or r.RestartDNF and ends the run.
func measureRun(t *testing.T, srv *apiserver.Server, pk proxyKind, n, k int, cfg config, r *result) error {
	r.Runs = append(r.Runs, runResult{})
	run := &r.Runs[len(r.Runs)-1]
	ns := proxyNS(t, fmt.Sprintf("%s%d", pk.short[:2], k), srv)
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	srv.WriteKubeconfig(t, kc, apiserver.AdminUser)
	logPath := filepath.Join(dir, fmt.Sprintf("%s-run%d.log", pk.short, k))
	// startSynced starts the proxy and waits for its first sync: it returns the proxy and the
	// time that took, or records in *dnf that it ran out of cfg.limit.
	startSynced := func(step string, dnf *time.Duration) (*proc, time.Duration, error) {
		start := time.Now()
		p := startProc(t, ns, logPath, pk.bin, pk.args(kc)...)
		at, err := waitSynced(ns, p, pk.table, n+1, start, cfg.limit)
		if d, ok := dnfLimit(err); ok {
			*dnf = d
			t.Logf("%s: the %s of run %d did not finish in %v; no more runs", pk.name, step, k, d)
			return p, 0, nil
		} else if err != nil {
			return p, 0, fmt.Errorf("%s: %w", step, err)
		}
		return p, at.Sub(start), nil
	}

	p, took, err := startSynced("cold sync", &r.ColdDNF)
	defer p.kill()
	if err != nil || r.ColdDNF > 0 {
		return err
	}
	run.Cold = took
	if mm, err := metrics(ns); err == nil {
		run.OwnCold = metric(mm, syncSum)
	}
	time.Sleep(2 * time.Second) // as in run 1: deferred work, GC
	if run.RSSCold, _, err = p.stats(); err != nil {
		return err
	}
	p.kill()

	p, took, err = startSynced("restart", &r.RestartDNF)
	defer p.kill()
	if err != nil || r.RestartDNF > 0 {
		return err
	}
	run.Restart = took
	time.Sleep(2 * time.Second)
	if run.RSSRestart, _, err = p.stats(); err != nil {
		return err
	}
	t.Logf("%s run %d: cold sync %v (own metric %.3fs, peak RSS %s), restart %v (peak RSS %s)",
		pk.name, k, run.Cold, run.OwnCold, mb(run.RSSCold), run.Restart, mb(run.RSSRestart))
	return nil
}

// Metrics both proxies export (kube-proxy's names).
const (
	syncCount = "kubeproxy_sync_proxy_rules_duration_seconds_count"
	syncSum   = "kubeproxy_sync_proxy_rules_duration_seconds_sum"
)

// changeRun is a series of single-endpoint changes, each on another Service, each measured from
// just before the API request until the namespace's ruleset generation changes with the proxy's
// sync counter rising (unless quiet).
type changeRun struct {
	count  int                // changes to make
	addr   func(s int) string // the new address of change s, unlike any other
	gap    time.Duration      // pause after each change's sync is seen
	limit  time.Duration      // for each change's sync to be seen
	budget time.Duration      // stop making changes after this long (0: no bound)
	// quiet sees a change's sync by the ruleset generation alone, without scraping the proxy's
	// metrics (which costs the proxy CPU time) to confirm it, and leaves own empty.
	quiet bool
	lat   []float64 // end-to-end latency of each change seen (s)
	own   []float64 // the proxy's own sync duration per sync, per change (s)
}

// run makes the changes to N Services of m endpoints; Service i changes endpoint s%m.
func (c *changeRun) run(t *testing.T, cs kubernetes.Interface, ns *topology.NetNS, p *proc, n, m int) error {
	ctx := t.Context()
	begin := time.Now()
	for s := range c.count {
		if c.budget > 0 && time.Since(begin) > c.budget {
			break
		}
		i := (s*7919 + 13) % n
		name := scale.Name(i)
		var before map[string]float64
		if !c.quiet {
			var err error
			if before, err = metrics(ns); err != nil {
				return err
			}
		}
		gen0, err := generation(ns)
		if err != nil {
			return err
		}
		es := slice(i, m, s%m, c.addr(s))
		es.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Format(time.RFC3339Nano)}
		t0 := time.Now()
		if _, err := cs.DiscoveryV1().EndpointSlices(name.Namespace).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update slice: %w", err)
		}
		var seen time.Time
		deadline := t0.Add(c.limit)
		gen := gen0
		for time.Now().Before(deadline) {
			if p.exited() {
				return fmt.Errorf("change %d: proxy exited:\n%s", s, p.tail())
			}
			g, err := generation(ns)
			if err != nil {
				return err
			}
			if g != gen {
				seen = time.Now()
				gen = g
				if c.quiet {
					break
				}
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
			return fmt.Errorf("change %d: %w", s, &dnfError{limit: c.limit, tail: p.tail()})
		}
		c.lat = append(c.lat, seen.Sub(t0).Seconds())
		if c.quiet {
			continue
		}
		if after, err := metrics(ns); err == nil {
			dc := metric(after, syncCount) - metric(before, syncCount)
			ds := metric(after, syncSum) - metric(before, syncSum)
			if dc > 0 {
				c.own = append(c.own, ds/dc)
			}
		}
		time.Sleep(c.gap)
	}
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
