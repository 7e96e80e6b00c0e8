package model

import (
	"cmp"
	"net/netip"
	"slices"
)

// Priorities of the base chains, as nft names them relative to the NAT hooks.
const (
	priorityDstNAT int32 = -100
	prioritySrcNAT int32 = 100
)

var (
	keyAddrProtoPort = []KeyField{KeyAddr, KeyProto, KeyPort}
	keyProtoPort     = []KeyField{KeyProto, KeyPort}

	keyAddrProtoPortSlot = []KeyField{KeyAddr, KeyProto, KeyPort, KeySlot}
	keyProtoPortSlot     = []KeyField{KeyProto, KeyPort, KeySlot}
)

// Build returns the desired ruleset for node.Family from the Services this node proxies.
//
// The table has a fixed skeleton of chains; Services appear in it as elements of verdict maps
// keyed on "daddr . l4proto . dport" (or "l4proto . dport" for NodePorts), pointing at
// per-service-port chains that DNAT to an endpoint drawn with "numgen random mod N" from the
// endpoint maps. Service ports without a usable endpoint are listed in the no-endpoint maps
// instead, whose elements reject new connections. Build is deterministic: its output depends
// only on its input, never on the order of Services, ports or endpoints within it.
//
// Build is Skeleton plus the Part of every Service, merged in name order: when two Services
// claim the same key of a set (say, a shared external IP), the first one's element is kept.
func Build(services []Service, node NodeConfig) *Ruleset {
	rs := Skeleton(node)
	sorted := slices.Clone(services)
	slices.SortFunc(sorted, func(a, b Service) int { return CompareNames(a.Name, b.Name) })
	sets := make(map[string]*Set, len(rs.Sets))
	seen := make(map[string]map[Key]bool, len(rs.Sets))
	for _, s := range rs.Sets {
		sets[s.Name] = s
		seen[s.Name] = map[Key]bool{}
		for _, e := range s.Elements {
			seen[s.Name][e.Key()] = true
		}
	}
	chains := map[string]bool{}
	for _, c := range rs.Chains {
		chains[c.Name] = true
	}
	var serviceChains []*Chain
	for i := range sorted {
		part := BuildPart(&sorted[i], node)
		for _, pe := range part.Elements {
			if k := pe.Element.Key(); !seen[pe.Set][k] {
				seen[pe.Set][k] = true
				sets[pe.Set].Elements = append(sets[pe.Set].Elements, pe.Element)
			}
		}
		for _, c := range part.Chains {
			if !chains[c.Name] {
				chains[c.Name] = true
				serviceChains = append(serviceChains, c)
			}
		}
	}
	for _, s := range rs.Sets {
		slices.SortFunc(s.Elements, CompareElements)
		if IsEndpointMap(s) {
			s.Size = EndpointMapSize(len(s.Elements))
		}
	}
	slices.SortFunc(serviceChains, func(a, b *Chain) int { return cmp.Compare(a.Name, b.Name) })
	rs.Chains = append(rs.Chains, serviceChains...)
	return rs
}

