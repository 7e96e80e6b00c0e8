// The input of Build: the Services this node proxies, converted from Kubernetes objects, and
// the node's configuration, with the families and protocols they use.

package model

import (
	"fmt"
	"net/netip"
)

// Family is an IP family; nftproxy keeps one table per family.
type Family uint8

// The IP families nftproxy programs.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String returns the nft table family keyword ("ip" or "ip6").
func (f Family) String() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

// Contains reports whether addr belongs to the family.
func (f Family) Contains(addr netip.Addr) bool {
	if f == IPv6 {
		return addr.Is6() && !addr.Is4In6()
	}
	return addr.Is4()
}

// Protocol is an IP transport protocol, numbered as in the IP header.
type Protocol uint8

// The transport protocols a Service port may use.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

// String returns the protocol's nft keyword.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return fmt.Sprintf("%d", uint8(p))
}

// ServiceType is the kind of a Service, as in the Kubernetes API.
type ServiceType uint8

// The Service types that the proxy programs. ExternalName and headless Services never reach
// the model: package cluster drops them.
const (
	ClusterIP ServiceType = iota
	NodePort
	LoadBalancer
)

// ServiceName identifies a Service.
type ServiceName struct {
	Namespace string
	Name      string
}

// String returns "namespace/name".
func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// Service is one Kubernetes Service as the proxy sees it: its addresses, its ports and, per
// port, the endpoints that serve it. Addresses of both families may be present; Build keeps
// those of the family it builds.
type Service struct {
	Name ServiceName
	Type ServiceType
	// ClusterIPs holds spec.clusterIPs (at most one per family).
	ClusterIPs []netip.Addr
	// ExternalIPs holds spec.externalIPs.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs holds status.loadBalancer.ingress[].ip, without ingresses in Proxy mode.
	LoadBalancerIPs []netip.Addr
	// ExternalPolicyLocal is spec.externalTrafficPolicy Local (of a NodePort or LoadBalancer
	// Service, or one with external IPs): external traffic goes only to endpoints on this
	// node, unmasqueraded.
	ExternalPolicyLocal bool
	// InternalPolicyLocal is spec.internalTrafficPolicy Local: cluster traffic goes only to
	// endpoints on this node.
	InternalPolicyLocal bool
	// LoadBalancerSourceRanges is spec.loadBalancerSourceRanges: when it holds prefixes of a
	// family, only those sources reach the LoadBalancer IPs of that family.
	LoadBalancerSourceRanges []netip.Prefix
	// HealthCheckNodePort is spec.healthCheckNodePort, 0 when none.
	HealthCheckNodePort uint16
	// AffinityTimeout is the session affinity timeout in seconds (sessionAffinity ClientIP,
	// sessionAffinityConfig.clientIP.timeoutSeconds); 0 means no affinity.
	AffinityTimeout uint32
	Ports           []ServicePort
}

// ServicePort is one entry of spec.ports with the endpoints that serve it, matched by port
// name from the Service's EndpointSlices and deduplicated.
type ServicePort struct {
	// Name is the port's name ("" for a Service's only, unnamed port).
	Name     string
	Protocol Protocol
	Port     uint16
	// NodePort is the allocated node port, 0 when the Service has none.
	NodePort  uint16
	Endpoints []Endpoint
}

// Endpoint is one backend address:port for a Service port, with its EndpointSlice conditions.
type Endpoint struct {
	Addr netip.Addr
	Port uint16
	// Ready, Serving and Terminating are the EndpointSlice conditions (nil ready and nil
	// serving mean true, nil terminating false).
	Ready       bool
	Serving     bool
	Terminating bool
	// NodeName is the node the endpoint runs on, "" when unknown.
	NodeName string
	// Hints are the EndpointSlice's hints, nil when it has none (a pointer: few endpoints
	// have hints, and the conversions of every endpoint are kept).
	Hints *Hints
}

// Hints are an endpoint's topology hints: the zones (hints.forZones) and nodes
// (hints.forNodes) whose proxies should prefer it.
type Hints struct {
	Zones, Nodes []string
}

// NodeConfig is this node's configuration for one family: flags and facts about the node that
// shape the rules.
type NodeConfig struct {
	Family Family
	// NodeName is this node's name, which endpoints on this node carry.
	NodeName string
	// Zone is this node's topology.kubernetes.io/zone label, "" when it has none.
	Zone string
	// NodeIPs are this node's primary addresses (its Node object's first InternalIP of the
	// family, else its first ExternalIP: kube-proxy's node IP). A LoadBalancer Service whose
	// loadBalancerSourceRanges contain one of them also admits its own LoadBalancer IPs as
	// sources (traffic that a load balancer hairpins back through the node).
	NodeIPs []netip.Addr
	// ClusterCIDRs are the source ranges of pod traffic: the pod network (--cluster-cidr), or
	// this node's pod ranges (--detect-local-mode=NodeCIDR). Traffic to a ClusterIP from any
	// other source is masqueraded, and traffic from them to an externalTrafficPolicy Local
	// address short-circuits to all endpoints. Empty disables both rules. Prefixes of the
	// other family are ignored. PodInterface, when set, takes their place.
	ClusterCIDRs []netip.Prefix
	// PodInterface tells pod traffic by the interface it comes in on instead of its source:
	// the pods' bridge (--detect-local-mode=BridgeInterface), or with PodInterfacePrefix the
	// start of the pods' interface names (InterfaceNamePrefix).
	PodInterface       string
	PodInterfacePrefix bool
	// ServiceCIDRs are the ranges ClusterIPs are allocated from (--service-cluster-ip-range):
	// new connections to an address inside them that no Service holds are dropped rather
	// than routed on. Prefixes of the other family are ignored.
	ServiceCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to Services (--masquerade-all).
	MasqueradeAll bool
	// NodePortAddresses restricts NodePorts to local addresses inside these prefixes
	// (--nodeport-addresses, with "primary" already resolved to the node's primary IPs as
	// single-address prefixes). Empty means every local address except loopback.
	NodePortAddresses []netip.Prefix
	// LocalAddresses are the addresses assigned to this node's interfaces; with
	// NodePortAddresses set, the ones inside those prefixes accept NodePort traffic.
	LocalAddresses []netip.Addr
}
