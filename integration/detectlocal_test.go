package integration

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nftproxy/nftproxy/integration/topology"
)

// TestTrafficDetectLocalMode checks each --detect-local-mode by who is masqueraded on the way
// to a ClusterIP whose one endpoint is a pod on node1. A pod on node2 reaches the ClusterIP
// through node1 (node2's default route): it is inside --cluster-cidr, but neither in node1's
// pod range nor behind node1's bridge, so only the ClusterCIDR mode keeps its address. A pod
// on node1 keeps its address in every mode, and node1 itself is masqueraded in every mode.
//
// On this topology pods' packets enter node1's IP layer on the bridge br0 (bridge ports are
// not seen there), so the interface-name prefix that names the pods' side is "br".
func TestTrafficDetectLocalMode(t *testing.T) {
	t.Parallel()
	modes := []struct {
		name  string
		flags []string
		// node2Kept is whether node2's pod keeps its address.
		node2Kept bool
	}{
		{"ClusterCIDR", nil, true},
		{"NodeCIDR", []string{"--detect-local-mode", "NodeCIDR"}, false},
		{"BridgeInterface", []string{"--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", topology.BridgeName}, false},
		{"InterfaceNamePrefix", []string{"--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", "br"}, false},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			endpoint := h.pod(1, "endpoint", httpPort)
			caller1 := h.tp.AddPod(t, 1, "caller1")
			caller2 := h.tp.AddPod(t, 2, "caller2")
			ports := []servicePort{portHTTP}
			h.apply(service{Name: "detect", ClusterIPs: []string{"10.96.17.10", "fd00:96::1710"},
				Ports: ports, Slices: dualStackSlices("detect", ports, endpoint)})
			h.start(mode.flags...)

			for _, target := range []netip.AddrPort{addrPort("10.96.17.10:80"), addrPort("[fd00:96::1710]:80")} {
				v6 := target.Addr().Is6()
				t.Run(family(v6), func(t *testing.T) {
					h.waitReply(t, caller1.NS, "tcp", target)
					want := endpointsOf(v6, httpPort, endpoint)
					callers := []struct {
						name string
						from *topology.NetNS
						// source is the address the endpoint must see.
						source netip.Addr
					}{
						{"node1's pod", caller1.NS, caller1.Addr(v6)},
						{"node2's pod", caller2.NS, caller2.Addr(v6)},
						{"node1", h.tp.Node1, masqueradeSource(want[0].Addr())},
					}
					if !mode.node2Kept {
						callers[1].source = masqueradeSource(want[0].Addr())
					}
					for _, c := range callers {
						row := fmt.Sprintf("%s: %s -> ClusterIP %s", mode.name, c.name, target)
						replies := dialN(t, row, c.from, "tcp", target, 8)
						checkServers(t, row, replies, want, 8)
						checkSources(t, row, replies, func(topology.Reply) netip.Addr { return c.source })
					}
				})
			}
		})
	}
}
