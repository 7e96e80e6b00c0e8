package main

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
)

// scenarioTable renders the IPv4 table of a golden scenario.
func scenarioTable(t *testing.T, name string) *model.Ruleset {
	t.Helper()
	scs, err := scenario.Load("../../testdata")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(scs, func(s scenario.Scenario) bool { return s.Name == name })
	rulesets, err := scs[i].Render()
	if err != nil {
		t.Fatal(err)
	}
	return rulesets[0]
}

// TestKernelServices: the Service ports of a table (here a rendered one standing in for the
// kernel's), with the kind of each frontend, its policy and its slots, this node's marked
// under externalTrafficPolicy Local, and what happens without (local) endpoints.
func TestKernelServices(t *testing.T) {
	rs := scenarioTable(t, "traffic-policy-local")
	external := map[netip.Addr]string{netip.MustParseAddr("198.51.100.70"): kindLoadBalancer}
	var b bytes.Buffer
	for _, svc := range []string{"default/local-lb", "default/local-none", "default/internal-none"} {
		printServices(&b, kernelServices(rs, nil, external, svc))
	}
	want := `default/local-lb:http (ip tcp)
  ClusterIP     10.96.0.70:80     policy Cluster, via cluster-tcp-3
      0 => 10.244.1.70:8080
      1 => 10.244.2.70:8080
      2 => 10.244.3.70:8080
  LoadBalancer  198.51.100.70:80  policy Local, via external-local-tcp-3-1
      0 => 10.244.1.70:8080
      1 => 10.244.2.70:8080
      2 => 10.244.3.70:8080
      3 => 10.244.1.70:8080 (local)
  NodePort      :30070            policy Local, via nodeport-local-tcp-3-1
      0 => 10.244.1.70:8080
      1 => 10.244.2.70:8080
      2 => 10.244.3.70:8080
      3 => 10.244.1.70:8080 (local)
default/local-none:http (ip tcp)
  ClusterIP     10.96.0.71:80  policy Cluster, via cluster-tcp-1
      0 => 10.244.2.71:8080
  NodePort      :30071         policy Local, drop (no local endpoints), via nodeport-local-tcp-1-0
      0 => 10.244.2.71:8080
default/internal-none:http (ip tcp)
  ClusterIP     10.96.0.74:80  drop (no local endpoints)
`
	if b.String() != want {
		t.Errorf("services:\n%s\nwant:\n%s", b.String(), scenario.LineDiff(want, b.String()))
	}
	if got := kernelServices(rs, nil, external, "default/absent"); len(got) != 0 {
		t.Errorf("services of an absent Service: %v", got)
	}
	if got := kernelServices(nil, nil, nil, ""); got != nil {
		t.Errorf("services of no table: %v", got)
	}
}

func TestParsePickChain(t *testing.T) {
	for name, want := range map[string]pickChain{
		"cluster-tcp-3":                         {policy: policyCluster, slots: 3},
		"external-local-udp-3-1":                {policy: policyLocal, slots: 3, local: 1},
		"nodeport-local-tcp-1-1-affinity-10800": {policy: policyLocal, slots: 1, local: 1, timeout: 10800},
		"cluster-sctp-2-affinity-10":            {policy: policyCluster, slots: 2, timeout: 10},
	} {
		if got, ok := parsePickChain(name); !ok || got != want {
			t.Errorf("parsePickChain(%q) = %+v, %v, want %+v", name, got, ok, want)
		}
	}
	for _, name := range []string{"reject-chain", "firewall-default/web", "affinity-record-tcp-10", "cluster-tcp-0"} {
		if _, ok := parsePickChain(name); ok {
			t.Errorf("parsePickChain(%q) is a picking chain", name)
		}
	}
}

func TestSplitOutputFlag(t *testing.T) {
	rest, format, err := splitOutputFlag([]string{"--manifests", "dir", "-o", "json", "default/web"})
	if err != nil || format != "json" || !slices.Equal(rest, []string{"--manifests", "dir", "default/web"}) {
		t.Errorf("splitOutputFlag: %q, %q, %v", rest, format, err)
	}
	if _, format, err := splitOutputFlag([]string{"--output=table"}); err != nil || format != "table" {
		t.Errorf("--output=table: %q, %v", format, err)
	}
	if _, _, err := splitOutputFlag([]string{"--output", "yaml"}); err == nil {
		t.Error("--output yaml: no error")
	}
	if _, _, err := splitOutputFlag([]string{"-o"}); err == nil {
		t.Error("-o without a value: no error")
	}
}

func TestTakeFlag(t *testing.T) {
	rest, url, found, err := takeFlag([]string{"--daemon=", "-o", "json", "--daemon", "http://[::1]:10249"}, "--daemon")
	if err != nil || !found || url != "http://[::1]:10249" || !slices.Equal(rest, []string{"-o", "json"}) {
		t.Errorf("takeFlag: %q, %q, %v, %v; want the last --daemon", rest, url, found, err)
	}
	if _, url, found, _ := takeFlag([]string{"--daemon="}, "--daemon"); !found || url != "" {
		t.Errorf("--daemon= (don't ask): %q, %v", url, found)
	}
	if rest, _, found, _ := takeFlag([]string{"--", "--daemon=x"}, "--daemon"); found || len(rest) != 2 {
		t.Errorf("--daemon after --: taken (%v), rest %q", found, rest)
	}
}
