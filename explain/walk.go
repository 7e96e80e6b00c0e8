package explain

import (
	"cmp"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	"github.com/nftproxy/nftproxy/model"
)

// maxDepth bounds nested jumps: nftproxy's chains nest three deep, the kernel refuses loops.
const maxDepth = 16

// branch is one way through the rules, with the packet as it is on that way.
type branch struct {
	prob *big.Rat
	// The packet's destination now (after DNAT) and at first.
	daddr netip.Addr
	dport uint16
	mark  uint32
	// dnat is set once the destination was rewritten to endpoint; of is the number of slots
	// of the draw that chose it (0 when the affinity map did).
	dnat     bool
	endpoint netip.AddrPort
	of       int

	// What the walk learned on the way, for the explanation.
	service, frontend string
	ranges            *SourceRanges
	affinity          *Affinity
	masq              bool
	masqReason        string
	verdict           Verdict
	reason            string
}

func (b *branch) fork(share *big.Rat) *branch {
	c := *b
	c.prob = new(big.Rat).Mul(b.prob, share)
	if b.ranges != nil {
		r := *b.ranges
		c.ranges = &r
	}
	if b.affinity != nil {
		a := *b.affinity
		c.affinity = &a
	}
	return &c
}

// How a chain, rule or expression ends for a branch.
type ending uint8

const (
	// next: go on with the next expression, or the next rule when a match failed.
	next ending = iota
	// ret: the chain returns to its caller (a return verdict, or the chain's end).
	ret
	// final: the hook is done with the packet: accepted (by a NAT statement or accept),
	// dropped or rejected (branch.verdict says which).
	final
	// skip: a match failed; the rest of the rule is skipped and the chain goes on.
	skip
)

// step is a branch and how it ended.
type step struct {
	b   *branch
	end ending
}

type walker struct {
	st    State
	p     Packet
	local map[netip.Addr]bool
	notes []string
	noted map[string]bool
}

func newWalker(st State, p Packet) *walker {
	w := &walker{st: st, p: p, local: map[netip.Addr]bool{}, noted: map[string]bool{}}
	for _, a := range st.LocalAddrs {
		w.local[a.Unmap()] = true
	}
	return w
}

func (w *walker) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if !w.noted[s] {
		w.noted[s] = true
		w.notes = append(w.notes, s)
	}
}

func (w *walker) isLocal(a netip.Addr) bool { return a.IsLoopback() || w.local[a] }

// baseChains returns the table's chains on hook, by priority.
func (w *walker) baseChains(hook string) []*model.Chain {
	var out []*model.Chain
	for _, c := range w.st.Ruleset.Chains {
		if c.Hook != nil && c.Hook.Hook == hook {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b *model.Chain) int { return cmp.Compare(a.Hook.Priority, b.Hook.Priority) })
	return out
}

// walk runs the packet through its hooks and returns the branches, each ended.
func (w *walker) walk() []*branch {
	first := &branch{prob: big.NewRat(1, 1), daddr: w.p.Dst.Addr(), dport: w.p.Dst.Port()}
	hook := "prerouting"
	if w.p.From == FromNode {
		hook = "output"
	}
	live := w.hook([]*branch{first}, hook)
	var out, post []*branch
	for _, b := range live {
		switch {
		case b.verdict != "":
			out = append(out, b)
		case w.p.From != FromNode && w.isLocal(b.daddr):
			// Delivered to this node: no postrouting hook, no masquerade.
			post = append(post, b)
		default:
			post = append(post, w.hook([]*branch{b}, "postrouting")...)
		}
	}
	for _, b := range post {
		if b.verdict == "" {
			w.finish(b)
		}
		out = append(out, b)
	}
	return out
}

// finish sets the verdict of a branch that went through every hook.
func (w *walker) finish(b *branch) {
	if b.dnat {
		b.verdict = Forward
		if !b.masq && b.masqReason == "" {
			b.masqReason = w.noMasqueradeReason(b)
		}
		return
	}
	b.verdict = Untouched
	b.reason = "not a Service: nftproxy does not touch it"
	if b.service != "" {
		b.reason = "nftproxy's rules leave it as it is"
	}
}