// CompareNames orders Services by namespace, then name: the order in which they claim keys.
func CompareNames(a, b ServiceName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// PartElement is an element of the named set.
type PartElement struct {
	Set string
	Element
}

// Part is one Service's share of a family's ruleset: the elements it claims in the skeleton's
// sets and maps, and the chains it owns. Parts of different Services are independent, which
// is what lets the syncer rebuild only the Services that changed.
type Part struct {
	Elements []PartElement
	Chains   []*Chain
	// NoLocalInternal and NoLocalExternal count the Service's ports whose traffic policy
	// (internalTrafficPolicy, externalTrafficPolicy) is Local and that have endpoints
	// elsewhere but none on this node, so that traffic of that kind is dropped here:
	// kube-proxy's sync_proxy_rules_no_local_endpoints_total.
	NoLocalInternal, NoLocalExternal int
}

// Element returns a pointer to the Part's element of set with key k, or nil.
func (p *Part) Element(set string, k Key) *Element {
	for i := range p.Elements {
		if pe := &p.Elements[i]; pe.Set == set && pe.Element.Key() == k {
			return &pe.Element
		}
	}
	return nil
}

// BuildPart returns the elements and chains of one Service in node.Family's table. A Service
// without a ClusterIP of that family has an empty Part.
func BuildPart(svc *Service, node NodeConfig) *Part {
	b := &builder{node: node, part: &Part{}}
	if n := partSize(svc, node); n > 0 {
		b.part.Elements = make([]PartElement, 0, n)
	}
	b.service(svc)
	// The guess is close for most Services but not all (externalTrafficPolicy Local adds
	// slots); a Part lives as long as its Service, so keep only what it uses.
	if p := b.part; cap(p.Elements) > len(p.Elements)+len(p.Elements)/4 {
		p.Elements = slices.Clone(p.Elements)
	}
	return b.part
}

// partSize guesses how many elements svc's Part of node's family holds: per port, each of its
// keys (ClusterIP, ExternalIPs, LoadBalancer IPs, NodePort) and a slot per endpoint under
// each, and two hairpin elements per endpoint that may be on this node; 0 for a Service of the
// other family.
func partSize(svc *Service, node NodeConfig) int {
	if !slices.ContainsFunc(svc.ClusterIPs, node.Family.Contains) {
		return 0
	}
	n := 1
	keys := 1 + len(svc.ExternalIPs) + len(svc.LoadBalancerIPs)
	for _, p := range svc.Ports {
		k, eps := keys, 0
		if p.NodePort != 0 {
			k++
		}
		for _, ep := range p.Endpoints {
			if node.Family.Contains(ep.Addr) {
				eps++
				if ep.NodeName == "" || ep.NodeName == node.NodeName {
					// Its hairpin element, once as an endpoint of the cluster and once
					// of this node (the claims keep one).
					n += 2
				}
			}
		}
		n += k * (1 + eps)
	}
	return n
}

// Skeleton returns the table without any Service: the sets and maps (with the node's NodePort
// addresses), the base chains and the fixed chains.
func Skeleton(node NodeConfig) *Ruleset {
	b := &builder{node: node}
	return b.skeleton()
}

// EndpointMaps returns the skeleton's maps from destination and slot to endpoint, of fam's
// table: the largest of a table, and the ones whose elements name no chain.
func EndpointMaps(fam Family) []*Set {
	var out []*Set
	for _, s := range Skeleton(NodeConfig{Family: fam}).Sets {
		if s.Data == EndpointData && !s.Dynamic {
			out = append(out, s)
		}
	}
	return out
}

type builder struct {
	node NodeConfig
	part *Part
}

func (b *builder) addElement(set string, e Element) {
	b.part.Elements = append(b.part.Elements, PartElement{Set: set, Element: e})
}

func (b *builder) addChain(c *Chain) {
	b.part.Chains = append(b.part.Chains, c)
}

func rule(exprs ...Expr) Rule { return Rule{Exprs: exprs} }

func jump(chain string) Verdict { return Verdict{Kind: Jump, Chain: chain} }
func goTo(chain string) Verdict { return Verdict{Kind: Goto, Chain: chain} }
func baseHook(typ, hook string, prio int32) *Hook {
	return &Hook{Type: typ, Hook: hook, Priority: prio}
}

// nodePortsLimited reports whether NodePorts are restricted to the nodeport-ips set.
func (b *builder) nodePortsLimited() bool { return len(b.node.NodePortAddresses) > 0 }

// nodePortMatch returns the matches that select packets to a NodePort on this node.
func (b *builder) nodePortMatch() []Expr {
	if b.nodePortsLimited() {
		return []Expr{DaddrInSet{Set: SetNodePortIPs}}
	}
	return []Expr{FibDaddrLocal{}, DaddrNotLoopback{}}
}

// skeleton returns the sets and chains that exist whatever the Services are.
func (b *builder) skeleton() *Ruleset {
	rs := &Ruleset{Family: b.node.Family}
	addSet := func(s *Set) { rs.Sets = append(rs.Sets, s) }
	addChain := func(c *Chain) { rs.Chains = append(rs.Chains, c) }

	addSet(&Set{Name: SetClusterIPs, Key: []KeyField{KeyAddr}, Comment: "Active ClusterIPs"})
	if b.nodePortsLimited() {
		s := &Set{Name: SetNodePortIPs, Key: []KeyField{KeyAddr}, Comment: "IPs that accept NodePort traffic"}
		for _, a := range b.node.NodePortIPs() {
			s.Elements = append(s.Elements, Element{Addr: a})
		}
		addSet(s)
	}
	addSet(&Set{Name: MapServiceIPs, Key: keyAddrProtoPort, Data: VerdictData, Comment: "ClusterIP, ExternalIP and LoadBalancer IP traffic"})
	addSet(&Set{Name: MapServiceNodePorts, Key: keyProtoPort, Data: VerdictData, Comment: "NodePort traffic"})
	addSet(&Set{Name: MapNoEndpointServices, Key: keyAddrProtoPort, Data: VerdictData, Comment: "vmap to drop or reject packets to services with no endpoints"})
	addSet(&Set{Name: MapNoEndpointNodePorts, Key: keyProtoPort, Data: VerdictData, Comment: "vmap to drop or reject packets to service nodeports with no endpoints"})
	addSet(&Set{Name: MapServiceEndpoints, Key: keyAddrProtoPortSlot, Data: EndpointData, Size: EndpointMapMinSize,
		Comment: "Endpoint of each slot of a ClusterIP, ExternalIP or LoadBalancer IP port"})
	addSet(&Set{Name: MapNodePortEndpoints, Key: keyProtoPortSlot, Data: EndpointData, Size: EndpointMapMinSize,
		Comment: "Endpoint of each slot of a NodePort"})
	addSet(&Set{Name: MapFirewallIPs, Key: keyAddrProtoPort, Data: VerdictData, Comment: "LoadBalancer IP ports with loadBalancerSourceRanges, to their firewall chains"})
	addSet(&Set{Name: MapAffinity, Key: []KeyField{KeySaddr, KeyAddr, KeyProto, KeyPort}, Data: EndpointData,
		Dynamic: true, Size: AffinityMapSize,
		Comment: "sessionAffinity ClientIP: the endpoint of each client"})
	addSet(&Set{Name: MapAffinityServices, Key: keyAddrProtoPort, Data: VerdictData, Comment: "Service IP ports with sessionAffinity ClientIP, to the chains that record their clients"})
	addSet(&Set{Name: MapAffinityNodePorts, Key: keyProtoPort, Data: VerdictData, Comment: "NodePorts with sessionAffinity ClientIP, to the chains that record their clients"})
	addSet(&Set{Name: SetHairpin, Key: []KeyField{KeyAddr, KeyAddr}, Comment: "Local endpoints paired with themselves, to masquerade a pod that reaches itself through a Service"})
	addSet(&Set{Name: SetSyncState, Key: []KeyField{KeyPort}, Comment: "nftproxy's own: the generation of its last commit, digests of the endpoint maps"})

	firewall := rule(CtStateNew{}, VmapLookup{Key: keyAddrProtoPort, Map: MapFirewallIPs})
	addChain(&Chain{Name: ChainFilterPrerouting, Hook: baseHook("filter", "prerouting", priorityDstNAT-10),
		Rules: []Rule{firewall, rule(CtStateNew{}, jump(ChainEndpointsCheck))}})
	addChain(&Chain{Name: ChainFilterOutput, Hook: baseHook("filter", "output", priorityDstNAT-10),
		Rules: []Rule{firewall, rule(CtStateNew{}, jump(ChainEndpointsCheck))}})
	addChain(&Chain{Name: ChainFilterPreroutingPostNAT, Hook: baseHook("filter", "prerouting", priorityDstNAT+10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainClusterIPsCheck))}})
	addChain(&Chain{Name: ChainFilterOutputPostNAT, Hook: baseHook("filter", "output", priorityDstNAT+10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainClusterIPsCheck))}})
	addChain(&Chain{Name: ChainNATPrerouting, Hook: baseHook("nat", "prerouting", priorityDstNAT),
		Rules: []Rule{rule(jump(ChainServices))}})
	addChain(&Chain{Name: ChainNATOutput, Hook: baseHook("nat", "output", priorityDstNAT),
		Rules: []Rule{rule(jump(ChainServices))}})
	addChain(&Chain{Name: ChainNATPostrouting, Hook: baseHook("nat", "postrouting", prioritySrcNAT),
		Rules: []Rule{rule(CtStatusDNAT{}, jump(ChainAffinityCheck)), rule(jump(ChainMasquerading))}})

	addChain(&Chain{Name: ChainEndpointsCheck, Rules: []Rule{
		rule(VmapLookup{Key: keyAddrProtoPort, Map: MapNoEndpointServices}),
		rule(append(b.nodePortMatch(), VmapLookup{Key: keyProtoPort, Map: MapNoEndpointNodePorts})...),
	}})
	clusterIPsCheck := &Chain{Name: ChainClusterIPsCheck, Rules: []Rule{
		{Exprs: []Expr{DaddrInSet{Set: SetClusterIPs}, Reject{TCPReset: true}}, Comment: "Reject traffic to invalid ports of ClusterIPs"},
		{Exprs: []Expr{DaddrInSet{Set: SetClusterIPs}, Reject{}}, Comment: "Reject traffic to invalid ports of ClusterIPs"},
	}}
	// This chain runs after DNAT: a destination still inside a service range is no Service's.
	for _, p := range b.node.ServiceCIDRs {
		if b.node.Family.Contains(p.Addr()) {
			clusterIPsCheck.Rules = append(clusterIPsCheck.Rules, Rule{Exprs: []Expr{MatchDaddr{Prefix: p.Masked()}, Verdict{Kind: Drop}},
				Comment: "Drop traffic to unallocated ClusterIPs"})
		}
	}
	addChain(clusterIPsCheck)
	addChain(&Chain{Name: ChainServices, Rules: []Rule{
		rule(VmapLookup{Key: keyAddrProtoPort, Map: MapServiceIPs}),
		rule(append(b.nodePortMatch(), VmapLookup{Key: keyProtoPort, Map: MapServiceNodePorts})...),
	}})
	addChain(&Chain{Name: ChainMasquerading, Rules: []Rule{
		{Exprs: []Expr{CtStatusDNAT{}, SaddrDaddrInSet{Set: SetHairpin}, jump(ChainMarkForMasquerade)}, Comment: "hairpin"},
		rule(MarkUnset{Mask: MasqueradeMark}, Verdict{Kind: Return}),
		rule(MarkSetXor{Bits: MasqueradeMark}),
		rule(Masquerade{FullyRandom: true}),
	}})
	affinity := &Chain{Name: ChainAffinityCheck}
	for _, nodePort := range []bool{false, true} {
		m := MapAffinityServices
		if nodePort {
			m = MapAffinityNodePorts
		}
		for _, p := range []Protocol{TCP, UDP, SCTP} {
			affinity.Rules = append(affinity.Rules, rule(CtOriginalVmap{Proto: p, NodePort: nodePort, Map: m}))
		}
	}
	addChain(affinity)
	addChain(&Chain{Name: ChainMarkForMasquerade, Rules: []Rule{rule(MarkSetOr{Bits: MasqueradeMark})}})
	addChain(&Chain{Name: ChainReject, Rules: []Rule{rule(Reject{TCPReset: true}), rule(Reject{})}})
	return rs
}

