package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/model"
)

// fuzzNodes are the configurations the fuzzed manifests are built for: NodePorts limited to
// the Node object's primary addresses, so that that path runs too.
func fuzzNodes(objs cluster.Objects) []model.NodeConfig {
	cfg := &Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")}, NodePortPrimary: true}
	node, _ := cluster.FindNode(objs.Nodes, "node1")
	return []model.NodeConfig{cfg.NodeConfig(model.IPv4, "node1", node, nil), cfg.NodeConfig(model.IPv6, "node1", node, nil)}
}

// FuzzManifests feeds arbitrary manifest files through the daemon's path: decode, convert,
// build both families' rulesets and render them. None of it may panic, every skipped object
// must name itself (its kind, and its name or where it stands in the file) and say why, and
// every element must belong to the family of its table. The seed corpus holds every golden
// scenario and hand-made malformed objects (testdata/fuzz/FuzzManifests); `make test` runs the
// fuzzer for a short while.
func FuzzManifests(f *testing.F) {
	scenarios, _ := filepath.Glob("../testdata/*/services.yaml")
	seeds, _ := filepath.Glob("testdata/fuzz/FuzzManifests/*")
	if len(scenarios) < 20 || len(seeds) == 0 {
		f.Fatalf("seed corpus missing: %d golden scenarios, %d files in testdata/fuzz/FuzzManifests", len(scenarios), len(seeds))
	}
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
		objs := cluster.DecodeManifest(fuzzFile, data)
		services, bad := cluster.Convert(objs, cluster.ConvertOptions{})
		for _, b := range bad {
			if err := namesItself(b); err != nil {
				t.Errorf("skipped object %#v: %v", b, err)
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

// fuzzFile is the file name the fuzzed manifests are decoded as.
const fuzzFile = "fuzz.yaml"

// namesItself checks that a skipped object tells an operator which object it is and why it
// was skipped: a kind, a name (or, for a document that has none, its place in the file) and
// an error.
func namesItself(b cluster.BadObject) error {
	switch {
	case b.Kind == "":
		return errors.New("no kind")
	case b.Err == nil:
		return errors.New("no reason")
	case b.Name == "" && !strings.Contains(b.Err.Error(), fuzzFile+":"):
		return errors.New("neither a name nor a place in the file")
	}
	return nil
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
