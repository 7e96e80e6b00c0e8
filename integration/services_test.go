package integration

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scenario"
)

// servicesScenario programs the golden scenario name into a fresh network namespace over
// netlink, as run would, and returns a function that runs `nftproxy services ARGS...` there
// with the scenario's manifests and flags.
func servicesScenario(t *testing.T, name string) (*topology.NetNS, func(args ...string) string) {
	t.Helper()
	scs, err := scenario.Load("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	sc := scs[slices.IndexFunc(scs, func(s scenario.Scenario) bool { return s.Name == name })]
	rulesets, err := sc.Render()
	if err != nil {
		t.Fatal(err)
	}
	ns := topology.NewNetNS(t, "svc")
	if err := kernelBackend(t, ns).Replace(rulesets...); err != nil {
		t.Fatal(err)
	}
	return ns, func(args ...string) string {
		t.Helper()
		cmd := slices.Concat([]string{"netns", "exec", ns.Name, proxyBin, "services", "--manifests", sc.Dir}, sc.Args, args)
		out, err := exec.Command("ip", cmd...).Output()
		if err != nil {
			var stderr []byte
			if exit, ok := err.(*exec.ExitError); ok {
				stderr = exit.Stderr
			}
			t.Fatalf("nftproxy services %v: %v\n%s", args, err, stderr)
		}
		return string(out)
	}
}

// TestServicesCommand programs the session-affinity scenario, adds an affinity entry as the
// packet path would, and checks the exact output of `nftproxy services` for one Service: its
// ClusterIP, LoadBalancer IP and NodePort, their slots, the affinity timeout of the picking
// chains and the live client, with the time it has left. With a slot deleted behind
// nftproxy's back, the slot is gone from the output.
func TestServicesCommand(t *testing.T) {
	topology.RequirePrivileged(t)
	ns, services := servicesScenario(t, "session-affinity")
	ns.Run(t, "nft", "add element ip nftproxy affinity { 10.244.1.5 . 198.51.100.111 . tcp . 80 timeout 1h : 10.244.3.111 . 8080 }")

	out := services("default/sticky-short")
	left := regexp.MustCompile(`\((\S+) left\)`)
	m := left.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("nftproxy services prints no time left for the affinity entry:\n%s", out)
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d > time.Hour || d < 50*time.Minute {
		t.Errorf("affinity entry added with timeout 1h has %s left (%v), want a little under 1h", m[1], err)
	}
	out = left.ReplaceAllString(out, "(TIME left)")
	want := `default/sticky-short:p (ip tcp)
  ClusterIP     10.96.0.111:80     policy Cluster, affinity 10s, via cluster-tcp-2-affinity-10
      0 => 10.244.2.111:8080
      1 => 10.244.3.111:8080
  LoadBalancer  198.51.100.111:80  policy Cluster, affinity 10s, via external-tcp-2-affinity-10
      0 => 10.244.2.111:8080
      1 => 10.244.3.111:8080
      client 10.244.1.5 => 10.244.3.111:8080 (TIME left)
  NodePort      :30111             policy Cluster, affinity 10s, via nodeport-tcp-2-affinity-10
      0 => 10.244.2.111:8080
      1 => 10.244.3.111:8080
`
	if out != want {
		t.Errorf("nftproxy services default/sticky-short:\n%s\nwant:\n%s", out, scenario.LineDiff(want, out))
	}

	ns.Run(t, "nft", "delete element ip nftproxy service-endpoints { 10.96.0.111 . tcp . 80 . 1 }")
	out = left.ReplaceAllString(services("default/sticky-short"), "(TIME left)")
	want = strings.Replace(want, "      1 => 10.244.3.111:8080\n", "", 1)
	if out != want {
		t.Errorf("nftproxy services default/sticky-short with slot 1 of the ClusterIP deleted:\n%s\nwant:\n%s", out, scenario.LineDiff(want, out))
	}
}

// TestServicesCommandJSON checks `nftproxy services --output json` for a LoadBalancer
// Service with source ranges, one port with endpoints and one without (without asking a
// daemon: --daemon=).
func TestServicesCommandJSON(t *testing.T) {
	topology.RequirePrivileged(t)
	_, services := servicesScenario(t, "source-ranges")
	out := services("--output", "json", "--daemon=", "default/restricted")
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("nftproxy services --output json: %v\n%s", err, out)
	}
	want := `{
  "services": [
    {
      "family": "ip",
      "service": "default/restricted",
      "port": "http",
      "protocol": "tcp",
      "frontends": [
        {
          "kind": "ClusterIP",
          "address": "10.96.0.95",
          "port": 80,
          "chain": "cluster-tcp-2",
          "policy": "Cluster",
          "endpoints": [
            {
              "slot": 0,
              "endpoint": "10.244.1.95:8080"
            },
            {
              "slot": 1,
              "endpoint": "10.244.2.95:8080"
            }
          ]
        },
        {
          "kind": "LoadBalancer",
          "address": "198.51.100.95",
          "port": 80,
          "chain": "external-tcp-2",
          "policy": "Cluster",
          "sourceRanges": [
            "192.0.2.0/28",
            "203.0.113.0/24"
          ],
          "endpoints": [
            {
              "slot": 0,
              "endpoint": "10.244.1.95:8080"
            },
            {
              "slot": 1,
              "endpoint": "10.244.2.95:8080"
            }
          ]
        },
        {
          "kind": "NodePort",
          "port": 30095,
          "chain": "nodeport-tcp-2",
          "policy": "Cluster",
          "endpoints": [
            {
              "slot": 0,
              "endpoint": "10.244.1.95:8080"
            },
            {
              "slot": 1,
              "endpoint": "10.244.2.95:8080"
            }
          ]
        }
      ]
    },
    {
      "family": "ip",
      "service": "default/restricted",
      "port": "https",
      "protocol": "tcp",
      "frontends": [
        {
          "kind": "ClusterIP",
          "address": "10.96.0.95",
          "port": 443,
          "chain": "reject-chain",
          "noEndpoints": "reject"
        },
        {
          "kind": "LoadBalancer",
          "address": "198.51.100.95",
          "port": 443,
          "chain": "reject-chain",
          "noEndpoints": "reject",
          "sourceRanges": [
            "192.0.2.0/28",
            "203.0.113.0/24"
          ]
        },
        {
          "kind": "NodePort",
          "port": 30096,
          "chain": "reject-chain",
          "noEndpoints": "reject"
        }
      ]
    }
  ]
}
`
	if out != want {
		t.Errorf("nftproxy services --output json default/restricted:\n%s\nwant:\n%s", out, scenario.LineDiff(want, out))
	}
}
