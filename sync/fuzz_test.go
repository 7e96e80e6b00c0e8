package sync

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/model"
)

// fuzzNodes are the configurations the fuzzed manifests are built for: NodePorts limited to
// the Node object's primary addresses, so that that path runs too.
func fuzzNodes(objs Objects) []model.NodeConfig {
	cfg := &Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")}, NodePortPrimary: true}
	node, _ := FindNode(objs.Nodes, "node1")
	return []model.NodeConfig{cfg.NodeConfig(model.IPv4, "node1", node, nil), cfg.NodeConfig(model.IPv6, "node1", node, nil)}
}

// FuzzManifests feeds arbitrary manifest files through the daemon's path: decode, convert,
// build both families' rulesets and render them. None of it may panic, every skipped object must name itself, and every element must belong to the
// family of its table. The seed corpus holds every golden scenario and hand-made malformed
// objects (testdata/fuzz/FuzzManifests); `make test` runs the fuzzer for a short while.
func FuzzManifests(f *testing.F) {
	scenarios, _ := filepath.Glob("../testdata/*/services.yaml")
	for _, path := range scenarios {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(manyEndpoints(300)))
	f.Fuzz(func(t *testing.T, data []byte) { checkManifests(t, data) })
}

// TestTenThousandEndpoints runs one Service with 10,000 endpoints in one slice through the
// fuzzer's checks (too big an input to mutate quickly) and checks it gets every one.
func TestTenThousandEndpoints(t *testing.T) {
	rs := checkManifests(t, []byte(manyEndpoints(10000)))
	if n := len(rs.Set(model.MapServiceEndpoints).Elements); n != 10000 {
		t.Errorf("%d endpoint slots, want 10000", n)
	}
}

// checkManifests runs data through decoding, conversion, building and rendering, checks the
// invariants and returns the IPv4 ruleset.
func checkManifests(t *testing.T, data []byte) *model.Ruleset {
	var v4 *model.Ruleset
	{
		objs, bad := parseManifests([]manifestFile{{name: "fuzz.yaml", data: data}})
		services, convertBad := Convert(objs, ConvertOptions{})
		for _, b := range append(bad, convertBad...) {
			if b.String() == "" || b.Err == nil {
				t.Errorf("a skipped object does not say what and why: %#v", b)
			}
		}
		for _, node := range fuzzNodes(objs) {
			rs := model.Build(services, node)
			for _, s := range rs.Sets {
				for _, e := range s.Elements {
					if e.Addr.IsValid() && !node.Family.Contains(e.Addr) {
						t.Errorf("%s table, set %s: element %v of the other family", node.Family, s.Name, e)
					}
					if e.Endpoint.IsValid() && !node.Family.Contains(e.Endpoint.Addr()) {
						t.Errorf("%s table, set %s: endpoint %v of the other family", node.Family, s.Name, e.Endpoint)
					}
				}
			}
			if !strings.HasPrefix(model.Render(rs), "table "+node.Family.String()+" nftproxy {") {
				t.Errorf("%s table renders oddly", node.Family)
			}
			if node.Family == model.IPv4 {
				v4 = rs
			}
		}
	}
	return v4
}

// manyEndpoints is a manifest of one Service with n endpoints in one slice.
func manyEndpoints(n int) string {
	var b strings.Builder
	b.WriteString(`apiVersion: v1
kind: Service
metadata: {name: big, namespace: default}
spec:
  clusterIP: 10.96.0.99
  clusterIPs: [10.96.0.99]
  ports: [{name: http, protocol: TCP, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-1, namespace: default, labels: {kubernetes.io/service-name: big}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
`)
	for i := range n {
		fmt.Fprintf(&b, "- {addresses: [10.%d.%d.%d], conditions: {ready: true}}\n", 128+i/65536, i/256%256, i%256)
	}
	return b.String()
}
