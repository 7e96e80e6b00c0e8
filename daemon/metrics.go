package daemon

import (
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/sync"
)

// Metrics are the proxy's Prometheus metrics. Names, labels and meanings shared with
// kube-proxy (v1.37) are kube-proxy's, so that existing dashboards and alerts keep working.
// kube-proxy runs one proxier per IP family and labels their figures ip_family ("IPv4",
// "IPv6"); nftproxy commits both families in one batch, so a sync's figures are recorded
// under each family it programs.
type Metrics struct {
	SyncDuration        *prometheus.HistogramVec
	FullSyncDuration    *prometheus.HistogramVec
	PartialSyncDuration *prometheus.HistogramVec
	LastSync            *prometheus.GaugeVec
	LastQueued          *prometheus.GaugeVec
	NetworkProgramming  *prometheus.HistogramVec
	SyncFailures        *prometheus.CounterVec
	// EndpointChanges* and ServiceChanges* count the EndpointSlice and Service changes the
	// source saw (Total) and those not yet taken by a sync (Pending).
	EndpointChangesPending prometheus.Gauge
	EndpointChangesTotal   prometheus.Counter
	ServiceChangesPending  prometheus.Gauge
	ServiceChangesTotal    prometheus.Counter
	// NoLocalEndpoints is a gauge despite its name, as kube-proxy's.
	NoLocalEndpoints *prometheus.GaugeVec
	HealthzTotal     *prometheus.CounterVec
	LivezTotal       *prometheus.CounterVec
	BatchObjects     prometheus.Histogram
	SetElements      *prometheus.GaugeVec
	DriftRepairs     prometheus.Counter
	SkippedObjects   prometheus.Gauge
	// ConntrackDuration, ConntrackDeleted and ConntrackFailures describe the conntrack
	// reconciles, per IP family.
	ConntrackDuration *prometheus.HistogramVec
	ConntrackDeleted  *prometheus.CounterVec
	ConntrackFailures *prometheus.CounterVec
}

// networkProgrammingBuckets are kube-proxy's: 0.25 s, 0.5 s, every second to 59 s, every
// 5 s to 115 s, every 30 s to 5 min.
func networkProgrammingBuckets() []float64 {
	b := []float64{0.25, 0.5}
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	return append(b, prometheus.LinearBuckets(120, 30, 7)...)
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	syncBuckets := prometheus.ExponentialBuckets(0.001, 2, 15)
	family := []string{"ip_family"}
	m := &Metrics{
		SyncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_proxy_rules_duration_seconds", Buckets: syncBuckets,
			Help: "SyncProxyRules latency in seconds: time to compute and commit one sync, full or partial (both families commit in one batch: each is observed under both).",
		}, family),
		FullSyncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_full_proxy_rules_duration_seconds", Buckets: syncBuckets,
			Help: "Latency in seconds of full syncs, which read the tables back from the kernel.",
		}, family),
		PartialSyncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_partial_proxy_rules_duration_seconds", Buckets: syncBuckets,
			Help: "Latency in seconds of partial syncs, which rebuild only the Services that changed.",
		}, family),
		LastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time the rules were successfully synced (Unix seconds).",
		}, family),
		LastQueued: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "The last time a sync of the rules was queued (Unix seconds); much later than the last sync means syncs are stuck.",
		}, family),
		NetworkProgramming: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_network_programming_duration_seconds",
			Buckets: networkProgrammingBuckets(),
			Help:    "In-cluster network programming latency in seconds: from an EndpointSlice's last-change trigger time to the commit of its rules, one observation per trigger time.",
		}, family),
		SyncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
			Help: "Syncs whose nftables transaction failed (nothing was applied; the next sync is a full one).",
		}, family),
		EndpointChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
			Help: "EndpointSlice changes seen and not yet taken by a sync.",
		}),
		EndpointChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_total",
			Help: "Cumulative EndpointSlice changes seen.",
		}),
		ServiceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_pending",
			Help: "Service changes seen and not yet taken by a sync.",
		}),
		ServiceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_total",
			Help: "Cumulative Service changes seen.",
		}),
		NoLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
			Help: "Number of Service ports with a Local traffic policy and endpoints, but none on this node.",
		}, []string{"traffic_policy", "ip_family"}),
		HealthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_healthz_total",
			Help: "Cumulative /healthz answers by HTTP status.",
		}, []string{"code"}),
		LivezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_livez_total",
			Help: "Cumulative /livez answers by HTTP status.",
		}, []string{"code"}),
		BatchObjects: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nftproxy_sync_batch_objects",
			Buckets: prometheus.ExponentialBuckets(1, 4, 12),
			Help:    "Kernel objects (tables, sets, chains, rules, elements) written by each committed transaction.",
		}),
		SetElements: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nftproxy_set_elements",
			Help: "Elements of each set and map of nftproxy's tables after the last sync.",
		}, []string{"family", "set"}),
		DriftRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nftproxy_drift_repairs_total",
			Help: "Full syncs that found the kernel's tables changed behind nftproxy's back and repaired them.",
		}),
		SkippedObjects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nftproxy_skipped_objects",
			Help: "Objects currently skipped because they cannot be turned into rules (each is logged once).",
		}),
		ConntrackDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kubeproxy_conntrack_reconciler_sync_duration_seconds", Buckets: syncBuckets,
			Help: "Latency in seconds of one conntrack reconcile of a family: one dump of its UDP and SCTP entries and the deletion of the stale ones.",
		}, family),
		ConntrackDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_conntrack_reconciler_deleted_entries_total",
			Help: "Cumulative conntrack entries deleted by the conntrack reconciler.",
		}, family),
		ConntrackFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nftproxy_conntrack_reconciler_failures_total",
			Help: "Conntrack reconciles that failed (the dump, or the deletion of some stale entries); the next sync tries again.",
		}, family),
	}
	if reg != nil {
		reg.MustRegister(m.SyncDuration, m.FullSyncDuration, m.PartialSyncDuration, m.LastSync, m.LastQueued,
			m.NetworkProgramming, m.SyncFailures, m.EndpointChangesPending, m.EndpointChangesTotal,
			m.ServiceChangesPending, m.ServiceChangesTotal, m.NoLocalEndpoints, m.HealthzTotal, m.LivezTotal,
			m.BatchObjects, m.SetElements, m.DriftRepairs, m.SkippedObjects, m.ConntrackDuration,
			m.ConntrackDeleted, m.ConntrackFailures)
	}
	return m
}

