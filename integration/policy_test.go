package integration

// Real-traffic tests of traffic policies, terminating endpoints, topology hints and
// loadBalancerSourceRanges (conventions in traffic_test.go). node1 runs the proxy; "local"
// pods run on node1, "remote" ones on node2; "caller" is a node1 pod without servers.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
)

// clientSource expects every reply to carry the external client's own address.
func (h *harness) clientSource(r topology.Reply) netip.Addr {
	if r.Server.Addr().Is6() {
		return h.tp.ClientIPv6
	}
	return h.tp.ClientIPv4
}

// policyPods adds the pods these tests share: "local" on node1 and "remote" on node2, both
// serving httpPort, and "caller", a node1 pod without servers.
func policyPods(h *harness) (local, remote, caller *topology.Pod) {
	return h.pod(1, "local", httpPort), h.pod(2, "remote", httpPort), h.pod(1, "caller")
}

// healthCheck sends GET / to target from ns and returns the status and the decoded JSON body.
func healthCheck(ns *topology.NetNS, target netip.AddrPort) (int, map[string]any, error) {
	var conn net.Conn
	err := ns.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", target.String(), 2*time.Second)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("decode body: %w", err)
	}
	return resp.StatusCode, body, nil
}

// TestTrafficExternalPolicyLocal: with externalTrafficPolicy Local, external clients reach only
// node1's endpoint and it sees their own address; with no endpoint on node1 their packets are
// dropped, while pods still short-circuit to every endpoint and node1 itself reaches them all,
// masqueraded; a terminating but serving endpoint on node1 is used when it is node1's only one.
// The healthCheckNodePort of each LoadBalancer Service answers 200 where node1 has an
// endpoint and 503 where it has none.
func TestTrafficExternalPolicyLocal(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local, remote, caller := policyPods(h)

	ports := []servicePort{withNodePort(portHTTP, 30280)}
	h.apply(service{Name: "etp", Type: "LoadBalancer", ClusterIPs: []string{"10.96.20.10", "fd00:96::2010"},
		ExternalIPs: []string{"198.51.100.10"}, LoadBalancerIPs: []string{"198.51.100.20"},
		ExternalTrafficPolicy: "Local", HealthCheckNodePort: 32280,
		Ports: ports, Slices: dualStackSlices("etp", ports, local, remote)})
	nonePorts := []servicePort{withNodePort(portHTTP, 30281)}
	h.apply(service{Name: "etp-none", Type: "NodePort", ClusterIPs: []string{"10.96.20.20"},
		ExternalTrafficPolicy: "Local", Ports: nonePorts,
		Slices: []endpointSlice{podSlice("etp-none-v4", false, nonePorts, remote)}})
	lbNonePorts := []servicePort{withNodePort(portHTTP, 30283)}
	h.apply(service{Name: "etp-lb-none", Type: "LoadBalancer", ClusterIPs: []string{"10.96.20.40"},
		LoadBalancerIPs: []string{"198.51.100.21"}, ExternalTrafficPolicy: "Local", HealthCheckNodePort: 32283,
		Ports: lbNonePorts, Slices: []endpointSlice{podSlice("etp-lb-none-v4", false, lbNonePorts, remote)}})
	termPorts := []servicePort{withNodePort(portHTTP, 30282)}
	draining := podEndpoint(local, false)
	draining.NotReady, draining.Terminating = true, true
	h.apply(service{Name: "etp-terminating", Type: "NodePort", ClusterIPs: []string{"10.96.20.30"},
		ExternalTrafficPolicy: "Local", Ports: termPorts,
		Slices: []endpointSlice{{Name: "etp-terminating-v4", Ports: termPorts,
			Endpoints: []endpoint{draining, podEndpoint(remote, false)}}}})
	h.start()
	h.waitReply(t, h.tp.Client, "tcp", at(h.tp.Node1ExternalIPv4, 30280))

	for _, row := range []struct {
		name   string
		target netip.AddrPort
	}{
		{"NodePort", at(h.tp.Node1ExternalIPv4, 30280)},
		{"NodePort/ipv6", at(h.tp.Node1ExternalIPv6, 30280)},
		{"externalIP", addrPort("198.51.100.10:80")},
		{"loadBalancerIP", addrPort("198.51.100.20:80")},
	} {
		t.Run("client/"+row.name, func(t *testing.T) {
			name := fmt.Sprintf("client -> %s %s", row.name, row.target)
			h.waitReply(t, h.tp.Client, "tcp", row.target)
			replies := dialN(t, name, h.tp.Client, "tcp", row.target, 16)
			checkServers(t, name, replies, []netip.AddrPort{at(local.Addr(row.target.Addr().Is6()), httpPort)}, 16)
			checkSources(t, name, replies, h.clientSource)
		})
	}

	t.Run("pod-short-circuits", func(t *testing.T) {
		for _, target := range []netip.AddrPort{addrPort("198.51.100.20:80"), at(h.tp.Node1IPv4, 30280)} {
			name := fmt.Sprintf("caller pod -> %s", target)
			replies := dialN(t, name, caller.NS, "tcp", target, 30)
			checkServers(t, name, replies, endpointsOf(false, httpPort, local, remote), 1)
			checkSources(t, name, replies, sourceIs(caller.IPv4))
		}
	})
	t.Run("node-masqueraded", func(t *testing.T) {
		target := at(h.tp.Node1IPv4, 30280)
		name := fmt.Sprintf("node1 -> %s", target)
		replies := dialN(t, name, h.tp.Node1, "tcp", target, 30)
		checkServers(t, name, replies, endpointsOf(false, httpPort, local, remote), 1)
		checkSources(t, name, replies, masqueraded)
	})

	t.Run("no-local-endpoint", func(t *testing.T) {
		checkDropped(t, "client -> NodePort of etp-none", h.tp.Client, at(h.tp.Node1ExternalIPv4, 30281))
		name := "caller pod -> NodePort of etp-none"
		replies := dialN(t, name, caller.NS, "tcp", at(h.tp.Node1IPv4, 30281), 4)
		checkServers(t, name, replies, endpointsOf(false, httpPort, remote), 4)
		checkSources(t, name, replies, sourceIs(caller.IPv4))
	})

	t.Run("health-check-node-port", func(t *testing.T) {
		for _, row := range []struct {
			port  uint16
			name  string
			code  int
			local float64
		}{
			{32280, "etp", http.StatusOK, 1},
			{32283, "etp-lb-none", http.StatusServiceUnavailable, 0},
		} {
			target := at(h.tp.Node1ExternalIPv4, row.port)
			code, body, err := healthCheck(h.tp.Client, target)
			if err != nil {
				t.Fatalf("client -> health check %s of %s: %v", target, row.name, err)
			}
			svc, _ := body["service"].(map[string]any)
			if code != row.code || body["localEndpoints"] != row.local || body["serviceProxyHealthy"] != true ||
				svc["namespace"] != "default" || svc["name"] != row.name {
				t.Errorf("client -> health check %s of %s: %d %v, want %d with localEndpoints %v",
					target, row.name, code, body, row.code, row.local)
			}
		}
	})

	t.Run("terminating-local-endpoint", func(t *testing.T) {
		target := at(h.tp.Node1ExternalIPv4, 30282)
		name := fmt.Sprintf("client -> NodePort of etp-terminating %s", target)
		replies := dialN(t, name, h.tp.Client, "tcp", target, 8)
		checkServers(t, name, replies, endpointsOf(false, httpPort, local), 8)
		checkSources(t, name, replies, h.clientSource)
	})
}

