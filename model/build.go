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
)

// Build returns the desired ruleset for node.Family from the Services this node proxies.
//
// The table has a fixed skeleton of chains; Services appear in it as elements of four verdict
// maps keyed on "daddr . l4proto . dport" (or "l4proto . dport" for NodePorts), pointing at
// per-service-port chains that pick an endpoint with "numgen random mod N" and DNAT to it.
// Service ports without a usable endpoint are listed in the no-endpoint maps instead, whose
// elements reject new connections. Build is deterministic: its output depends only on its
// input, never on the order of Services, ports or endpoints within it.
func Build(services []Service, node NodeConfig) *Ruleset {
	b := &builder{
		node:   node,
		sets:   map[string]*Set{},
		chains: map[string]*Chain{},
	}
	b.skeleton()
	sorted := slices.Clone(services)
	slices.SortFunc(sorted, func(a, b Service) int {
		return cmp.Or(cmp.Compare(a.Name.Namespace, b.Name.Namespace), cmp.Compare(a.Name.Name, b.Name.Name))
	})
	for i := range sorted {
		b.service(&sorted[i])
	}
	return b.finish()
}

type builder struct {
	node       NodeConfig
	sets       map[string]*Set
	setOrder   []string
	chains     map[string]*Chain
	fixedOrder []string
	// seen records the keys already added to each set, so that a key claimed by two Services
	// (say, a shared external IP) goes to the first of them in name order.
	seen map[string]map[Element]bool
}

func (b *builder) addSet(s *Set) {
	b.sets[s.Name] = s
	b.setOrder = append(b.setOrder, s.Name)
}

func (b *builder) addChain(c *Chain) {
	b.chains[c.Name] = c
}

func (b *builder) addFixedChain(c *Chain) {
	b.addChain(c)
	b.fixedOrder = append(b.fixedOrder, c.Name)
}

// addElement adds e to the set unless an element with the same key is already there.
func (b *builder) addElement(set string, e Element) {
	key := Element{Addr: e.Addr, Proto: e.Proto, Port: e.Port}
	if b.seen == nil {
		b.seen = map[string]map[Element]bool{}
	}
	if b.seen[set] == nil {
		b.seen[set] = map[Element]bool{}
	}
	if b.seen[set][key] {
		return
	}
	b.seen[set][key] = true
	s := b.sets[set]
	s.Elements = append(s.Elements, e)
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

// skeleton adds the sets and chains that exist whatever the Services are.
func (b *builder) skeleton() {
	b.addSet(&Set{Name: SetClusterIPs, Key: []KeyField{KeyAddr}, Comment: "Active ClusterIPs"})
	if b.nodePortsLimited() {
		b.addSet(&Set{Name: SetNodePortIPs, Key: []KeyField{KeyAddr}, Comment: "IPs that accept NodePort traffic"})
		for _, a := range b.nodePortIPs() {
			b.addElement(SetNodePortIPs, Element{Addr: a})
		}
	}
	b.addSet(&Set{Name: MapServiceIPs, Key: keyAddrProtoPort, Map: true, Comment: "ClusterIP, ExternalIP and LoadBalancer IP traffic"})
	b.addSet(&Set{Name: MapServiceNodePorts, Key: keyProtoPort, Map: true, Comment: "NodePort traffic"})
	b.addSet(&Set{Name: MapNoEndpointServices, Key: keyAddrProtoPort, Map: true, Comment: "vmap to drop or reject packets to services with no endpoints"})
	b.addSet(&Set{Name: MapNoEndpointNodePorts, Key: keyProtoPort, Map: true, Comment: "vmap to drop or reject packets to service nodeports with no endpoints"})

	b.addFixedChain(&Chain{Name: ChainFilterPrerouting, Hook: baseHook("filter", "prerouting", priorityDstNAT-10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainEndpointsCheck))}})
	b.addFixedChain(&Chain{Name: ChainFilterOutput, Hook: baseHook("filter", "output", priorityDstNAT-10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainEndpointsCheck))}})
	b.addFixedChain(&Chain{Name: ChainFilterPreroutingPostNAT, Hook: baseHook("filter", "prerouting", priorityDstNAT+10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainClusterIPsCheck))}})
	b.addFixedChain(&Chain{Name: ChainFilterOutputPostNAT, Hook: baseHook("filter", "output", priorityDstNAT+10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainClusterIPsCheck))}})
	b.addFixedChain(&Chain{Name: ChainNATPrerouting, Hook: baseHook("nat", "prerouting", priorityDstNAT),
		Rules: []Rule{rule(jump(ChainServices))}})
	b.addFixedChain(&Chain{Name: ChainNATOutput, Hook: baseHook("nat", "output", priorityDstNAT),
		Rules: []Rule{rule(jump(ChainServices))}})
	b.addFixedChain(&Chain{Name: ChainNATPostrouting, Hook: baseHook("nat", "postrouting", prioritySrcNAT),
		Rules: []Rule{rule(jump(ChainMasquerading))}})

	b.addFixedChain(&Chain{Name: ChainEndpointsCheck, Rules: []Rule{
		rule(VmapLookup{Key: keyAddrProtoPort, Map: MapNoEndpointServices}),
		rule(append(b.nodePortMatch(), VmapLookup{Key: keyProtoPort, Map: MapNoEndpointNodePorts})...),
	}})
	b.addFixedChain(&Chain{Name: ChainClusterIPsCheck, Rules: []Rule{
		{Exprs: []Expr{DaddrInSet{Set: SetClusterIPs}, Reject{TCPReset: true}}, Comment: "Reject traffic to invalid ports of ClusterIPs"},
		{Exprs: []Expr{DaddrInSet{Set: SetClusterIPs}, Reject{}}, Comment: "Reject traffic to invalid ports of ClusterIPs"},
	}})
	b.addFixedChain(&Chain{Name: ChainServices, Rules: []Rule{
		rule(VmapLookup{Key: keyAddrProtoPort, Map: MapServiceIPs}),
		rule(append(b.nodePortMatch(), VmapLookup{Key: keyProtoPort, Map: MapServiceNodePorts})...),
	}})
	b.addFixedChain(&Chain{Name: ChainMasquerading, Rules: []Rule{
		rule(MarkUnset{Mask: MasqueradeMark}, Verdict{Kind: Return}),
		rule(MarkSetXor{Bits: MasqueradeMark}),
		rule(Masquerade{FullyRandom: true}),
	}})
	b.addFixedChain(&Chain{Name: ChainMarkForMasquerade, Rules: []Rule{rule(MarkSetOr{Bits: MasqueradeMark})}})
	b.addFixedChain(&Chain{Name: ChainReject, Rules: []Rule{rule(Reject{TCPReset: true}), rule(Reject{})}})
}

