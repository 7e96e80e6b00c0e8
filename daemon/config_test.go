package daemon

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/model"
)

// TestDetectLocalModeFlags checks how --detect-local-mode and its interface flags are
// accepted, refused and turned into the rules' view of pod traffic.
func TestDetectLocalModeFlags(t *testing.T) {
	node := cluster.NodeInfo{Name: "node1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}}
	cluster := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	for _, tc := range []struct {
		args []string
		// err is a part of the error, "" for none.
		err string
		// cidrs, iface and prefix are the IPv4 NodeConfig's view of pod traffic.
		cidrs  []netip.Prefix
		iface  string
		prefix bool
	}{
		{args: nil, cidrs: cluster},
		{args: []string{"--detect-local-mode", "ClusterCIDR"}, cidrs: cluster},
		{args: []string{"--detect-local-mode", "NodeCIDR"}, cidrs: node.PodCIDRs},
		{args: []string{"--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0"}, iface: "cbr0"},
		{args: []string{"--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", "veth"}, iface: "veth", prefix: true},
		{args: []string{"--detect-local-mode", "nodecidr"}, err: "want ClusterCIDR, NodeCIDR"},
		{args: []string{"--detect-local-mode", "BridgeInterface"}, err: "needs --pod-bridge-interface"},
		{args: []string{"--detect-local-mode", "InterfaceNamePrefix"}, err: "needs --pod-interface-name-prefix"},
		{args: []string{"--pod-bridge-interface", "a-name-of-16-byt"}, err: "want 1 to 15 bytes"},
		{args: []string{"--pod-interface-name-prefix", "veth*"}, err: "want 1 to 15 bytes"},
		{args: []string{"--pod-bridge-interface", `br"0`}, err: "want 1 to 15 bytes"},
		{args: []string{"--pod-bridge-interface", "br 0"}, err: "want 1 to 15 bytes"},
	} {
		name := strings.Join(tc.args, " ")
		var c Config
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.BindFlags(fs)
		err := fs.Parse(append([]string{"--cluster-cidr", "10.244.0.0/16"}, tc.args...))
		if err == nil {
			err = c.Validate()
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", name, err)
			continue
		}
		nc := c.NodeConfig(model.IPv4, "node1", node, nil)
		if !slices.Equal(nc.ClusterCIDRs, tc.cidrs) || nc.PodInterface != tc.iface || nc.PodInterfacePrefix != tc.prefix {
			t.Errorf("%q: pod traffic is %v / %q (prefix %v), want %v / %q (prefix %v)",
				name, nc.ClusterCIDRs, nc.PodInterface, nc.PodInterfacePrefix, tc.cidrs, tc.iface, tc.prefix)
		}
	}
}

// TestNodePortAddressesByFamily: which local addresses accept NodePorts in each family, as
// kube-proxy's NodePortAddresses has it: a family that no CIDR (or primary IP) names
// accepts them on every address; with primary and no Node object yet, none.
func TestNodePortAddressesByFamily(t *testing.T) {
	local := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("192.168.1.5"), netip.MustParseAddr("fd00::5")}
	node := cluster.NodeInfo{Name: "node1", InternalIPs: []netip.Addr{netip.MustParseAddr("192.168.1.5")}}
	const every = "every address"
	for _, tc := range []struct {
		name       string
		c          Config
		node       cluster.NodeInfo
		ipv4, ipv6 string
	}{
		{"an IPv4 CIDR", Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, node, "[10.0.0.5]", every},
		{"an IPv6 CIDR", Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("fd00::/64")}}, node, every, "[fd00::5]"},
		{"primary, an IPv4 node", Config{NodePortPrimary: true}, node, "[192.168.1.5]", every},
		{"primary and a CIDR", Config{NodePortPrimary: true, NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, node, "[10.0.0.5 192.168.1.5]", every},
		{"primary, no Node yet", Config{NodePortPrimary: true}, cluster.NodeInfo{}, "[]", "[]"},
		{"all", Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}, node, every, every},
	} {
		for fam, want := range map[model.Family]string{model.IPv4: tc.ipv4, model.IPv6: tc.ipv6} {
			nc := tc.c.NodeConfig(fam, "node1", tc.node, local)
			got := every
			if nc.NodePortAddresses != nil {
				got = fmt.Sprint(nc.NodePortIPs())
			}
			if got != want {
				t.Errorf("%s, %s: NodePorts on %s, want %s", tc.name, fam, got, want)
			}
		}
	}
}

// TestNodeName: the node's name as kube-proxy takes it: --hostname-override, else (nftproxy's
// addition) NODE_NAME, else the hostname; trimmed and lower-cased, and never blank.
func TestNodeName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		override, env, want string
	}{
		{" Node-1 ", "other", "node-1"},
		{"", "Node-2\n", "node-2"},
		{"", "", strings.ToLower(strings.TrimSpace(host))},
		{"  ", "other", ""},
	} {
		t.Setenv("NODE_NAME", tc.env)
		o := &Options{Config: Config{HostnameOverride: tc.override}}
		got, err := o.NodeName()
		if tc.want == "" {
			if err == nil {
				t.Errorf("override %q: node name %q, want an error", tc.override, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("override %q, NODE_NAME %q: %q, %v; want %q", tc.override, tc.env, got, err, tc.want)
		}
	}
}

// TestNodeIPsForSourceRanges: the node addresses that let a LoadBalancer Service's own IPs
// through its source ranges are its primary ones, as kube-proxy's node IP: not a second
// InternalIP, nor an ExternalIP.
func TestNodeIPsForSourceRanges(t *testing.T) {
	node := cluster.NodeInfo{Name: "node1",
		InternalIPs: []netip.Addr{netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("192.168.0.3"), netip.MustParseAddr("fd00::2")},
		ExternalIPs: []netip.Addr{netip.MustParseAddr("203.0.113.7")}}
	var c Config
	for fam, want := range map[model.Family]string{model.IPv4: "[192.168.0.2]", model.IPv6: "[fd00::2]"} {
		if got := fmt.Sprint(c.NodeConfig(fam, "node1", node, nil).NodeIPs); got != want {
			t.Errorf("%s: node IPs %s, want %s", fam, got, want)
		}
	}
}
