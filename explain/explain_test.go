package explain

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
)

// Conventions of the golden scenarios (testdata/): node1 is 192.168.0.2 / fd00:192::2, its
// pods 10.244.1.0/24, node2's 10.244.2.0/24, --cluster-cidr 10.244.0.0/16 (but where a
// scenario's flags say otherwise), ClusterIPs in 10.96.0.0/16, LoadBalancer and External IPs
// in 198.51.100.0/24, the external client 203.0.113.2.
const (
	pod      = "10.244.1.250"
	pod2     = "10.244.2.250"
	node     = "192.168.0.2"
	client   = "203.0.113.2"
	outsider = "192.0.2.99"
)

// row is one packet of a scenario and the explanation it must get, as summary prints it.
type row struct {
	scenario string
	from     Origin
	iif      string
	src, dst string
	proto    model.Protocol
	want     string
}

// TestExplainScenarios explains representative packets of the golden scenarios, offline
// (the tables as the model renders them), and checks what an operator reads: the Service,
// the frontend, the verdict and why, and each endpoint with its chance and masquerade.
func TestExplainScenarios(t *testing.T) {
	rows := []row{
		// A pod to a ClusterIP: every slot, its own address kept.
		{"clusterip", FromPod, "", pod, "10.96.0.10:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.5:8080 1/2 keep | 10.244.2.7:8080 1/2 keep"},
		{"traffic-policy-local", FromPod, "", pod, "10.96.0.70:80", model.TCP,
			"default/local-lb:http ClusterIP forward | 10.244.1.70:8080 1/3 keep | 10.244.2.70:8080 1/3 keep | 10.244.3.70:8080 1/3 keep"},
		// externalTrafficPolicy Local: outside → the local endpoint only, client address kept;
		// a pod short-circuits to all; the node is masqueraded; none local → drop.
		{"traffic-policy-local", FromExternal, "", client, "198.51.100.70:80", model.TCP,
			"default/local-lb:http ExternalIP or LoadBalancer IP forward | 10.244.1.70:8080 1 keep"},
		{"traffic-policy-local", FromPod, "", pod, "198.51.100.70:80", model.TCP,
			"default/local-lb:http ExternalIP or LoadBalancer IP forward | 10.244.1.70:8080 1/3 keep | 10.244.2.70:8080 1/3 keep | 10.244.3.70:8080 1/3 keep"},
		{"traffic-policy-local", FromNode, "", node, "192.168.0.2:30070", model.TCP,
			"default/local-lb:http NodePort forward | 10.244.1.70:8080 1/3 masq | 10.244.2.70:8080 1/3 masq | 10.244.3.70:8080 1/3 masq"},
		{"traffic-policy-local", FromExternal, "", client, "192.168.0.2:30071", model.TCP,
			"default/local-none:http NodePort drop (externalTrafficPolicy Local and no endpoint on this node (traffic from outside the node))"},
		// The terminating local endpoint is the local set.
		{"traffic-policy-local", FromExternal, "", client, "192.168.0.2:30072", model.TCP,
			"default/local-terminating:http NodePort forward | 10.244.1.72:8080 1 keep"},
		// internalTrafficPolicy Local: only node1's endpoint; hairpin masqueraded; none → drop.
		{"traffic-policy-local", FromPod, "", "10.244.1.73", "10.96.0.73:80", model.TCP,
			"default/internal-local:http ClusterIP forward | 10.244.1.73:8080 1 masq"},
		{"traffic-policy-local", FromPod, "", pod, "10.96.0.74:80", model.TCP,
			"default/internal-none:http ClusterIP drop (internalTrafficPolicy Local and no endpoint on this node)"},
		// A ClusterIP on a port its Service lacks: reject; an address nobody holds: untouched.
		{"traffic-policy-local", FromPod, "", pod, "10.96.0.74:81", model.TCP,
			"default/internal-none ClusterIP reject (a ClusterIP on a port its Service does not define (tcp/81))"},
		{"traffic-policy-local", FromPod, "", pod, "10.96.9.9:80", model.TCP,
			"untouched (not a Service: nftproxy does not touch it)"},
		// An external client to a ClusterIP is masqueraded (not a pod by --cluster-cidr).
		{"clusterip", FromExternal, "", client, "10.96.0.10:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.5:8080 1/2 masq | 10.244.2.7:8080 1/2 masq"},
		// With the service CIDR, an unallocated address in it is dropped.
		{"service-cidr", FromPod, "", pod, "10.96.0.121:80", model.TCP,
			"drop (an address in the service CIDR that no Service holds)"},
		{"service-cidr", FromPod, "", pod, "10.112.0.1:80", model.TCP,
			"untouched (not a Service: nftproxy does not touch it)"},
		// No endpoints: reject.
		{"terminating-fallback", FromPod, "", pod, "10.96.0.91:80", model.TCP,
			"default/gone:http ClusterIP reject (the Service port has no endpoints)"},
		{"terminating-fallback", FromPod, "", pod, "10.96.0.90:80", model.TCP,
			"default/draining:http ClusterIP forward | 10.244.1.90:8080 1/2 keep | 10.244.2.90:8080 1/2 keep"},
		// masquerade-all masquerades even a pod.
		{"masquerade-all", FromPod, "", pod, "10.96.0.130:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.130:8080 1 masq"},
		// Source ranges: inside allowed (masqueraded, external traffic), outside dropped.
		{"source-ranges", FromExternal, "", client, "198.51.100.95:80", model.TCP,
			"default/restricted:http LoadBalancer IP forward ranges=allowed | 10.244.1.95:8080 1/2 masq | 10.244.2.95:8080 1/2 masq"},
		{"source-ranges", FromExternal, "", outsider, "198.51.100.95:80", model.TCP,
			"default/restricted:http LoadBalancer IP drop (source not in loadBalancerSourceRanges) ranges=denied"},
		// The no-endpoints element of a restricted port: the firewall comes first.
		{"source-ranges", FromExternal, "", client, "198.51.100.95:443", model.TCP,
			"default/restricted:https LoadBalancer IP reject (the Service port has no endpoints) ranges=allowed"},
		// Session affinity offline: a recording, no entry yet.
		{"session-affinity", FromPod, "", pod, "10.96.0.110:80", model.TCP,
			"default/sticky:p ClusterIP forward affinity=10800s | 10.244.2.110:8080 1/2 keep | 10.244.3.110:8080 1/2 keep"},
		// Detect-local by bridge: the bridge keeps the address, another interface does not,
		// and neither does the node.
		{"detect-local-bridge", FromPod, "cbr0", pod, "10.96.0.80:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.80:8080 1/2 keep | 10.244.2.80:8080 1/2 keep"},
		{"detect-local-bridge", FromPod, "eth1", pod2, "10.96.0.80:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.80:8080 1/2 masq | 10.244.2.80:8080 1/2 masq"},
		{"detect-local-bridge", FromNode, "", node, "10.96.0.80:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.80:8080 1/2 masq | 10.244.2.80:8080 1/2 masq"},
		// Detect-local by node CIDR: a pod of node2 is masqueraded.
		{"detect-local-node-cidr", FromPod, "", pod2, "10.96.0.80:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.80:8080 1/2 masq | 10.244.2.80:8080 1/2 masq"},
		// No cluster CIDR: nothing tells pods apart, nothing is masqueraded.
		{"no-cluster-cidr", FromExternal, "", client, "10.96.0.160:80", model.TCP,
			"default/web:http ClusterIP forward | 10.244.1.160:8080 1/2 keep | 10.244.2.160:8080 1/2 keep"},
		// NodePorts only on the addresses chosen.
		{"nodeport-addresses", FromExternal, "", client, "203.0.113.1:30140", model.TCP,
			"untouched (not a Service: nftproxy does not touch it)"},
		{"nodeport-addresses", FromExternal, "", client, "192.168.0.2:30140", model.TCP,
			"default/web:http NodePort forward | 10.244.1.140:8080 1 masq"},
		// UDP and the other family.
		{"udp-sctp", FromPod, "", pod, "10.96.0.10:53", model.UDP,
			"kube-system/kube-dns:dns ClusterIP forward | 10.244.1.2:53 1/2 keep | 10.244.2.2:53 1/2 keep"},
		{"ipv6", FromPod, "", "fd00:244:1::99", "[fd00:96::10]:80", model.TCP,
			"default/web6:http ClusterIP forward | [fd00:244:1::a]:8080 1/2 keep | [fd00:244:2::b]:8080 1/2 keep"},
		{"external-ips", FromExternal, "", client, "198.51.100.21:8000", model.TCP,
			"default/legacy:http ExternalIP or LoadBalancer IP forward | 10.244.1.70:8000 1/2 masq | 10.244.2.70:8000 1/2 masq"},
		{"topology", FromPod, "", pod, "10.96.0.80:80", model.TCP,
			"default/zonal:http ClusterIP forward | 10.244.1.80:8080 1/2 keep | 10.244.3.80:8080 1/2 keep"},
	}
	scs := loadScenarios(t)
	for _, r := range rows {
		t.Run(r.scenario+"/"+string(r.from)+"-"+r.src+"-"+r.dst, func(t *testing.T) {
			st := scs.state(t, r.scenario, netip.MustParseAddr(r.src).Is6())
			p := Packet{Src: netip.MustParseAddr(r.src), Dst: netip.MustParseAddrPort(r.dst), Proto: r.proto, From: r.from, InInterface: r.iif}
			ex, err := Explain(st, p)
			if err != nil {
				t.Fatal(err)
			}
			if got := summary(ex); got != r.want {
				t.Errorf("explain %s %s (%s) in %s:\n got %s\nwant %s", r.src, r.dst, r.from, r.scenario, got, r.want)
			}
			if len(ex.Notes) > 0 {
				t.Errorf("notes on a golden table: %v", ex.Notes)
			}
		})
	}
}

