package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Render returns the ruleset as `nft list table <family> nftproxy` prints it, byte for byte,
// so that golden files read like what an operator sees and can be compared with the kernel's
// state.
func Render(rs *Ruleset) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", rs.Family, TableName)
	first := true
	sep := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, s := range rs.Sets {
		sep()
		renderSet(&b, rs.Family, s)
	}
	for _, c := range rs.Chains {
		sep()
		renderChain(&b, rs.Family, c)
	}
	b.WriteString("}\n")
	return b.String()
}

func renderSet(b *strings.Builder, fam Family, s *Set) {
	kind := "set"
	if s.IsMap() {
		kind = "map"
	}
	fmt.Fprintf(b, "\t%s %s {\n", kind, s.Name)
	fmt.Fprintf(b, "\t\t%s\n", setTypeLine(fam, s))
	if s.Size != 0 {
		fmt.Fprintf(b, "\t\tsize %d\n", s.Size)
	}
	if s.Dynamic {
		b.WriteString("\t\tflags dynamic,timeout\n")
	}
	if s.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %s\n", strconv.Quote(s.Comment))
	}
	if len(s.Elements) > 0 {
		elems := slices.Clone(s.Elements)
		slices.SortStableFunc(elems, func(x, y Element) int {
			return compareKeyBytes(s.Key, ElementKey(fam, s.Key, x), ElementKey(fam, s.Key, y))
		})
		// nft prints IPv4 addresses two to a line, and other keys one to a line.
		perLine := 1
		if fam == IPv4 && len(s.Key) == 1 && s.Key[0] == KeyAddr {
			perLine = 2
		}
		b.WriteString("\t\telements = { ")
		for i, e := range elems {
			switch {
			case i == 0:
			case i%perLine == 0:
				b.WriteString(",\n\t\t\t     ")
			default:
				b.WriteString(", ")
			}
			b.WriteString(RenderElement(s, e))
		}
		b.WriteString(" }\n")
	}
	b.WriteString("\t}\n")
}

// setTypeLine returns the "type ..." line of a set, or the "typeof ..." line of an endpoint
// map, whose slot field has no named type.
func setTypeLine(fam Family, s *Set) string {
	if s.Data == EndpointData {
		fields := make([]string, len(s.Key))
		for i, k := range s.Key {
			switch k {
			case KeyAddr:
				fields[i] = fam.String() + " daddr"
			case KeySaddr:
				fields[i] = fam.String() + " saddr"
			case KeyProto:
				fields[i] = "meta l4proto"
			case KeyPort:
				fields[i] = "th dport"
			case KeySlot:
				fields[i] = "numgen random mod 1"
			}
		}
		return fmt.Sprintf("typeof %s : %s daddr . th dport", strings.Join(fields, " . "), fam)
	}
	types := make([]string, len(s.Key))
	for i, k := range s.Key {
		types[i] = keyTypeName(fam, k)
	}
	typ := strings.Join(types, " . ")
	if s.Data == VerdictData {
		typ += " : verdict"
	}
	return "type " + typ
}

func keyTypeName(fam Family, k KeyField) string {
	switch k {
	case KeyAddr, KeySaddr:
		if fam == IPv6 {
			return "ipv6_addr"
		}
		return "ipv4_addr"
	case KeyProto:
		return "inet_proto"
	case KeyPort:
		return "inet_service"
	}
	return "invalid"
}

// RenderElement returns one element of s as nft prints it in the set's "elements = { ... }"
// list, comment and data included.
func RenderElement(s *Set, e Element) string {
	fields := make([]string, len(s.Key))
	for i, k := range s.Key {
		switch k {
		case KeyAddr:
			fields[i] = e.Addr.String()
		case KeyProto:
			fields[i] = e.Proto.String()
		case KeyPort:
			fields[i] = strconv.Itoa(int(e.Port))
		case KeySlot:
			fields[i] = strconv.FormatUint(uint64(e.Slot), 10)
		}
	}
	out := strings.Join(fields, " . ")
	if e.Comment != "" {
		out += " comment " + strconv.Quote(e.Comment)
	}
	switch s.Data {
	case VerdictData:
		out += " : " + renderVerdict(e.Verdict)
	case EndpointData:
		out += fmt.Sprintf(" : %s . %d", e.Endpoint.Addr(), e.Endpoint.Port())
	}
	return out
}

