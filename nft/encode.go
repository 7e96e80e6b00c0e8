package nft

import (
	"fmt"
	"iter"
	"net/netip"
	"time"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// Registers as nft allocates them: the verdict register, the first 128-bit data register and
// the 32-bit registers that concatenations are loaded into.
const (
	regVerdict = 0
	reg1       = 1
	reg2       = 2
	reg32First = 8 // NFT_REG32_00, aliasing the first word of reg1
)

// ctStatusDNAT is IPS_DST_NAT, the conntrack status bit of a connection whose destination
// was NATed.
const ctStatusDNAT = 0x20

// ICMP codes of "reject" (port unreachable), which nft picks for the table's family.
const (
	icmpPortUnreachable   = 3
	icmpv6PortUnreachable = 4
)

// encoder adds the objects of one family's table to a google/nftables batch. The expression
// sequences mirror what nft itself generates for the same text (`nft --debug=netlink`), so
// that `nft list table` prints kernel state programmed here exactly as Render prints the model.
type encoder struct {
	b      *batch
	fam    byte
	family model.Family
	// table is the name of the table written: model.TableName, or the feature probe's.
	table string
}

// nfproto returns the netlink family of a model family.
func nfproto(fam model.Family) byte {
	if fam == model.IPv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func newEncoder(b *batch, fam model.Family) *encoder {
	return &encoder{b: b, fam: nfproto(fam), family: fam, table: model.TableName}
}

// addAll adds the table, then every set, every chain, the sets' elements (each set's own,
// then those more gives for it) and every rule: map elements and rules may refer to any
// chain, so all chains exist before either.
func (e *encoder) addAll(rs *model.Ruleset, more func(model.Family, string) (iter.Seq[*model.Element], int)) error {
	e.b.addTable(e.fam, e.table)
	for _, s := range rs.Sets {
		e.addSet(s)
	}
	for _, c := range rs.Chains {
		e.addChain(c)
	}
	for _, s := range rs.Sets {
		if err := e.writeSetElements(s, more); err != nil {
			return err
		}
	}
	for _, c := range rs.Chains {
		if err := e.addRules(c); err != nil {
			return err
		}
	}
	return nil
}

// writeSetElements adds the elements of a set just created: its own, then those more gives
// for it.
func (e *encoder) writeSetElements(s *model.Set, more func(model.Family, string) (iter.Seq[*model.Element], int)) error {
	elems, n := more(e.family, s.Name)
	if len(s.Elements)+n == 0 {
		return nil
	}
	all := func(yield func(*model.Element) bool) {
		for e := range elementsOf(s.Elements) {
			if !yield(e) {
				return
			}
		}
		for e := range elems {
			if !yield(e) {
				return
			}
		}
	}
	return e.writeElementSeq(unix.NFT_MSG_NEWSETELEM, s, all)
}

// addRules appends the rules of c to the chain c.Name.
func (e *encoder) addRules(c *model.Chain) error {
	for i, r := range c.Rules {
		if err := e.addRule(c.Name, r); err != nil {
			return fmt.Errorf("rule %d of chain %s: %w", i, c.Name, err)
		}
	}
	return nil
}

// Set key type numbers, as nft's datatype table has them.
const (
	typeInteger     = 4
	typeIPv4Addr    = 7
	typeIPv6Addr    = 8
	typeInetProto   = 12
	typeInetService = 13
	// concatTypeBits is how far each field of a concatenated key type is shifted.
	concatTypeBits = 6
)

// keyType returns the key type number and length of a set key.
func (e *encoder) keyType(key []model.KeyField) (typ, length uint32) {
	concat := len(key) > 1
	for _, k := range key {
		t := uint32(typeInetService)
		switch k {
		case model.KeyAddr, model.KeySaddr:
			t = typeIPv4Addr
			if e.family == model.IPv6 {
				t = typeIPv6Addr
			}
		case model.KeyProto:
			t = typeInetProto
		case model.KeySlot:
			t = typeInteger
		}
		typ = typ<<concatTypeBits | t
		length += uint32(model.KeyFieldLen(e.family, k, concat))
	}
	return typ, length
}

func (e *encoder) addSet(s *model.Set) {
	typ, length := e.keyType(s.Key)
	spec := setSpec{
		name:    s.Name,
		id:      e.b.newSetID(),
		keyType: typ,
		keyLen:  length,
		comment: s.Comment,
		dynamic: s.Dynamic,
		size:    s.Size,
	}
	switch s.Data {
	case model.VerdictData:
		spec.dataType = unix.NFT_DATA_VERDICT
	case model.EndpointData:
		spec.dataType, spec.dataLen = e.endpointType()
		spec.typeof = typeofUdata(e.family, s.Key)
	}
	e.b.addSet(e.fam, e.table, spec)
}

// endpointType returns the type number and length of an endpoint map's data: an address of the
// table's family concatenated with a port.
func (e *encoder) endpointType() (typ, length uint32) {
	addrType, addrLen := uint32(typeIPv4Addr), uint32(4)
	if e.family == model.IPv6 {
		addrType, addrLen = typeIPv6Addr, 16
	}
	return addrType<<concatTypeBits | typeInetService, addrLen + 4
}

// appendEndpointData appends ep as an endpoint map stores it: address, port, two bytes of
// padding.
func appendEndpointData(dst []byte, ep netip.AddrPort) []byte {
	if ep.Addr().Is4() {
		a := ep.Addr().As4()
		dst = append(dst, a[:]...)
	} else {
		a := ep.Addr().As16()
		dst = append(dst, a[:]...)
	}
	return append(dst, byte(ep.Port()>>8), byte(ep.Port()), 0, 0)
}

// writeElements writes in as elements of the set s in messages of type typ: to add
// (NFT_MSG_NEWSETELEM) or to delete (NFT_MSG_DELSETELEM).
func (e *encoder) writeElements(typ uint16, s *model.Set, in []model.Element) error {
	if len(in) == 0 {
		return nil
	}
	return e.writeElementSeq(typ, s, elementsOf(in))
}

// elementsOf yields a pointer to each element of in, in order.
func elementsOf(in []model.Element) iter.Seq[*model.Element] {
	return func(yield func(*model.Element) bool) {
		for i := range in {
			if !yield(&in[i]) {
				return
			}
		}
	}
}

// writeElementSeq is writeElements of the elements in yields.
func (e *encoder) writeElementSeq(typ uint16, s *model.Set, in iter.Seq[*model.Element]) error {
	// Each element is written at once, from one reused wire element: a full sync has hundreds
	// of thousands.
	ew := e.b.elemWriter(e.fam, typ, e.table, s.Name)
	var w wireElement
	var key, data []byte
	for el := range in {
		if len(s.Key) > 0 && s.Key[0] == model.KeyAddr && !e.family.Contains(el.Addr) {
			return fmt.Errorf("set %s: address %s is not %s", s.Name, el.Addr, e.family)
		}
		key = model.AppendElementKey(key[:0], e.family, s.Key, *el)
		w = wireElement{key: key, comment: el.Comment}
		switch s.Data {
		case model.VerdictData:
			v, err := verdict(el.Verdict)
			if err != nil {
				return fmt.Errorf("set %s: %w", s.Name, err)
			}
			w.verdict = v
		case model.EndpointData:
			if !e.family.Contains(el.Endpoint.Addr()) {
				return fmt.Errorf("set %s: endpoint %s is not %s", s.Name, el.Endpoint, e.family)
			}
			data = appendEndpointData(data[:0], el.Endpoint)
			w.data = data
		}
		ew.add(&w)
	}
	ew.close()
	return nil
}

func (e *encoder) addChain(c *model.Chain) {
	spec := chainSpec{name: c.Name}
	if c.Hook != nil {
		spec.hooked = true
		spec.hookNum = hookNum(c.Hook.Hook)
		spec.priority = c.Hook.Priority
		spec.chainTyp = c.Hook.Type
	}
	e.b.addChain(e.fam, e.table, spec)
}

func hookNum(h string) uint32 {
	switch h {
	case "prerouting":
		return unix.NF_INET_PRE_ROUTING
	case "input":
		return unix.NF_INET_LOCAL_IN
	case "forward":
		return unix.NF_INET_FORWARD
	case "output":
		return unix.NF_INET_LOCAL_OUT
	default:
		return unix.NF_INET_POST_ROUTING
	}
}

func (e *encoder) addRule(chain string, r model.Rule) error {
	exprs, err := e.ruleExprs(r)
	if err != nil {
		return err
	}
	e.b.addRule(e.fam, e.table, chain, exprs, r.Comment)
	return nil
}

func (e *encoder) ruleExprs(r model.Rule) ([]expr.Any, error) {
	var out []expr.Any
	for _, x := range r.Exprs {
		xs, err := e.exprs(x)
		if err != nil {
			return nil, err
		}
		out = append(out, xs...)
	}
	return out, nil
}

// ctDirOriginal selects conntrack's original direction (IP_CT_DIR_ORIGINAL): the addresses
// and ports the connection had before NAT.
const ctDirOriginal = 0

// ctDirReply selects conntrack's reply direction (IP_CT_DIR_REPLY): the endpoint answers from
// the address and port the connection was NATed to.
const ctDirReply = 1

// ctOriginalDaddr loads the destination address a connection had before NAT:
// "ct original ip daddr".
func (e *encoder) ctOriginalDaddr(reg uint32) *expr.Ct {
	return &expr.Ct{Register: reg, Key: e.ctAddrKey(false), Direction: ctDirOriginal}
}

// ctAddrKey returns the conntrack key of the family's source (src) or destination address.
// The family's own keys, not the generic ct saddr/daddr: nft cannot list those inside a
// concatenation.
func (e *encoder) ctAddrKey(src bool) expr.CtKey {
	switch {
	case src && e.family == model.IPv6:
		return unix.NFT_CT_SRC_IP6
	case src:
		return unix.NFT_CT_SRC_IP
	case e.family == model.IPv6:
		return unix.NFT_CT_DST_IP6
	}
	return unix.NFT_CT_DST_IP
}

// dnatLookup returns the expressions of a DNAT to the endpoint that map m holds for the
// packet's key fields (followed by ng's number when ng is not nil), for proto packets.
func (e *encoder) dnatLookup(proto model.Protocol, key []model.KeyField, m string, ng *expr.Numgen) []expr.Any {
	out := isL4Proto(proto)
	load, word := e.loadKey(key, 0)
	out = append(out, load...)
	if ng != nil {
		ng.Register = register(word)
		out = append(out, ng)
	}
	// The endpoint comes back as the address, then the port in the next 32-bit word.
	_, addrLen := e.addrField(false)
	addrReg, portReg := uint32(reg1), register(addrLen/4)
	return append(out,
		&expr.Lookup{SourceRegister: reg1, SetName: m, DestRegister: reg1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(e.fam), RegAddrMin: addrReg, RegAddrMax: addrReg,
			RegProtoMin: portReg, RegProtoMax: portReg, Specified: true},
	)
}

// Header offsets of the fields nftproxy matches on.
func (e *encoder) addrField(src bool) (offset, length uint32) {
	if e.family == model.IPv6 {
		if src {
			return 8, 16
		}
		return 24, 16
	}
	if src {
		return 12, 4
	}
	return 16, 4
}

func payloadNet(reg, offset, length uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: length}
}

func payloadDport(reg uint32) *expr.Payload {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}

// isL4Proto matches packets of proto.
func isL4Proto(proto model.Protocol) []expr.Any {
	return []expr.Any{metaL4Proto(reg1), &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(proto)}}}
}

