package model

import (
	"strconv"
	"strings"
)

// Names of the fixed objects of the table. Besides these, the table holds only the shared
// endpoint-picking chains named by PickChainName and LocalPickChainName, and the firewall
// chains of Services with loadBalancerSourceRanges, named by FirewallChainName.
const (
	ChainFilterPrerouting        = "filter-prerouting"
	ChainFilterOutput            = "filter-output"
	ChainFilterPreroutingPostNAT = "filter-prerouting-post-dnat"
	ChainFilterOutputPostNAT     = "filter-output-post-dnat"
	ChainNATPrerouting           = "nat-prerouting"
	ChainNATOutput               = "nat-output"
	ChainNATPostrouting          = "nat-postrouting"
	ChainEndpointsCheck          = "service-endpoints-check"
	ChainClusterIPsCheck         = "cluster-ips-check"
	ChainServices                = "services"
	ChainMasquerading            = "masquerading"
	ChainMarkForMasquerade       = "mark-for-masquerade"
	ChainReject                  = "reject-chain"

	MapServiceIPs          = "service-ips"
	MapServiceNodePorts    = "service-nodeports"
	MapNoEndpointServices  = "no-endpoint-services"
	MapNoEndpointNodePorts = "no-endpoint-nodeports"
	MapServiceEndpoints    = "service-endpoints"
	MapNodePortEndpoints   = "nodeport-endpoints"
	SetHairpin             = "hairpin"
	SetSyncState           = "sync-state"
	SetClusterIPs          = "cluster-ips"
	SetNodePortIPs         = "nodeport-ips"
	MapFirewallIPs         = "firewall-ips"
	MapAffinity            = "affinity"
	MapAffinityServices    = "affinity-services"
	MapAffinityNodePorts   = "affinity-nodeports"
	ChainAffinityCheck     = "affinity-check"
)

// AffinityMapSize is the room of the affinity map: clients times Service addresses and ports
// with session affinity that can be remembered at once. When it is full, new clients get no
// affinity until entries expire.
const AffinityMapSize = 1 << 20

// EndpointMapMinSize is the least room of an endpoint map (EndpointMapSize). The kernel's
// hash table for it has 32,768 buckets, 256 KiB.
const EndpointMapMinSize uint32 = 1 << 14

// EndpointMapSize returns the room (Set.Size) an endpoint map is created with to hold n
// elements: n and half as many again, rounded up to a power of two, at least
// EndpointMapMinSize. A map of fixed room fills faster: the kernel's resizable hash table
// (a map without a size) rehashes as it grows, and at a million endpoints that is a third
// of the commit. The syncer creates the endpoint maps with this room and rewrites one, in
// the same transaction, when its elements would no longer fit.
func EndpointMapSize(n int) uint32 {
	want := uint64(n) + uint64(n)/2
	size := uint64(EndpointMapMinSize)
	for size < want && size < 1<<31 {
		size <<= 1
	}
	return uint32(size)
}

// MasqueradeMark is the packet mark bit that asks the postrouting chain to masquerade.
// kube-proxy uses the same bit, so the two never disagree about what it means.
const MasqueradeMark uint32 = 0x4000

// maxCommentLen is nft's limit for comments (NFTNL_UDATA_COMMENT_MAXLEN).
const maxCommentLen = 128

// PortComment is the comment carried by the frontends of a Service port (the elements keyed by
// its address, protocol and port, or its NodePort; its endpoint slots carry none):
// "namespace/name:port", with the port's name, or its number when it has none.
func PortComment(svc ServiceName, p ServicePort) string {
	port := p.Name
	if port == "" {
		port = strconv.Itoa(int(p.Port))
	}
	return truncate(svc.Namespace+"/"+svc.Name+":"+port, maxCommentLen)
}

// PickChainName names the shared chain that DNATs kind traffic of proto Service ports with
// slots endpoints: "cluster-tcp-3", "external-udp-1", "nodeport-tcp-2".
func PickChainName(kind PickKind, proto Protocol, slots uint32) string {
	return pickPrefix(kind) + "-" + proto.String() + "-" + strconv.FormatUint(uint64(slots), 10)
}

