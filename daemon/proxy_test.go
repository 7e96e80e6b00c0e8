package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// proxyObjects is a Service default/web (ClusterIP 10.96.0.10, port 80 named http) with one
// ready endpoint on port 8080.
func proxyObjects(endpoint string) cluster.Objects {
	return cluster.DecodeManifest("web.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec: {clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [`+endpoint+`], conditions: {ready: true}}]
`))
}

func newTestProxy(fake *nft.Fake) *Proxy {
	return &Proxy{
		Config:         &Config{},
		NodeName:       "node1",
		Backend:        fake,
		Log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		LocalAddresses: func() ([]netip.Addr, error) { return nil, nil },
		Metrics:        NewMetrics(nil),
	}
}

// endpointSlot is how the table shows the Service's one endpoint.
func endpointSlot(ep string) string {
	return `10.96.0.10 . tcp . 80 . 0 : ` + ep + ` . 8080`
}

func TestProxySyncOnce(t *testing.T) {
	fake := nft.NewFake(1)
	p := newTestProxy(fake)
	firstSyncs, beforeFirst := 0, 0
	p.AfterFirstSync = func() { firstSyncs++ }
	p.BeforeFirstSync = func() {
		beforeFirst++
		if fake.Calls != beforeFirst-1 {
			t.Errorf("BeforeFirstSync ran after %d commits, before attempt %d", fake.Calls, beforeFirst)
		}
	}
	if err := p.SyncOnce(); err != nil || fake.Calls != 0 {
		t.Fatalf("before any snapshot: err=%v, %d commits; want nothing", err, fake.Calls)
	}

	p.Update(cluster.FullDelta(proxyObjects("10.244.1.2")))
	fake.FailRate = 1
	if err := p.SyncOnce(); err == nil {
		t.Fatal("a failed commit was not reported")
	}
	if got := fake.Render(model.IPv4); got != "" {
		t.Fatalf("a failed commit changed the tables:\n%s", got)
	}
	if firstSyncs != 0 {
		t.Fatalf("AfterFirstSync ran %d times before any sync succeeded", firstSyncs)
	}

	fake.FailRate = 0
	if err := p.SyncOnce(); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got := fake.Render(model.IPv4); !strings.Contains(got, endpointSlot("10.244.1.2")) {
		t.Fatalf("after the retry the table does not send the Service to the endpoint:\n%s", got)
	}
	calls := fake.Calls
	if err := p.SyncOnce(); err != nil || fake.Calls != calls {
		t.Errorf("a sync with nothing changed committed again (err=%v, commits %d -> %d)", err, calls, fake.Calls)
	}

	p.Update(cluster.FullDelta(proxyObjects("10.244.1.3")))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	if got := fake.Render(model.IPv4); !strings.Contains(got, endpointSlot("10.244.1.3")) || strings.Contains(got, "10.244.1.2") {
		t.Errorf("after the endpoint moved the table is:\n%s", got)
	}
	if beforeFirst != 2 {
		t.Errorf("BeforeFirstSync ran %d times, around a failed first sync and its retry; want twice", beforeFirst)
	}
	if firstSyncs != 1 {
		t.Errorf("AfterFirstSync ran %d times over three successful syncs; want once", firstSyncs)
	}
}

// TestProxyConvertsNamedServices checks that after the first, Full delivery a sync converts
// the Services the Deltas folded since the last sync name, and only those: a change the
// source has not named yet waits for its Delta.
func TestProxyConvertsNamedServices(t *testing.T) {
	fake := nft.NewFake(1)
	p := newTestProxy(fake)
	web := model.ServiceName{Namespace: "default", Name: "web"}
	api := model.ServiceName{Namespace: "default", Name: "api"}
	p.Update(cluster.FullDelta(proxyObjects("10.244.1.2")))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}

	// The store now has web's endpoint moved and a Service api, but only web is named.
	objs := proxyObjects("10.244.1.3")
	moreObjs := cluster.DecodeManifest("api.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {namespace: default, name: api}
spec: {clusterIP: 10.96.0.11, clusterIPs: [10.96.0.11], ports: [{name: http, protocol: TCP, port: 80}]}
`))
	objs.Services = append(objs.Services, moreObjs.Services...)
	store := cluster.NewSnapshot(objs)
	p.Update(cluster.Delta{Store: store, Services: map[model.ServiceName]struct{}{web: {}}})
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	got := fake.Render(model.IPv4)
	if !strings.Contains(got, endpointSlot("10.244.1.3")) {
		t.Errorf("web was named but its new endpoint is not programmed:\n%s", got)
	}
	if strings.Contains(got, "10.96.0.11") {
		t.Errorf("api was not named but is programmed:\n%s", got)
	}

	// Two Deltas folded before one sync: api named, then nothing new.
	p.Update(cluster.Delta{Store: store, Services: map[model.ServiceName]struct{}{api: {}}})
	p.Update(cluster.Delta{Store: store})
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	if got := fake.Render(model.IPv4); !strings.Contains(got, "10.96.0.11") {
		t.Errorf("api was named in a folded Delta but is not programmed:\n%s", got)
	}
}

