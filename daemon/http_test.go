package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/nft"
)

// TestMetricsHandlerProfiling checks that the metrics address serves the runtime profiles
// only with --profiling, and the metrics either way.
func TestMetricsHandlerProfiling(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "probe_total", Help: "probe"}))
	for _, profiling := range []bool{false, true} {
		h := MetricsHandler(reg, nil, profiling)
		get := func(path string) (int, string) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			return rec.Code, rec.Body.String()
		}
		if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "probe_total 0") {
			t.Errorf("profiling=%v: /metrics answered %d:\n%s", profiling, code, body)
		}
		// kube-proxy's metrics server answers these too; tools ask /proxyMode.
		if code, body := get("/healthz"); code != http.StatusOK || body != "ok" {
			t.Errorf("profiling=%v: /healthz on the metrics address answered %d %q, want 200 ok", profiling, code, body)
		}
		if code, body := get("/proxyMode"); code != http.StatusOK || body != "nftables" {
			t.Errorf("profiling=%v: /proxyMode answered %d %q, want 200 nftables", profiling, code, body)
		}
		code, body := get("/debug/pprof/heap?debug=1")
		switch {
		case profiling && (code != http.StatusOK || !strings.Contains(body, "heap profile")):
			t.Errorf("with --profiling the heap profile answered %d:\n%.200s", code, body)
		case !profiling && code != http.StatusNotFound:
			t.Errorf("without --profiling the heap profile answered %d, want 404", code)
		}
	}
}

// TestHealthHandler checks /healthz and /livez: both 503 until the first sync is
// programmed, then 200; /healthz 503 with nodeEligible false while this node's Node is being
// deleted or carries the cluster autoscaler's taint, while /livez stays 200; and each
// answer counted by code.
func TestHealthHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newTestProxy(nft.NewFake(1))
	p.Metrics = NewMetrics(reg)
	h := HealthHandler(p)
	get := func(path string) (int, healthBody) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var body healthBody
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: %v\n%s", path, err, rec.Body.String())
		}
		return rec.Code, body
	}
	check := func(when string, healthz, livez int, eligible bool) {
		t.Helper()
		code, body := get("/healthz")
		if code != healthz || body.NodeEligible == nil || *body.NodeEligible != eligible || body.Healthy != (livez == 200) {
			got := "no nodeEligible"
			if body.NodeEligible != nil {
				got = fmt.Sprintf("nodeEligible %v", *body.NodeEligible)
			}
			t.Errorf("%s: /healthz answered %d with %s, healthy %v; want %d with nodeEligible %v", when, code, got, body.Healthy, healthz, eligible)
		}
		if code, body := get("/livez"); code != livez || body.NodeEligible != nil {
			t.Errorf("%s: /livez answered %d (nodeEligible set: %v), want %d without nodeEligible", when, code, body.NodeEligible != nil, livez)
		}
	}
	node := func(extra string) cluster.Objects {
		objs := proxyObjects("10.244.1.2")
		n := cluster.DecodeManifest("node.yaml", []byte("apiVersion: v1\nkind: Node\nmetadata: {name: node1"+extra))
		objs.Nodes = n.Nodes
		return objs
	}

	check("before any snapshot", 503, 503, true)
	p.Update(cluster.FullDelta(node("}")))
	check("before the first sync", 503, 503, true)
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	check("after the first sync", 200, 200, true)
	p.Update(cluster.FullDelta(node("}\nspec: {taints: [{key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}]}")))
	check("tainted ToBeDeletedByClusterAutoscaler", 503, 200, false)
	p.Update(cluster.FullDelta(node(", deletionTimestamp: '2026-11-24T00:00:00Z'}")))
	check("with a deletionTimestamp", 503, 200, false)
	p.Update(cluster.FullDelta(node("}")))
	check("back to normal", 200, 200, true)
	p.NodeRequired = true
	p.Update(cluster.FullDelta(proxyObjects("10.244.1.2")))
	check("no Node object, with the API server as source", 503, 200, false)

	for name, want := range map[string]float64{
		`kubeproxy_proxy_healthz_total{code="503"}`: 5, `kubeproxy_proxy_healthz_total{code="200"}`: 2,
		`kubeproxy_proxy_livez_total{code="503"}`: 2, `kubeproxy_proxy_livez_total{code="200"}`: 5,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}