// LocalPickChainName names the shared chain that handles kind traffic (PickExternal or
// PickNodePort) of proto Service ports with externalTrafficPolicy Local, cluster endpoints in
// all and local of them on this node: "external-local-tcp-3-1", "nodeport-local-udp-2-0".
func LocalPickChainName(kind PickKind, proto Protocol, cluster, local uint32) string {
	return pickPrefix(kind) + "-local-" + proto.String() + "-" + strconv.FormatUint(uint64(cluster), 10) +
		"-" + strconv.FormatUint(uint64(local), 10)
}

func pickPrefix(kind PickKind) string {
	switch kind {
	case PickExternal:
		return "external"
	case PickNodePort:
		return "nodeport"
	}
	return "cluster"
}

// affinitySuffix ends the name of a picking chain of Service ports with session affinity.
const affinitySuffix = "-affinity-"

// AffinityPickChainName names the variant of picking chain base for Service ports with
// session affinity of timeout seconds: "cluster-tcp-3-affinity-10800".
func AffinityPickChainName(base string, timeout uint32) string {
	return base + affinitySuffix + strconv.FormatUint(uint64(timeout), 10)
}

// recordPrefix starts the name of every affinity recording chain.
const recordPrefix = "affinity-record-"

// AffinityRecordChainName names the chain that records the endpoints of new proto
// connections to Service ports with session affinity of timeout seconds:
// "affinity-record-tcp-10800".
func AffinityRecordChainName(proto Protocol, timeout uint32) string {
	return recordPrefix + proto.String() + "-" + strconv.FormatUint(uint64(timeout), 10)
}

// firewallPrefix starts the name of every firewall chain.
const firewallPrefix = "firewall-"

// FirewallChainName names the chain that checks the sources of traffic to a Service's
// LoadBalancer IPs against its loadBalancerSourceRanges: "firewall-default/web". Namespace and
// Service names are DNS labels, so the name is unique and a valid nft identifier.
func FirewallChainName(svc ServiceName) string {
	return firewallPrefix + svc.Namespace + "/" + svc.Name
}

// IsServiceChain reports whether name is one of the chains Build derives from Services (the
// endpoint-picking chains and the firewall chains): the chains nftproxy creates and deletes as
// Services come and go, as opposed to the fixed ones of the skeleton.
func IsServiceChain(name string) bool {
	if rest, ok := strings.CutPrefix(name, firewallPrefix); ok {
		ns, svc, ok := strings.Cut(rest, "/")
		return ok && ns != "" && svc != "" && !strings.Contains(svc, "/")
	}
	if rest, ok := strings.CutPrefix(name, recordPrefix); ok {
		proto, secs, ok := strings.Cut(rest, "-")
		timeout, err := strconv.ParseUint(secs, 10, 32)
		if !ok || err != nil || timeout == 0 {
			return false
		}
		for _, p := range []Protocol{TCP, UDP, SCTP} {
			if p.String() == proto {
				return AffinityRecordChainName(p, uint32(timeout)) == name
			}
		}
		return false
	}
	if i := strings.LastIndex(name, affinitySuffix); i > 0 {
		timeout, err := strconv.ParseUint(name[i+len(affinitySuffix):], 10, 32)
		base := name[:i]
		return err == nil && timeout > 0 && AffinityPickChainName(base, uint32(timeout)) == name && isPickChain(base)
	}
	return isPickChain(name)
}

// isPickChain reports whether name is that of a picking chain without session affinity.
func isPickChain(name string) bool {
	words := strings.Split(name, "-")
	local := len(words) == 5 && words[1] == "local"
	if len(words) != 3 && !local {
		return false
	}
	var kind PickKind
	switch words[0] {
	case "cluster":
		kind = PickCluster
	case "external":
		kind = PickExternal
	case "nodeport":
		kind = PickNodePort
	default:
		return false
	}
	var proto Protocol
	pname := words[1]
	if local {
		pname = words[2]
	}
	for _, p := range []Protocol{TCP, UDP, SCTP} {
		if p.String() == pname {
			proto = p
		}
	}
	if proto == 0 {
		return false
	}
	num := func(s string) (uint32, bool) {
		n, err := strconv.ParseUint(s, 10, 32)
		return uint32(n), err == nil
	}
	if !local {
		slots, ok := num(words[2])
		return ok && slots > 0 && PickChainName(kind, proto, slots) == name
	}
	cluster, ok1 := num(words[3])
	nlocal, ok2 := num(words[4])
	return ok1 && ok2 && kind != PickCluster && cluster > 0 && LocalPickChainName(kind, proto, cluster, nlocal) == name
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
