package daemon

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsHandlerProfiling checks that the metrics address serves the runtime profiles
// only with --profiling, and the metrics either way.
func TestMetricsHandlerProfiling(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "probe_total", Help: "probe"}))
	for _, profiling := range []bool{false, true} {
		h := MetricsHandler(reg, profiling)
		get := func(path string) (int, string) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			return rec.Code, rec.Body.String()
		}
		if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "probe_total 0") {
			t.Errorf("profiling=%v: /metrics answered %d:\n%s", profiling, code, body)
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