func renderVerdict(v Verdict) string {
	switch v.Kind {
	case Jump:
		return "jump " + v.Chain
	case Goto:
		return "goto " + v.Chain
	case Return:
		return "return"
	case Drop:
		return "drop"
	case Accept:
		return "accept"
	}
	return "continue"
}

// RenderChain returns one chain as nft prints it inside its table: the "chain NAME {" line,
// the hook line of a base chain, its rules and the closing brace, each line indented by one
// tab and ending in a newline.
func RenderChain(fam Family, c *Chain) string {
	var b strings.Builder
	renderChain(&b, fam, c)
	return b.String()
}

func renderChain(b *strings.Builder, fam Family, c *Chain) {
	fmt.Fprintf(b, "\tchain %s {\n", c.Name)
	if c.Hook != nil {
		fmt.Fprintf(b, "\t\ttype %s hook %s priority %s; policy accept;\n", c.Hook.Type, c.Hook.Hook, priorityName(c.Hook))
	}
	for _, r := range c.Rules {
		fmt.Fprintf(b, "\t\t%s\n", RenderRule(fam, r))
	}
	b.WriteString("\t}\n")
}

// priorityName prints a priority the way nft does: relative to the standard priority of the
// hook when one is close, else as a number.
func priorityName(h *Hook) string {
	type named struct {
		name  string
		value int32
	}
	// nft names dstnat only on prerouting and srcnat only on postrouting.
	std := []named{{"raw", -300}, {"mangle", -150}, {"filter", 0}, {"security", 50}}
	switch h.Hook {
	case "prerouting":
		std = append(std, named{"dstnat", priorityDstNAT})
	case "postrouting":
		std = append(std, named{"srcnat", prioritySrcNAT})
	}
	for _, s := range std {
		switch d := h.Priority - s.value; {
		case d == 0:
			return s.name
		case d > 0 && d <= 10:
			return fmt.Sprintf("%s + %d", s.name, d)
		case d < 0 && d >= -10:
			return fmt.Sprintf("%s - %d", s.name, -d)
		}
	}
	return strconv.Itoa(int(h.Priority))
}

// RenderRule returns one rule as nft prints it.
func RenderRule(fam Family, r Rule) string {
	parts := make([]string, 0, len(r.Exprs)+1)
	for _, e := range r.Exprs {
		parts = append(parts, renderExpr(fam, e))
	}
	if r.Comment != "" {
		parts = append(parts, "comment "+strconv.Quote(r.Comment))
	}
	return strings.Join(parts, " ")
}