// noMasqueradeReason says why a forwarded connection keeps its source address.
func (w *walker) noMasqueradeReason(b *branch) string {
	if b.frontend == FrontendClusterIP {
		return "no rule masquerades cluster traffic from this source (no detect-local rule applies)"
	}
	switch w.p.From {
	case FromPod:
		return "traffic from a pod keeps its source address"
	case FromNode:
		return "traffic from this node that no rule marked"
	}
	return "external traffic under externalTrafficPolicy Local keeps the client's address"
}

// hook runs the branches through the base chains of hook, in priority order, and returns
// them: those with a verdict are done, the others go on.
func (w *walker) hook(in []*branch, hook string) []*branch {
	live := in
	var done []*branch
	for _, c := range w.baseChains(hook) {
		var after []*branch
		for _, b := range live {
			for _, s := range w.chain(b, c.Name, 0) {
				if s.b.verdict != "" {
					done = append(done, s.b)
				} else {
					after = append(after, s.b)
				}
			}
		}
		live = after
	}
	return append(done, live...)
}

// chain runs a branch through the named chain and returns how each of its branches ends
// (ret or final).
func (w *walker) chain(b *branch, name string, depth int) []step {
	c := w.st.Ruleset.Chain(name)
	if c == nil {
		w.note("chain %s is missing: the walk treats it as empty", name)
		return []step{{b, ret}}
	}
	if depth > maxDepth {
		w.note("chains nest deeper than %d at %s: the walk stops there", maxDepth, name)
		return []step{{b, ret}}
	}
	pending := []*branch{b}
	var out []step
	for i, r := range c.Rules {
		var cont []*branch
		for _, pb := range pending {
			for _, s := range w.rule(pb, c, i, r, depth) {
				if s.end == next {
					cont = append(cont, s.b)
				} else {
					out = append(out, s)
				}
			}
		}
		pending = cont
	}
	for _, pb := range pending {
		out = append(out, step{pb, ret})
	}
	return out
}

// rule runs a branch through one rule. A branch that fails a match, or whose rule ends
// without a verdict, ends with next.
func (w *walker) rule(b *branch, c *model.Chain, index int, r model.Rule, depth int) []step {
	if len(r.Exprs) == 0 {
		if r.Comment != "" {
			w.note("rule %d of chain %s is not one nftproxy writes (%s): the walk skips it", index+1, c.Name, r.Comment)
		}
		return []step{{b, next}}
	}
	live := []*branch{b}
	var out []step
	for _, x := range r.Exprs {
		var cont []*branch
		for _, lb := range live {
			for _, s := range w.expr(lb, c, r, x, depth) {
				switch s.end {
				case next:
					cont = append(cont, s.b)
				case skip:
					out = append(out, step{s.b, next})
				default:
					out = append(out, s)
				}
			}
		}
		live = cont
	}
	for _, lb := range live {
		out = append(out, step{lb, next})
	}
	return out
}