// summary prints what an operator reads in an explanation, in one line.
func summary(ex Explanation) string {
	var b strings.Builder
	if ex.Service != "" {
		b.WriteString(ex.Service + " ")
	}
	if ex.Frontend != "" {
		b.WriteString(ex.Frontend + " ")
	}
	b.WriteString(string(ex.Verdict))
	if ex.Reason != "" {
		fmt.Fprintf(&b, " (%s)", ex.Reason)
	}
	if ex.SourceRanges != nil {
		b.WriteString(map[bool]string{true: " ranges=allowed", false: " ranges=denied"}[ex.SourceRanges.Allowed])
	}
	if a := ex.Affinity; a != nil {
		fmt.Fprintf(&b, " affinity=%ds", a.TimeoutSeconds)
		if a.Endpoint != "" {
			fmt.Fprintf(&b, " entry=%s", a.Endpoint)
		}
	}
	if ex.Verdict == Forward || ex.Verdict == Mixed {
		for _, o := range ex.Outcomes {
			masq := "keep"
			if o.Masquerade {
				masq = "masq"
			}
			if o.Verdict == Forward {
				fmt.Fprintf(&b, " | %s %s %s", o.Endpoint, o.Chance, masq)
			} else {
				fmt.Fprintf(&b, " | %s %s", o.Verdict, o.Chance)
			}
		}
	}
	return b.String()
}

