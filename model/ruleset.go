package model

import (
	"net/netip"
)

// TableName is the name of nftproxy's table in each family ("table ip nftproxy",
// "table ip6 nftproxy"). nftproxy owns these tables and touches nothing else.
const TableName = "nftproxy"

// Ruleset is the desired content of one nftproxy table: its sets and maps, and its chains in
// the order they are created (base chains and fixed chains first, then per-service chains
// sorted by name).
type Ruleset struct {
	Family Family
	Sets   []*Set
	Chains []*Chain
}

// Set returns the set or map named name, or nil.
func (r *Ruleset) Set(name string) *Set {
	for _, s := range r.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Chain returns the chain named name, or nil.
func (r *Ruleset) Chain(name string) *Chain {
	for _, c := range r.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// DataKind is what the elements of a map map their keys to.
type DataKind uint8

// The kinds of set data nftproxy uses.
const (
	// NoData makes a plain set.
	NoData DataKind = iota
	// VerdictData makes a verdict map: each element carries a Verdict.
	VerdictData
	// EndpointData makes a DNAT map: each element carries an endpoint address and port.
	EndpointData
)

// Set is a named set, verdict map or endpoint map.
type Set struct {
	Name string
	// Key lists the key's fields; more than one makes a concatenation.
	Key []KeyField
	// Data is what elements map to; NoData makes a plain set.
	Data    DataKind
	Comment string
	// Dynamic marks a set that the packet path fills ("flags dynamic,timeout"). nftproxy
	// creates it but never lists, diffs or writes its elements.
	Dynamic bool
	// Size is the most elements the set can hold ("size"; 0: no limit). The kernel gives
	// a map with a size but no flags a hash table of fixed size, which it fills much faster
	// than the resizable one it gives a map without (EndpointMapSize); the limit is hard: an
	// element beyond it is refused.
	Size     uint32
	Elements []Element
}

// ByKey returns the set's elements indexed by key.
func (s *Set) ByKey() map[Key]Element {
	m := make(map[Key]Element, len(s.Elements))
	for _, e := range s.Elements {
		m[e.Key()] = e
	}
	return m
}

// IsMap reports whether the set is a map.
func (s *Set) IsMap() bool { return s.Data != NoData }

// IsEndpointMap reports whether s is one of the endpoint maps, which hold an element per
// endpoint slot (keyed on a frontend's fields and a slot number) and are sized to their
// elements (EndpointMapSize). The session affinity map, also mapping to endpoints, is not
// one: the packet path fills it.
func IsEndpointMap(s *Set) bool {
	return !s.Dynamic && s.Data == EndpointData && len(s.Key) > 1 && s.Key[len(s.Key)-1] == KeySlot
}

// Element is one element of a set or map. Only the fields named by the set's Key are used.
type Element struct {
	Addr  netip.Addr
	Proto Protocol
	Port  uint16
	Slot  uint32
	// Verdict is the element's value in a verdict map.
	Verdict Verdict
	// Endpoint is the element's value in an endpoint map.
	Endpoint netip.AddrPort
	// Comment names the Service a frontend belongs to ("namespace/name:port"); endpoint slots,
	// keyed by their frontend, and the skeleton's elements have none.
	Comment string
}

// Hook describes a base chain: which netfilter hook it attaches to, as what type, at which
// priority.
type Hook struct {
	Type     string // "filter" or "nat"
	Hook     string // "prerouting", "input", "forward", "output" or "postrouting"
	Priority int32
}

// Chain is a chain with its rules. Base chains have a Hook; their policy is always accept.
type Chain struct {
	Name  string
	Hook  *Hook
	Rules []Rule
}

// UsesSet reports whether a rule of c refers to the named set or map. The kernel does not
// delete a set while a rule refers to it.
func (c *Chain) UsesSet(name string) bool {
	for _, r := range c.Rules {
		for _, x := range r.Exprs {
			var set string
			switch x := x.(type) {
			case DaddrInSet:
				set = x.Set
			case SaddrDaddrInSet:
				set = x.Set
			case VmapLookup:
				set = x.Map
			case DNATSlot:
				set = x.Map
			case DNATMap:
				set = x.Map
			case RecordAffinity:
				set = x.Map
			case CtOriginalVmap:
				set = x.Map
			}
			if set == name {
				return true
			}
		}
	}
	return false
}

// Rule is a list of expressions evaluated in order, with an optional comment.
type Rule struct {
	Exprs   []Expr
	Comment string
}

// Expr is one statement or match of a rule. The concrete types below form a closed set that
// both the renderer and package nft understand.
type Expr interface{ isExpr() }

// CtStateNew matches packets that open a connection: "ct state new".
type CtStateNew struct{}

// FibDaddrLocal matches packets whose destination is a local address: "fib daddr type local".
type FibDaddrLocal struct{}

// FibSaddrLocal matches packets whose source is a local address (sent by this node itself):
// "fib saddr type local".
type FibSaddrLocal struct{}

// DaddrNotLoopback matches destinations outside the loopback range: "ip daddr != 127.0.0.0/8"
// or "ip6 daddr != ::1".
type DaddrNotLoopback struct{}

// MatchSaddr compares the source address with Prefix (a single address when Prefix is a host
// prefix): "ip saddr 10.244.1.5", "ip saddr != 10.244.0.0/16".
type MatchSaddr struct {
	Prefix netip.Prefix
	Negate bool
}

// MatchDaddr matches destinations inside Prefix ("ip daddr 10.96.0.0/16").
type MatchDaddr struct{ Prefix netip.Prefix }

// MatchIifname compares the name of the interface the packet came in on with Name, or only
// its start with Prefix set ("iifname \"veth*\""). Packets the node sends have no input
// interface: their name is empty.
type MatchIifname struct {
	Name   string
	Prefix bool
	Negate bool
}

// DaddrInSet matches destinations in the named set: "ip daddr @nodeport-ips".
type DaddrInSet struct{ Set string }

// VmapLookup looks up the packet's key in a verdict map and applies the verdict of the
// matching element: "ip daddr . meta l4proto . th dport vmap @service-ips".
type VmapLookup struct {
	Key []KeyField
	Map string
}

// MarkUnset matches packets whose mark has none of the bits of Mask:
// "meta mark & 0x00004000 == 0x00000000".
type MarkUnset struct{ Mask uint32 }

// MarkSetOr sets bits in the packet mark: "meta mark set meta mark | 0x00004000".
type MarkSetOr struct{ Bits uint32 }

// MarkSetXor flips bits in the packet mark: "meta mark set meta mark ^ 0x00004000".
type MarkSetXor struct{ Bits uint32 }

// Masquerade source-NATs the packet to the outgoing interface's address.
type Masquerade struct{ FullyRandom bool }

// Reject refuses the packet: with a TCP reset when TCPReset is set (the rule then only matches
// TCP, "reject with tcp reset"), else with an ICMP port unreachable ("reject"). TCP clients
// get a reset because an ICMP error that arrives while connect() holds the socket lock is
// dropped by Linux, which delays the refusal until the SYN is retransmitted a second later.
type Reject struct{ TCPReset bool }

// DNATSlot rewrites the destination of a Proto packet to the endpoint that an endpoint map
// holds for the packet's Key (fields of the packet) and a slot drawn uniformly at random
// from Offset to Offset+Slots-1: "dnat ip to ip daddr . meta l4proto . tcp dport . numgen
// random mod 3 map @service-endpoints". Key must not contain KeySlot; the slot is appended to
// it.
type DNATSlot struct {
	Proto  Protocol
	Key    []KeyField
	Slots  uint32
	Offset uint32
	Map    string
}

// DNATMap rewrites the destination of a Proto packet to the endpoint that Map holds for the
// packet's Key, when it holds one: "dnat ip to ip saddr . ip daddr . meta l4proto . tcp dport
// map @affinity". When it holds none the rule does nothing and the chain goes on.
type DNATMap struct {
	Proto Protocol
	Key   []KeyField
	Map   string
}

// RecordAffinity remembers, in the dynamic map Map, which endpoint a new connection of
// protocol Proto was sent to: key client . Service address . protocol . Service port (the
// destination before DNAT, from conntrack), value the endpoint (where conntrack expects the
// reply from); the entry expires Timeout seconds after the client's last new connection. It
// runs after DNAT: "meta l4proto tcp update @affinity { ip saddr . ct original ip daddr .
// meta l4proto . ct original proto-dst timeout 3h : ct reply ip saddr . ct reply proto-src }".
type RecordAffinity struct {
	Proto   Protocol
	Map     string
	Timeout uint32
}

// CtOriginalVmap looks up the destination a Proto connection had before DNAT in a verdict
// map: "meta l4proto tcp ct original ip daddr . meta l4proto . ct original proto-dst vmap
// @affinity-services", or without the address when NodePort is set.
type CtOriginalVmap struct {
	Proto    Protocol
	NodePort bool
	Map      string
}

// CtStatusDNAT matches packets of connections whose destination was NATed: "ct status dnat".
type CtStatusDNAT struct{}

// SaddrDaddrInSet matches packets whose source and destination address pair is in the named
// set: "ip saddr . ip daddr @hairpin".
type SaddrDaddrInSet struct{ Set string }

// VerdictKind is the kind of a verdict.
type VerdictKind uint8

// The verdicts nftproxy uses.
const (
	VerdictNone VerdictKind = iota
	Jump
	Goto
	Return
	Drop
	Accept
)

// Verdict ends a rule (or is the value of a verdict map element). Chain is set for Jump and Goto.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

func (CtStateNew) isExpr()       {}
func (FibDaddrLocal) isExpr()    {}
func (DaddrNotLoopback) isExpr() {}
func (FibSaddrLocal) isExpr()    {}
func (MatchSaddr) isExpr()       {}
func (MatchIifname) isExpr()     {}
func (MatchDaddr) isExpr()       {}
func (DaddrInSet) isExpr()       {}
func (VmapLookup) isExpr()       {}
func (MarkUnset) isExpr()        {}
func (MarkSetOr) isExpr()        {}
func (MarkSetXor) isExpr()       {}
func (Masquerade) isExpr()       {}
func (Reject) isExpr()           {}
func (DNATSlot) isExpr()         {}
func (CtStatusDNAT) isExpr()     {}
func (DNATMap) isExpr()          {}
func (RecordAffinity) isExpr()   {}
func (CtOriginalVmap) isExpr()   {}
func (SaddrDaddrInSet) isExpr()  {}
func (Verdict) isExpr()          {}