// expr evaluates one expression for a branch: next goes on with the rule's next expression,
// skip (a failed match) with the chain's next rule.
func (w *walker) expr(b *branch, c *model.Chain, r model.Rule, x model.Expr, depth int) []step {
	match := func(ok bool) []step {
		if ok {
			return []step{{b, next}}
		}
		return w.skipRest(b, c, r)
	}
	switch x := x.(type) {
	case model.CtStateNew:
		return match(true)
	case model.CtStatusDNAT:
		return match(b.dnat)
	case model.FibDaddrLocal:
		return match(w.isLocal(b.daddr))
	case model.FibSaddrLocal:
		return match(w.isLocal(w.p.Src))
	case model.DaddrNotLoopback:
		return match(!b.daddr.IsLoopback())
	case model.MatchSaddr:
		return match(x.Prefix.Contains(w.p.Src) != x.Negate)
	case model.MatchDaddr:
		return match(x.Prefix.Contains(b.daddr))
	case model.MatchIifname:
		return match(w.iifMatches(x) != x.Negate)
	case model.DaddrInSet:
		return match(w.inSet(x.Set, model.Key{Addr: b.daddr}))
	case model.SaddrDaddrInSet:
		return match(w.p.Src == b.daddr && w.inSet(x.Set, model.Key{Addr: b.daddr}))
	case model.MarkUnset:
		return match(b.mark&x.Mask == 0)
	case model.MarkSetOr:
		b.mark |= x.Bits
		return match(true)
	case model.MarkSetXor:
		b.mark ^= x.Bits
		return match(true)
	case model.Masquerade:
		b.masq = true
		return []step{{b, final}}
	case model.Reject:
		if x.TCPReset && w.p.Proto != model.TCP {
			return match(false)
		}
		b.verdict = Reject
		b.reason = w.rejectReason(b, c, r)
		return []step{{b, final}}
	case model.VmapLookup:
		e, ok := w.lookup(x.Map, x.Key, b.daddr, b.dport, 0)
		if !ok {
			return match(false)
		}
		w.learnFrontend(b, x.Map, e)
		return w.verdict(b, c, e.Verdict, depth, x.Map)
	case model.CtOriginalVmap:
		if w.p.Proto != x.Proto {
			return match(false)
		}
		key := []model.KeyField{model.KeyAddr, model.KeyProto, model.KeyPort}
		if x.NodePort {
			key = key[1:]
		}
		e, ok := w.lookup(x.Map, key, w.p.Dst.Addr(), w.p.Dst.Port(), 0)
		if !ok {
			return match(false)
		}
		return w.verdict(b, c, e.Verdict, depth, x.Map)
	case model.RecordAffinity:
		if w.p.Proto != x.Proto {
			return match(false)
		}
		if b.affinity == nil {
			b.affinity = &Affinity{}
		}
		b.affinity.TimeoutSeconds = x.Timeout
		return match(true)
	case model.DNATMap:
		if w.p.Proto != x.Proto {
			return match(false)
		}
		for _, a := range w.st.Affinity {
			if a.Client == w.p.Src && a.Dst == netip.AddrPortFrom(b.daddr, b.dport) && a.Proto == w.p.Proto {
				if b.affinity == nil {
					b.affinity = &Affinity{}
				}
				b.affinity.Endpoint = a.Endpoint.String()
				b.affinity.ExpiresSeconds = int64(a.Expires.Seconds() + 0.5)
				b.dnat, b.endpoint, b.of = true, a.Endpoint, 0
				b.daddr, b.dport = a.Endpoint.Addr(), a.Endpoint.Port()
				return []step{{b, final}}
			}
		}
		return match(false)
	case model.DNATSlot:
		if w.p.Proto != x.Proto || x.Slots == 0 {
			return match(false)
		}
		share := big.NewRat(1, int64(x.Slots))
		var out []step
		for s := x.Offset; s < x.Offset+x.Slots; s++ {
			fb := b.fork(share)
			e, ok := w.lookup(x.Map, append(slices.Clone(x.Key), model.KeySlot), b.daddr, b.dport, s)
			if !ok {
				// A failed map lookup ends the rule; the chain goes on.
				w.note("%s has no slot %d for %s: a draw of it goes on with the next rule of %s", x.Map, s, w.p.Dst, c.Name)
				out = append(out, w.skipRest(fb, c, r)...)
				continue
			}
			fb.dnat, fb.endpoint, fb.of = true, e.Endpoint, int(x.Slots)
			fb.daddr, fb.dport = e.Endpoint.Addr(), e.Endpoint.Port()
			out = append(out, step{fb, final})
		}
		return out
	case model.Verdict:
		return w.verdict(b, c, x, depth, "")
	}
	w.note("chain %s holds an expression the walk does not know (%T): it skips it", c.Name, x)
	return match(true)
}

// skipRest ends a rule for a branch whose match failed: the chain goes on with its next
// rule. The rule's masquerade decision is remembered for the explanation.
func (w *walker) skipRest(b *branch, c *model.Chain, r model.Rule) []step {
	if marksForMasquerade(r) && b.masqReason == "" && !b.masq {
		b.masqReason = w.describeMasquerade(c, r, false)
	}
	return []step{{b, skip}}
}