func metaL4Proto(reg uint32) *expr.Meta {
	return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}
}

func (e *encoder) exprs(x model.Expr) ([]expr.Any, error) {
	switch x := x.(type) {
	case model.CtStateNew:
		return []expr.Any{
			&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
		}, nil

	case model.FibDaddrLocal:
		return []expr.Any{
			&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		}, nil

	case model.FibSaddrLocal:
		return []expr.Any{
			&expr.Fib{Register: reg1, FlagSADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		}, nil

	case model.DaddrNotLoopback:
		off, _ := e.addrField(false)
		if e.family == model.IPv6 {
			return []expr.Any{
				payloadNet(reg1, off, 16),
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: netip.IPv6Loopback().AsSlice()},
			}, nil
		}
		return []expr.Any{
			payloadNet(reg1, off, 1),
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{127}},
		}, nil

	case model.MatchSaddr:
		return e.matchPrefix(x.Prefix, x.Negate, true)

	case model.MatchDaddr:
		return e.matchPrefix(x.Prefix, false, false)

	case model.MatchIifname:
		// As nft: the whole name padded to IFNAMSIZ, or only a prefix's bytes.
		if x.Name == "" || len(x.Name) >= unix.IFNAMSIZ {
			return nil, fmt.Errorf("interface name %q: want 1 to %d bytes", x.Name, unix.IFNAMSIZ-1)
		}
		name := []byte(x.Name)
		if !x.Prefix {
			name = append(name, make([]byte, unix.IFNAMSIZ-len(name))...)
		}
		op := expr.CmpOpEq
		if x.Negate {
			op = expr.CmpOpNeq
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			&expr.Cmp{Op: op, Register: reg1, Data: name},
		}, nil

	case model.DaddrInSet:
		off, n := e.addrField(false)
		return []expr.Any{
			payloadNet(reg1, off, n),
			&expr.Lookup{SourceRegister: reg1, SetName: x.Set},
		}, nil

	case model.VmapLookup:
		out, _ := e.loadKey(x.Key, 0)
		out = append(out, &expr.Lookup{SourceRegister: reg1, SetName: x.Map, DestRegister: regVerdict, IsDestRegSet: true})
		return out, nil

	case model.DNATSlot:
		if x.Slots == 0 {
			return nil, fmt.Errorf("dnat to map %s with no slots", x.Map)
		}
		return e.dnatLookup(x.Proto, x.Key, x.Map, &expr.Numgen{Type: unix.NFT_NG_RANDOM, Modulus: x.Slots, Offset: x.Offset}), nil

	case model.DNATMap:
		return e.dnatLookup(x.Proto, x.Key, x.Map, nil), nil

	case model.RecordAffinity:
		// Key: client . Service address . protocol . Service port (the last three from
		// conntrack's original direction); data: the endpoint, from its reply direction.
		soff, n := e.addrField(true)
		data := 2*n/4 + 2
		return append(isL4Proto(x.Proto),
			payloadNet(reg1, soff, n),
			e.ctOriginalDaddr(register(n/4)),
			metaL4Proto(register(2*n/4)),
			&expr.Ct{Register: register(2*n/4 + 1), Key: expr.CtKeyPROTODST, Direction: ctDirOriginal},
			&expr.Ct{Register: register(data), Key: e.ctAddrKey(true), Direction: ctDirReply},
			&expr.Ct{Register: register(data + n/4), Key: expr.CtKeyPROTOSRC, Direction: ctDirReply},
			&expr.Dynset{SrcRegKey: reg1, SrcRegData: register(data), SetName: x.Map,
				Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: time.Duration(x.Timeout) * time.Second},
		), nil

	case model.CtOriginalVmap:
		out := isL4Proto(x.Proto)
		word := uint32(0)
		if !x.NodePort {
			_, n := e.addrField(false)
			out = append(out, e.ctOriginalDaddr(reg1))
			word = n / 4
		}
		return append(out,
			metaL4Proto(register(word)),
			&expr.Ct{Register: register(word + 1), Key: expr.CtKeyPROTODST, Direction: ctDirOriginal},
			&expr.Lookup{SourceRegister: reg1, SetName: x.Map, DestRegister: regVerdict, IsDestRegSet: true},
		), nil

	case model.CtStatusDNAT:
		return []expr.Any{
			&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
		}, nil

	case model.SaddrDaddrInSet:
		soff, n := e.addrField(true)
		doff, _ := e.addrField(false)
		return []expr.Any{
			payloadNet(reg1, soff, n),
			payloadNet(register(n/4), doff, n),
			&expr.Lookup{SourceRegister: reg1, SetName: x.Set},
		}, nil

	case model.MarkUnset:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(x.Mask), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: make([]byte, 4)},
		}, nil

	case model.MarkSetOr:
		return markSet(^x.Bits, x.Bits), nil

	case model.MarkSetXor:
		return markSet(0xffffffff, x.Bits), nil

	case model.Masquerade:
		return []expr.Any{&expr.Masq{FullyRandom: x.FullyRandom}}, nil

	case model.Reject:
		if x.TCPReset {
			return append(isL4Proto(model.TCP), &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}), nil
		}
		code := uint8(icmpPortUnreachable)
		if e.family == model.IPv6 {
			code = icmpv6PortUnreachable
		}
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code}}, nil

	case model.Verdict:
		v, err := verdict(x)
		if err != nil {
			return nil, err
		}
		return []expr.Any{v}, nil
	}
	return nil, fmt.Errorf("unsupported expression %T", x)
}

