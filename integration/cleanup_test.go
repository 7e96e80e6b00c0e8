package integration

import (
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/integration/topology"
)

// TestCleanupKubeProxy: `nftproxy cleanup --kube-proxy` removes nftproxy's tables and
// kube-proxy's nftables tables (ip and ip6 kube-proxy), reports the KUBE- chains kube-proxy's
// iptables mode left in iptables-nft's nat table with the commands that remove them, and
// leaves every other table, those chains included, as it was.
func TestCleanupKubeProxy(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "cleanup")
	for _, cmd := range []string{
		"add table ip nftproxy",
		"add table ip kube-proxy",
		"add chain ip kube-proxy services",
		"add table ip6 kube-proxy",
		"add table inet kube-proxy", // not kube-proxy's family: stays
		"add table ip nat",
		"add chain ip nat PREROUTING { type nat hook prerouting priority dstnat; }",
		"add chain ip nat KUBE-SERVICES",
		"add chain ip nat KUBE-SVC-ABCDEF",
		"add rule ip nat PREROUTING jump KUBE-SERVICES",
		"add table inet someone-else",
	} {
		ns.Run(t, "nft", cmd)
	}
	out := ns.Run(t, proxyBin, "cleanup", "--kube-proxy")
	want := `removed tables ip nftproxy and ip6 nftproxy
removed table ip kube-proxy
removed table ip6 kube-proxy
kube-proxy's iptables mode left chains in iptables-nft's tables:
  table ip nat: KUBE-SERVICES KUBE-SVC-ABCDEF
nftproxy leaves them to their owner, whose base chains jump to them. Remove them with
  kube-proxy --cleanup
or, on a node without kube-proxy's binary,
  iptables-save | grep -v KUBE- | iptables-restore
  ip6tables-save | grep -v KUBE- | ip6tables-restore
`
	if out != want {
		t.Errorf("nftproxy cleanup --kube-proxy printed:\n%s\nwant:\n%s", out, want)
	}
	tables := ns.Run(t, "nft", "list", "tables")
	if tables != "table inet kube-proxy\ntable ip nat\ntable inet someone-else\n" {
		t.Errorf("tables left after cleanup --kube-proxy:\n%s\nwant ip nat, inet kube-proxy and inet someone-else", tables)
	}
	if chains := ns.Run(t, "nft", "list", "table", "ip", "nat"); !strings.Contains(chains, "chain KUBE-SVC-ABCDEF") {
		t.Errorf("cleanup touched iptables-nft's nat table:\n%s", chains)
	}

	// Again: nothing left of kube-proxy's nftables mode, and no error.
	out = ns.Run(t, proxyBin, "cleanup", "--kube-proxy")
	if !strings.Contains(out, "no kube-proxy nftables tables (ip and ip6 kube-proxy)\n") {
		t.Errorf("second nftproxy cleanup --kube-proxy printed:\n%s", out)
	}
}