// verdict applies a verdict (of a rule or a map element) to a branch.
func (w *walker) verdict(b *branch, c *model.Chain, v model.Verdict, depth int, fromMap string) []step {
	switch v.Kind {
	case model.Accept:
		return []step{{b, final}}
	case model.Drop:
		b.verdict = Drop
		b.reason = w.dropReason(b, c, fromMap)
		return []step{{b, final}}
	case model.Return:
		return []step{{b, ret}}
	case model.Jump, model.Goto:
		if v.Chain == model.ChainMarkForMasquerade && b.mark&model.MasqueradeMark == 0 {
			b.masqReason = w.describeMasquerade(c, ruleOf(c, v), true)
		}
		if strings.HasPrefix(v.Chain, "firewall-") && b.ranges == nil {
			b.ranges = &SourceRanges{Allowed: true, Ranges: firewallRanges(w.st.Ruleset.Chain(v.Chain))}
		}
		var out []step
		for _, s := range w.chain(b, v.Chain, depth+1) {
			switch {
			case s.end == final:
				out = append(out, s)
			case v.Kind == model.Goto:
				// The goto's chain returns to our caller.
				out = append(out, step{s.b, ret})
			default:
				out = append(out, step{s.b, next})
			}
		}
		return out
	}
	return []step{{b, next}}
}

// ruleOf returns the rule of c that holds verdict v (for describing it), or an empty one.
func ruleOf(c *model.Chain, v model.Verdict) model.Rule {
	for _, r := range c.Rules {
		for _, x := range r.Exprs {
			if x == model.Expr(v) {
				return r
			}
		}
	}
	return model.Rule{}
}

// marksForMasquerade reports whether a rule ends in a jump to mark-for-masquerade.
func marksForMasquerade(r model.Rule) bool {
	if len(r.Exprs) == 0 {
		return false
	}
	v, ok := r.Exprs[len(r.Exprs)-1].(model.Verdict)
	return ok && v.Kind == model.Jump && v.Chain == model.ChainMarkForMasquerade
}

// iifMatches reports whether the packet's input interface matches an iifname match, before
// negation. A locally sent packet has none (its name is empty); a pod's or an external
// packet without a known interface is taken to come in on the pods' interface or on
// another one.
func (w *walker) iifMatches(x model.MatchIifname) bool {
	name := w.p.InInterface
	switch {
	case w.p.From == FromNode:
		name = ""
	case name == "":
		return w.p.From == FromPod
	}
	if x.Prefix {
		return strings.HasPrefix(name, x.Name)
	}
	return name == x.Name
}

// lookup returns the element of set whose key is made of the given packet fields.
func (w *walker) lookup(set string, key []model.KeyField, addr netip.Addr, port uint16, slot uint32) (model.Element, bool) {
	s := w.st.Ruleset.Set(set)
	if s == nil {
		w.note("set %s is missing: lookups in it find nothing", set)
		return model.Element{}, false
	}
	var k model.Key
	for _, f := range key {
		switch f {
		case model.KeyAddr:
			k.Addr = addr
		case model.KeyProto:
			k.Proto = w.p.Proto
		case model.KeyPort:
			k.Port = port
		case model.KeySlot:
			k.Slot = slot
		}
	}
	for _, e := range s.Elements {
		if e.Key() == k {
			return e, true
		}
	}
	return model.Element{}, false
}

// inSet reports whether a plain set holds an element with key k.
func (w *walker) inSet(set string, k model.Key) bool {
	s := w.st.Ruleset.Set(set)
	if s == nil {
		w.note("set %s is missing: lookups in it find nothing", set)
		return false
	}
	for _, e := range s.Elements {
		if e.Key() == k {
			return true
		}
	}
	return false
}

// learnFrontend remembers the Service and the kind of frontend a map element names.
func (w *walker) learnFrontend(b *branch, m string, e model.Element) {
	switch m {
	case model.MapServiceIPs, model.MapNoEndpointServices, model.MapFirewallIPs:
		b.frontend = w.addressKind(e.Addr)
	case model.MapServiceNodePorts, model.MapNoEndpointNodePorts:
		b.frontend = FrontendNodePort
	default:
		return
	}
	if e.Comment != "" {
		b.service = e.Comment
	}
}

// addressKind tells what kind of frontend a Service address is.
func (w *walker) addressKind(a netip.Addr) string {
	if w.inSet(model.SetClusterIPs, model.Key{Addr: a}) {
		return FrontendClusterIP
	}
	if k := w.st.Kinds[a]; k != "" {
		return k
	}
	if s := w.st.Ruleset.Set(model.MapFirewallIPs); s != nil {
		for _, e := range s.Elements {
			if e.Addr == a {
				return FrontendLoadBalancer
			}
		}
	}
	return FrontendExternal
}