// TestHealthCheckNodePortAddresses: with --nodeport-addresses, a healthCheckNodePort is served
// only on the addresses that serve NodePorts, as kube-proxy does: the client's health check to
// node1's client-link address answers, to node1's other address it is refused.
func TestHealthCheckNodePortAddresses(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local, remote, _ := policyPods(h)
	ports := []servicePort{withNodePort(portHTTP, 30290)}
	h.apply(service{Name: "etp-hc", Type: "LoadBalancer", ClusterIPs: []string{"10.96.20.90"},
		LoadBalancerIPs: []string{"198.51.100.90"}, ExternalTrafficPolicy: "Local", HealthCheckNodePort: 32290,
		Ports: ports, Slices: []endpointSlice{podSlice("etp-hc-v4", false, ports, local, remote)}})
	h.start("--nodeport-addresses", h.tp.Node1ExternalIPv4.String()+"/32")
	h.waitReply(t, h.tp.Client, "tcp", at(h.tp.Node1ExternalIPv4, 30290))

	served := at(h.tp.Node1ExternalIPv4, 32290)
	code, body, err := healthCheck(h.tp.Client, served)
	if err != nil || code != http.StatusOK || body["localEndpoints"] != float64(1) {
		t.Errorf("client -> health check %s: %d %v (%v), want 200 with localEndpoints 1", served, code, body, err)
	}
	other := at(netip.MustParseAddr(topology.Node1IPv4), 32290)
	if code, body, err := healthCheck(h.tp.Client, other); err == nil {
		t.Errorf("client -> health check %s outside --nodeport-addresses answered %d %v", other, code, body)
	}
}

