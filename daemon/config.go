package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"unicode"

	"github.com/spf13/pflag"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/model"
)

// Config is the proxy's configuration, from command-line flags. Flag names follow kube-proxy's
// wherever the meaning is the same.
type Config struct {
	// HostnameOverride is the name of this node's Node object.
	HostnameOverride string
	// ClusterCIDRs are the pod network ranges, at most one per family.
	ClusterCIDRs []netip.Prefix
	// ServiceCIDRs are the ranges ClusterIPs come from, at most one per family.
	ServiceCIDRs []netip.Prefix
	// DetectLocalMode is how traffic from pods is told from other traffic: one of the
	// DetectLocal* values ("" means DetectLocalClusterCIDR).
	DetectLocalMode string
	// PodBridgeInterface is the pods' bridge, for DetectLocalBridgeInterface.
	PodBridgeInterface string
	// PodInterfaceNamePrefix starts the names of the pods' interfaces, for
	// DetectLocalInterfaceNamePrefix.
	PodInterfaceNamePrefix string
	// NodePortAddresses restricts NodePorts to local addresses inside these prefixes; a
	// family with a /0 among them accepts NodePorts on every local address.
	NodePortAddresses []netip.Prefix
	// NodePortPrimary serves NodePorts on the Node object's primary IPs too
	// (--nodeport-addresses=primary, the default).
	NodePortPrimary bool
	// MasqueradeAll masquerades all traffic to Services.
	MasqueradeAll bool
	// ServiceProxyName makes the proxy handle Services labelled
	// service.kubernetes.io/service-proxy-name with this value (and only those labelled).
	ServiceProxyName string
}

// The values of --detect-local-mode, kube-proxy's: how traffic from pods is told from other
// traffic. ClusterIP traffic from elsewhere is masqueraded, and pods reach an
// externalTrafficPolicy Local address as they would its ClusterIP.
const (
	// DetectLocalClusterCIDR: the source is in --cluster-cidr (the default).
	DetectLocalClusterCIDR = "ClusterCIDR"
	// DetectLocalNodeCIDR: the source is in this Node's spec.podCIDRs.
	DetectLocalNodeCIDR = "NodeCIDR"
	// DetectLocalBridgeInterface: the packet came in on --pod-bridge-interface.
	DetectLocalBridgeInterface = "BridgeInterface"
	// DetectLocalInterfaceNamePrefix: the packet came in on an interface whose name starts
	// with --pod-interface-name-prefix.
	DetectLocalInterfaceNamePrefix = "InterfaceNamePrefix"
)

// BindFlags registers the rule-shaping flags on fs and sets c to their defaults.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.HostnameOverride, "hostname-override", "", "name of this node's Node object (default: the NODE_NAME environment variable, else the hostname)")
	fs.Func("cluster-cidr", "pod network range, or an IPv4,IPv6 pair; traffic to ClusterIPs from outside it is masqueraded", func(s string) error {
		cidrs, err := ParseClusterCIDRs(s)
		c.ClusterCIDRs = cidrs
		return err
	})
	fs.Func("service-cluster-ip-range", "the range ClusterIPs are allocated from, or an IPv4,IPv6 pair (as kube-apiserver's flag); new connections to an address in it that no Service holds are dropped", func(s string) error {
		cidrs, err := parseFamilyCIDRs("service CIDR", s)
		c.ServiceCIDRs = cidrs
		return err
	})
	c.NodePortAddresses, c.NodePortPrimary = nil, true
	fs.Var(&nodePortAddressesValue{c: c}, "nodeport-addresses", "comma-separated CIDRs and keywords naming the local addresses that accept NodePort traffic: 'primary' (the Node object's primary IPs, also what an empty list means) or 'all' (0.0.0.0/0,::/0: every local address except loopback). As kube-proxy's nftables mode.")
	fs.BoolVar(&c.MasqueradeAll, "masquerade-all", false, "masquerade all traffic sent to Services")
	fs.Func("detect-local-mode", "how traffic from pods is told from other traffic: ClusterCIDR (source in --cluster-cidr, the default), NodeCIDR (source in this Node's spec.podCIDRs), BridgeInterface (comes in on --pod-bridge-interface) or InterfaceNamePrefix (comes in on an interface named --pod-interface-name-prefix*)", func(s string) error {
		switch s {
		case DetectLocalClusterCIDR, DetectLocalNodeCIDR, DetectLocalBridgeInterface, DetectLocalInterfaceNamePrefix:
			c.DetectLocalMode = s
			return nil
		}
		return fmt.Errorf("want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix")
	})
	fs.Func("pod-bridge-interface", "the pods' bridge, with --detect-local-mode=BridgeInterface", func(s string) error {
		c.PodBridgeInterface = s
		return validInterfaceName(s)
	})
	fs.Func("pod-interface-name-prefix", "the start of the pods' interface names, with --detect-local-mode=InterfaceNamePrefix", func(s string) error {
		c.PodInterfaceNamePrefix = s
		return validInterfaceName(s)
	})
	fs.StringVar(&c.ServiceProxyName, "service-proxy-name", "", "handle only Services whose service.kubernetes.io/service-proxy-name label has this value")
}