// TestMinSyncPeriod runs the loop under a storm of changes (one every 20 ms for 2 s) and
// checks that it commits at most once per --min-sync-period, that the last change is
// programmed, and that with a period of 0 every change is.
func TestMinSyncPeriod(t *testing.T) {
	for _, tc := range []struct {
		period     time.Duration
		maxCommits int
	}{
		{time.Second, 4}, // the first change at once, then at most one per second, plus the last
		{0, 100},
	} {
		synctest.Test(t, func(t *testing.T) {
			fake := nft.NewFake(1)
			p := newTestProxy(fake)
			p.MinSyncPeriod = tc.period
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error)
			go func() { done <- p.Run(ctx) }()
			last := ""
			for i := range 100 {
				last = netip.AddrFrom4([4]byte{10, 244, 1, byte(i + 2)}).String()
				p.Update(cluster.FullDelta(proxyObjects(last)))
				time.Sleep(20 * time.Millisecond)
				synctest.Wait()
			}
			time.Sleep(3 * time.Second)
			synctest.Wait()
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if fake.CallCount() > tc.maxCommits {
				t.Errorf("min-sync-period %v: %d commits for 100 changes in 2 s, want at most %d", tc.period, fake.CallCount(), tc.maxCommits)
			}
			if tc.period == 0 && fake.CallCount() < 100 {
				t.Errorf("min-sync-period 0: %d commits for 100 changes 20 ms apart, want one each", fake.CallCount())
			}
			if got := fake.Render(model.IPv4); !strings.Contains(got, endpointSlot(last)) {
				t.Errorf("min-sync-period %v: the last change is not programmed:\n%s", tc.period, got)
			}
		})
	}
}

// TestRetryBackoff checks that failed syncs are retried with growing delays (0.5 s, 1 s,
// 2 s, ...) until one succeeds, without any new change arriving.
func TestRetryBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := nft.NewFake(1)
		fake.SetFailRate(1)
		p := newTestProxy(fake)
		p.MinSyncPeriod = 0
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() { _ = p.Run(ctx) }()
		p.Update(cluster.FullDelta(proxyObjects("10.244.1.2")))
		synctest.Wait()
		// Attempts at 0, 0.5, 1.5, 3.5 and 7.5 s.
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if fake.CallCount() != 4 {
			t.Errorf("after 4 s of failures: %d attempts, want 4 (at 0, 0.5, 1.5 and 3.5 s)", fake.CallCount())
		}
		fake.SetFailRate(0)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if got := fake.Render(model.IPv4); !strings.Contains(got, endpointSlot("10.244.1.2")) {
			t.Errorf("the retry after the failures did not program the change:\n%s", got)
		}
	})
}

// TestMetrics checks that a sync shows in kube-proxy's metrics, under both families, and
// nftproxy's own; and that the network programming latency is observed once per trigger time
// of the programmed change, from that time, and not at all for a change without one.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	fake := nft.NewFake(1)
	p := newTestProxy(fake)
	p.Metrics = NewMetrics(reg)
	first := proxyObjects("10.244.1.2")
	first.Events = cluster.Events{Services: 1, EndpointSlices: 1}
	p.Update(cluster.FullDelta(first))
	if got := metricValue(t, reg, "kubeproxy_sync_proxy_rules_endpoint_changes_pending"); got != 1 {
		t.Errorf("endpoint changes pending before the sync = %v, want 1", got)
	}
	fake.FailRate = 1
	if err := p.SyncOnce(); err == nil {
		t.Fatal("injected failure not reported")
	}
	fake.FailRate = 0
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	// A change stamped 9 s ago by the EndpointSlice controller.
	stamped := proxyObjects("10.244.1.3")
	stamped.EndpointSlices[0].Annotations = map[string]string{
		"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Add(-9 * time.Second).Format(time.RFC3339Nano)}
	stamped.Events = cluster.Events{EndpointSlices: 1}
	p.Update(cluster.FullDelta(stamped))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		value float64
	}{
		{`kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family="IPv4"}`, 1},
		{`kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family="IPv6"}`, 1},
		{`kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family="IPv4"}`, 1}, // one observation
		{`kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family="IPv6"}`, 1},
		{`kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family="IPv4"}`, 1},
		{`kubeproxy_network_programming_duration_seconds{ip_family="IPv4"}`, 1}, // the stamped change only
		{"kubeproxy_sync_proxy_rules_endpoint_changes_total", 2},
		{"kubeproxy_sync_proxy_rules_service_changes_total", 1},
		{"kubeproxy_sync_proxy_rules_endpoint_changes_pending", 0},
		{`kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"}`, 0},
		{`nftproxy_set_elements{family="ip",set="service-endpoints"}`, 1},
		{`nftproxy_set_elements{family="ip",set="service-ips"}`, 1},
	} {
		if got := metricValue(t, reg, tc.name); got != tc.value {
			t.Errorf("%s = %v, want %v", tc.name, got, tc.value)
		}
	}
	if n := histogramBelow(t, reg, `kubeproxy_network_programming_duration_seconds{ip_family="IPv4"}`, 9); n != 0 {
		t.Errorf("%d network programming latencies under 9 s, for a change stamped 9 s before its sync", n)
	}
}