// TestTrafficInternalPolicyLocal: with internalTrafficPolicy Local, a pod reaches only the
// endpoint on its own node through the ClusterIP; with none there, its packets are dropped.
func TestTrafficInternalPolicyLocal(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local, remote, caller := policyPods(h)
	ports := []servicePort{portHTTP}
	h.apply(service{Name: "itp", ClusterIPs: []string{"10.96.21.10", "fd00:96::2110"}, InternalTrafficPolicy: "Local",
		Ports: ports, Slices: dualStackSlices("itp", ports, local, remote)})
	h.apply(service{Name: "itp-none", ClusterIPs: []string{"10.96.21.20"}, InternalTrafficPolicy: "Local",
		Ports: ports, Slices: []endpointSlice{podSlice("itp-none-v4", false, ports, remote)}})
	h.start()

	for _, v6 := range []bool{false, true} {
		target := addrPort("10.96.21.10:80")
		if v6 {
			target = addrPort("[fd00:96::2110]:80")
		}
		t.Run(family(v6), func(t *testing.T) {
			name := fmt.Sprintf("caller pod -> %s", target)
			h.waitReply(t, caller.NS, "tcp", target)
			replies := dialN(t, name, caller.NS, "tcp", target, 16)
			checkServers(t, name, replies, endpointsOf(v6, httpPort, local), 16)
			checkSources(t, name, replies, sourceIs(caller.Addr(v6)))
		})
	}
	t.Run("no-local-endpoint", func(t *testing.T) {
		checkDropped(t, "caller pod -> itp-none", caller.NS, addrPort("10.96.21.20:80"))
	})
}

// TestTrafficTopologyHints: node1 is in zone-a. Endpoints hinted for zone-a are the only ones
// used; node hints naming node1 win over zone hints; an endpoint without hints turns
// filtering off.
func TestTrafficTopologyHints(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local, remote, caller := policyPods(h)
	ports := []servicePort{portHTTP}
	hinted := func(p *topology.Pod, zone string, nodes ...string) endpoint {
		ep := podEndpoint(p, false)
		ep.ZoneHints, ep.NodeHints = []string{zone}, nodes
		return ep
	}
	h.apply(service{Name: "zonal", ClusterIPs: []string{"10.96.23.10"}, Ports: ports,
		Slices: []endpointSlice{{Name: "zonal-v4", Ports: ports,
			Endpoints: []endpoint{hinted(local, "zone-b"), hinted(remote, nodeZone)}}}})
	h.apply(service{Name: "same-node", ClusterIPs: []string{"10.96.23.20"}, Ports: ports,
		Slices: []endpointSlice{{Name: "same-node-v4", Ports: ports,
			Endpoints: []endpoint{hinted(local, nodeZone, nodeName), hinted(remote, nodeZone, node2Name)}}}})
	h.apply(service{Name: "partial", ClusterIPs: []string{"10.96.23.30"}, Ports: ports,
		Slices: []endpointSlice{{Name: "partial-v4", Ports: ports,
			Endpoints: []endpoint{hinted(local, "zone-b"), podEndpoint(remote, false)}}}})
	h.start()

	for _, row := range []struct {
		name   string
		target netip.AddrPort
		want   []*topology.Pod
	}{
		{"zone-hints", addrPort("10.96.23.10:80"), []*topology.Pod{remote}},
		{"node-hints", addrPort("10.96.23.20:80"), []*topology.Pod{local}},
		{"partial-hints", addrPort("10.96.23.30:80"), []*topology.Pod{local, remote}},
	} {
		t.Run(row.name, func(t *testing.T) {
			name := fmt.Sprintf("caller pod -> %s (%s)", row.target, row.name)
			h.waitReply(t, caller.NS, "tcp", row.target)
			replies := dialN(t, name, caller.NS, "tcp", row.target, 30)
			checkServers(t, name, replies, endpointsOf(false, httpPort, row.want...), 1)
		})
	}
}