// Validate checks the flags that only make sense together.
func (c *Config) Validate() error {
	switch c.DetectLocalMode {
	case DetectLocalBridgeInterface:
		if c.PodBridgeInterface == "" {
			return errors.New("--detect-local-mode=BridgeInterface needs --pod-bridge-interface")
		}
	case DetectLocalInterfaceNamePrefix:
		if c.PodInterfaceNamePrefix == "" {
			return errors.New("--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefix")
		}
	}
	return nil
}

// validInterfaceName accepts what a Linux interface name can be: 1 to 15 bytes, no '/',
// whitespace, quotes or NUL, and not "." or "..". '*' is refused too: nft would take it for
// a wildcard.
func validInterfaceName(s string) error {
	if s == "" || len(s) >= 16 || s == "." || s == ".." || strings.ContainsAny(s, "/*\"\x00") || strings.ContainsFunc(s, unicode.IsSpace) {
		return fmt.Errorf("interface name %q: want 1 to 15 bytes without '/', '*', '\"' or whitespace", s)
	}
	return nil
}

// ParseClusterCIDRs parses --cluster-cidr: one CIDR, or a comma-separated pair of one IPv4 and
// one IPv6 CIDR.
func ParseClusterCIDRs(s string) ([]netip.Prefix, error) {
	return parseFamilyCIDRs("cluster CIDR", s)
}

// parseFamilyCIDRs parses one CIDR, or a comma-separated pair of one IPv4 and one IPv6 CIDR;
// what names them in errors.
func parseFamilyCIDRs(what, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	seen := map[bool]bool{}
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", what, f, err)
		}
		is4 := p.Addr().Is4()
		if seen[is4] {
			return nil, fmt.Errorf("%s %q: at most one CIDR per IP family", what, s)
		}
		seen[is4] = true
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParseNodePortAddresses parses --nodeport-addresses (kube-proxy's nodePortAddresses): CIDRs
// and the keywords "primary" (the Node object's primary IPs) and "all" (0.0.0.0/0 and ::/0),
// in any combination. An empty list means "primary", as in kube-proxy's nftables mode.
// "localhost" is refused: NodePorts on loopback addresses are never served.
func ParseNodePortAddresses(fields []string) (prefixes []netip.Prefix, primary bool, err error) {
	for _, f := range fields {
		switch f = strings.TrimSpace(f); f {
		case "":
		case "primary":
			primary = true
		case "all":
			prefixes = append(prefixes, netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0))
		case "localhost":
			return nil, false, errors.New("nodeport address \"localhost\": nftproxy never serves NodePorts on loopback addresses")
		default:
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, false, fmt.Errorf("nodeport address %q: want a CIDR, \"primary\" or \"all\": %w", f, err)
			}
			prefixes = append(prefixes, p.Masked())
		}
	}
	if len(prefixes) == 0 {
		primary = true
	}
	return prefixes, primary, nil
}

// NodePortsRestricted reports whether some local addresses may not accept NodePorts: false
// when every family has a /0 among the --nodeport-addresses.
func (c *Config) NodePortsRestricted() bool {
	return !slices.ContainsFunc(c.NodePortAddresses, isAll4) || !slices.ContainsFunc(c.NodePortAddresses, isAll6)
}

func isAll4(p netip.Prefix) bool { return p.Bits() == 0 && p.Addr().Is4() }
func isAll6(p netip.Prefix) bool { return p.Bits() == 0 && p.Addr().Is6() }

// nodePortAddressesValue is --nodeport-addresses. Its first use replaces the list (the
// default, or a configuration file's: the command line overrides it); later uses add to it,
// as kube-proxy's string-slice flag does.
type nodePortAddressesValue struct {
	c     *Config
	given []string // the fields of every use so far
}

func (v *nodePortAddressesValue) Set(s string) error {
	given := append(slices.Clone(v.given), strings.Split(s, ",")...)
	prefixes, primary, err := ParseNodePortAddresses(given)
	if err != nil {
		return err
	}
	v.given = given
	v.c.NodePortAddresses, v.c.NodePortPrimary = prefixes, primary
	return nil
}

func (v *nodePortAddressesValue) String() string {
	if v.c == nil {
		return ""
	}
	var out []string
	if v.c.NodePortPrimary {
		out = append(out, "primary")
	}
	for _, p := range v.c.NodePortAddresses {
		out = append(out, p.String())
	}
	return strings.Join(out, ",")
}

