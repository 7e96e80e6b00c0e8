package conntrack

import (
	"net/netip"

	"github.com/nftproxy/nftproxy/model"
)

// Frontend is where a Service port takes traffic: an address and port (a ClusterIP,
// ExternalIP or LoadBalancer IP) or, with Addr invalid, a NodePort on the node addresses
// that accept NodePorts.
type Frontend struct {
	Addr  netip.Addr
	Proto model.Protocol
	Port  uint16
}

// Endpoints is the set of serving endpoints of a Service port. Frontends of the same
// Service port share one.
type Endpoints map[netip.AddrPort]bool

// Rules is what the reconciler needs to know of one family's rules: every UDP and SCTP
// frontend with the serving endpoints of its Service port, and where NodePorts are served.
type Rules struct {
	Family model.Family
	// Frontends maps each UDP and SCTP frontend to the serving endpoints of its Service
	// port (empty when it has none).
	Frontends map[Frontend]Endpoints
	// NodePortIPs are the addresses that accept NodePorts (--nodeport-addresses). When
	// AllLocalNodePorts is set instead, every local address of the family except loopback
	// does, and the reconciler lists them itself.
	NodePortIPs       []netip.Addr
	AllLocalNodePorts bool
}

// protocols returns the protocols of r's frontends, UDP first.
func (r *Rules) protocols() []model.Protocol {
	var udp, sctp bool
	for f := range r.Frontends {
		udp = udp || f.Proto == model.UDP
		sctp = sctp || f.Proto == model.SCTP
	}
	var out []model.Protocol
	if udp {
		out = append(out, model.UDP)
	}
	if sctp {
		out = append(out, model.SCTP)
	}
	return out
}

// Entry is what the staleness rule reads of a conntrack entry: its protocol, the
// destination the client sent to (original tuple) and the source the answers come from
// (reply tuple: the endpoint when the flow was DNATed, the destination itself when not).
type Entry struct {
	Proto    model.Protocol
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
}

// Stale reports whether the rules no longer send the flow of e where it went, so that its
// entry must go for the next packet to be NATed afresh:
//
//   - its original destination is a UDP or SCTP frontend: an address frontend, or a
//     NodePort on one of nodePortIPs (address frontends first, as the rules look them up);
//   - and its reply source is not a serving endpoint of that Service port, unless the
//     entry was not DNATed (reply source = original destination) while the port has no
//     endpoint: deleting it would only make it again.
//
// So an entry DNATed to an endpoint that still serves is kept whatever else changed (the
// endpoint's slot, traffic policies, topology, a restart or a full sync), an entry made
// while the port had no endpoint (or no Service) goes once it has one, and TCP entries and
// flows to anything else are never touched.
func Stale(e Entry, frontends map[Frontend]Endpoints, nodePortIPs map[netip.Addr]bool) bool {
	if e.Proto != model.UDP && e.Proto != model.SCTP {
		return false
	}
	dst := e.OrigDst.Addr().Unmap()
	eps, ok := frontends[Frontend{Addr: dst, Proto: e.Proto, Port: e.OrigDst.Port()}]
	if !ok && nodePortIPs[dst] {
		eps, ok = frontends[Frontend{Proto: e.Proto, Port: e.OrigDst.Port()}]
	}
	if !ok {
		return false
	}
	reply := unmapAddrPort(e.ReplySrc)
	if eps[reply] {
		return false
	}
	dnat := reply != netip.AddrPortFrom(dst, e.OrigDst.Port())
	return dnat || len(eps) > 0
}
