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
	var dynamic []*Chain
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
				dynamic = append(dynamic, c)
			}
		}
	}
	for _, s := range rs.Sets {
		slices.SortFunc(s.Elements, CompareElements)
	}
	slices.SortFunc(dynamic, func(a, b *Chain) int { return cmp.Compare(a.Name, b.Name) })
	rs.Chains = append(rs.Chains, dynamic...)
	return rs
}

// CompareNames orders Services by namespace, then name: the order in which they claim keys.
func CompareNames(a, b ServiceName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Key is the key of an element: two elements of a set with the same Key are the same element
// as far as the kernel is concerned. It is much smaller than an Element, which matters for
// maps of hundreds of thousands of elements.
type Key struct {
	Addr  netip.Addr
	Proto Protocol
	Port  uint16
	Slot  uint32
}

// Key returns the element's key.
func (e Element) Key() Key {
	return Key{Addr: e.Addr, Proto: e.Proto, Port: e.Port, Slot: e.Slot}
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
	// Most Services need about this many elements: per port, the ClusterIP's service-ips
	// and cluster-ips elements, and a slot and a hairpin element per endpoint.
	n := 1
	for _, p := range svc.Ports {
		n += 2 + 3*len(p.Endpoints)
	}
	b := &builder{node: node, part: &Part{Elements: make([]PartElement, 0, n)}}
	b.service(svc)
	return b.part
}

// Skeleton returns the table without any Service: the sets and maps (with the node's NodePort
// addresses), the base chains and the fixed chains.
func Skeleton(node NodeConfig) *Ruleset {
	b := &builder{node: node}
	return b.skeleton()
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
		for _, a := range b.nodePortIPs() {
			s.Elements = append(s.Elements, Element{Addr: a})
		}
		addSet(s)
	}
	addSet(&Set{Name: MapServiceIPs, Key: keyAddrProtoPort, Data: VerdictData, Comment: "ClusterIP, ExternalIP and LoadBalancer IP traffic"})
	addSet(&Set{Name: MapServiceNodePorts, Key: keyProtoPort, Data: VerdictData, Comment: "NodePort traffic"})
	addSet(&Set{Name: MapNoEndpointServices, Key: keyAddrProtoPort, Data: VerdictData, Comment: "vmap to drop or reject packets to services with no endpoints"})
	addSet(&Set{Name: MapNoEndpointNodePorts, Key: keyProtoPort, Data: VerdictData, Comment: "vmap to drop or reject packets to service nodeports with no endpoints"})
	addSet(&Set{Name: MapServiceEndpoints, Key: keyAddrProtoPortSlot, Data: EndpointData, Comment: "Endpoint of each slot of a ClusterIP, ExternalIP or LoadBalancer IP port"})
	addSet(&Set{Name: MapNodePortEndpoints, Key: keyProtoPortSlot, Data: EndpointData, Comment: "Endpoint of each slot of a NodePort"})
	addSet(&Set{Name: SetHairpin, Key: []KeyField{KeyAddr, KeyAddr}, Comment: "Local endpoints paired with themselves, to masquerade a pod that reaches itself through a Service"})

	addChain(&Chain{Name: ChainFilterPrerouting, Hook: baseHook("filter", "prerouting", priorityDstNAT-10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainEndpointsCheck))}})
	addChain(&Chain{Name: ChainFilterOutput, Hook: baseHook("filter", "output", priorityDstNAT-10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainEndpointsCheck))}})
	addChain(&Chain{Name: ChainFilterPreroutingPostNAT, Hook: baseHook("filter", "prerouting", priorityDstNAT+10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainClusterIPsCheck))}})
	addChain(&Chain{Name: ChainFilterOutputPostNAT, Hook: baseHook("filter", "output", priorityDstNAT+10),
		Rules: []Rule{rule(CtStateNew{}, jump(ChainClusterIPsCheck))}})
	addChain(&Chain{Name: ChainNATPrerouting, Hook: baseHook("nat", "prerouting", priorityDstNAT),
		Rules: []Rule{rule(jump(ChainServices))}})
	addChain(&Chain{Name: ChainNATOutput, Hook: baseHook("nat", "output", priorityDstNAT),
		Rules: []Rule{rule(jump(ChainServices))}})
	addChain(&Chain{Name: ChainNATPostrouting, Hook: baseHook("nat", "postrouting", prioritySrcNAT),
		Rules: []Rule{rule(jump(ChainMasquerading))}})

	addChain(&Chain{Name: ChainEndpointsCheck, Rules: []Rule{
		rule(VmapLookup{Key: keyAddrProtoPort, Map: MapNoEndpointServices}),
		rule(append(b.nodePortMatch(), VmapLookup{Key: keyProtoPort, Map: MapNoEndpointNodePorts})...),
	}})
	addChain(&Chain{Name: ChainClusterIPsCheck, Rules: []Rule{
		{Exprs: []Expr{DaddrInSet{Set: SetClusterIPs}, Reject{TCPReset: true}}, Comment: "Reject traffic to invalid ports of ClusterIPs"},
		{Exprs: []Expr{DaddrInSet{Set: SetClusterIPs}, Reject{}}, Comment: "Reject traffic to invalid ports of ClusterIPs"},
	}})
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
	addChain(&Chain{Name: ChainMarkForMasquerade, Rules: []Rule{rule(MarkSetOr{Bits: MasqueradeMark})}})
	addChain(&Chain{Name: ChainReject, Rules: []Rule{rule(Reject{TCPReset: true}), rule(Reject{})}})
	return rs
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

		slots := uint32(len(eps))
		b.addElement(MapServiceIPs, Element{Addr: clusterIP, Proto: port.Protocol, Port: port.Port, Verdict: goTo(b.pickChain(Cluster, port.Protocol, slots)), Comment: comment})
		b.slots(MapServiceEndpoints, Element{Addr: clusterIP, Proto: port.Protocol, Port: port.Port, Comment: comment}, eps)
		for _, ep := range eps {
			// Only a pod on this node can reach itself through this node's rules.
			if ep.NodeName == "" || ep.NodeName == b.node.NodeName {
				b.addElement(SetHairpin, Element{Addr: ep.Addr})
			}
		}
		if len(external) > 0 {
			to := goTo(b.pickChain(External, port.Protocol, slots))
			for _, a := range external {
				b.addElement(MapServiceIPs, Element{Addr: a, Proto: port.Protocol, Port: port.Port, Verdict: to, Comment: comment})
				b.slots(MapServiceEndpoints, Element{Addr: a, Proto: port.Protocol, Port: port.Port, Comment: comment}, eps)
			}
		}
		if nodePort != 0 {
			to := goTo(b.pickChain(NodePortPick, port.Protocol, slots))
			b.addElement(MapServiceNodePorts, Element{Proto: port.Protocol, Port: nodePort, Verdict: to, Comment: comment})
			b.slots(MapNodePortEndpoints, Element{Proto: port.Protocol, Port: nodePort, Comment: comment}, eps)
		}
	}
}