// scenarios holds the golden scenarios' tables, rendered by the model.
type scenarios map[string]scenario.Scenario

func loadScenarios(t *testing.T) scenarios {
	t.Helper()
	all, err := scenario.Load("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	out := scenarios{}
	for _, sc := range all {
		out[sc.Name] = sc
	}
	return out
}

// state returns the walk's input for a scenario's table of one family, offline: the node's
// addresses from its Node object, no affinity entries.
func (s scenarios) state(t *testing.T, name string, v6 bool) State {
	t.Helper()
	sc, ok := s[name]
	if !ok {
		t.Fatalf("no scenario %s", name)
	}
	rulesets, err := sc.Render()
	if err != nil {
		t.Fatal(err)
	}
	_, nodes, err := sc.Input()
	if err != nil {
		t.Fatal(err)
	}
	fam := model.IPv4
	if v6 {
		fam = model.IPv6
	}
	for _, rs := range rulesets {
		if rs.Family == fam {
			return State{Ruleset: rs, LocalAddrs: nodes[fam].NodeIPs}
		}
	}
	t.Fatalf("scenario %s has no %s table", name, fam)
	return State{}
}

// TestExplainAffinityEntry: a client the affinity map holds goes to its endpoint only, and
// the explanation says for how long; another client draws a slot.
func TestExplainAffinityEntry(t *testing.T) {
	st := loadScenarios(t).state(t, "session-affinity", false)
	st.Affinity = []AffinityEntry{{Client: netip.MustParseAddr(pod), Dst: netip.MustParseAddrPort("10.96.0.110:80"), Proto: model.TCP,
		Endpoint: netip.MustParseAddrPort("10.244.3.110:8080"), Expires: 3*time.Hour - time.Minute}}
	ex, err := Explain(st, Packet{Src: netip.MustParseAddr(pod), Dst: netip.MustParseAddrPort("10.96.0.110:80"), Proto: model.TCP, From: FromPod})
	if err != nil {
		t.Fatal(err)
	}
	want := "default/sticky:p ClusterIP forward affinity=10800s entry=10.244.3.110:8080 | 10.244.3.110:8080 1 keep"
	if got := summary(ex); got != want || ex.Affinity.ExpiresSeconds != 3*3600-60 {
		t.Errorf("got %s (expires %ds)\nwant %s (expires 10740s)", got, ex.Affinity.ExpiresSeconds, want)
	}
	other, err := Explain(st, Packet{Src: netip.MustParseAddr("10.244.1.251"), Dst: netip.MustParseAddrPort("10.96.0.110:80"), Proto: model.TCP, From: FromPod})
	if err != nil {
		t.Fatal(err)
	}
	if len(other.Endpoints()) != 2 {
		t.Errorf("another client: endpoints %v, want both", other.Endpoints())
	}
}

// TestExplainBadInput: a packet of another family or origin is an error, not a panic.
func TestExplainBadInput(t *testing.T) {
	st := loadScenarios(t).state(t, "clusterip", false)
	for _, p := range []Packet{
		{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: model.TCP, From: FromPod},
		{Src: netip.MustParseAddr(pod), Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: model.TCP, From: "moon"},
	} {
		if _, err := Explain(st, p); err == nil {
			t.Errorf("Explain(%+v): no error", p)
		}
	}
	if _, err := Explain(State{}, Packet{}); err == nil {
		t.Error("Explain without a table: no error")
	}
}

// TestExplainMasqueradeReasons: the reason names the flag or the rule an operator would look
// for.
func TestExplainMasqueradeReasons(t *testing.T) {
	scs := loadScenarios(t)
	for _, r := range []struct {
		scenario string
		p        Packet
		want     string
	}{
		{"masquerade-all", Packet{Src: netip.MustParseAddr(pod), Dst: netip.MustParseAddrPort("10.96.0.130:80"), Proto: model.TCP, From: FromPod}, "--masquerade-all"},
		{"traffic-policy-local", Packet{Src: netip.MustParseAddr("10.244.1.73"), Dst: netip.MustParseAddrPort("10.96.0.73:80"), Proto: model.TCP, From: FromPod}, "hairpin"},
		{"detect-local-bridge", Packet{Src: netip.MustParseAddr(pod2), Dst: netip.MustParseAddrPort("10.96.0.80:80"), Proto: model.TCP, From: FromPod, InInterface: "eth1"}, "came in on eth1, not the pods' cbr0"},
		{"clusterip", Packet{Src: netip.MustParseAddr(client), Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: model.TCP, From: FromExternal}, "outside 10.244.0.0/16"},
		{"external-ips", Packet{Src: netip.MustParseAddr(client), Dst: netip.MustParseAddrPort("198.51.100.21:8000"), Proto: model.TCP, From: FromExternal}, "externalTrafficPolicy Cluster"},
		{"traffic-policy-local", Packet{Src: netip.MustParseAddr(client), Dst: netip.MustParseAddrPort("198.51.100.70:80"), Proto: model.TCP, From: FromExternal}, "sees the client's address"},
	} {
		ex, err := Explain(scs.state(t, r.scenario, false), r.p)
		if err != nil {
			t.Fatal(err)
		}
		if len(ex.Outcomes) == 0 || !strings.Contains(ex.Outcomes[0].MasqueradeReason, r.want) {
			t.Errorf("%s %s -> %s: outcomes %+v, want a masquerade reason with %q", r.scenario, r.p.Src, r.p.Dst, ex.Outcomes, r.want)
		}
	}
}
