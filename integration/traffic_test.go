package integration

// Real-traffic tests: each test builds its own cluster (package topology), writes Service,
// EndpointSlice and Node manifests, runs `nftproxy run` in node1 and checks, with echo servers
// that report the backend reached and the source seen, where connections land.
//
// Address conventions (wiring in package topology):
//
//	node1  runs nftproxy, Node "node1" (InternalIP 192.168.0.2, fd00:192::2)
//	       192.168.0.2 / fd00:192::2 towards node2, 203.0.113.1 / fd00:203::1 towards the client,
//	       10.244.1.1 / fd00:244:1::1 on the pod bridge
//	pods   on node1 10.244.1.2.. / fd00:244:1::2..; on node2 10.244.2.2.. / fd00:244:2::2..
//	client 203.0.113.2 / fd00:203::2, default route via node1
//	--cluster-cidr 10.244.0.0/16,fd00:244::/32
//
//	ClusterIPs           10.96.<test>.10 and fd00:96::<test>10 (10.96.0.0/16, fd00:96::/112)
//	ExternalIP           198.51.100.10     (routed to node1 by the client's default route)
//	LoadBalancer ingress 198.51.100.20
//	Service ports        80/TCP -> 8080, 443/TCP -> 8443, 53/UDP -> 5353
//	NodePorts            30000-32767
//
// A masqueraded connection reaches an endpoint with the address of node1's interface towards
// it: 10.244.1.1 / fd00:244:1::1 for node1's pods, 192.168.0.2 / fd00:192::2 for node2's.

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
)

// Echo server ports in the pods.
const (
	httpPort  uint16 = 8080
	httpsPort uint16 = 8443
	dnsPort   uint16 = 5353
)

var (
	portHTTP  = servicePort{Name: "http", Protocol: "TCP", Port: 80, TargetPort: httpPort}
	portHTTPS = servicePort{Name: "https", Protocol: "TCP", Port: 443, TargetPort: httpsPort}
	portDNS   = servicePort{Name: "dns", Protocol: "UDP", Port: 53, TargetPort: dnsPort}
)

// withNodePort returns p with a NodePort.
func withNodePort(p servicePort, nodePort uint16) servicePort {
	p.NodePort = nodePort
	return p
}

// dualStackSlices returns one IPv4 and one IPv6 slice of the pods.
func dualStackSlices(svc string, ports []servicePort, pods ...*topology.Pod) []endpointSlice {
	return []endpointSlice{
		podSlice(svc+"-v4", false, ports, pods...),
		podSlice(svc+"-v6", true, ports, pods...),
	}
}

// endpointsOf returns the pods' addresses of one family at port.
func endpointsOf(v6 bool, port uint16, pods ...*topology.Pod) []netip.AddrPort {
	var out []netip.AddrPort
	for _, p := range pods {
		out = append(out, at(p.Addr(v6), port))
	}
	return out
}

// sourceIs expects every reply to carry source a.
func sourceIs(a netip.Addr) func(topology.Reply) netip.Addr {
	return func(topology.Reply) netip.Addr { return a }
}

// masqueraded expects every reply to carry node1's address towards the endpoint reached.
func masqueraded(r topology.Reply) netip.Addr { return masqueradeSource(r.Server.Addr()) }

// TestTrafficAddressConventions checks the test's own conventions (no root needed): the
// cluster CIDRs given to the proxy cover every pod network, so pod traffic is cluster traffic.
func TestTrafficAddressConventions(t *testing.T) {
	for _, pods := range []string{topology.Node1PodCIDRv4, topology.Node2PodCIDRv4, topology.Node1PodCIDRv6, topology.Node2PodCIDRv6} {
		p := netip.MustParsePrefix(pods)
		covered := false
		for _, c := range strings.Split(clusterCIDRs, ",") {
			c := netip.MustParsePrefix(c)
			covered = covered || (c.Bits() <= p.Bits() && c.Contains(p.Addr()))
		}
		if !covered {
			t.Errorf("--cluster-cidr %s does not cover the pod network %s", clusterCIDRs, pods)
		}
	}
}

