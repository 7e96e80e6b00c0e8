// Package topology owns the network-namespace test fixtures of the
// integration tests: creating and deleting named network namespaces,
// running code and commands inside them, wiring a small dual-stack
// (IPv4 + IPv6) cluster out of veth pairs and bridges (a proxy node with
// pods, a second node with pods, an external client), and TCP/UDP echo
// servers and clients used to observe where traffic lands and which source
// address it carries.
//
// Everything here needs root; guard tests with RequirePrivileged. Traffic
// only ever flows between namespaces created by the test.
package topology

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

// Address conventions of the test topology. Every link is dual stack.
//
//	client (eth0) 203.0.113.2 / fd00:203::2
//	   |  203.0.113.0/24, fd00:203::/64
//	node1 (to-client) 203.0.113.1 / fd00:203::1   <- runs the proxy
//	node1 (br0) 10.244.1.1 / fd00:244:1::1  -- pods 10.244.1.2.. / fd00:244:1::2..
//	node1 (to-node2) 192.168.0.2 / fd00:192::2    <- "the node IP"
//	   |  192.168.0.0/24, fd00:192::/64
//	node2 (to-node1) 192.168.0.3 / fd00:192::3
//	node2 (br0) 10.244.2.1 / fd00:244:2::1  -- pods 10.244.2.2.. / fd00:244:2::2..
//
// Routes: node1 default via the client (so ClusterIPs are routable before
// DNAT; unproxied packets die in the client, which does not forward) and
// node2's pod CIDRs via node2; node2 and the client default via node1; pods
// default via their bridge. Forwarding is on in node1 and node2 only.
const (
	// Node1IPv4 is node1's IPv4 address on the node network ("the node IP").
	Node1IPv4 = "192.168.0.2"
	// Node1IPv6 is node1's IPv6 address on the node network.
	Node1IPv6 = "fd00:192::2"
	// Node2IPv4 is node2's IPv4 address on the node network.
	Node2IPv4 = "192.168.0.3"
	// Node2IPv6 is node2's IPv6 address on the node network.
	Node2IPv6 = "fd00:192::3"
	// NodeNetIPv4 is the node network (node1 <-> node2).
	NodeNetIPv4 = "192.168.0.0/24"
	// NodeNetIPv6 is the IPv6 node network (node1 <-> node2).
	NodeNetIPv6 = "fd00:192::/64"

	// Node1ExternalIPv4 is node1's IPv4 address on the client link.
	Node1ExternalIPv4 = "203.0.113.1"
	// Node1ExternalIPv6 is node1's IPv6 address on the client link.
	Node1ExternalIPv6 = "fd00:203::1"
	// ClientIPv4 is the external client's IPv4 address.
	ClientIPv4 = "203.0.113.2"
	// ClientIPv6 is the external client's IPv6 address.
	ClientIPv6 = "fd00:203::2"
	// ClientNetIPv4 is the client link network.
	ClientNetIPv4 = "203.0.113.0/24"
	// ClientNetIPv6 is the IPv6 client link network.
	ClientNetIPv6 = "fd00:203::/64"

	// Node1PodCIDRv4 is the IPv4 pod network on node1 (bridge br0).
	Node1PodCIDRv4 = "10.244.1.0/24"
	// Node1PodCIDRv6 is the IPv6 pod network on node1 (bridge br0).
	Node1PodCIDRv6 = "fd00:244:1::/64"
	// Node1GatewayIPv4 is node1's bridge address, the pods' IPv4 gateway.
	Node1GatewayIPv4 = "10.244.1.1"
	// Node1GatewayIPv6 is node1's bridge address, the pods' IPv6 gateway.
	Node1GatewayIPv6 = "fd00:244:1::1"
	// Node2PodCIDRv4 is the IPv4 pod network on node2 (bridge br0).
	Node2PodCIDRv4 = "10.244.2.0/24"
	// Node2PodCIDRv6 is the IPv6 pod network on node2 (bridge br0).
	Node2PodCIDRv6 = "fd00:244:2::/64"
	// Node2GatewayIPv4 is node2's bridge address, the pods' IPv4 gateway.
	Node2GatewayIPv4 = "10.244.2.1"
	// Node2GatewayIPv6 is node2's bridge address, the pods' IPv6 gateway.
	Node2GatewayIPv6 = "fd00:244:2::1"
	// PodCIDRv4 covers the IPv4 pod networks of both nodes.
	PodCIDRv4 = "10.244.0.0/16"
	// PodCIDRv6 covers the IPv6 pod networks of both nodes.
	PodCIDRv6 = "fd00:244::/32"

	// ServiceCIDRv4 is the suggested IPv4 ClusterIP range (a convention
	// only: nothing routes it specifically, node1's default route covers it).
	ServiceCIDRv4 = "10.96.0.0/16"
	// ServiceCIDRv6 is the suggested IPv6 ClusterIP range (convention only).
	ServiceCIDRv6 = "fd00:96::/112"

	// BridgeName is the pod bridge on both nodes.
	BridgeName = "br0"
	// Node1ToNode2If is node1's interface towards node2.
	Node1ToNode2If = "to-node2"
	// Node2ToNode1If is node2's interface towards node1.
	Node2ToNode1If = "to-node1"
	// Node1ToClientIf is node1's interface towards the client.
	Node1ToClientIf = "to-client"
	// ClientIf is the client's interface towards node1.
	ClientIf = "eth0"
	// PodIf is the interface name inside every pod namespace.
	PodIf = "eth0"
)