// NodePortIPs returns the local addresses of c's family inside c.NodePortAddresses, sorted:
// those that accept NodePort traffic when NodePortAddresses is set (when it is not, every
// local address does, and the rules need not list them).
func (c NodeConfig) NodePortIPs() []netip.Addr {
	var out []netip.Addr
	for _, a := range c.LocalAddresses {
		a = a.Unmap()
		if !c.Family.Contains(a) || a.IsLoopback() {
			continue
		}
		for _, p := range c.NodePortAddresses {
			if p.Contains(a) {
				out = append(out, a)
				break
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// podTraffic returns the match of traffic from pods (from other sources when negate is set),
// by input interface or by source range, and false when there is no way to tell.
func (b *builder) podTraffic(negate bool) (Expr, bool) {
	if b.node.PodInterface != "" {
		return MatchIifname{Name: b.node.PodInterface, Prefix: b.node.PodInterfacePrefix, Negate: negate}, true
	}
	for _, p := range b.node.ClusterCIDRs {
		if b.node.Family.Contains(p.Addr()) {
			return MatchSaddr{Prefix: p.Masked(), Negate: negate}, true
		}
	}
	return nil, false
}

// familyAddrs returns the addresses of this family, in the order given.
func (b *builder) familyAddrs(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if b.node.Family.Contains(a) {
			out = append(out, a)
		}
	}
	return out
}

// usable returns the endpoints new connections may go to among eps: the ready ones or, when
// there are none, the serving ones that are terminating. When all are ready it is eps itself.
func usable(eps []Endpoint) []Endpoint {
	ready, terminating := 0, 0
	for _, ep := range eps {
		switch {
		case ep.Ready:
			ready++
		case ep.Serving && ep.Terminating:
			terminating++
		}
	}
	if ready == len(eps) {
		// The common case: all of them, no copy.
		return eps
	}
	keep, n := func(ep Endpoint) bool { return ep.Ready }, ready
	if ready == 0 {
		keep, n = func(ep Endpoint) bool { return ep.Serving && ep.Terminating }, terminating
	}
	out := make([]Endpoint, 0, n)
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}

// endpointSets returns the endpoints of a Service port that new connections may go to: cluster
// for traffic that may go to any node's endpoints, narrowed by topology hints, and local for
// traffic that must stay on this node. Each is the ready endpoints of its kind or, when there
// are none, the serving terminating ones, decided separately. Both are sorted.
func (b *builder) endpointSets(eps []Endpoint) (cluster, local []Endpoint) {
	valid := make([]Endpoint, 0, len(eps))
	for _, ep := range eps {
		if b.node.Family.Contains(ep.Addr) && ep.Port != 0 {
			valid = append(valid, ep)
		}
	}
	slices.SortFunc(valid, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	valid = slices.CompactFunc(valid, func(a, b Endpoint) bool { return a.Addr == b.Addr && a.Port == b.Port })

	var onNode []Endpoint
	if b.node.NodeName != "" {
		for _, ep := range valid {
			if ep.NodeName == b.node.NodeName {
				onNode = append(onNode, ep)
			}
		}
	}
	clusterEps := usable(valid)
	if len(clusterEps) > 0 && clusterEps[0].Ready {
		// Hints are for ready endpoints: with none ready, the serving terminating ones are
		// all used, hinted or not (kube-proxy's topologyModeFromHints).
		clusterEps = b.topology(clusterEps)
	}
	return clusterEps, usable(onNode)
}

// topology narrows the cluster endpoints by their hints: to those hinted for this node when
// every endpoint carries node hints and one names this node (trafficDistribution
// PreferSameNode), else to those hinted for this node's zone when every endpoint carries zone
// hints and one names the zone (PreferSameZone, PreferClose, topology-aware routing).
// Otherwise, or when nothing would be left, it keeps them all.
func (b *builder) topology(eps []Endpoint) []Endpoint {
	if len(eps) == 0 {
		return eps
	}
	narrow := func(want string, hints func(*Hints) []string) []Endpoint {
		if want == "" {
			return nil
		}
		var out []Endpoint
		for _, ep := range eps {
			if ep.Hints == nil {
				return nil
			}
			h := hints(ep.Hints)
			if len(h) == 0 {
				return nil
			}
			if slices.Contains(h, want) {
				out = append(out, ep)
			}
		}
		return out
	}
	if out := narrow(b.node.NodeName, func(h *Hints) []string { return h.Nodes }); len(out) > 0 {
		return out
	}
	if out := narrow(b.node.Zone, func(h *Hints) []string { return h.Zones }); len(out) > 0 {
		return out
	}
	return eps
}

// service adds the elements and chains of one Service.
func (b *builder) service(svc *Service) {
	clusterIPs := b.familyAddrs(svc.ClusterIPs)
	if len(clusterIPs) == 0 {
		// Not a Service of this family (or a headless one that slipped through).
		return
	}
	clusterIP := clusterIPs[0]
	lbIPs := b.familyAddrs(svc.LoadBalancerIPs)
	if svc.Type != LoadBalancer {
		lbIPs = nil
	}
	external := slices.Concat(b.familyAddrs(svc.ExternalIPs), lbIPs)
	b.addElement(SetClusterIPs, Element{Addr: clusterIP})
	firewall := b.firewall(svc, lbIPs)

	for _, port := range svc.Ports {
		if port.Port == 0 {
			continue
		}
		comment := PortComment(svc.Name, port)
		nodePort := port.NodePort
		if svc.Type == ClusterIP {
			nodePort = 0
		}
		if firewall != "" {
			for _, a := range lbIPs {
				b.addElement(MapFirewallIPs, Element{Addr: a, Proto: port.Protocol, Port: port.Port, Verdict: jump(firewall), Comment: comment})
			}
		}
		cluster, local := b.endpointSets(port.Endpoints)
		if len(cluster) == 0 {
			reject := goTo(ChainReject)
			for _, a := range slices.Concat([]netip.Addr{clusterIP}, external) {
				b.addElement(MapNoEndpointServices, Element{Addr: a, Proto: port.Protocol, Port: port.Port, Verdict: reject, Comment: comment})
			}
			if nodePort != 0 {
				b.addElement(MapNoEndpointNodePorts, Element{Proto: port.Protocol, Port: nodePort, Verdict: reject, Comment: comment})
			}
			continue
		}
		b.hairpin(cluster)
		b.hairpin(local)

		// Cluster traffic.
		internal := cluster
		if svc.InternalPolicyLocal {
			internal = local
		}
		frontend := Element{Addr: clusterIP, Proto: port.Protocol, Port: port.Port, Comment: comment}
		if len(internal) == 0 {
			// Endpoints elsewhere, none here: internalTrafficPolicy Local drops.
			b.part.NoLocalInternal++
			frontend.Verdict = Verdict{Kind: Drop}
			b.addElement(MapServiceIPs, frontend)
		} else {
			frontend.Verdict = goTo(b.pickChain(PickCluster, port.Protocol, uint32(len(internal)), svc.AffinityTimeout))
			b.addElement(MapServiceIPs, frontend)
			b.slots(MapServiceEndpoints, frontend, 0, internal)
			b.affinity(svc, MapAffinityServices, frontend)
		}

		if svc.ExternalPolicyLocal && len(local) == 0 {
			b.part.NoLocalExternal++
		}

		// External traffic: ExternalIPs and LoadBalancer IPs, then the NodePort.
		var to Verdict
		if len(external) > 0 {
			to = b.externalChain(svc, PickExternal, port.Protocol, cluster, local)
		}
		for _, a := range external {
			frontend := Element{Addr: a, Proto: port.Protocol, Port: port.Port, Verdict: to, Comment: comment}
			b.addElement(MapServiceIPs, frontend)
			b.externalSlots(svc, MapServiceEndpoints, frontend, cluster, local)
			b.affinity(svc, MapAffinityServices, frontend)
		}
		if nodePort != 0 {
			frontend := Element{Proto: port.Protocol, Port: nodePort, Comment: comment}
			frontend.Verdict = b.externalChain(svc, PickNodePort, port.Protocol, cluster, local)
			b.addElement(MapServiceNodePorts, frontend)
			b.externalSlots(svc, MapNodePortEndpoints, frontend, cluster, local)
			b.affinity(svc, MapAffinityNodePorts, frontend)
		}
	}
}

// affinity adds, for a Service with session affinity, the element of set that sends new
// connections to the frontend to the chain that records their clients' endpoints.
func (b *builder) affinity(svc *Service, set string, frontend Element) {
	if svc.AffinityTimeout == 0 {
		return
	}
	record := AffinityRecordChainName(frontend.Proto, svc.AffinityTimeout)
	b.addChain(&Chain{Name: record, Rules: []Rule{rule(RecordAffinity{Proto: frontend.Proto, Map: MapAffinity, Timeout: svc.AffinityTimeout})}})
	e := Element{Addr: frontend.Addr, Proto: frontend.Proto, Port: frontend.Port, Verdict: goTo(record), Comment: frontend.Comment}
	b.addElement(set, e)
}

// hairpin adds the endpoints that may run on this node to the hairpin set: only a pod on
// this node can reach itself through this node's rules.
func (b *builder) hairpin(eps []Endpoint) {
	for _, ep := range eps {
		if ep.NodeName == "" || ep.NodeName == b.node.NodeName {
			b.addElement(SetHairpin, Element{Addr: ep.Addr})
		}
	}
}

// externalChain adds the chain for kind traffic (PickExternal or PickNodePort) of a Service
// port and returns the verdict that sends packets to it.
func (b *builder) externalChain(svc *Service, kind PickKind, proto Protocol, cluster, local []Endpoint) Verdict {
	if svc.ExternalPolicyLocal {
		return goTo(b.localPickChain(kind, proto, uint32(len(cluster)), uint32(len(local)), svc.AffinityTimeout))
	}
	return goTo(b.pickChain(kind, proto, uint32(len(cluster)), svc.AffinityTimeout))
}

// externalSlots adds the endpoint slots of an external frontend: the cluster endpoints,
// followed under externalTrafficPolicy Local by the local ones (slots len(cluster) onwards).
func (b *builder) externalSlots(svc *Service, set string, frontend Element, cluster, local []Endpoint) {
	b.slots(set, frontend, 0, cluster)
	if svc.ExternalPolicyLocal {
		b.slots(set, frontend, uint32(len(cluster)), local)
	}
}

// firewall adds the firewall chain of a LoadBalancer Service whose loadBalancerSourceRanges
// hold prefixes of this family, and returns its name ("" when it needs none). The chain
// returns for allowed sources and drops the others.
func (b *builder) firewall(svc *Service, lbIPs []netip.Addr) string {
	if len(lbIPs) == 0 {
		return ""
	}
	var ranges []netip.Prefix
	for _, p := range svc.LoadBalancerSourceRanges {
		if b.node.Family.Contains(p.Addr()) {
			ranges = append(ranges, p.Masked())
		}
	}
	if len(ranges) == 0 {
		return ""
	}
	slices.SortFunc(ranges, func(x, y netip.Prefix) int {
		return cmp.Or(x.Addr().Compare(y.Addr()), cmp.Compare(x.Bits(), y.Bits()))
	})
	ranges = slices.Compact(ranges)
	c := &Chain{Name: FirewallChainName(svc.Name)}
	for _, p := range ranges {
		c.Rules = append(c.Rules, Rule{Exprs: []Expr{MatchSaddr{Prefix: p}, Verdict{Kind: Return}}})
	}
	if b.nodeInRanges(ranges) {
		for _, a := range lbIPs {
			c.Rules = append(c.Rules, Rule{Exprs: []Expr{MatchSaddr{Prefix: netip.PrefixFrom(a, a.BitLen())}, Verdict{Kind: Return}},
				Comment: "a node address is in the source ranges: allow the LoadBalancer IPs"})
		}
	}
	c.Rules = append(c.Rules, Rule{Exprs: []Expr{Verdict{Kind: Drop}}, Comment: "source not in loadBalancerSourceRanges"})
	b.addChain(c)
	return c.Name
}

// FirewallAllowed returns the sources a firewall chain (as firewall builds it) returns for,
// that is lets through, and its rules that are neither such a return nor its final drop.
func FirewallAllowed(c *Chain) (allowed []netip.Prefix, others []Rule) {
	for _, r := range c.Rules {
		if len(r.Exprs) == 2 {
			m, ok1 := r.Exprs[0].(MatchSaddr)
			v, ok2 := r.Exprs[1].(Verdict)
			if ok1 && ok2 && !m.Negate && v.Kind == Return {
				allowed = append(allowed, m.Prefix)
				continue
			}
		}
		if len(r.Exprs) == 1 {
			if v, ok := r.Exprs[0].(Verdict); ok && v.Kind == Drop {
				continue
			}
		}
		others = append(others, r)
	}
	return allowed, others
}

// nodeInRanges reports whether one of this node's addresses lies in one of the prefixes.
func (b *builder) nodeInRanges(ranges []netip.Prefix) bool {
	for _, a := range b.node.NodeIPs {
		for _, p := range ranges {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
	}
	return false
}

// PickKind is the kind of traffic an endpoint-picking chain handles, by the frontend it came
// to. PickExternal and PickNodePort are both external traffic, the kind that
// externalTrafficPolicy governs; they differ in the endpoint map their chains read.
type PickKind uint8

// The kinds of endpoint-picking chains.
const (
	// PickCluster is traffic to a ClusterIP, masqueraded only from outside the cluster.
	PickCluster PickKind = iota
	// PickExternal is traffic to an ExternalIP or a LoadBalancer IP, always masqueraded.
	PickExternal
	// PickNodePort is traffic to a NodePort, always masqueraded.
	PickNodePort
)

// pickChain adds (once per name) the chain that DNATs kind traffic of proto Service ports with
// the given number of endpoint slots and, unless affinity is 0, session affinity of affinity
// seconds, and returns its name.
//
// These chains are shared by every Service port of the same protocol and endpoint count:
// which endpoints are meant comes from the endpoint maps, keyed on the packet's destination
// and the slot drawn. Sharing them keeps the number of chains (and of rules bound to the
// endpoint maps, each of which costs the kernel a walk over the whole map) independent of
// the number of Services.
func (b *builder) pickChain(kind PickKind, proto Protocol, slots, affinity uint32) string {
	name := PickChainName(kind, proto, slots)
	if affinity > 0 {
		name = AffinityPickChainName(name, affinity)
	}
	c := &Chain{Name: name}
	key, m := slotMap(kind)
	switch kind {
	case PickCluster:
		if b.node.MasqueradeAll {
			c.Rules = append(c.Rules, rule(jump(ChainMarkForMasquerade)))
		} else if notPod, ok := b.podTraffic(true); ok {
			c.Rules = append(c.Rules, rule(notPod, jump(ChainMarkForMasquerade)))
		}
	case PickExternal, PickNodePort:
		c.Rules = append(c.Rules, Rule{Exprs: []Expr{jump(ChainMarkForMasquerade)}, Comment: "masquerade traffic from outside the cluster"})
	}
	if affinity > 0 {
		c.Rules = append(c.Rules, affinityRule(proto))
	}
	c.Rules = append(c.Rules, rule(DNATSlot{Proto: proto, Key: key, Slots: slots, Map: m}))
	b.addChain(c)
	return name
}

// slotMap returns the packet fields that select kind traffic's endpoint slots, and the
// endpoint map that holds them.
func slotMap(kind PickKind) ([]KeyField, string) {
	if kind == PickNodePort {
		return keyProtoPort, MapNodePortEndpoints
	}
	return keyAddrProtoPort, MapServiceEndpoints
}

// affinityRule sends a client back to the endpoint it was last sent to, if it is remembered.
func affinityRule(proto Protocol) Rule {
	return Rule{Exprs: []Expr{DNATMap{Proto: proto, Key: []KeyField{KeySaddr, KeyAddr, KeyProto, KeyPort}, Map: MapAffinity}},
		Comment: "session affinity"}
}

// localPickChain adds (once per name) the chain for kind traffic (PickExternal or
// PickNodePort) of proto Service ports with externalTrafficPolicy Local, cluster endpoints in
// all (slots 0 to cluster-1) and local of them on this node (slots cluster to
// cluster+local-1), and returns its name.
//
// Pods short-circuit to the cluster endpoints, as they would through the ClusterIP; the node
// itself does too, masqueraded, since a reply to one of its own addresses could not find its
// way back otherwise. Traffic from elsewhere keeps its source address and goes to a local
// endpoint, or is dropped when this node has none, so that a load balancer's health check
// (and its next packet) moves to a node that has one.
func (b *builder) localPickChain(kind PickKind, proto Protocol, cluster, local, affinity uint32) string {
	name := LocalPickChainName(kind, proto, cluster, local)
	if affinity > 0 {
		name = AffinityPickChainName(name, affinity)
	}
	key, m := slotMap(kind)
	all := DNATSlot{Proto: proto, Key: key, Slots: cluster, Map: m}
	c := &Chain{Name: name}
	c.Rules = append(c.Rules, Rule{Exprs: []Expr{FibSaddrLocal{}, jump(ChainMarkForMasquerade)}, Comment: "masquerade node traffic"})
	if affinity > 0 {
		c.Rules = append(c.Rules, affinityRule(proto))
	}
	if pod, ok := b.podTraffic(false); ok {
		c.Rules = append(c.Rules, Rule{Exprs: []Expr{pod, all}, Comment: "pod traffic short-circuits to all endpoints"})
	}
	c.Rules = append(c.Rules, Rule{Exprs: []Expr{FibSaddrLocal{}, all}, Comment: "node traffic goes to all endpoints"})
	if local > 0 {
		c.Rules = append(c.Rules, rule(DNATSlot{Proto: proto, Key: key, Slots: local, Offset: cluster, Map: m}))
	} else {
		c.Rules = append(c.Rules, Rule{Exprs: []Expr{Verdict{Kind: Drop}}, Comment: "no local endpoints"})
	}
	b.addChain(c)
	return name
}

// slots adds one element per endpoint to an endpoint map: the frontend's key fields with
// slots first to first+len(eps)-1, in the endpoints' order.
func (b *builder) slots(set string, frontend Element, first uint32, eps []Endpoint) {
	// The slots carry no comment: their key is the frontend's, whose element names the
	// Service. A comment is a kernel allocation of its own per element, and the endpoint maps
	// hold most of the table's elements: without it a first sync at 10,000 Services x 10
	// endpoints costs the kernel 18% less time (232 -> 190 ms) and a restart reads less back.
	frontend.Verdict, frontend.Comment = Verdict{}, ""
	for i, ep := range eps {
		e := frontend
		e.Slot = first + uint32(i)
		e.Endpoint = netip.AddrPortFrom(ep.Addr, ep.Port)
		b.addElement(set, e)
	}
}
