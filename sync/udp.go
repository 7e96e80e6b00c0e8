package sync

import (
	"maps"
	"net/netip"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/model"
)

// Conntrack reconciles the kernel's conntrack table with the rules: it deletes the UDP and
// SCTP entries the rules no longer send where they went (conntrack.Stale), so that clients
// (DNS!) are not stuck on an endpoint that went away or on a rejection cached before a
// Service had endpoints. *conntrack.Netlink implements it.
type Conntrack interface {
	// Reconcile dumps each family's entries once and deletes the stale ones.
	Reconcile(rules []*conntrack.Rules) []conntrack.Result
}

// frontendSets are the maps whose keys are frontends: with an address, and NodePorts.
var frontendSets = []struct {
	name     string
	nodePort bool
}{
	{model.MapServiceIPs, false},
	{model.MapNoEndpointServices, false},
	{model.MapServiceNodePorts, true},
	{model.MapNoEndpointNodePorts, true},
}

// isNoEndpointSet reports whether set is one of the maps of frontends without endpoints.
func isNoEndpointSet(set string) bool {
	return set == model.MapNoEndpointServices || set == model.MapNoEndpointNodePorts
}

// hasConntrackPorts reports whether a Service has a UDP or SCTP port, the only ones whose
// entries the reconciler looks at.
func hasConntrackPorts(svc *model.Service) bool {
	if svc == nil {
		return false
	}
	for _, p := range svc.Ports {
		if p.Protocol == model.UDP || p.Protocol == model.SCTP {
			return true
		}
	}
	return false
}

// servingEndpoints returns the serving endpoints of family fam of a Service port: those
// ready or serving (terminating but still answering), whatever the traffic policies and
// topology, which only steer new flows (as kube-proxy's reconciler).
func servingEndpoints(fam model.Family, p *model.ServicePort) conntrack.Endpoints {
	eps := conntrack.Endpoints{}
	for _, ep := range p.Endpoints {
		if fam.Contains(ep.Addr) && ep.Port != 0 && (ep.Ready || ep.Serving) {
			eps[netip.AddrPortFrom(ep.Addr.Unmap(), ep.Port)] = true
		}
	}
	return eps
}

// serviceFrontends adds the UDP and SCTP frontends of one Service's Part in family fam, with
// the serving endpoints of their Service ports, to out. keep, when not nil, filters the
// elements (the claims a Service wins).
func serviceFrontends(fam model.Family, svc *model.Service, part *model.Part, keep func(set string, k model.Key) bool, out map[conntrack.Frontend]conntrack.Endpoints) {
	if part == nil || !hasConntrackPorts(svc) {
		return
	}
	byPort := map[int]conntrack.Endpoints{}
	for _, pe := range part.Elements {
		if pe.Proto != model.UDP && pe.Proto != model.SCTP {
			continue
		}
		for _, fs := range frontendSets {
			if pe.Set != fs.name || (keep != nil && !keep(pe.Set, pe.Element.Key())) {
				continue
			}
			for i := range svc.Ports {
				p := &svc.Ports[i]
				if p.Protocol != pe.Proto || (!fs.nodePort && p.Port != pe.Port) || (fs.nodePort && p.NodePort != pe.Port) {
					continue
				}
				eps, ok := byPort[i]
				if !ok {
					eps = servingEndpoints(fam, p)
					byPort[i] = eps
				}
				f := conntrack.Frontend{Proto: pe.Proto, Port: pe.Port}
				if !fs.nodePort {
					f.Addr = pe.Addr
				}
				out[f] = eps
				break
			}
		}
	}
}

// conntrackViewChanged reports whether replacing a Service (old, in Part oldPart) with new
// (newPart) changes what the reconciler decides by in family fam: its UDP and SCTP
// frontends or their serving endpoints. A partial sync where none did skips the dump.
func conntrackViewChanged(fam model.Family, old, new *model.Service, oldPart, newPart *model.Part) bool {
	if !hasConntrackPorts(old) && !hasConntrackPorts(new) {
		return false
	}
	a, b := map[conntrack.Frontend]conntrack.Endpoints{}, map[conntrack.Frontend]conntrack.Endpoints{}
	serviceFrontends(fam, old, oldPart, nil, a)
	serviceFrontends(fam, new, newPart, nil, b)
	return !maps.EqualFunc(a, b, maps.Equal)
}

// ConntrackRules returns, per family, what the conntrack reconciler needs to know of the
// committed rules: each UDP and SCTP frontend (address, protocol and port, or NodePort)
// with the serving endpoints of its Service port, and the node addresses that accept
// NodePorts. A frontend two Services claim belongs to the one the rules follow (the first
// by name).
func (s *Syncer) ConntrackRules() []*conntrack.Rules {
	var out []*conntrack.Rules
	for _, fam := range s.Families {
		t := s.tables[fam]
		if t == nil {
			continue
		}
		r := &conntrack.Rules{Family: fam, Frontends: map[conntrack.Frontend]conntrack.Endpoints{}}
		if node := s.node[fam]; len(node.NodePortAddresses) > 0 {
			r.NodePortIPs = node.NodePortIPs()
		} else {
			r.AllLocalNodePorts = true
		}
		// Two passes: a frontend one Service claims with endpoints and another without (both
		// naming one external IP and port) is the latter's, as the rules have it: the check
		// for ports without endpoints comes before the DNAT.
		for _, noEndpoints := range []bool{false, true} {
			for name, part := range t.parts {
				wins := func(set string, k model.Key) bool {
					c := t.claims[set].get(k)
					return isNoEndpointSet(set) == noEndpoints && c.elem != nil && t.owners[c.first] == name
				}
				serviceFrontends(fam, s.services[name], part, wins, r.Frontends)
			}
		}
		out = append(out, r)
	}
	return out
}

// RequestConntrackReconcile makes the next sync reconcile the conntrack table even if no
// UDP or SCTP frontend changed: the loop asks for one every --sync-period, which cleans
// what changed while the daemon was down and what a failed reconcile left.
func (s *Syncer) RequestConntrackReconcile() { s.conntrackDue = true }

// reconcileConntrack runs the reconciler after a commit if one is due, and records its
// results in res. A failed reconcile stays due, for the next sync.
func (s *Syncer) reconcileConntrack(res *SyncResult) {
	if s.Conntrack == nil || !s.conntrackDue {
		return
	}
	s.conntrackDue = false
	res.Conntrack = s.Conntrack.Reconcile(s.ConntrackRules())
	for _, r := range res.Conntrack {
		if r.Err != nil {
			s.conntrackErrs = append(s.conntrackErrs, r.Err)
			s.conntrackDue = true
		}
	}
}

// ConntrackErrors returns and forgets the conntrack reconciles that failed since the last
// call. The rules are right either way; the next sync tries again.
func (s *Syncer) ConntrackErrors() []error {
	errs := s.conntrackErrs
	s.conntrackErrs = nil
	return errs
}
