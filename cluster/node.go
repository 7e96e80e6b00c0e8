package cluster

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/model"
)

// NodeInfo is what the proxy needs from its Node object.
type NodeInfo struct {
	Name string
	// Zone is the topology.kubernetes.io/zone label, "" when absent.
	Zone string
	// InternalIPs and ExternalIPs are the node's status addresses of those types, in order.
	InternalIPs []netip.Addr
	ExternalIPs []netip.Addr
	// PodCIDRs is spec.podCIDRs (or spec.podCIDR).
	PodCIDRs []netip.Prefix
	// Deleting is set when the Node has a deletionTimestamp, ToBeDeleted when it carries the
	// cluster autoscaler's ToBeDeletedByClusterAutoscaler taint: either way the node is on
	// its way out, and load balancers should stop sending it traffic (Eligible).
	Deleting, ToBeDeleted bool
}

// TaintToBeDeleted is the taint the cluster autoscaler puts on a node it is about to remove.
const TaintToBeDeleted = "ToBeDeletedByClusterAutoscaler"

// Eligible reports whether the node may receive load-balanced traffic: it is neither being
// deleted nor about to be removed by the cluster autoscaler (kube-proxy's nodeEligible).
func (n NodeInfo) Eligible() bool { return !n.Deleting && !n.ToBeDeleted }

// PrimaryIPs returns the node's primary IP per family, IPv4 first: the first InternalIP of
// each family, else the first ExternalIP of that family. These are what
// --nodeport-addresses=primary resolves to.
func (n NodeInfo) PrimaryIPs() []netip.Addr {
	var out []netip.Addr
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if a, ok := firstOf(f, n.InternalIPs); ok {
			out = append(out, a)
		} else if a, ok := firstOf(f, n.ExternalIPs); ok {
			out = append(out, a)
		}
	}
	return out
}

func firstOf(f model.Family, addrs []netip.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if f.Contains(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// FindNode returns the Node named name from the snapshot (false if absent). Addresses and pod
// CIDRs that do not parse are left out.
func FindNode(nodes []*corev1.Node, name string) (NodeInfo, bool) {
	for _, n := range nodes {
		if n == nil || n.Name != name {
			continue
		}
		info := NodeInfo{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone], Deleting: n.DeletionTimestamp != nil}
		for _, t := range n.Spec.Taints {
			if t.Key == TaintToBeDeleted {
				info.ToBeDeleted = true
			}
		}
		for _, a := range n.Status.Addresses {
			addr, err := parseAddr(a.Address)
			if err != nil {
				continue
			}
			switch a.Type {
			case corev1.NodeInternalIP:
				info.InternalIPs = append(info.InternalIPs, addr)
			case corev1.NodeExternalIP:
				info.ExternalIPs = append(info.ExternalIPs, addr)
			}
		}
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				continue
			}
			info.PodCIDRs = append(info.PodCIDRs, p.Masked())
		}
		return info, true
	}
	return NodeInfo{}, false
}
