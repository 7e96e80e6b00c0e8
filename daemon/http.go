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

// MetricsHandler serves /metrics from reg and, with profiling, the runtime profiles under
// /debug/pprof/ as kube-proxy's enableProfiling does.
func MetricsHandler(reg *prometheus.Registry, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// HealthHandler serves /healthz and /livez: 200 while p is healthy and 503 otherwise, with
// kube-proxy's JSON body.
func HealthHandler(p *Proxy) http.Handler {
	health := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		ok, last := p.Health(now)
		writeJSON(w, statusFor(ok), struct {
			LastUpdated  time.Time `json:"lastUpdated"`
			CurrentTime  time.Time `json:"currentTime"`
			NodeEligible bool      `json:"nodeEligible"`
		}{last, now, true})
	})
	mux := http.NewServeMux()
	mux.Handle("/healthz", health)
	mux.Handle("/livez", health)
	return mux
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