// Topology is the test cluster: Node1 runs the proxy and hosts pods on
// br0, Node2 hosts more pods and reaches everything through Node1, Client
// is an external host attached to Node1. See the package constants for
// the addresses. All namespaces are deleted in t.Cleanup.
type Topology struct {
	// Node1 is the node running the proxy.
	Node1 *NetNS
	// Node2 is the second node, attached to Node1.
	Node2 *NetNS
	// Client is the external client, attached to Node1.
	Client *NetNS

	// Node1IPv4 and Node1IPv6 are node1's node-network addresses (the node IP).
	Node1IPv4, Node1IPv6 netip.Addr
	// Node1ExternalIPv4 and Node1ExternalIPv6 are node1's client-link addresses.
	Node1ExternalIPv4, Node1ExternalIPv6 netip.Addr
	// Node2IPv4 and Node2IPv6 are node2's node-network addresses.
	Node2IPv4, Node2IPv6 netip.Addr
	// ClientIPv4 and ClientIPv6 are the external client's addresses.
	ClientIPv4, ClientIPv6 netip.Addr

	mu      sync.Mutex
	pods    []*Pod
	nextPod [3]int // next host number per node (index 1 and 2)
}

// Pod is a network namespace attached to a node's bridge by a veth pair
// ("eth0" inside the pod, "vp<host>" on the node).
type Pod struct {
	// Name is the name given to AddPod.
	Name string
	// Node is 1 or 2.
	Node int
	// NS is the pod's network namespace.
	NS *NetNS
	// IPv4 and IPv6 are the pod's addresses.
	IPv4, IPv6 netip.Addr
	// HostIf is the node-side veth name (in the node's namespace).
	HostIf string
}

// Addr returns the pod's IPv4 address when ipv6 is false, else its IPv6 address.
func (p *Pod) Addr(ipv6 bool) netip.Addr {
	if ipv6 {
		return p.IPv6
	}
	return p.IPv4
}

