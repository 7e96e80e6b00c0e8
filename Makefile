# The targets are the commands the README gives.
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Privileged tests (network namespaces, netlink) skip when not root; CI sets
# NFTPROXY_PRIVILEGED_TESTS=required so that a skip fails the run instead.
TESTFLAGS ?= -race -count=1 -timeout 20m

.PHONY: all build test test-kernel-6.1 lint demo bench bench-compare clean k8s-bins

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/nftproxy ./cmd/nftproxy
	$(GO) build -o $(BIN)/echo ./examples/echo

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The end-to-end tests run a real kube-apiserver and etcd, built from the tools module in
# integration/k8s (about 12 minutes on 2 cores the first time, cached afterwards). Building
# them here keeps that out of the tests' timeout.
k8s-bins:
	bash integration/k8s/build.sh >/dev/null

# After the tests, a short fuzzing run over the manifest -> model path (seed corpus in
# daemon/testdata/fuzz; minimizing an input is capped so the time goes to new inputs). The
# budget is a number of inputs (about 30 s here, with the corpus), not a duration: with a
# duration, Go 1.26's fuzzing coordinator can fail the run with "context deadline exceeded"
# when the time runs out while a worker is busy (golang/go#75804, fixed in Go 1.27), a
# failure without any failing input.
FUZZTIME ?= 20000x

test: lint k8s-bins
	$(GO) test $(TESTFLAGS) ./...
	$(GO) test -run '^$$' -fuzz FuzzManifests -fuzztime $(FUZZTIME) -fuzzminimizetime 10x ./daemon
	$(MAKE) test-kernel-6.1

# The kernel round trip and the traffic tests again under Debian's Linux 6.1 (the common
# cloud node kernel), booted in qemu with this machine's / as its root by
# integration/kernelvm/run.sh (root; TCG unless KVM works). The binaries are built here,
# without -race (TCG runs them a few times slower already), outside /tmp, which the guest
# does not see. Not root and not required: skipped, like the other privileged tests. With
# -test.short, tests that fill large maps fill smaller ones (TestRestartTrustsSyncState).
KERNEL_TESTS ?= TestKernelRoundTrip|TestProbe|TestPruneAffinityKernel|TestTrafficClusterIPSpreadsOverEndpoints|TestTrafficUDPClusterIP|TestTrafficNodePort|TestTrafficExternalPolicyLocal|TestTrafficSessionAffinity|TestTrafficLoadBalancerSourceRanges|TestRestartWithoutBlip|TestDriftRepair|TestUDPEndpointReplaced|TestConntrack.*|TestReadEndpointMapsByKey|TestTrafficEndpointMapGrows|TestRestartTrustsSyncState
KVM_BIN := $(BIN)/kernelvm
test-kernel-6.1:
	@if [ "$$(id -u)" != 0 ] && [ "$$NFTPROXY_PRIVILEGED_TESTS" != required ]; then \
	  echo "test-kernel-6.1: skipped (needs root)"; exit 0; fi; \
	set -e; \
	$(GO) test -c -o $(KVM_BIN)/integration.test ./integration; \
	$(GO) build -o $(KVM_BIN)/nftproxy ./cmd/nftproxy; \
	cd integration && NFTPROXY_PRIVILEGED_TESTS=required NFTPROXY_BIN=$(CURDIR)/$(KVM_BIN)/nftproxy \
	  KERNELVM_ENV="NFTPROXY_PRIVILEGED_TESTS NFTPROXY_BIN" ./kernelvm/run.sh \
	  ../$(KVM_BIN)/integration.test -test.count=1 -test.short -test.timeout=20m -test.run '^($(KERNEL_TESTS))$$'

# Syncer figures at 1,000 and 10,000 Services x 10 endpoints: against the in-memory Fake
# (sync/) and against the kernel in a network namespace (integration/, needs root).
BENCHFLAGS ?= -run '^$$' -benchtime 5x -timeout 30m
bench:
	$(GO) test $(BENCHFLAGS) -benchtime 20000x -bench EndpointChange -benchmem ./cluster
	$(GO) test $(BENCHFLAGS) -bench . ./sync
	$(GO) test $(BENCHFLAGS) -bench 'Kernel' ./integration

# Side by side with kube-proxy v1.37 (nftables mode) against a real API server (root, network
# namespaces), two shapes in one report: N Services x M endpoints for each N of NS, and large
# Services, N x LARGE_M endpoints for each N of LARGE_NS; SHAPES picks them (small, large, or
# none). At each N: populating the API server, cold sync, restart, single changes (nftproxy also
# at its default --min-sync-period), CPU per change, RSS, CPU, and pod-to-ClusterIP connect
# time with 1 vs N Services; the cold sync and the restart RUNS times (each run after the first
# in a fresh namespace, with only those two), reported as median and range. Then CHURN (a
# duration; 0 skips it) of 20 endpoint changes a second at CHURN_N x M for each proxy, CPU and
# RSS sampled every 10 s. Each wait for a proxy is bounded by SYNC_TIMEOUT; one that runs out is
# reported as "did not finish", not failed. Writes docs/benchmarks/results.md and the charts
# beside it (sync-time, rss, churn-rss, churn-cpu; .png and .svg). See integration/scalebench's
# package doc for the rest of its knobs. The full run takes about 1.75 hours on 2 cores (RUNS=3
# adds about 15 minutes, most of it kube-proxy's restarts at 10,000 x 100), up to 2.25 when
# kube-proxy runs out of its limits.
N ?= 10000
M ?= 10
NS ?= 100,1000,5000,$(N)
LARGE_M ?= 100
LARGE_NS ?= $(N)
SHAPES ?= small,large
CHURN ?= 10m
CHURN_N ?= $(N)
SYNC_TIMEOUT ?= 10m
RUNS ?= 3
bench-compare: k8s-bins
	NFTPROXY_SCALEBENCH=1 SCALEBENCH_SHAPES=$(SHAPES) SCALEBENCH_N=$(NS) SCALEBENCH_M=$(M) \
	  SCALEBENCH_LARGE_N=$(LARGE_NS) SCALEBENCH_LARGE_M=$(LARGE_M) SCALEBENCH_RUNS=$(RUNS) \
	  SCALEBENCH_CHURN=$(CHURN) SCALEBENCH_CHURN_N=$(CHURN_N) SCALEBENCH_SYNC_TIMEOUT=$(SYNC_TIMEOUT) \
	  $(GO) test ./integration/scalebench -run TestScaleCompare -v -timeout 240m

demo: build
	bash examples/demo.sh

clean:
	rm -rf $(BIN)
