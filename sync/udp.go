package sync

import (
	"net/netip"

	"github.com/nftproxy/nftproxy/model"
)

// udpChange is a conntrack cleanup a commit calls for.
type udpChange struct {
	// endpoint went away: delete entries whose reply comes from it.
	endpoint netip.AddrPort
	// dst (a Service address and port) or nodePort got its first endpoint: delete entries
	// to it, which may hold a rejection or a dead endpoint.
	dst      netip.AddrPort
	nodePort uint16
}

// udpSlots returns, for a Part, the endpoints of each UDP destination (address and port, or
// NodePort with an invalid address) and all its UDP endpoints.
func udpSlots(p *model.Part) (map[netip.AddrPort]bool, map[netip.AddrPort]bool) {
	dsts, eps := map[netip.AddrPort]bool{}, map[netip.AddrPort]bool{}
	if p == nil {
		return dsts, eps
	}
	for _, pe := range p.Elements {
		if pe.Proto != model.UDP || (pe.Set != model.MapServiceEndpoints && pe.Set != model.MapNodePortEndpoints) {
			continue
		}
		dsts[netip.AddrPortFrom(pe.Addr, pe.Port)] = true
		eps[pe.Endpoint] = true
	}
	return dsts, eps
}

// appendUDPChanges appends the cleanups that replacing part old with part new calls for.
func appendUDPChanges(out []udpChange, old, new *model.Part) []udpChange {
	oldDsts, oldEps := udpSlots(old)
	newDsts, newEps := udpSlots(new)
	for ep := range oldEps {
		if !newEps[ep] {
			out = append(out, udpChange{endpoint: ep})
		}
	}
	for dst := range newDsts {
		if oldDsts[dst] {
			continue
		}
		if dst.Addr().IsValid() {
			out = append(out, udpChange{dst: dst})
		} else {
			out = append(out, udpChange{nodePort: dst.Port()})
		}
	}
	return out
}

// Conntrack deletes stale conntrack entries so that UDP clients are not stuck on a dead
// endpoint (or on a rejection cached before a Service had endpoints).
type Conntrack interface {
	// ClearEndpoint deletes entries of proto whose reply comes from endpoint ep (the
	// connection was DNATed to it).
	ClearEndpoint(proto model.Protocol, ep netip.AddrPort) error
	// ClearDestination deletes entries of proto whose original destination is addr:port
	// (a ClusterIP, ExternalIP or LoadBalancer IP of a Service port).
	ClearDestination(proto model.Protocol, dst netip.AddrPort) error
	// ClearNodePort deletes entries of proto whose original destination port is port on
	// any local address.
	ClearNodePort(proto model.Protocol, port uint16) error
}

// clearConntrack runs the cleanups; failures are kept for the loop to report.
func (s *Syncer) clearConntrack(changes []udpChange) {
	if s.Conntrack == nil {
		return
	}
	for _, c := range changes {
		var err error
		switch {
		case c.endpoint.IsValid():
			err = s.Conntrack.ClearEndpoint(model.UDP, c.endpoint)
		case c.dst.IsValid():
			err = s.Conntrack.ClearDestination(model.UDP, c.dst)
		default:
			err = s.Conntrack.ClearNodePort(model.UDP, c.nodePort)
		}
		if err != nil {
			s.conntrackErrs = append(s.conntrackErrs, err)
		}
	}
}

// ConntrackErrors returns and forgets the conntrack cleanups that failed since the last
// call. A failed cleanup is not retried: the rules are right, only old flows may linger.
func (s *Syncer) ConntrackErrors() []error {
	errs := s.conntrackErrs
	s.conntrackErrs = nil
	return errs
}