// New builds the three-namespace topology (node1, node2, client) with
// forwarding enabled on both nodes and no pods yet. It takes a few tens of
// milliseconds. Call RequirePrivileged first.
func New(t testing.TB) *Topology {
	t.Helper()
	tp := &Topology{
		Node1IPv4:         netip.MustParseAddr(Node1IPv4),
		Node1IPv6:         netip.MustParseAddr(Node1IPv6),
		Node1ExternalIPv4: netip.MustParseAddr(Node1ExternalIPv4),
		Node1ExternalIPv6: netip.MustParseAddr(Node1ExternalIPv6),
		Node2IPv4:         netip.MustParseAddr(Node2IPv4),
		Node2IPv6:         netip.MustParseAddr(Node2IPv6),
		ClientIPv4:        netip.MustParseAddr(ClientIPv4),
		ClientIPv6:        netip.MustParseAddr(ClientIPv6),
		nextPod:           [3]int{0, 2, 2},
	}
	tp.Node1 = NewNetNS(t, "node1")
	tp.Node2 = NewNetNS(t, "node2")
	tp.Client = NewNetNS(t, "client")
	for _, n := range []*NetNS{tp.Node1, tp.Node2} {
		if err := n.SetSysctls(forwardingSysctls); err != nil {
			t.Fatalf("netns %s: %v", n.Name, err)
		}
	}

	// Node1: bridge, links to node2 and client (peers created directly in
	// the other namespaces, so names only need to be unique per namespace).
	tp.Node1.IP(t,
		"link add "+BridgeName+" type bridge forward_delay 0",
		"addr add "+Node1GatewayIPv4+"/24 dev "+BridgeName,
		"addr add "+Node1GatewayIPv6+"/64 dev "+BridgeName+" nodad",
		"link set "+BridgeName+" up",
		"link add "+Node1ToNode2If+" type veth peer name "+Node2ToNode1If+" netns "+tp.Node2.Name,
		"addr add "+Node1IPv4+"/24 dev "+Node1ToNode2If,
		"addr add "+Node1IPv6+"/64 dev "+Node1ToNode2If+" nodad",
		"link set "+Node1ToNode2If+" up",
		"link add "+Node1ToClientIf+" type veth peer name "+ClientIf+" netns "+tp.Client.Name,
		"addr add "+Node1ExternalIPv4+"/24 dev "+Node1ToClientIf,
		"addr add "+Node1ExternalIPv6+"/64 dev "+Node1ToClientIf+" nodad",
		"link set "+Node1ToClientIf+" up",
	)
	tp.Node2.IP(t,
		"link add "+BridgeName+" type bridge forward_delay 0",
		"addr add "+Node2GatewayIPv4+"/24 dev "+BridgeName,
		"addr add "+Node2GatewayIPv6+"/64 dev "+BridgeName+" nodad",
		"link set "+BridgeName+" up",
		"addr add "+Node2IPv4+"/24 dev "+Node2ToNode1If,
		"addr add "+Node2IPv6+"/64 dev "+Node2ToNode1If+" nodad",
		"link set "+Node2ToNode1If+" up",
		"route add default via "+Node1IPv4,
		"route add ::/0 via "+Node1IPv6,
	)
	tp.Client.IP(t,
		"addr add "+ClientIPv4+"/24 dev "+ClientIf,
		"addr add "+ClientIPv6+"/64 dev "+ClientIf+" nodad",
		"link set "+ClientIf+" up",
		"route add default via "+Node1ExternalIPv4,
		"route add ::/0 via "+Node1ExternalIPv6,
	)
	tp.Node1.IP(t,
		"route add "+Node2PodCIDRv4+" via "+Node2IPv4,
		"route add "+Node2PodCIDRv6+" via "+Node2IPv6,
		"route add default via "+ClientIPv4,
		"route add ::/0 via "+ClientIPv6,
	)
	return tp
}

// Node returns the namespace of node 1 or 2.
func (tp *Topology) Node(node int) *NetNS {
	switch node {
	case 1:
		return tp.Node1
	case 2:
		return tp.Node2
	}
	panic(fmt.Sprintf("topology: no node %d", node))
}

// Pods returns the pods added so far, in order.
func (tp *Topology) Pods() []*Pod {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]*Pod(nil), tp.pods...)
}

// AddPod creates a pod namespace on node 1 or 2, attaches it to the node's
// bridge and gives it the next free addresses (10.244.<node>.2, .3, ... and
// fd00:244:<node>::2, ::3, ...) with default routes via the bridge. The
// name is used in the namespace name and error messages. Safe for
// concurrent use.
func (tp *Topology) AddPod(t testing.TB, node int, name string) *Pod {
	t.Helper()
	if node != 1 && node != 2 {
		t.Fatalf("AddPod(%q): node must be 1 or 2, got %d", name, node)
	}
	tp.mu.Lock()
	host := tp.nextPod[node]
	tp.nextPod[node]++
	tp.mu.Unlock()
	if host > 254 {
		t.Fatalf("AddPod(%q): node %d pod network exhausted", name, node)
	}
	p := &Pod{
		Name:   name,
		Node:   node,
		NS:     NewNetNS(t, name),
		IPv4:   netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", node, host)),
		IPv6:   netip.MustParseAddr(fmt.Sprintf("fd00:244:%d::%x", node, host)),
		HostIf: fmt.Sprintf("vp%d", host),
	}
	gw4, gw6 := Node1GatewayIPv4, Node1GatewayIPv6
	if node == 2 {
		gw4, gw6 = Node2GatewayIPv4, Node2GatewayIPv6
	}
	tp.Node(node).IP(t,
		"link add "+p.HostIf+" type veth peer name "+PodIf+" netns "+p.NS.Name,
		"link set "+p.HostIf+" master "+BridgeName,
		// As kubelet's hairpin-veth mode and the CNI bridge plugin's hairpinMode do: a
		// pod that reaches itself through a Service gets its packets back on the port
		// they came in by.
		"link set "+p.HostIf+" type bridge_slave hairpin on",
		"link set "+p.HostIf+" up",
	)
	p.NS.IP(t,
		"addr add "+p.IPv4.String()+"/24 dev "+PodIf,
		"addr add "+p.IPv6.String()+"/64 dev "+PodIf+" nodad",
		"link set "+PodIf+" up",
		"route add default via "+gw4,
		"route add ::/0 via "+gw6,
	)
	tp.mu.Lock()
	tp.pods = append(tp.pods, p)
	tp.mu.Unlock()
	return p
}
