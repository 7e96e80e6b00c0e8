// Package scalebench runs nftproxy and kube-proxy (nftables mode) side by side against one
// real API server holding N Services x M endpoints, and measures cold sync, restart with the
// rules in place, single-endpoint changes (nftproxy also at its default --min-sync-period),
// peak RSS and CPU time of each proxy, and the data plane: TCP connect time from a pod to a
// ClusterIP with 1 Service and with N Services programmed.
//
// It needs root and network namespaces, and runs only when NFTPROXY_SCALEBENCH=1 (see the
// Makefile's bench-compare target):
//
//	NFTPROXY_SCALEBENCH=1 SCALEBENCH_N=1000,5000,10000 SCALEBENCH_M=10 \
//	  go test ./integration/scalebench -run TestScaleCompare -v -timeout 60m
//
// The results go to docs/benchmarks/results.md, with charts in docs/benchmarks/sync-time.png
// and docs/benchmarks/sync-time.svg.
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
)

const (
	enableEnv   = "NFTPROXY_SCALEBENCH"
	nEnv        = "SCALEBENCH_N"        // comma-separated list of N (default 1000,5000,10000)
	mEnv        = "SCALEBENCH_M"        // endpoints per Service (default 10)
	samplesEnv  = "SCALEBENCH_SAMPLES"  // single-change samples per proxy (default 20, at most 1000)
	connectsEnv = "SCALEBENCH_CONNECTS" // timed TCP connects per data-plane measurement (default 2000)
	outEnv      = "SCALEBENCH_OUT"      // output directory (default docs/benchmarks)
	proxiesEnv  = "SCALEBENCH_PROXIES"  // comma-separated short names to run (default all: nftproxy,kube-proxy,nftproxy-defaults)
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