// dialTCPFrom connects from ns, from source address src, to target and returns the echo reply.
func dialTCPFrom(ns *topology.NetNS, src netip.Addr, target netip.AddrPort, timeout time.Duration) (topology.Reply, error) {
	var conn net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		var err error
		conn, err = d.Dial("tcp4", target.String())
		return err
	})
	if err != nil {
		return topology.Reply{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return topology.Reply{}, err
	}
	return topology.ParseReply(line)
}

// TestTrafficLoadBalancerSourceRanges: only sources inside loadBalancerSourceRanges reach a
// LoadBalancer IP; others are dropped, and the Service's NodePort is not filtered. When a
// range holds the node's address, the Service's LoadBalancer IPs are allowed as sources too.
func TestTrafficLoadBalancerSourceRanges(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	local := h.pod(1, "local", httpPort)
	remote := h.pod(2, "remote", httpPort)
	allowedPorts := []servicePort{withNodePort(portHTTP, 30290)}
	h.apply(service{Name: "allowed", Type: "LoadBalancer", ClusterIPs: []string{"10.96.22.10"},
		LoadBalancerIPs: []string{"198.51.100.20"}, LoadBalancerSourceRanges: []string{topology.ClientNetIPv4},
		Ports: allowedPorts, Slices: []endpointSlice{podSlice("allowed-v4", false, allowedPorts, local, remote)}})
	deniedPorts := []servicePort{withNodePort(portHTTP, 30291)}
	h.apply(service{Name: "denied", Type: "LoadBalancer", ClusterIPs: []string{"10.96.22.20"},
		LoadBalancerIPs: []string{"198.51.100.21"}, LoadBalancerSourceRanges: []string{"192.0.2.0/24"},
		Ports: deniedPorts, Slices: []endpointSlice{podSlice("denied-v4", false, deniedPorts, local, remote)}})
	// Two LoadBalancer IPs; the client also owns the first, to send from it.
	nodePorts := []servicePort{withNodePort(portHTTP, 30292)}
	h.apply(service{Name: "node-in-range", Type: "LoadBalancer", ClusterIPs: []string{"10.96.22.30"},
		LoadBalancerIPs: []string{"198.51.100.22", "198.51.100.23"}, LoadBalancerSourceRanges: []string{topology.NodeNetIPv4},
		Ports: nodePorts, Slices: []endpointSlice{podSlice("node-in-range-v4", false, nodePorts, local, remote)}})
	h.tp.Client.IP(t, "addr add 198.51.100.22/32 dev "+topology.ClientIf)
	h.start()
	h.waitReply(t, h.tp.Client, "tcp", addrPort("198.51.100.20:80"))

	t.Run("in-range", func(t *testing.T) {
		name := "client -> LB IP of allowed"
		replies := dialN(t, name, h.tp.Client, "tcp", addrPort("198.51.100.20:80"), 16)
		checkServers(t, name, replies, endpointsOf(false, httpPort, local, remote), 1)
	})
	t.Run("out-of-range", func(t *testing.T) {
		checkDropped(t, "client -> LB IP of denied", h.tp.Client, addrPort("198.51.100.21:80"))
	})
	t.Run("load-balancer-ip-as-source", func(t *testing.T) {
		target := addrPort("198.51.100.23:80")
		r, err := dialTCPFrom(h.tp.Client, netip.MustParseAddr("198.51.100.22"), target, dialTimeout)
		if err != nil {
			t.Fatalf("client from LB IP 198.51.100.22 -> %s (a node address is in the range): %v", target, err)
		}
		checkServers(t, "client from LB IP -> node-in-range", []topology.Reply{r}, endpointsOf(false, httpPort, local, remote), 0)
		if _, err := dialTCPFrom(h.tp.Client, h.tp.ClientIPv4, target, 1500*time.Millisecond); err == nil || !topology.IsTimeout(err) {
			t.Errorf("client from its own address -> %s (outside the range): %v, want dropped", target, err)
		}
	})
	t.Run("nodeport-unfiltered", func(t *testing.T) {
		name := "client -> NodePort of denied"
		replies := dialN(t, name, h.tp.Client, "tcp", at(h.tp.Node1ExternalIPv4, 30291), 8)
		checkServers(t, name, replies, endpointsOf(false, httpPort, local, remote), 1)
	})
}