func renderExpr(fam Family, e Expr) string {
	ip := fam.String()
	switch e := e.(type) {
	case CtStateNew:
		return "ct state new"
	case FibDaddrLocal:
		return "fib daddr type local"
	case FibSaddrLocal:
		return "fib saddr type local"
	case DaddrNotLoopback:
		if fam == IPv6 {
			return "ip6 daddr != ::1"
		}
		return "ip daddr != 127.0.0.0/8"
	case MatchSaddr:
		op := ""
		if e.Negate {
			op = "!= "
		}
		return fmt.Sprintf("%s saddr %s%s", ip, op, prefixString(e.Prefix))
	case MatchDaddr:
		return fmt.Sprintf("%s daddr %s", ip, prefixString(e.Prefix))
	case MatchIifname:
		op, wildcard := "", ""
		if e.Negate {
			op = "!= "
		}
		if e.Prefix {
			wildcard = "*"
		}
		return fmt.Sprintf("iifname %s%q", op, e.Name+wildcard)
	case DaddrInSet:
		return fmt.Sprintf("%s daddr @%s", ip, e.Set)
	case VmapLookup:
		fields := make([]string, len(e.Key))
		for i, k := range e.Key {
			switch k {
			case KeyAddr:
				fields[i] = ip + " daddr"
			case KeyProto:
				fields[i] = "meta l4proto"
			case KeyPort:
				fields[i] = "th dport"
			}
		}
		return strings.Join(fields, " . ") + " vmap @" + e.Map
	case MarkUnset:
		return fmt.Sprintf("meta mark & 0x%08x == 0x00000000", e.Mask)
	case MarkSetOr:
		return fmt.Sprintf("meta mark set meta mark | 0x%08x", e.Bits)
	case MarkSetXor:
		return fmt.Sprintf("meta mark set meta mark ^ 0x%08x", e.Bits)
	case Masquerade:
		if e.FullyRandom {
			return "masquerade fully-random"
		}
		return "masquerade"
	case Reject:
		if e.TCPReset {
			return "reject with tcp reset"
		}
		return "reject"
	case DNATSlot:
		ng := fmt.Sprintf("numgen random mod %d", e.Slots)
		if e.Offset != 0 {
			ng += fmt.Sprintf(" offset %d", e.Offset)
		}
		return renderDNAT(fam, e.Proto, e.Key, e.Map, ng)
	case CtStatusDNAT:
		return "ct status dnat"
	case DNATMap:
		return renderDNAT(fam, e.Proto, e.Key, e.Map)
	case RecordAffinity:
		return fmt.Sprintf("meta l4proto %s update @%s { %s saddr . ct original %s daddr . meta l4proto . ct original proto-dst timeout %s : ct reply %s saddr . ct reply proto-src }",
			e.Proto, e.Map, ip, ip, nftDuration(e.Timeout), ip)
	case CtOriginalVmap:
		if e.NodePort {
			return fmt.Sprintf("meta l4proto %s meta l4proto . ct original proto-dst vmap @%s", e.Proto, e.Map)
		}
		return fmt.Sprintf("meta l4proto %s ct original %s daddr . meta l4proto . ct original proto-dst vmap @%s", e.Proto, ip, e.Map)
	case SaddrDaddrInSet:
		return fmt.Sprintf("%s saddr . %s daddr @%s", ip, ip, e.Set)
	case Verdict:
		return renderVerdict(e)
	}
	return fmt.Sprintf("unknown<%T>", e)
}

// renderDNAT prints a DNAT to the endpoint a map holds for the packet's key fields, followed
// by the extra fields given. nft folds the protocol match into the port field's name.
func renderDNAT(fam Family, proto Protocol, key []KeyField, m string, extra ...string) string {
	ip := fam.String()
	fields := make([]string, 0, len(key)+len(extra))
	for _, k := range key {
		switch k {
		case KeySaddr:
			fields = append(fields, ip+" saddr")
		case KeyAddr:
			fields = append(fields, ip+" daddr")
		case KeyProto:
			fields = append(fields, "meta l4proto")
		case KeyPort:
			fields = append(fields, proto.String()+" dport")
		}
	}
	fields = append(fields, extra...)
	return fmt.Sprintf("dnat %s to %s map @%s", ip, strings.Join(fields, " . "), m)
}

// nftDuration prints seconds as nft prints times: "3h", "1m30s", "1d".
func nftDuration(secs uint32) string {
	if secs == 0 {
		return "0s"
	}
	var b strings.Builder
	for _, u := range []struct {
		n    uint32
		unit string
	}{{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}} {
		if secs >= u.n {
			fmt.Fprintf(&b, "%d%s", secs/u.n, u.unit)
			secs %= u.n
		}
	}
	return b.String()
}

func prefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.Masked().String()
}
