package model

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Test conventions: pods 10.244.0.0/16, services 10.96.0.0/16, node 192.168.0.2.

func testServices() []Service {
	a := netip.MustParseAddr
	var out []Service
	for i, ns := range []string{"b", "a", "c"} {
		out = append(out, Service{
			Name:       ServiceName{Namespace: ns, Name: "web"},
			Type:       NodePort,
			ClusterIPs: []netip.Addr{a("10.96.0." + string(rune('1'+i)))},
			Ports: []ServicePort{{Name: "http", Protocol: TCP, Port: 80, NodePort: uint16(30080 + i), Endpoints: []Endpoint{
				{Addr: a("10.244.1.2"), Port: 8080, Ready: true},
				{Addr: a("10.244.2.2"), Port: 8080, Ready: true},
				{Addr: a("10.244.3.2"), Port: 8080, Ready: true},
			}}},
		})
	}
	return out
}

func TestBuildIsDeterministic(t *testing.T) {
	cfg := NodeConfig{Family: IPv4, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	want := Render(Build(testServices(), cfg))
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		svcs := testServices()
		rng.Shuffle(len(svcs), func(i, j int) { svcs[i], svcs[j] = svcs[j], svcs[i] })
		for _, s := range svcs {
			eps := s.Ports[0].Endpoints
			rng.Shuffle(len(eps), func(i, j int) { eps[i], eps[j] = eps[j], eps[i] })
		}
		if got := Render(Build(svcs, cfg)); got != want {
			t.Fatalf("shuffle %d: output depends on input order", i)
		}
	}
}

func TestSharedExternalIPGoesToFirstService(t *testing.T) {
	svcs := testServices()
	for i := range svcs {
		svcs[i].ExternalIPs = []netip.Addr{netip.MustParseAddr("198.51.100.1")}
	}
	rs := Build(svcs, NodeConfig{Family: IPv4})
	var owners []string
	for _, e := range rs.Set(MapServiceIPs).Elements {
		if e.Addr == netip.MustParseAddr("198.51.100.1") {
			owners = append(owners, e.Comment)
		}
	}
	if !slices.Equal(owners, []string{"a/web:http"}) {
		t.Errorf("198.51.100.1:80 is claimed by %v, want only a/web:http (first by name)", owners)
	}
}

func TestNamesAreDistinctAndCommentsBounded(t *testing.T) {
	seen := map[string]bool{}
	for _, kind := range []PickKind{PickCluster, PickExternal, PickNodePort} {
		for _, proto := range []Protocol{TCP, UDP, SCTP} {
			for _, n := range []uint32{1, 2, 10, 11} {
				name := PickChainName(kind, proto, n)
				if seen[name] {
					t.Errorf("chain name %q is derived twice", name)
				}
				seen[name] = true
			}
		}
	}
	p := ServicePort{Name: strings.Repeat("p", 15), Protocol: TCP, Port: 80}
	if c := PortComment(ServiceName{Namespace: strings.Repeat("x", 200), Name: "y"}, p); len(c) > maxCommentLen {
		t.Errorf("comment is %d bytes, want at most %d", len(c), maxCommentLen)
	}
}

func TestIsServiceChain(t *testing.T) {
	for _, name := range []string{"cluster-tcp-1", "external-udp-10", "nodeport-sctp-3",
		"external-local-tcp-3-0", "nodeport-local-udp-2-1", "firewall-default/web"} {
		if !IsServiceChain(name) {
			t.Errorf("IsServiceChain(%q) = false", name)
		}
	}
	for _, name := range []string{"cluster-tcp-0", "cluster-tcp-01", "cluster-icmp-1", "services", "foo",
		"cluster-tcp-1-x", fmt.Sprintf("nodeport-tcp-%d", uint64(1)<<33), "cluster-local-tcp-1-1",
		"external-local-tcp-0-0", "external-local-tcp-1", "firewall-", "firewall-default", "firewall-a/b/c",
		"firewall-/web", "reject-chain"} {
		if IsServiceChain(name) {
			t.Errorf("IsServiceChain(%q) = true", name)
		}
	}
}

