package model

import (
	"crypto/sha256"
	"encoding/base32"
	"strconv"
)

// Names of the fixed objects of the table. None of them contains a "/": every per-service
// chain name does, which is how a reader (or a cleanup) tells them apart.
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

// maxNameLen bounds chain names well below the kernel's limit (NFT_NAME_MAXLEN, 256 bytes).
const maxNameLen = 200

// maxCommentLen is nft's limit for comments (NFTNL_UDATA_COMMENT_MAXLEN).
const maxCommentLen = 128

// portID identifies a Service port in names: "ns/name/proto/portname" (the port number stands
// in for an unnamed port).
func portID(svc ServiceName, p ServicePort) string {
	port := p.Name
	if port == "" {
		port = strconv.Itoa(int(p.Port))
	}
	return svc.Namespace + "/" + svc.Name + "/" + p.Protocol.String() + "/" + port
}

// PortComment is the comment carried by every map element of a Service port:
// "namespace/name:port", with the port's name, or its number when it has none.
func PortComment(svc ServiceName, p ServicePort) string {
	port := p.Name
	if port == "" {
		port = strconv.Itoa(int(p.Port))
	}
	return truncate(svc.Namespace+"/"+svc.Name+":"+port, maxCommentLen)
}

// ServiceChainName names the chain that spreads a Service port's cluster traffic over its
// endpoints: "service-HASH-ns/name/proto/port".
func ServiceChainName(svc ServiceName, p ServicePort) string {
	return derivedName("service", portID(svc, p), strconv.Itoa(int(p.Port)))
}

// ExternalChainName names the chain for a Service port's external traffic (NodePort,
// ExternalIPs, LoadBalancer IPs): "external-HASH-ns/name/proto/port".
func ExternalChainName(svc ServiceName, p ServicePort) string {
	return derivedName("external", portID(svc, p), strconv.Itoa(int(p.Port)))
}

// derivedName builds "prefix-HASH-readable". The hash covers the readable part and salt (the
// Service port number, so two ports that share a name cannot collide), which keeps names unique
// even when the readable part has to be cut to stay within maxNameLen.
func derivedName(prefix, readable, salt string) string {
	sum := sha256.Sum256([]byte(readable + "#" + salt))
	hash := base32.StdEncoding.EncodeToString(sum[:])[:8]
	return truncate(prefix+"-"+hash+"-"+readable, maxNameLen)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
