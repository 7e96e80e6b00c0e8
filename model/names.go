package model

import (
	"strconv"
)

// Names of the fixed objects of the table. Besides these, the table holds only the shared
// endpoint-picking chains named by PickChainName.
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
	SetClusterIPs          = "cluster-ips"
	SetNodePortIPs         = "nodeport-ips"
)

// MasqueradeMark is the packet mark bit that asks the postrouting chain to masquerade.
// kube-proxy uses the same bit, so the two never disagree about what it means.
const MasqueradeMark uint32 = 0x4000

// maxCommentLen is nft's limit for comments (NFTNL_UDATA_COMMENT_MAXLEN).
const maxCommentLen = 128

// PortComment is the comment carried by every map element of a Service port:
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
	prefix := "cluster"
	switch kind {
	case External:
		prefix = "external"
	case NodePortPick:
		prefix = "nodeport"
	}
	return prefix + "-" + proto.String() + "-" + strconv.FormatUint(uint64(slots), 10)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