// PickKind is the kind of traffic an endpoint-picking chain handles.
type PickKind uint8

// The kinds of endpoint-picking chains.
const (
	// Cluster traffic: to a ClusterIP, masqueraded only from outside the cluster.
	Cluster PickKind = iota
	// External traffic to an ExternalIP or a LoadBalancer IP, always masqueraded.
	External
	// NodePortPick is external traffic to a NodePort, always masqueraded.
	NodePortPick
)

// pickChain adds (once per name) the chain that DNATs kind traffic of proto Service ports with
// the given number of endpoint slots, and returns its name.
//
// These chains are shared by every Service port of the same protocol and endpoint count:
// which endpoints are meant comes from the endpoint maps, keyed on the packet's destination
// and the slot drawn. Sharing them keeps the number of chains (and of rules bound to the
// endpoint maps, each of which costs the kernel a walk over the whole map) independent of
// the number of Services.
func (b *builder) pickChain(kind PickKind, proto Protocol, slots uint32) string {
	name := PickChainName(kind, proto, slots)
	c := &Chain{Name: name}
	switch kind {
	case Cluster:
		if b.node.MasqueradeAll {
			c.Rules = append(c.Rules, rule(jump(ChainMarkForMasquerade)))
		} else if cidr, ok := b.clusterCIDR(); ok {
			c.Rules = append(c.Rules, rule(MatchSaddr{Prefix: cidr, Negate: true}, jump(ChainMarkForMasquerade)))
		}
		c.Rules = append(c.Rules, rule(DNATSlot{Proto: proto, Key: keyAddrProtoPort, Slots: slots, Map: MapServiceEndpoints}))
	case External:
		c.Rules = append(c.Rules,
			Rule{Exprs: []Expr{jump(ChainMarkForMasquerade)}, Comment: "masquerade traffic from outside the cluster"},
			rule(DNATSlot{Proto: proto, Key: keyAddrProtoPort, Slots: slots, Map: MapServiceEndpoints}))
	case NodePortPick:
		c.Rules = append(c.Rules,
			Rule{Exprs: []Expr{jump(ChainMarkForMasquerade)}, Comment: "masquerade traffic from outside the cluster"},
			rule(DNATSlot{Proto: proto, Key: keyProtoPort, Slots: slots, Map: MapNodePortEndpoints}))
	}
	b.addChain(c)
	return name
}

// slots adds one element per endpoint to an endpoint map: key's fields with slots 0 to
// len(eps)-1, in the endpoints' order.
func (b *builder) slots(set string, key Element, eps []Endpoint) {
	for i, ep := range eps {
		e := key
		e.Slot = uint32(i)
		e.Endpoint = netip.AddrPortFrom(ep.Addr, ep.Port)
		b.addElement(set, e)
	}
}

// CompareElements orders elements by key: address, then protocol, port and slot.
func CompareElements(a, b Element) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Slot, b.Slot))
}
