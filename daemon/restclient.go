package daemon

import (
	"context"
	"net/url"
	gosync "sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

// client-go's metrics of its requests to the API server, under component-base's names,
// labels and buckets (which kube-proxy registers), without depending on component-base.
// client-go takes one set of adapters per process; each registry registers the same
// collectors.
var (
	restRequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rest_client_request_duration_seconds",
		Help:    "Request latency in seconds. Broken down by verb, and host.",
		Buckets: []float64{0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0},
	}, []string{"verb", "host"})
	restRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rest_client_requests_total",
		Help: "Number of HTTP requests, partitioned by status code, method, and host.",
	}, []string{"code", "method", "host"})
	registerRESTMetrics gosync.Once
)

type restLatency struct{}

func (restLatency) Observe(_ context.Context, verb string, u url.URL, latency time.Duration) {
	restRequestDuration.WithLabelValues(verb, u.Host).Observe(latency.Seconds())
}

type restResult struct{}

func (restResult) Increment(_ context.Context, code, method, host string) {
	restRequests.WithLabelValues(code, method, host).Inc()
}

// RegisterClientMetrics has client-go report its requests to the API server as
// rest_client_requests_total and rest_client_request_duration_seconds in reg.
func RegisterClientMetrics(reg prometheus.Registerer) {
	registerRESTMetrics.Do(func() {
		clientmetrics.Register(clientmetrics.RegisterOpts{RequestLatency: restLatency{}, RequestResult: restResult{}})
	})
	reg.MustRegister(restRequestDuration, restRequests)
}