// nodePortIPs returns this family's local addresses inside --nodeport-addresses, sorted.
func (b *builder) nodePortIPs() []netip.Addr {
	var out []netip.Addr
	for _, a := range b.node.LocalAddresses {
		a = a.Unmap()
		if !b.node.Family.Contains(a) || a.IsLoopback() {
			continue
		}
		for _, p := range b.node.NodePortAddresses {
			if p.Contains(a) {
				out = append(out, a)
				break
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// clusterCIDR returns the pod network of this family, if one was configured.
func (b *builder) clusterCIDR() (netip.Prefix, bool) {
	for _, p := range b.node.ClusterCIDRs {
		if b.node.Family.Contains(p.Addr()) {
			return p.Masked(), true
		}
	}
	return netip.Prefix{}, false
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

// usableEndpoints returns the endpoints new connections may go to: the ready ones of this
// family or, when there are none, the serving ones that are terminating.
func (b *builder) usableEndpoints(eps []Endpoint) []Endpoint {
	var ready, terminating []Endpoint
	for _, ep := range eps {
		if !b.node.Family.Contains(ep.Addr) || ep.Port == 0 {
			continue
		}
		switch {
		case ep.Ready:
			ready = append(ready, ep)
		case ep.Serving && ep.Terminating:
			terminating = append(terminating, ep)
		}
	}
	if len(ready) == 0 {
		ready = terminating
	}
	slices.SortFunc(ready, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	return slices.CompactFunc(ready, func(a, b Endpoint) bool { return a.Addr == b.Addr && a.Port == b.Port })
}

// service adds the elements and chains of one Service.
func (b *builder) service(svc *Service) {
	clusterIPs := b.familyAddrs(svc.ClusterIPs)
	if len(clusterIPs) == 0 {
		// Not a Service of this family (or a headless one that slipped through).
		return
	}
	clusterIP := clusterIPs[0]
	external := slices.Concat(b.familyAddrs(svc.ExternalIPs), b.familyAddrs(svc.LoadBalancerIPs))
	if svc.Type != LoadBalancer {
		external = b.familyAddrs(svc.ExternalIPs)
	}
	b.addElement(SetClusterIPs, Element{Addr: clusterIP})

	for _, port := range svc.Ports {
		if port.Port == 0 {
			continue
		}
		comment := PortComment(svc.Name, port)
		nodePort := port.NodePort
		if svc.Type == ClusterIP {
			nodePort = 0
		}
		eps := b.usableEndpoints(port.Endpoints)
		if len(eps) == 0 {
			reject := goTo(ChainReject)
			for _, a := range slices.Concat([]netip.Addr{clusterIP}, external) {
				b.addElement(MapNoEndpointServices, Element{Addr: a, Proto: port.Protocol, Port: port.Port, Verdict: reject, Comment: comment})
			}
			if nodePort != 0 {
				b.addElement(MapNoEndpointNodePorts, Element{Proto: port.Protocol, Port: nodePort, Verdict: reject, Comment: comment})
			}
			continue
		}

		svcChain := ServiceChainName(svc.Name, port)
		b.addElement(MapServiceIPs, Element{Addr: clusterIP, Proto: port.Protocol, Port: port.Port, Verdict: goTo(svcChain), Comment: comment})
		b.serviceChain(svc, port, svcChain, eps)

		if len(external) > 0 || nodePort != 0 {
			extChain := ExternalChainName(svc.Name, port)
			b.addChain(&Chain{Name: extChain, Rules: []Rule{
				{Exprs: []Expr{jump(ChainMarkForMasquerade)}, Comment: "masquerade traffic from outside the cluster"},
				rule(goTo(svcChain)),
			}})
			for _, a := range external {
				b.addElement(MapServiceIPs, Element{Addr: a, Proto: port.Protocol, Port: port.Port, Verdict: goTo(extChain), Comment: comment})
			}
			if nodePort != 0 {
				b.addElement(MapServiceNodePorts, Element{Proto: port.Protocol, Port: nodePort, Verdict: goTo(extChain), Comment: comment})
			}
		}
	}
}

// serviceChain adds the chain that spreads a port's traffic over eps, and one chain per
// endpoint that DNATs to it.
func (b *builder) serviceChain(svc *Service, port ServicePort, name string, eps []Endpoint) {
	c := &Chain{Name: name}
	if b.node.MasqueradeAll {
		c.Rules = append(c.Rules, rule(jump(ChainMarkForMasquerade)))
	} else if cidr, ok := b.clusterCIDR(); ok {
		c.Rules = append(c.Rules, rule(MatchSaddr{Prefix: cidr, Negate: true}, jump(ChainMarkForMasquerade)))
	}
	targets := make([]string, len(eps))
	for i, ep := range eps {
		targets[i] = EndpointChainName(svc.Name, port, ep)
		b.addChain(&Chain{Name: targets[i], Rules: []Rule{
			{Exprs: []Expr{MatchSaddr{Prefix: netip.PrefixFrom(ep.Addr, ep.Addr.BitLen())}, jump(ChainMarkForMasquerade)}, Comment: "hairpin"},
			rule(DNAT{Proto: port.Protocol, Addr: ep.Addr, Port: ep.Port}),
		}})
	}
	if len(targets) == 1 {
		c.Rules = append(c.Rules, rule(goTo(targets[0])))
	} else {
		c.Rules = append(c.Rules, rule(NumgenVmap{Targets: targets}))
	}
	b.addChain(c)
}

// finish orders sets, elements and chains deterministically.
func (b *builder) finish() *Ruleset {
	rs := &Ruleset{Family: b.node.Family}
	for _, name := range b.setOrder {
		s := b.sets[name]
		slices.SortFunc(s.Elements, compareElements)
		rs.Sets = append(rs.Sets, s)
	}
	fixed := map[string]bool{}
	for _, name := range b.fixedOrder {
		fixed[name] = true
		rs.Chains = append(rs.Chains, b.chains[name])
	}
	var dynamic []*Chain
	for name, c := range b.chains {
		if !fixed[name] {
			dynamic = append(dynamic, c)
		}
	}
	slices.SortFunc(dynamic, func(a, b *Chain) int { return cmp.Compare(a.Name, b.Name) })
	rs.Chains = append(rs.Chains, dynamic...)
	return rs
}

// compareElements orders elements by key: address, then protocol, then port.
func compareElements(a, b Element) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
}
