package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/sync"
)

// Metrics are the proxy's Prometheus metrics. Names shared with kube-proxy mean the same
// thing, so that existing dashboards and alerts keep working.
type Metrics struct {
	SyncDuration        prometheus.Histogram
	FullSyncDuration    prometheus.Histogram
	PartialSyncDuration prometheus.Histogram
	LastSync            prometheus.Gauge
	NetworkProgramming  prometheus.Histogram
	SyncFailures        prometheus.Counter
	BatchObjects        prometheus.Histogram
	SetElements         *prometheus.GaugeVec
	DriftRepairs        prometheus.Counter
	SkippedObjects      prometheus.Gauge
	// ConntrackDuration, ConntrackDeleted and ConntrackFailures describe the conntrack
	// reconciles, per IP family ("IPv4", "IPv6", as kube-proxy labels them).
	ConntrackDuration *prometheus.HistogramVec
	ConntrackDeleted  *prometheus.CounterVec
	ConntrackFailures *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	syncBuckets := prometheus.ExponentialBuckets(0.001, 2, 15)
	m := &Metrics{
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_proxy_rules_duration_seconds", Buckets: syncBuckets,
			Help: "SyncProxyRules latency in seconds: time to compute and commit one sync, full or partial.",
		}),
		FullSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_full_proxy_rules_duration_seconds", Buckets: syncBuckets,
			Help: "Latency in seconds of full syncs, which read the tables back from the kernel.",
		}),
		PartialSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_partial_proxy_rules_duration_seconds", Buckets: syncBuckets,
			Help: "Latency in seconds of partial syncs, which rebuild only the Services that changed.",
		}),
		LastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time the rules were successfully synced (Unix seconds).",
		}),
		NetworkProgramming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubeproxy_network_programming_duration_seconds",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 20),
			Help:    "In-cluster network programming latency in seconds: from a change reaching the proxy to its rules being in the kernel.",
		}),
		SyncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
			Help: "Syncs whose nftables transaction failed (nothing was applied; the next sync is a full one).",
		}),
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
		}, []string{"ip_family"}),
		ConntrackDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_conntrack_reconciler_deleted_entries_total",
			Help: "Cumulative conntrack entries deleted by the conntrack reconciler.",
		}, []string{"ip_family"}),
		ConntrackFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nftproxy_conntrack_reconciler_failures_total",
			Help: "Conntrack reconciles that failed (the dump, or the deletion of some stale entries); the next sync tries again.",
		}, []string{"ip_family"}),
	}
	if reg != nil {
		reg.MustRegister(m.SyncDuration, m.FullSyncDuration, m.PartialSyncDuration, m.LastSync,
			m.NetworkProgramming, m.SyncFailures, m.BatchObjects, m.SetElements, m.DriftRepairs,
			m.SkippedObjects, m.ConntrackDuration, m.ConntrackDeleted, m.ConntrackFailures)
	}
	return m
}

// observe records the figures of a successful sync that took took. m may be nil.
func (m *Metrics) observe(res sync.SyncResult, took time.Duration) {
	if m == nil {
		return
	}
	m.SyncDuration.Observe(took.Seconds())
	if res.Full {
		m.FullSyncDuration.Observe(took.Seconds())
	} else {
		m.PartialSyncDuration.Observe(took.Seconds())
	}
	m.LastSync.SetToCurrentTime()
	if res.Objects > 0 {
		m.BatchObjects.Observe(float64(res.Objects))
	}
	if !res.Oldest.IsZero() {
		m.NetworkProgramming.Observe(time.Since(res.Oldest).Seconds())
	}
	if res.DriftRepaired {
		m.DriftRepairs.Inc()
	}
	m.setElements(res.Elements)
	m.observeConntrack(res.Conntrack)
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
