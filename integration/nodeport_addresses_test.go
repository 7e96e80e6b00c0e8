package integration

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Node1's addresses in these tests: 192.168.0.2 / fd00:192::2 are its primary IPs (the
// InternalIPs of its Node object), 203.0.113.1 / fd00:203::1 (towards the client) are not.

// TestTrafficNodePortAddresses: as in kube-proxy's nftables mode, NodePorts are served on the
// Node's primary IPs only unless --nodeport-addresses says otherwise. Each row starts
// nftproxy with its flags; the client must be served on node1's primary IPs and, on node1's
// client-side addresses, refused (nothing listens there) or served.
func TestTrafficNodePortAddresses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		flags []string
		// secondary tells whether the NodePort answers on the client-side addresses.
		secondary bool
	}{
		{name: "default", flags: nil, secondary: false},
		{name: "empty", flags: []string{"--nodeport-addresses="}, secondary: false}, // kube-proxy: empty is the default
		{name: "all", flags: []string{"--nodeport-addresses=all"}, secondary: true},
		{name: "every-cidr", flags: []string{"--nodeport-addresses=0.0.0.0/0,::/0"}, secondary: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.nodePortDefault = true
			a := h.pod(1, "a", httpPort)
			ports := []servicePort{withNodePort(portHTTP, 30480)}
			h.apply(service{Name: "np", Type: "NodePort", ClusterIPs: []string{"10.96.40.10", "fd00:96::40:10"}, Ports: ports,
				Slices: []endpointSlice{podSlice("np-v4", false, ports, a), podSlice("np-v6", true, ports, a)}})
			h.start(tc.flags...)
			for _, v6 := range []bool{false, true} {
				endpoint := []netip.AddrPort{at(a.Addr(v6), httpPort)}
				primary, secondary := at(h.tp.Node1IPv4, 30480), at(h.tp.Node1ExternalIPv4, 30480)
				if v6 {
					primary, secondary = at(h.tp.Node1IPv6, 30480), at(h.tp.Node1ExternalIPv6, 30480)
				}
				h.waitReply(t, h.tp.Client, "tcp", primary)
				row := "client -> NodePort on node1's primary " + family(v6) + " address"
				checkServers(t, row, dialN(t, row, h.tp.Client, "tcp", primary, 3), endpoint, 3)
				row = "client -> NodePort on node1's client-side " + family(v6) + " address"
				if tc.secondary {
					checkServers(t, row, dialN(t, row, h.tp.Client, "tcp", secondary, 3), endpoint, 3)
				} else {
					checkRefused(t, row, h.tp.Client, "tcp", secondary)
				}
			}
		})
	}
}

// TestTrafficKubeadmConfig starts nftproxy as a kubeadm cluster's kube-proxy DaemonSet
// would, with the KubeProxyConfiguration kubeadm writes (daemon/testdata/kubeadm-config.conf,
// mode nftables, clusterCIDR 10.244.0.0/16) and --hostname-override, and sees a ClusterIP and
// a NodePort on node1's primary IP work, and the NodePort refused on its other address.
func TestTrafficKubeadmConfig(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.nodePortDefault = true
	conf, err := os.ReadFile("../daemon/testdata/kubeadm-config.conf")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	a := h.pod(1, "a", httpPort)
	b := h.pod(2, "b", httpPort)
	caller := h.pod(1, "caller")
	ports := []servicePort{withNodePort(portHTTP, 30481)}
	h.apply(service{Name: "web", Type: "NodePort", ClusterIPs: []string{"10.96.40.20"}, Ports: ports,
		Slices: []endpointSlice{podSlice("web-v4", false, ports, a, b)}})
	// The file's kubeconfig is ignored with --manifests; the harness's --cluster-cidr
	// repeats the file's.
	h.start("--config", path)
	endpoints := []netip.AddrPort{at(a.IPv4, httpPort), at(b.IPv4, httpPort)}
	clusterIP := addrPort("10.96.40.20:80")
	h.waitReply(t, caller.NS, "tcp", clusterIP)
	checkServers(t, "pod -> ClusterIP", dialN(t, "pod -> ClusterIP", caller.NS, "tcp", clusterIP, 40), endpoints, 1)
	np := at(h.tp.Node1IPv4, 30481)
	checkServers(t, "client -> NodePort on the primary IP", dialN(t, "client -> NodePort on the primary IP", h.tp.Client, "tcp", np, 40), endpoints, 1)
	checkRefused(t, "client -> NodePort on the client-side address", h.tp.Client, "tcp", at(h.tp.Node1ExternalIPv4, 30481))
	// One warning for the file; the conntrack sysctls may add one of their own (a network
	// namespace cannot set nf_conntrack_max).
	log := h.proxy.log.String()
	if n := strings.Count(log, "ignoring settings that do not apply"); n != 1 || strings.Count(log, "level=WARN") != 1+strings.Count(log, "skipping conntrack sysctls") {
		t.Errorf("want one warning about the file's settings and none other than the conntrack sysctls'; log:\n%s", log)
	}
}