// histogramBelow returns how many observations of a histogram fell in buckets with upper
// bounds under le.
func histogramBelow(t *testing.T, reg *prometheus.Registry, name string, le float64) uint64 {
	t.Helper()
	var n uint64
	for _, b := range findMetric(t, reg, name).GetHistogram().GetBucket() {
		if b.GetUpperBound() < le {
			n = b.GetCumulativeCount()
		}
	}
	return n
}

// metricValue returns a counter's or gauge's value, or a histogram's sample count. name may
// carry labels as Prometheus prints them.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	m := findMetric(t, reg, name)
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	t.Fatalf("metric %s has no value", name)
	return 0
}

// findMetric returns the metric named name (with labels as Prometheus prints them, if any)
// from reg, failing the test when there is none.
func findMetric(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	base, labels, _ := strings.Cut(name, "{")
	for _, f := range families {
		if f.GetName() != base {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+`="`+l.GetValue()+`"`)
			}
			if labels == "" || strings.Join(ls, ",")+"}" == labels {
				return m
			}
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

// TestHealth checks /livez's notion of health: unhealthy until the first sync succeeded;
// then healthy while nothing waits, or while the oldest waiting change is younger than twice
// the sync period; unhealthy when syncs keep failing for longer.
func TestHealth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := nft.NewFake(1)
		p := newTestProxy(fake)
		p.SyncPeriod = 10 * time.Second
		if ok, _ := p.Health(time.Now()); ok {
			t.Error("healthy before anything happened")
		}
		fake.SetFailRate(1)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() { _ = p.Run(ctx) }()
		p.Update(cluster.FullDelta(proxyObjects("10.244.1.2")))
		synctest.Wait()
		if ok, _ := p.Health(time.Now()); ok {
			t.Error("healthy before the first sync succeeded")
		}
		fake.SetFailRate(0)
		time.Sleep(time.Second) // the first retry
		synctest.Wait()
		if ok, last := p.Health(time.Now()); !ok || last.IsZero() {
			t.Fatalf("after the first successful sync: healthy=%v, last success %v", ok, last)
		}
		fake.SetFailRate(1)
		p.Update(cluster.FullDelta(proxyObjects("10.244.1.3")))
		time.Sleep(19 * time.Second)
		synctest.Wait()
		if ok, _ := p.Health(time.Now()); !ok {
			t.Error("unhealthy 19 s into failing syncs, with a sync period of 10 s")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if ok, _ := p.Health(time.Now()); ok {
			t.Error("healthy after 21 s of failing syncs, with a sync period of 10 s")
		}
		fake.SetFailRate(0)
		time.Sleep(31 * time.Second) // the next retry, at most 30 s away
		synctest.Wait()
		if ok, last := p.Health(time.Now()); !ok || last.IsZero() {
			t.Errorf("after a successful sync: healthy=%v, last success %v", ok, last)
		}
	})
}

// TestInterfaceChurn checks that an interface address coming or going does not force a full
// sync when NodePorts are served on every address (the addresses do not shape the rules).
func TestInterfaceChurn(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newTestProxy(nft.NewFake(1))
	p.Metrics = NewMetrics(reg)
	addrs := []netip.Addr{netip.MustParseAddr("192.168.0.2")}
	p.LocalAddresses = func() ([]netip.Addr, error) { return addrs, nil }
	p.Update(cluster.FullDelta(proxyObjects("10.244.1.2")))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	addrs = append(addrs, netip.MustParseAddr("10.244.1.1"))
	p.Update(cluster.FullDelta(proxyObjects("10.244.1.3")))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	if full := metricValue(t, reg, "kubeproxy_sync_full_proxy_rules_duration_seconds"); full != 1 {
		t.Errorf("%v full syncs, want only the first: a new interface address forced a full sync", full)
	}
}
