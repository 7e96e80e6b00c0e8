package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/daemon"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/nft"
)

// failingDaemon is a /debug/services answer of a daemon whose last sync failed: a change to
// two Services waits for the retry, and three objects are skipped, one of them not listed.
const failingDaemon = `{
  "node": "node1",
  "currentTime": "2026-11-29T04:00:10Z",
  "families": [
    {"family": "IPv4", "lastSync": {"time": "2026-11-29T04:00:08Z", "result": "failed", "error": "apply: netlink receive: operation not permitted",
      "durationSeconds": 0.0125, "kind": "full", "objects": 0, "services": 12}, "lastSuccess": "2026-11-29T03:59:10Z", "consecutiveFailures": 3},
    {"family": "IPv6", "lastSync": {"time": "2026-11-29T04:00:08Z", "result": "failed", "error": "apply: netlink receive: operation not permitted",
      "durationSeconds": 0.0125, "kind": "full", "objects": 0, "services": 12}, "lastSuccess": "2026-11-29T03:59:10Z", "consecutiveFailures": 3}
  ],
  "pending": {"since": "2026-11-29T04:00:00Z", "serviceChanges": 1, "endpointSliceChanges": 0,
    "services": ["default/api", "default/web"], "nextSync": "retry", "nextSyncAt": "2026-11-29T04:00:12Z"},
  "skipped": {"total": 3, "objects": [
    {"kind": "EndpointSlice", "namespace": "default", "name": "web-abc12", "reason": "endpoints[0]: ParseAddr(\"abc\"): unable to parse IP\nendpoints[2]: address fd00::1 is not IPv4"},
    {"kind": "Service", "namespace": "default", "name": "broken", "reason": "spec.clusterIPs: ParseAddr(\"10.96.0.300\"): IPv4 field has value >255"}
  ], "omitted": 1}
}`

// TestDaemonStatus: `services` asks the daemon's /debug/services and prints, relative to the
// daemon's clock, each family's last sync (failed: why, how often, since when), what waits
// and when the retry is, and the skipped objects with their reasons.
func TestDaemonStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != daemon.DebugServicesPath {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, failingDaemon)
	}))
	defer srv.Close()
	d, err := fetchDaemonStatus(t.Context(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	printDaemonStatus(&b, "http://127.0.0.1:10249", d)
	want := `daemon http://127.0.0.1:10249 (node node1, 2026-11-29T04:00:10Z)
  last sync  IPv4  failed, full, took 12.5ms, 2s ago (3 in a row; last success 1m0s ago): apply: netlink receive: operation not permitted
             IPv6  failed, full, took 12.5ms, 2s ago (3 in a row; last success 1m0s ago): apply: netlink receive: operation not permitted
  pending    1 Service change, 2 Services not programmed, waiting for 10s; next sync: retry in 2s
      default/api default/web
  skipped    3 objects that cannot be turned into rules
      EndpointSlice default/web-abc12: endpoints[0]: ParseAddr("abc"): unable to parse IP
        endpoints[2]: address fd00::1 is not IPv4
      Service default/broken: spec.clusterIPs: ParseAddr("10.96.0.300"): IPv4 field has value >255
      (and 1 more)
`
	if b.String() != want {
		t.Errorf("daemon status:\n%s\nwant:\n%s", b.String(), scenario.LineDiff(want, b.String()))
	}

	// An address without a scheme works; a server without the endpoint (an older daemon)
	// and no server at all are errors that name the URL.
	if _, err := fetchDaemonStatus(t.Context(), strings.TrimPrefix(srv.URL, "http://")); err != nil {
		t.Errorf("--daemon host:port: %v", err)
	}
	if _, err := fetchDaemonStatus(t.Context(), srv.URL+"/other"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("a server without /debug/services: %v, want a 404 error", err)
	}
	srv.Close()
	if _, err := fetchDaemonStatus(t.Context(), srv.URL); err == nil || !strings.Contains(err.Error(), srv.URL+daemon.DebugServicesPath+`": dial tcp`) {
		t.Errorf("no server: %v, want an error naming the URL", err)
	}
}

// TestDaemonStatusFromProxy serves a real proxy's /debug/services (after one sync with the
// Fake backend, one bad Service among the objects) and checks that services reads it: the
// last sync of both families, nothing pending but the periodic sync, the skipped Service.
func TestDaemonStatusFromProxy(t *testing.T) {
	objs := cluster.DecodeManifest("web.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec: {clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: broken}
spec: {clusterIP: 10.96.0.11, clusterIPs: [10.96.0.11], ports: [{name: http, protocol: TCP, port: 70000}]}
`))
	p := &daemon.Proxy{Config: &daemon.Config{}, NodeName: "node1", Backend: nft.NewFake(1),
		Log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		LocalAddresses: func() ([]netip.Addr, error) { return nil, nil }}
	p.Update(cluster.FullDelta(objs))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(daemon.DebugServicesHandler(p))
	defer srv.Close()
	d, err := fetchDaemonStatus(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	printDaemonStatus(&b, srv.URL, d)
	out := b.String()
	for _, want := range []string{
		"  last sync  IPv4  ok, full, ", "             IPv6  ok, full, ",
		"  pending    nothing; next sync: none\n",
		"  skipped    1 object that cannot be turned into rules\n      Service default/broken: ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("daemon status does not say %q:\n%s", want, out)
		}
	}
}