func TestEndpointChoice(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name string
		eps  []Endpoint
		want []string // endpoints in the slots of the ClusterIP, sorted
	}{
		{"ready only", []Endpoint{{Addr: a("10.244.1.2"), Port: 80, Ready: true}, {Addr: a("10.244.1.3"), Port: 80, Serving: true, Terminating: true}}, []string{"10.244.1.2"}},
		{"terminating fallback", []Endpoint{{Addr: a("10.244.1.3"), Port: 80, Serving: true, Terminating: true}, {Addr: a("10.244.1.4"), Port: 80}}, []string{"10.244.1.3"}},
		{"nothing serving", []Endpoint{{Addr: a("10.244.1.4"), Port: 80, Terminating: true}}, nil},
		{"other family ignored", []Endpoint{{Addr: a("fd00::1"), Port: 80, Ready: true}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := Service{Name: ServiceName{Namespace: "ns", Name: "s"}, ClusterIPs: []netip.Addr{a("10.96.0.1")},
				Ports: []ServicePort{{Protocol: TCP, Port: 80, Endpoints: tt.eps}}}
			rs := Build([]Service{svc}, NodeConfig{Family: IPv4})
			var got []string
			for _, e := range rs.Set(MapServiceEndpoints).Elements {
				got = append(got, e.Endpoint.Addr().String())
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("endpoints %v, want %v", got, tt.want)
			}
			rejected := len(rs.Set(MapNoEndpointServices).Elements) == 1
			if rejected != (len(tt.want) == 0) {
				t.Errorf("rejected=%v with endpoints %v", rejected, tt.want)
			}
		})
	}
}

// TestNoLocalEndpointCounts checks the Part's counts of Service ports whose Local traffic
// policy finds no endpoint on this node although others have one (kube-proxy's
// sync_proxy_rules_no_local_endpoints_total), and that ports without any endpoint, or with
// a local one, are not counted.
func TestNoLocalEndpointCounts(t *testing.T) {
	node := NodeConfig{Family: IPv4, NodeName: "node1"}
	ep := func(addr, nodeName string) Endpoint {
		return Endpoint{Addr: netip.MustParseAddr(addr), Port: 8080, Ready: true, NodeName: nodeName}
	}
	svc := func(internal, external bool, eps ...Endpoint) *Service {
		return &Service{Name: ServiceName{Namespace: "ns", Name: "svc"}, Type: NodePort,
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}, InternalPolicyLocal: internal, ExternalPolicyLocal: external,
			Ports: []ServicePort{{Protocol: TCP, Port: 80, NodePort: 30080, Endpoints: eps}, {Name: "b", Protocol: UDP, Port: 53, NodePort: 30053, Endpoints: eps}}}
	}
	for _, tc := range []struct {
		name               string
		svc                *Service
		internal, external int
	}{
		{"internal Local, endpoints elsewhere", svc(true, false, ep("10.244.2.2", "node2")), 2, 0},
		{"external Local, endpoints elsewhere", svc(false, true, ep("10.244.2.2", "node2")), 0, 2},
		{"both Local, a local endpoint", svc(true, true, ep("10.244.1.2", "node1"), ep("10.244.2.2", "node2")), 0, 0},
		{"both Local, no endpoint at all", svc(true, true), 0, 0},
		{"policy Cluster, endpoints elsewhere", svc(false, false, ep("10.244.2.2", "node2")), 0, 0},
	} {
		p := BuildPart(tc.svc, node)
		if p.NoLocalInternal != tc.internal || p.NoLocalExternal != tc.external {
			t.Errorf("%s: NoLocalInternal, NoLocalExternal = %d, %d, want %d, %d", tc.name, p.NoLocalInternal, p.NoLocalExternal, tc.internal, tc.external)
		}
	}
}

// TestEndpointMapSize checks the endpoint maps' room: at least EndpointMapMinSize, then the
// elements and half as many again rounded up to a power of two, so that a map holds its
// elements with room to grow; model.Build gives each map the room of its elements.
func TestEndpointMapSize(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want uint32
	}{
		{0, 1 << 14}, {10923, 1 << 14}, {10924, 1 << 15}, {16384, 1 << 15}, {21845, 1 << 15},
		{21846, 1 << 16}, {1_100_000, 1 << 21}, {1 << 31, 1 << 31},
	} {
		if got := EndpointMapSize(tc.n); got != tc.want {
			t.Errorf("EndpointMapSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
	var svcs []Service
	for i := range 120 {
		svc := Service{Name: ServiceName{Namespace: "ns", Name: fmt.Sprintf("s%d", i)}, Type: ClusterIP,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})}}
		port := ServicePort{Protocol: TCP, Port: 80}
		for j := range 100 {
			port.Endpoints = append(port.Endpoints, Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i), byte(j)}), Port: 8080, Ready: true, Serving: true})
		}
		svc.Ports = []ServicePort{port}
		svcs = append(svcs, svc)
	}
	rs := Build(svcs, NodeConfig{Family: IPv4})
	if s := rs.Set(MapServiceEndpoints); len(s.Elements) != 12000 || s.Size != 1<<15 {
		t.Errorf("%s: %d elements, size %d; want 12000 in 32768", s.Name, len(s.Elements), s.Size)
	}
	if s := rs.Set(MapNodePortEndpoints); s.Size != EndpointMapMinSize {
		t.Errorf("%s: empty, size %d; want %d", s.Name, s.Size, EndpointMapMinSize)
	}
}
