package daemon

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler serves /metrics from reg, /debug/services from p (DebugServices; when p is
// not nil) and, with profiling, the runtime profiles under /debug/pprof/ as kube-proxy's
// enableProfiling does. As kube-proxy's metrics server it also answers /healthz with "ok"
// while the process serves, and /proxyMode with the mode ("nftables"), which tools ask to
// learn which proxy a node runs.
func MetricsHandler(reg *prometheus.Registry, p *Proxy, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	text := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			_, _ = w.Write([]byte(body))
		}
	}
	mux.HandleFunc("/healthz", text("ok"))
	mux.HandleFunc("/proxyMode", text(ProxyMode))
	if p != nil {
		mux.Handle(DebugServicesPath, DebugServicesHandler(p))
	}
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// HealthHandler serves /healthz and /livez with kube-proxy's semantics and JSON body. Both
// answer 503 until the first sync has been programmed, and while a change has waited for
// longer than twice the sync period (Proxy.Health); /healthz also answers 503 while this
// node is on its way out (Proxy.NodeEligible: a deletionTimestamp or the cluster
// autoscaler's ToBeDeletedByClusterAutoscaler taint), so that load balancers drain it, and
// says so in nodeEligible. /livez ignores the node: a draining node's proxy is alive. Each
// answer is counted in kubeproxy_proxy_healthz_total or kubeproxy_proxy_livez_total.
func HealthHandler(p *Proxy) http.Handler {
	handler := func(livez bool) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			now := time.Now()
			ok, last := p.Health(now)
			body := healthBody{LastUpdated: last, CurrentTime: now, Healthy: ok, Status: map[string]familyHealth{}}
			for _, fam := range families {
				body.Status[ipFamily(fam)] = familyHealth{LastUpdated: last, Healthy: ok}
			}
			if !livez {
				eligible := p.NodeEligible()
				body.NodeEligible = &eligible
				ok = ok && eligible
			}
			if ok {
				body.LastUpdated = now
			}
			status := statusFor(ok)
			p.Metrics.health(livez, status)
			writeJSON(w, status, body)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", handler(false))
	mux.Handle("/livez", handler(true))
	return mux
}

// healthBody is kube-proxy's answer of /healthz and /livez. nftproxy programs both families
// in one commit, so their status is the same.
type healthBody struct {
	LastUpdated  time.Time               `json:"lastUpdated"`
	CurrentTime  time.Time               `json:"currentTime"`
	NodeEligible *bool                   `json:"nodeEligible,omitempty"`
	Healthy      bool                    `json:"healthy"`
	Status       map[string]familyHealth `json:"status,omitempty"`
}

type familyHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// statusFor is 200 when ok and 503 otherwise.
func statusFor(ok bool) int {
	if ok {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

// writeJSON answers with status and body as JSON, as kube-proxy's health endpoints do.
func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// serve serves h on addr (the value of flag) until the returned server is closed.
func serve(addr, flag string, h http.Handler) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}