// queued records that a sync of families was queued (a change arrived). m may be nil.
func (m *Metrics) queued(families []model.Family, ev cluster.Events) {
	if m == nil {
		return
	}
	for _, fam := range families {
		m.LastQueued.WithLabelValues(ipFamily(fam)).SetToCurrentTime()
	}
	m.ServiceChangesTotal.Add(float64(ev.Services))
	m.EndpointChangesTotal.Add(float64(ev.EndpointSlices))
	m.ServiceChangesPending.Add(float64(ev.Services))
	m.EndpointChangesPending.Add(float64(ev.EndpointSlices))
}

// checkedOut records that a sync took every change seen so far. m may be nil.
func (m *Metrics) checkedOut() {
	if m == nil {
		return
	}
	m.ServiceChangesPending.Set(0)
	m.EndpointChangesPending.Set(0)
}

// failed records a sync of families whose transaction failed. m may be nil.
func (m *Metrics) failed(families []model.Family) {
	if m == nil {
		return
	}
	for _, fam := range families {
		m.SyncFailures.WithLabelValues(ipFamily(fam)).Inc()
	}
}

// observe records the figures of a successful sync of families that took took. m may be nil.
func (m *Metrics) observe(families []model.Family, res sync.SyncResult, took time.Duration) {
	if m == nil {
		return
	}
	for _, fam := range families {
		f := ipFamily(fam)
		m.SyncDuration.WithLabelValues(f).Observe(took.Seconds())
		if res.Full {
			m.FullSyncDuration.WithLabelValues(f).Observe(took.Seconds())
		} else {
			m.PartialSyncDuration.WithLabelValues(f).Observe(took.Seconds())
		}
		m.LastSync.WithLabelValues(f).SetToCurrentTime()
		m.NoLocalEndpoints.WithLabelValues("internal", f).Set(float64(res.NoLocalInternal[fam]))
		m.NoLocalEndpoints.WithLabelValues("external", f).Set(float64(res.NoLocalExternal[fam]))
	}
	// As kube-proxy: one observation per trigger time, none for a change without one.
	for fam, times := range res.TriggerTimes {
		h := m.NetworkProgramming.WithLabelValues(ipFamily(fam))
		for _, t := range times {
			h.Observe(time.Since(t).Seconds())
		}
	}
	if res.Objects > 0 {
		m.BatchObjects.Observe(float64(res.Objects))
	}
	if res.DriftRepaired {
		m.DriftRepairs.Inc()
	}
	m.setElements(res.Elements)
	m.observeConntrack(res.Conntrack)
}

// health counts an answer of /healthz (livez false) or /livez. m may be nil.
func (m *Metrics) health(livez bool, status int) {
	if m == nil {
		return
	}
	c := m.HealthzTotal
	if livez {
		c = m.LivezTotal
	}
	c.WithLabelValues(strconv.Itoa(status)).Inc()
}

// NewBuildInfo returns nftproxy_build_info, 1 labelled with nftproxy's version and the Go
// version it was built with (kube-proxy exposes component-base's kubernetes_build_info).
func NewBuildInfo(version string) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nftproxy_build_info",
		Help: "A metric with a constant '1' value labelled by the version of nftproxy and the Go version it was built with.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(version, runtime.Version()).Set(1)
	return g
}

// observeConntrack records what the conntrack reconciles of a sync did.
func (m *Metrics) observeConntrack(results []conntrack.Result) {
	for _, r := range results {
		fam := ipFamily(r.Family)
		m.ConntrackDuration.WithLabelValues(fam).Observe(r.Took.Seconds())
		m.ConntrackDeleted.WithLabelValues(fam).Add(float64(r.Deleted))
		if r.Err != nil {
			m.ConntrackFailures.WithLabelValues(fam).Inc()
		}
	}
}

// ipFamily returns kube-proxy's ip_family label value of a family.
func ipFamily(fam model.Family) string {
	if fam == model.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// setElements records the element counts of a sync.
func (m *Metrics) setElements(counts map[model.Family]map[string]int) {
	for fam, sets := range counts {
		for set, n := range sets {
			m.SetElements.WithLabelValues(fam.String(), set).Set(float64(n))
		}
	}
}