// matchPrefix compares the source (src) or destination address with p, loading only the bytes the prefix covers
// and masking the last one when the prefix does not end on a byte boundary, as nft does.
func (e *encoder) matchPrefix(p netip.Prefix, negate, src bool) ([]expr.Any, error) {
	if !e.family.Contains(p.Addr()) {
		return nil, fmt.Errorf("prefix %s in an %s table", p, e.family)
	}
	off, n := e.addrField(src)
	bits := p.Bits()
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	addr := p.Masked().Addr().AsSlice()
	if bits == int(n)*8 {
		return []expr.Any{payloadNet(reg1, off, n), &expr.Cmp{Op: op, Register: reg1, Data: addr}}, nil
	}
	if bits%8 == 0 {
		// A prefix on a byte boundary loads only the bytes it covers.
		nbytes := uint32(bits / 8)
		return []expr.Any{payloadNet(reg1, off, nbytes), &expr.Cmp{Op: op, Register: reg1, Data: addr[:nbytes]}}, nil
	}
	// Any other prefix loads the whole address and masks it.
	mask := make([]byte, n)
	for i := range mask {
		if b := bits - 8*i; b >= 8 {
			mask[i] = 0xff
		} else if b > 0 {
			mask[i] = byte(0xff << (8 - b))
		}
	}
	return []expr.Any{
		payloadNet(reg1, off, n),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: n, Mask: mask, Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: reg1, Data: addr},
	}, nil
}