// TestTrafficClusterIPSpreadsOverEndpoints: 200 connections from a pod to a ClusterIP reach
// both endpoints (one on node1, one on node2), each at least 30% of the time, and the
// endpoints see the pod's own address.
func TestTrafficClusterIPSpreadsOverEndpoints(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	local := h.pod(1, "local", httpPort)
	remote := h.pod(2, "remote", httpPort)
	ports := []servicePort{portHTTP}
	h.apply(service{Name: "spread", ClusterIPs: []string{"10.96.1.10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("spread-v4", false, ports, local, remote)}})
	h.start()

	target := addrPort("10.96.1.10:80")
	h.waitReply(t, client.NS, "tcp", target)
	const n = 200
	row := fmt.Sprintf("pod %s -> ClusterIP %s (local %s, remote %s)", client.IPv4, target, local.IPv4, remote.IPv4)
	replies := dialN(t, row, client.NS, "tcp", target, n)
	checkServers(t, row, replies, endpointsOf(false, httpPort, local, remote), n*30/100)
	checkSources(t, row, replies, sourceIs(client.IPv4))
}

// TestTrafficTargetPort: Service port 80 reaches endpoints listening on 8080 (the slice's port
// named like the Service port); nothing listens on 80.
func TestTrafficTargetPort(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	backend := h.pod(2, "backend", httpPort)
	ports := []servicePort{{Name: "web", Protocol: "TCP", Port: 80, TargetPort: httpPort}}
	h.apply(service{Name: "target", ClusterIPs: []string{"10.96.2.10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("target-v4", false, ports, backend)}})
	h.start()

	target := addrPort("10.96.2.10:80")
	h.waitReply(t, client.NS, "tcp", target)
	row := fmt.Sprintf("ClusterIP %s -> targetPort %d", target, httpPort)
	replies := dialN(t, row, client.NS, "tcp", target, 5)
	checkServers(t, row, replies, []netip.AddrPort{at(backend.IPv4, httpPort)}, 5)
	checkSources(t, row, replies, sourceIs(client.IPv4))
}

// TestTrafficUDPClusterIP: UDP datagrams to a ClusterIP reach the endpoints and the answer
// comes back through the ClusterIP (a connected socket accepts nothing else).
func TestTrafficUDPClusterIP(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	local := h.pod(1, "local", dnsPort)
	remote := h.pod(2, "remote", dnsPort)
	ports := []servicePort{portDNS}
	h.apply(service{Name: "dns", ClusterIPs: []string{"10.96.3.10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("dns-v4", false, ports, local, remote)}})
	h.start()

	target := addrPort("10.96.3.10:53")
	h.waitReply(t, client.NS, "udp", target)
	row := fmt.Sprintf("pod %s -> udp ClusterIP %s", client.IPv4, target)
	replies := dialN(t, row, client.NS, "udp", target, 30)
	checkServers(t, row, replies, endpointsOf(false, dnsPort, local, remote), 1)
	checkSources(t, row, replies, sourceIs(client.IPv4))
}

// TestTrafficMultiPort: each port of a two-port Service reaches its own target port.
func TestTrafficMultiPort(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	local := h.pod(1, "local", httpPort, httpsPort)
	remote := h.pod(2, "remote", httpPort, httpsPort)
	ports := []servicePort{portHTTP, portHTTPS}
	h.apply(service{Name: "multi", ClusterIPs: []string{"10.96.4.10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("multi-v4", false, ports, local, remote)}})
	h.start()
	h.waitReply(t, client.NS, "tcp", addrPort("10.96.4.10:80"))

	for _, p := range ports {
		target := at(netip.MustParseAddr("10.96.4.10"), p.Port)
		row := fmt.Sprintf("port %s %s -> %d", p.Name, target, p.TargetPort)
		t.Run(p.Name, func(t *testing.T) {
			replies := dialN(t, row, client.NS, "tcp", target, 20)
			checkServers(t, row, replies, endpointsOf(false, p.TargetPort, local, remote), 1)
			checkSources(t, row, replies, sourceIs(client.IPv4))
		})
	}
}

// TestTrafficNodePort: the external client reaches a NodePort on the node IP and on node1's
// client-side address, over TCP and UDP and both families; endpoints see node1's address
// (masqueraded), never the client's.
func TestTrafficNodePort(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local := h.pod(1, "local", httpPort, dnsPort)
	remote := h.pod(2, "remote", httpPort, dnsPort)
	ports := []servicePort{withNodePort(portHTTP, 30080), withNodePort(portDNS, 30053)}
	h.apply(service{Name: "np", Type: "NodePort", ClusterIPs: []string{"10.96.5.10", "fd00:96::510"},
		Ports: ports, Slices: dualStackSlices("np", ports, local, remote)})
	h.start()
	h.waitReply(t, h.tp.Client, "tcp", at(h.tp.Node1IPv4, 30080))

	nodeAddrs := []struct {
		name string
		addr netip.Addr
	}{
		{"node-ip", h.tp.Node1IPv4},
		{"client-side-ip", h.tp.Node1ExternalIPv4},
		{"node-ip", h.tp.Node1IPv6},
		{"client-side-ip", h.tp.Node1ExternalIPv6},
	}
	for _, na := range nodeAddrs {
		v6 := na.addr.Is6()
		clientIP := h.tp.ClientIPv4
		if v6 {
			clientIP = h.tp.ClientIPv6
		}
		for _, p := range ports {
			network := p.network()
			target := at(na.addr, p.NodePort)
			row := fmt.Sprintf("client -> NodePort %s/%s (%s)", target, network, na.name)
			t.Run(fmt.Sprintf("%s/%s/%s", na.name, family(v6), network), func(t *testing.T) {
				h.waitReply(t, h.tp.Client, network, target)
				replies := dialN(t, row, h.tp.Client, network, target, 24)
				checkServers(t, row, replies, endpointsOf(v6, p.TargetPort, local, remote), 1)
				checkSources(t, row, replies, masqueraded)
				for _, r := range replies {
					if r.Source.Addr() == clientIP {
						t.Fatalf("%s: endpoint saw the client address %s: not masqueraded", row, clientIP)
					}
				}
			})
		}
	}
}

// TestTrafficExternalAndLoadBalancerIP: the external client reaches a LoadBalancer Service
// through its ExternalIP and its ingress IP; endpoints see node1's address, not the client's.
func TestTrafficExternalAndLoadBalancerIP(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local := h.pod(1, "local", httpPort)
	remote := h.pod(2, "remote", httpPort)
	ports := []servicePort{withNodePort(portHTTP, 30180)}
	h.apply(service{Name: "lb", Type: "LoadBalancer", ClusterIPs: []string{"10.96.6.10"},
		ExternalIPs: []string{"198.51.100.10"}, LoadBalancerIPs: []string{"198.51.100.20"},
		Ports: ports, Slices: []endpointSlice{podSlice("lb-v4", false, ports, local, remote)}})
	h.start()

	for _, row := range []struct {
		name   string
		target netip.AddrPort
	}{
		{"externalIP", addrPort("198.51.100.10:80")},
		{"loadBalancerIP", addrPort("198.51.100.20:80")},
	} {
		t.Run(row.name, func(t *testing.T) {
			name := fmt.Sprintf("client -> %s %s", row.name, row.target)
			h.waitReply(t, h.tp.Client, "tcp", row.target)
			replies := dialN(t, name, h.tp.Client, "tcp", row.target, 24)
			checkServers(t, name, replies, endpointsOf(false, httpPort, local, remote), 1)
			checkSources(t, name, replies, masqueraded)
		})
	}
}

// TestTrafficHairpin: the only endpoint of a Service reaches itself through the ClusterIP and
// sees node1's bridge address as source, not its own.
func TestTrafficHairpin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	self := h.pod(1, "self", httpPort, dnsPort)
	ports := []servicePort{portHTTP, portDNS}
	h.apply(service{Name: "hairpin", ClusterIPs: []string{"10.96.7.10", "fd00:96::710"},
		Ports: ports, Slices: dualStackSlices("hairpin", ports, self)})
	h.start()

	for _, v6 := range []bool{false, true} {
		clusterIP := netip.MustParseAddr("10.96.7.10")
		if v6 {
			clusterIP = netip.MustParseAddr("fd00:96::710")
		}
		for _, p := range ports {
			network := p.network()
			target := at(clusterIP, p.Port)
			row := fmt.Sprintf("pod %s -> own ClusterIP %s/%s", self.Addr(v6), target, network)
			t.Run(fmt.Sprintf("%s/%s", family(v6), network), func(t *testing.T) {
				h.waitReply(t, self.NS, network, target)
				replies := dialN(t, row, self.NS, network, target, 5)
				checkServers(t, row, replies, []netip.AddrPort{at(self.Addr(v6), p.TargetPort)}, 5)
				checkSources(t, row, replies, masqueraded) // the bridge address
			})
		}
	}
}

// TestTrafficNoEndpointsRejected: a Service port without usable endpoints (no slice, an empty
// slice, only a not-ready endpoint) refuses connections at once: TCP and UDP, to the ClusterIP
// from a pod and to the NodePort from the client. Node1 runs echo servers on the NodePorts, so
// a refusal there comes from the proxy's REJECT, not from an unused port.
func TestTrafficNoEndpointsRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	canary := h.pod(1, "canary", httpPort)
	idle := h.pod(2, "idle", httpPort, dnsPort) // listening, but not ready
	canaryPorts := []servicePort{portHTTP}
	h.apply(service{Name: "canary", ClusterIPs: []string{"10.96.8.1", "fd00:96::801"},
		Ports: canaryPorts, Slices: dualStackSlices("canary", canaryPorts, canary)})

	type variant struct {
		name      string
		clusterIP [2]string // IPv4, IPv6
		ports     []servicePort
		slices    func(ports []servicePort) []endpointSlice
	}
	variants := []variant{
		{"no-slice", [2]string{"10.96.8.10", "fd00:96::810"},
			[]servicePort{withNodePort(portHTTP, 30081), withNodePort(portDNS, 30054)},
			func([]servicePort) []endpointSlice { return nil }},
		{"empty-slice", [2]string{"10.96.8.20", "fd00:96::820"},
			[]servicePort{withNodePort(portHTTP, 30082), withNodePort(portDNS, 30055)},
			func(ports []servicePort) []endpointSlice {
				return []endpointSlice{
					{Name: "empty-slice-v4", Ports: ports},
					{Name: "empty-slice-v6", IPv6: true, Ports: ports},
				}
			}},
		{"not-ready", [2]string{"10.96.8.30", "fd00:96::830"},
			[]servicePort{withNodePort(portHTTP, 30083), withNodePort(portDNS, 30056)},
			func(ports []servicePort) []endpointSlice {
				s := dualStackSlices("not-ready", ports, idle)
				for i := range s {
					s[i].Endpoints[0].NotReady = true
				}
				return s
			}},
	}
	for _, v := range variants {
		h.apply(service{Name: v.name, Type: "NodePort", ClusterIPs: v.clusterIP[:], Ports: v.ports, Slices: v.slices(v.ports)})
		for _, p := range v.ports {
			for _, a := range []netip.Addr{h.tp.Node1IPv4, h.tp.Node1IPv6} {
				topology.StartEcho(t, h.tp.Node1, p.network(), at(a, p.NodePort))
			}
		}
	}
	h.start()
	// One sync programs every Service: once the canary answers, the rejects are in place.
	h.waitReply(t, client.NS, "tcp", addrPort("10.96.8.1:80"))
	h.waitReply(t, client.NS, "tcp", addrPort("[fd00:96::801]:80"))

	for _, v := range variants {
		for _, v6 := range []bool{false, true} {
			clusterIP := netip.MustParseAddr(v.clusterIP[0])
			nodeIP := h.tp.Node1IPv4
			if v6 {
				clusterIP, nodeIP = netip.MustParseAddr(v.clusterIP[1]), h.tp.Node1IPv6
			}
			for _, p := range v.ports {
				network := p.network()
				t.Run(fmt.Sprintf("%s/%s/%s", v.name, family(v6), network), func(t *testing.T) {
					checkRefused(t, fmt.Sprintf("%s: pod -> ClusterIP", v.name), client.NS, network, at(clusterIP, p.Port))
					checkRefused(t, fmt.Sprintf("%s: client -> NodePort", v.name), h.tp.Client, network, at(nodeIP, p.NodePort))
				})
			}
		}
	}
}

// TestTrafficUndefinedPortRejected: a ClusterIP on a port (or protocol) the Service does not
// define refuses connections at once, including the endpoints' target port.
func TestTrafficUndefinedPortRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	backend := h.pod(1, "backend", httpPort, dnsPort)
	ports := []servicePort{portHTTP, portDNS}
	h.apply(service{Name: "ports", ClusterIPs: []string{"10.96.9.10", "fd00:96::910"},
		Ports: ports, Slices: dualStackSlices("ports", ports, backend)})
	h.start()
	h.waitReply(t, client.NS, "tcp", addrPort("10.96.9.10:80"))
	h.waitReply(t, client.NS, "tcp", addrPort("[fd00:96::910]:80"))

	for _, v6 := range []bool{false, true} {
		clusterIP := netip.MustParseAddr("10.96.9.10")
		if v6 {
			clusterIP = netip.MustParseAddr("fd00:96::910")
		}
		for _, row := range []struct {
			name    string
			network string
			port    uint16
		}{
			{"tcp-undefined-port", "tcp", 81},
			{"tcp-target-port", "tcp", httpPort},
			{"tcp-on-udp-port", "tcp", 53},
			{"udp-undefined-port", "udp", 54},
			{"udp-on-tcp-port", "udp", 80},
		} {
			name := fmt.Sprintf("%s/%s", family(v6), row.name)
			t.Run(name, func(t *testing.T) {
				checkRefused(t, name, client.NS, row.network, at(clusterIP, row.port))
			})
		}
	}
}

// TestTrafficUnallocatedClusterIPDropped: with --service-cluster-ip-range, a new connection
// to an address of the range that no Service holds is dropped instead of leaving by the
// node's default route, while the Service's own ClusterIP answers and an undefined port of it
// is still refused. The external client holds that address and answers on it, so without the
// flag the connection reaches it.
func TestTrafficUnallocatedClusterIPDropped(t *testing.T) {
	t.Parallel()
	for _, withRange := range []bool{true, false} {
		t.Run(fmt.Sprintf("service-cluster-ip-range=%v", withRange), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			client := h.tp.AddPod(t, 1, "client")
			backend := h.pod(1, "backend", httpPort)
			ports := []servicePort{portHTTP}
			h.apply(service{Name: "allocated", ClusterIPs: []string{"10.96.18.10", "fd00:96::1810"},
				Ports: ports, Slices: dualStackSlices("allocated", ports, backend)})
			for _, a := range []string{"10.96.18.11/32", "fd00:96::1811/128"} {
				h.tp.Client.Run(t, "ip", "addr", "add", a, "dev", "lo")
			}
			topology.StartEcho(t, h.tp.Client, "tcp", addrPort("10.96.18.11:80"))
			topology.StartEcho(t, h.tp.Client, "tcp", addrPort("[fd00:96::1811]:80"))
			if withRange {
				h.start("--service-cluster-ip-range", "10.96.0.0/16,fd00:96::/112")
			} else {
				h.start()
			}
			for _, v6 := range []bool{false, true} {
				allocated, unallocated := addrPort("10.96.18.10:80"), addrPort("10.96.18.11:80")
				if v6 {
					allocated, unallocated = addrPort("[fd00:96::1810]:80"), addrPort("[fd00:96::1811]:80")
				}
				h.waitReply(t, client.NS, "tcp", allocated)
				row := fmt.Sprintf("pod -> unallocated %s", unallocated)
				if !withRange {
					if r, err := topology.Dial(client.NS, "tcp", unallocated, probeTimeout); err != nil || r.Server != unallocated {
						t.Errorf("%s without --service-cluster-ip-range: %v %v, want the external client's answer", row, r, err)
					}
					continue
				}
				checkDropped(t, row, client.NS, unallocated)
				checkRefused(t, "pod -> undefined port", client.NS, "tcp", netip.AddrPortFrom(allocated.Addr(), 81))
			}
		})
	}
}

// TestTrafficIPv6ClusterIP: an IPv6 ClusterIP reaches IPv6 endpoints, TCP and UDP, and the
// endpoints see the pod's IPv6 address.
func TestTrafficIPv6ClusterIP(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	local := h.pod(1, "local", httpPort, dnsPort)
	remote := h.pod(2, "remote", httpPort, dnsPort)
	ports := []servicePort{portHTTP, portDNS}
	h.apply(service{Name: "v6", ClusterIPs: []string{"fd00:96::a10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("v6-v6", true, ports, local, remote)}})
	h.start()
	h.waitReply(t, client.NS, "tcp", addrPort("[fd00:96::a10]:80"))

	for _, p := range ports {
		network := p.network()
		target := at(netip.MustParseAddr("fd00:96::a10"), p.Port)
		row := fmt.Sprintf("pod %s -> ClusterIP %s/%s", client.IPv6, target, network)
		t.Run(network, func(t *testing.T) {
			replies := dialN(t, row, client.NS, network, target, 24)
			checkServers(t, row, replies, endpointsOf(true, p.TargetPort, local, remote), 1)
			checkSources(t, row, replies, sourceIs(client.IPv6))
		})
	}
}

// TestTrafficMasqueradeAll: with --masquerade-all, a pod's ClusterIP connections reach the
// endpoints with node1's address as source.
func TestTrafficMasqueradeAll(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	local := h.pod(1, "local", httpPort)
	remote := h.pod(2, "remote", httpPort)
	ports := []servicePort{portHTTP}
	h.apply(service{Name: "masq", ClusterIPs: []string{"10.96.11.10", "fd00:96::b10"},
		Ports: ports, Slices: dualStackSlices("masq", ports, local, remote)})
	h.start("--masquerade-all")

	for _, target := range []netip.AddrPort{addrPort("10.96.11.10:80"), addrPort("[fd00:96::b10]:80")} {
		v6 := target.Addr().Is6()
		row := fmt.Sprintf("pod %s -> ClusterIP %s with --masquerade-all", client.Addr(v6), target)
		t.Run(family(v6), func(t *testing.T) {
			h.waitReply(t, client.NS, "tcp", target)
			replies := dialN(t, row, client.NS, "tcp", target, 24)
			checkServers(t, row, replies, endpointsOf(v6, httpPort, local, remote), 1)
			checkSources(t, row, replies, masqueraded)
		})
	}
}

// TestTrafficManifestChange: a new endpoint added to the slice file gets traffic within
// 2 seconds (the daemon polls its manifest directory).
func TestTrafficManifestChange(t *testing.T) {
	t.Parallel()
	const maxDelay = 2 * time.Second
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	first := h.pod(1, "first", httpPort)
	ports := []servicePort{portHTTP}
	svc := service{Name: "grow", ClusterIPs: []string{"10.96.12.10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("grow-v4", false, ports, first)}}
	h.apply(svc)
	h.start()
	target := addrPort("10.96.12.10:80")
	h.waitReply(t, client.NS, "tcp", target)

	second := h.pod(2, "second", httpPort)
	want := at(second.IPv4, httpPort)
	svc.Slices = []endpointSlice{podSlice("grow-v4", false, ports, first, second)}
	h.apply(svc)
	changed := time.Now()

	// Each round makes a burst of connections, so that with two endpoints chosen at random
	// a programmed new endpoint is missed with probability 2^-8 per round.
	for {
		for range 8 {
			r, err := topology.Dial(client.NS, "tcp", target, probeTimeout)
			if err == nil && r.Server == want {
				if d := time.Since(changed); d > maxDelay {
					t.Errorf("new endpoint %s got its first connection %v after the manifest change, want <= %v",
						want, d.Round(time.Millisecond), maxDelay)
				} else {
					t.Logf("new endpoint %s answered %v after the manifest change", want, d.Round(time.Millisecond))
				}
				return
			}
		}
		h.checkProxy(t)
		if d := time.Since(changed); d > readyTimeout {
			t.Fatalf("new endpoint %s got no connection within %v of the manifest change (want <= %v)",
				want, readyTimeout, maxDelay)
		}
		time.Sleep(pollInterval)
	}
}

// TestTrafficFromNodeMasqueraded: cluster traffic from outside --cluster-cidr (node1 itself,
// whose route to a ClusterIP picks 203.0.113.1 / fd00:203::1) is masqueraded to node1's
// address towards the endpoint, and works.
func TestTrafficFromNodeMasqueraded(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local := h.pod(1, "local", httpPort)
	remote := h.pod(2, "remote", httpPort)
	ports := []servicePort{portHTTP}
	h.apply(service{Name: "fromnode", ClusterIPs: []string{"10.96.13.10", "fd00:96::d10"},
		Ports: ports, Slices: dualStackSlices("fromnode", ports, local, remote)})
	h.start()

	for _, target := range []netip.AddrPort{addrPort("10.96.13.10:80"), addrPort("[fd00:96::d10]:80")} {
		v6 := target.Addr().Is6()
		row := fmt.Sprintf("node1 -> ClusterIP %s", target)
		t.Run(family(v6), func(t *testing.T) {
			h.waitReply(t, h.tp.Node1, "tcp", target)
			replies := dialN(t, row, h.tp.Node1, "tcp", target, 24)
			checkServers(t, row, replies, endpointsOf(v6, httpPort, local, remote), 1)
			checkSources(t, row, replies, masqueraded)
		})
	}
}
