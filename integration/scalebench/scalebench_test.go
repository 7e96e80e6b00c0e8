// Package scalebench runs nftproxy and kube-proxy (nftables mode) side by side against one
// real API server, and writes what it measures to docs/benchmarks/results.md with charts
// beside it. It measures two shapes of cluster and a steady state:
//
//   - the small shape, N Services x 10 endpoints for each N of SCALEBENCH_N (default
//     100,1000,5000,10000), and the large shape, N Services x 100 endpoints (EndpointSlices of
//     100 endpoints each, as the EndpointSlice controller writes them) for each N of
//     SCALEBENCH_LARGE_N (default 10000, a million endpoints). At each N: populating the API
//     server (time, etcd and kube-apiserver memory), cold sync, restart with the rules in place,
//     single-endpoint changes (nftproxy also at its default --min-sync-period), CPU time per
//     change over many changes back to back, peak RSS and CPU of each proxy, and the data
//     plane: TCP connect time from a pod to a ClusterIP with 1 Service and with N Services
//     programmed. Each shape has its own targets for nftproxy, judged at its largest N.
//     The cold sync and the restart are measured SCALEBENCH_RUNS times (default 3) for each
//     proxy at each N: run 1 as above, each further run in a fresh namespace of its own with
//     only a cold sync and a restart. The report gives their median and range (the targets:
//     the median, and the worst run beside it); nftproxy at its default --min-sync-period
//     has one run.
//   - churn: SCALEBENCH_CHURN_RATE (default 20) endpoint changes a second on random Services at
//     SCALEBENCH_CHURN_N (default 10000) x 10 for SCALEBENCH_CHURN (default 10m), each proxy
//     in turn; CPU and RSS sampled every 10 s.
//
// Every wait for a proxy is bounded by SCALEBENCH_SYNC_TIMEOUT (default 10m): a proxy that
// does not finish in time is reported as such ("did not finish in 10 min"), which is an
// outcome of the run, not a failure of it.
//
// It needs root and network namespaces, and runs only when NFTPROXY_SCALEBENCH=1 (see the
// Makefile's bench-compare target, whose variables set these):
//
//	NFTPROXY_SCALEBENCH=1 SCALEBENCH_SHAPES=small,large SCALEBENCH_N=100,1000,5000,10000 \
//	  SCALEBENCH_LARGE_N=10000 SCALEBENCH_RUNS=3 SCALEBENCH_CHURN=10m \
//	  go test ./integration/scalebench -run TestScaleCompare -v -timeout 240m
//
// SCALEBENCH_SHAPES picks the shapes (small, large, or none), SCALEBENCH_CHURN=0 skips the
// churn, and SCALEBENCH_PROXIES=none runs no proxy: what is left is populating the API server,
// which shows how long a million endpoints take to create and what etcd and kube-apiserver hold:
//
//	NFTPROXY_SCALEBENCH=1 SCALEBENCH_SHAPES=large SCALEBENCH_CHURN=0 SCALEBENCH_PROXIES=none \
//	  SCALEBENCH_OUT=/tmp/pop go test ./integration/scalebench -run TestScaleCompare -v
//
// The results go to docs/benchmarks/results.md (or $SCALEBENCH_OUT), rewritten after each N,
// with charts beside it: sync-time (cold sync and restart against N), rss (peak RSS against
// N), churn-rss and churn-cpu (RSS and CPU over the churn), each as .png and .svg.
package scalebench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	enableEnv     = "NFTPROXY_SCALEBENCH"
	shapesEnv     = "SCALEBENCH_SHAPES"       // comma-separated shapes to run: small, large (default both)
	nEnv          = "SCALEBENCH_N"            // small shape: comma-separated list of N (default 100,1000,5000,10000)
	mEnv          = "SCALEBENCH_M"            // small shape and churn: endpoints per Service (default 10)
	largeNEnv     = "SCALEBENCH_LARGE_N"      // large shape: comma-separated list of N (default 10000)
	largeMEnv     = "SCALEBENCH_LARGE_M"      // large shape: endpoints per Service (default 100)
	runsEnv       = "SCALEBENCH_RUNS"         // cold sync and restart: runs per proxy and N (default 3)
	samplesEnv    = "SCALEBENCH_SAMPLES"      // single-change samples per proxy (default 20, at most 1000)
	cpuChangesEnv = "SCALEBENCH_CPU_CHANGES"  // back-to-back changes for CPU per change (default 100, at most 1000)
	connectsEnv   = "SCALEBENCH_CONNECTS"     // timed TCP connects per data-plane measurement (default 2000)
	timeoutEnv    = "SCALEBENCH_SYNC_TIMEOUT" // time limit of each wait for a proxy (default 10m)
	churnEnv      = "SCALEBENCH_CHURN"        // churn duration per proxy (default 10m; 0 skips the churn)
	churnNEnv     = "SCALEBENCH_CHURN_N"      // churn: N (default 10000)
	churnRateEnv  = "SCALEBENCH_CHURN_RATE"   // churn: endpoint changes a second (default 20)
	outEnv        = "SCALEBENCH_OUT"          // output directory (default docs/benchmarks)
	proxiesEnv    = "SCALEBENCH_PROXIES"      // comma-separated short names to run (default all: nftproxy,kube-proxy,nftproxy-defaults)
)

func envInts(name string, def []int) ([]int, error) {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return def, nil
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s=%q: want positive integers separated by commas", name, v)
		}
		out = append(out, n)
	}
	return out, nil
}

// envInt returns the one positive integer of name, or def.
func envInt(name string, def int) (int, error) {
	v, err := envInts(name, []int{def})
	if err != nil {
		return 0, err
	}
	if len(v) != 1 {
		return 0, fmt.Errorf("%s=%q: want one positive integer", name, os.Getenv(name))
	}
	return v[0], nil
}

// envDuration returns the duration of name (0 allowed), or def.
func envDuration(name string, def time.Duration) (time.Duration, error) {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return def, nil
	}
	if v == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s=%q: want a duration such as 10m", name, v)
	}
	return d, nil
}

// repoRoot returns the main module's root directory.
func repoRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if ok && filepath.IsAbs(file) {
		return filepath.Join(filepath.Dir(file), "..", "..")
	}
	return filepath.Join("..", "..")
}

// buildNFTProxy compiles cmd/nftproxy into dir (or returns $NFTPROXY_BIN).
func buildNFTProxy(t *testing.T, dir string) string {
	t.Helper()
	if bin := os.Getenv("NFTPROXY_BIN"); bin != "" {
		return bin
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "nftproxy")
	cmd := exec.Command(goTool, "build", "-o", out, "github.com/nftproxy/nftproxy/cmd/nftproxy")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/nftproxy: %v\n%s", err, b)
	}
	return out
}

// kubeProxyBin finds kube-proxy where the apiserver harness finds its binaries:
// $NFTPROXY_K8S_BIN, or the directory integration/k8s/build.sh prints (it builds kube-proxy too).
func kubeProxyBin(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("NFTPROXY_K8S_BIN"); dir != "" {
		p := filepath.Join(dir, "kube-proxy")
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("NFTPROXY_K8S_BIN=%s: %v", dir, err)
		}
		return p
	}
	script := filepath.Join(repoRoot(), "integration", "k8s", "build.sh")
	cmd := exec.Command("bash", script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	p := filepath.Join(lines[len(lines)-1], "kube-proxy")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("kube-proxy: %v", err)
	}
	return p
}