func markSet(mask, xor uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// register returns the register holding the 32-bit word number word of a concatenation
// loaded from NFT_REG_1 on. Like nft, it names a word by its 128-bit register when the word
// starts one.
func register(word uint32) uint32 {
	if word%4 == 0 {
		return reg1 + word/4
	}
	return reg32First + word
}

// loadKey loads the packet fields of key into consecutive registers from 32-bit word first
// on, returning the expressions and the next free word.
func (e *encoder) loadKey(key []model.KeyField, first uint32) ([]expr.Any, uint32) {
	var out []expr.Any
	word := first
	for _, k := range key {
		switch k {
		case model.KeyAddr, model.KeySaddr:
			off, n := e.addrField(k == model.KeySaddr)
			out = append(out, payloadNet(register(word), off, n))
			word += n / 4
		case model.KeyProto:
			out = append(out, metaL4Proto(register(word)))
			word++
		case model.KeyPort:
			out = append(out, payloadDport(register(word)))
			word++
		}
	}
	return out, word
}

func verdict(v model.Verdict) (*expr.Verdict, error) {
	switch v.Kind {
	case model.Jump:
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: v.Chain}, nil
	case model.Goto:
		return &expr.Verdict{Kind: expr.VerdictGoto, Chain: v.Chain}, nil
	case model.Return:
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case model.Drop:
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case model.Accept:
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	}
	return nil, fmt.Errorf("verdict kind %d has no netlink encoding", v.Kind)
}