// serviceOf returns the Service ("namespace/name") of an address of service-ips.
func (w *walker) serviceOf(a netip.Addr) string {
	for _, m := range []string{model.MapServiceIPs, model.MapNoEndpointServices} {
		if s := w.st.Ruleset.Set(m); s != nil {
			for _, e := range s.Elements {
				if e.Addr == a && e.Comment != "" {
					svc, _, _ := strings.Cut(e.Comment, ":")
					return svc
				}
			}
		}
	}
	return ""
}

// rejectReason says why a rule of c rejects.
func (w *walker) rejectReason(b *branch, c *model.Chain, r model.Rule) string {
	switch {
	case c.Name == model.ChainReject:
		return "the Service port has no endpoints"
	case c.Name == model.ChainClusterIPsCheck:
		b.frontend = FrontendClusterIP
		if svc := w.serviceOf(w.p.Dst.Addr()); svc != "" && b.service == "" {
			b.service = svc
		}
		return fmt.Sprintf("a ClusterIP on a port its Service does not define (%s/%d)", w.p.Proto, w.p.Dst.Port())
	case r.Comment != "":
		return r.Comment
	}
	return "rejected by chain " + c.Name
}

// dropReason says why a drop happens in c (or in the element of fromMap).
func (w *walker) dropReason(b *branch, c *model.Chain, fromMap string) string {
	switch {
	case fromMap == model.MapServiceIPs:
		return "internalTrafficPolicy Local and no endpoint on this node"
	case fromMap != "":
		return "the element of " + fromMap + " drops it"
	case strings.HasPrefix(c.Name, "firewall-"):
		if b.ranges != nil {
			b.ranges.Allowed = false
		}
		return "source not in loadBalancerSourceRanges"
	case c.Name == model.ChainClusterIPsCheck:
		return "an address in the service CIDR that no Service holds"
	case strings.Contains(c.Name, "-local-"):
		return "externalTrafficPolicy Local and no endpoint on this node (traffic from outside the node)"
	}
	return "dropped by chain " + c.Name
}

// describeMasquerade says why a rule of c that jumps to mark-for-masquerade marks the
// packet (matched set), or why it does not.
func (w *walker) describeMasquerade(c *model.Chain, r model.Rule, matched bool) string {
	if r.Comment == "hairpin" {
		if matched {
			return "hairpin: the client is the endpoint it reaches"
		}
		return ""
	}
	in := w.p.InInterface
	switch {
	case w.p.From == FromNode:
		in = "no interface (sent by this node)"
	case in == "":
		in = "the " + string(w.p.From) + "'s interface"
	}
	for _, x := range r.Exprs {
		switch x := x.(type) {
		case model.MatchSaddr:
			switch {
			case matched && x.Negate:
				return fmt.Sprintf("source %s is outside %s, so not a pod (detect-local)", w.p.Src, x.Prefix)
			case x.Negate:
				return fmt.Sprintf("source %s is inside %s: a pod keeps its address (detect-local)", w.p.Src, x.Prefix)
			}
		case model.MatchIifname:
			name := x.Name
			if x.Prefix {
				name += "*"
			}
			switch {
			case matched && x.Negate:
				return fmt.Sprintf("came in on %s, not the pods' %s, so not a pod (detect-local)", in, name)
			case x.Negate:
				return fmt.Sprintf("came in on the pods' %s: a pod keeps its address (detect-local)", name)
			}
		case model.FibSaddrLocal:
			if matched {
				return "sent by this node (externalTrafficPolicy Local masquerades node traffic)"
			}
			return "externalTrafficPolicy Local: the endpoint sees the client's address"
		}
	}
	if !matched {
		return ""
	}
	switch {
	case r.Comment != "":
		return r.Comment + " (externalTrafficPolicy Cluster)"
	case strings.HasPrefix(c.Name, "cluster-"):
		return "--masquerade-all"
	}
	return "chain " + c.Name + " masquerades everything"
}

// firewallRanges returns the prefixes a firewall chain lets through.
func firewallRanges(c *model.Chain) []string {
	if c == nil {
		return nil
	}
	allowed, _ := model.FirewallAllowed(c)
	var out []string
	for _, p := range allowed {
		out = append(out, p.String())
	}
	return out
}