func (v *nodePortAddressesValue) Type() string { return "strings" }

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// NodeConfig returns the model configuration of one family for the node named nodeName.
// localAddrs are the addresses of this node's interfaces (for --nodeport-addresses CIDRs);
// node is this node's Node object, if known (for --nodeport-addresses=primary).
func (c *Config) NodeConfig(fam model.Family, nodeName string, node cluster.NodeInfo, localAddrs []netip.Addr) model.NodeConfig {
	// This family's primary IP (kube-proxy's node IP), when the Node object gives one.
	primary := slices.DeleteFunc(node.PrimaryIPs(), func(a netip.Addr) bool { return !fam.Contains(a) })
	nc := model.NodeConfig{
		Family:            fam,
		NodeName:          nodeName,
		Zone:              node.Zone,
		NodeIPs:           primary,
		ClusterCIDRs:      c.ClusterCIDRs,
		ServiceCIDRs:      c.ServiceCIDRs,
		MasqueradeAll:     c.MasqueradeAll,
		NodePortAddresses: c.NodePortAddresses,
		LocalAddresses:    localAddrs,
	}
	switch c.DetectLocalMode {
	case DetectLocalNodeCIDR:
		// Until the Node object is seen (or while it has no pod ranges), pod traffic cannot
		// be told apart: nothing is masqueraded for being from elsewhere.
		nc.ClusterCIDRs = node.PodCIDRs
	case DetectLocalBridgeInterface:
		nc.ClusterCIDRs, nc.PodInterface = nil, c.PodBridgeInterface
	case DetectLocalInterfaceNamePrefix:
		nc.ClusterCIDRs, nc.PodInterface, nc.PodInterfacePrefix = nil, c.PodInterfaceNamePrefix, true
	}
	// As kube-proxy's NodePortAddresses: the CIDRs of this family (and with primary, this
	// family's primary IP); a family that none of them names serves NodePorts on every local
	// address, as a /0 of it does.
	own := slices.DeleteFunc(slices.Clone(c.NodePortAddresses), func(p netip.Prefix) bool { return !fam.Contains(p.Addr()) })
	if c.NodePortPrimary {
		for _, a := range primary {
			own = append(own, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	switch {
	case slices.ContainsFunc(own, func(p netip.Prefix) bool { return p.Bits() == 0 }):
		nc.NodePortAddresses = nil
	case len(own) > 0:
		nc.NodePortAddresses = own
		if c.NodePortPrimary {
			// Primary IPs serve NodePorts whether or not they are configured on an
			// interface (they may sit on a load balancer's side of the node); with primary
			// alone, other local addresses do not matter.
			if len(c.NodePortAddresses) == 0 {
				nc.LocalAddresses = nil
			} else {
				nc.LocalAddresses = slices.Clone(localAddrs)
			}
			nc.LocalAddresses = append(nc.LocalAddresses, primary...)
		}
	case c.NodePortPrimary && node.Name == "":
		// No Node object yet: an impossible prefix keeps NodePorts closed rather than open
		// on every address.
		nc.NodePortAddresses = []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 128)}
	default:
		nc.NodePortAddresses = nil
	}
	if len(nc.NodePortAddresses) == 0 {
		// The rules use local addresses only to pick NodePort addresses; leaving them out
		// keeps an interface coming or going from looking like a new configuration, which
		// costs a full sync.
		nc.LocalAddresses = nil
	} else {
		nc.LocalAddresses = slices.Clone(nc.LocalAddresses)
		slices.SortFunc(nc.LocalAddresses, netip.Addr.Compare)
		nc.LocalAddresses = slices.Compact(nc.LocalAddresses)
	}
	return nc
}

// Desired builds the rulesets (IPv4, then IPv6) for a snapshot of objects.
func (c *Config) Desired(objs cluster.Objects, nodeName string, localAddrs []netip.Addr) ([]*model.Ruleset, []cluster.BadObject) {
	services, bad := cluster.Convert(objs, cluster.ConvertOptions{ServiceProxyName: c.ServiceProxyName})
	node, _ := cluster.FindNode(objs.Nodes, nodeName)
	out := make([]*model.Ruleset, 0, 2)
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		out = append(out, model.Build(services, c.NodeConfig(fam, nodeName, node, localAddrs)))
	}
	return out, bad
}

// LocalAddresses returns the addresses of this network namespace's interfaces.
func LocalAddresses() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// RenderDir builds the rulesets for the manifests in dir without touching the kernel, as
// `nftproxy render` does. The Node object named nodeName stands in for the interfaces: its
// addresses are the local addresses, so that the output depends only on the manifests.
func (c *Config) RenderDir(dir, nodeName string) ([]*model.Ruleset, []cluster.BadObject, error) {
	objs, bad, err := cluster.LoadManifests(dir)
	if err != nil {
		return nil, nil, err
	}
	rulesets, convertBad := c.Preview(objs, nodeName)
	return rulesets, append(bad, convertBad...), nil
}

// Preview builds the rulesets for a snapshot of objects without looking at this machine, as
// `nftproxy render` does: the addresses of the Node object named nodeName stand in for the
// interfaces', so that the output depends only on the objects.
func (c *Config) Preview(objs cluster.Objects, nodeName string) ([]*model.Ruleset, []cluster.BadObject) {
	node, _ := cluster.FindNode(objs.Nodes, nodeName)
	return c.Desired(objs, nodeName, append(slices.Clone(node.InternalIPs), node.ExternalIPs...))
}
