package nft

import (
	"encoding/binary"
	"fmt"
	"iter"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// expectation is what nftproxy would write for a ruleset: the set and chain definitions and
// the fingerprint of each rule, all taken from the messages the encoder produces for it, so
// that reading back never disagrees with writing.
type expectation struct {
	fam     model.Family
	nfproto byte
	want    *model.Ruleset
	sets    map[string]setDef
	chains  map[string]chainDef
	// rules maps a chain's name to its rules by fingerprint.
	rules map[string]map[string]model.Rule
	// verdicts maps the netlink verdict codes nftproxy writes to the model's verdict kinds.
	verdicts map[int32]model.VerdictKind
	// pending, when set, completes the chains and rules, and sets keys, before they are
	// needed.
	pending func() error
	// dumpMax is Netlink.DumpMax, defaulted.
	dumpMax int
	// keys yields the keys expected in an endpoint map (nil: none).
	keys func(set string) (iter.Seq[model.Key], int)
	// elements, when set, takes the endpoint maps' elements (Expected.Elements).
	elements func(set string, elems []model.Element)
	// unchanged, when set, tells the frontends of an endpoint map not to look up
	// (Expected.Unchanged).
	unchanged func(set string, size uint32, state []model.Element, gen uint32) func(model.Key) bool
}

func newExpectation(fam model.Family, want *model.Ruleset) (*expectation, error) {
	exp, err := newSetExpectation(fam, want.Sets)
	if err != nil {
		return nil, err
	}
	if err := exp.addChains(want.Chains); err != nil {
		return nil, err
	}
	return exp, nil
}

// newSetExpectation returns the expectation of a table with the given sets and, until
// addChains, no chains.
func newSetExpectation(fam model.Family, sets []*model.Set) (*expectation, error) {
	exp := &expectation{
		fam:      fam,
		nfproto:  nfproto(fam),
		want:     &model.Ruleset{Family: fam, Sets: sets},
		sets:     make(map[string]setDef, len(sets)),
		chains:   map[string]chainDef{},
		rules:    map[string]map[string]model.Rule{},
		verdicts: map[int32]model.VerdictKind{},
	}
	b := &batch{}
	e := newEncoder(b, fam)
	for _, s := range sets {
		e.addSet(s)
	}
	if b.err != nil {
		return nil, fmt.Errorf("encode desired sets: %w", b.err)
	}
	msgs := b.payloads()
	for i, s := range sets {
		name, def, err := decodeSet(msgs[i])
		if err != nil || name != s.Name {
			return nil, fmt.Errorf("decode encoded set %s: got %q, %v", s.Name, name, err)
		}
		exp.sets[name] = def
	}
	for _, k := range []model.VerdictKind{model.Jump, model.Goto, model.Return, model.Drop, model.Accept} {
		v, err := verdict(model.Verdict{Kind: k, Chain: "x"})
		if err != nil {
			return nil, err
		}
		exp.verdicts[int32(v.Kind)] = k
	}
	return exp, nil
}

// addChains adds the chains of the desired table to the expectation.
func (exp *expectation) addChains(chains []*model.Chain) error {
	exp.want.Chains = chains
	b := &batch{}
	e := newEncoder(b, exp.fam)
	for _, c := range chains {
		e.addChain(c)
	}
	for _, c := range chains {
		for i, r := range c.Rules {
			if err := e.addRule(c.Name, r); err != nil {
				return fmt.Errorf("encode rule %d of chain %s: %w", i, c.Name, err)
			}
		}
	}
	if b.err != nil {
		return fmt.Errorf("encode desired chains: %w", b.err)
	}
	// The messages come in the order they were added: chains, then rules chain by chain.
	msgs := b.payloads()
	for _, c := range chains {
		name, def, err := decodeChain(msgs[0])
		if err != nil || name != c.Name {
			return fmt.Errorf("decode encoded chain %s: got %q, %v", c.Name, name, err)
		}
		exp.chains[name] = def
		msgs = msgs[1:]
	}
	for _, c := range chains {
		byPrint := make(map[string]model.Rule, len(c.Rules))
		for _, r := range c.Rules {
			chain, fp, err := ruleFingerprint(exp.nfproto, msgs[0], false)
			if err != nil || chain != c.Name {
				return fmt.Errorf("decode encoded rule of chain %s: got chain %q, %v", c.Name, chain, err)
			}
			byPrint[fp] = r
			msgs = msgs[1:]
		}
		exp.rules[c.Name] = byPrint
	}
	return nil
}

// ruleFingerprint decodes the attributes of a NEWRULE message into its chain's name and a
// fingerprint of what the rule does: its expressions as google/nftables encodes them, then
// its user data (the comment). With normalize, each expression is first decoded with
// google/nftables and encoded again, so that a rule the kernel dumps gives the fingerprint of
// the rule the encoder wrote; a rule with an expression nftproxy never writes gets a
// fingerprint no wanted rule has.
func ruleFingerprint(fam byte, data []byte, normalize bool) (chain, fp string, err error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return "", "", err
	}
	ad.ByteOrder = binary.BigEndian
	var exprs, udata []byte
	foreign := false
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			udata = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != unix.NFTA_LIST_ELEM {
						foreign = true
						continue
					}
					if !normalize {
						exprs = appendAttr(exprs, list.Type(), list.Bytes())
						continue
					}
					var b []byte
					list.Do(func(raw []byte) error {
						b = normalizeExpr(fam, raw)
						return nil
					})
					if b == nil {
						foreign = true
						continue
					}
					exprs = appendAttr(exprs, unix.NFTA_LIST_ELEM, b)
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return "", "", err
	}
	if foreign {
		return chain, "", nil
	}
	return chain, string(appendAttr(appendAttr(nil, 1, exprs), 2, udata)), nil
}

// appendAttr appends a netlink attribute (for fingerprints, so without alignment).
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	return append(b, data...)
}

// normalizeExpr decodes one expression of a dumped rule (NFTA_EXPR_NAME and NFTA_EXPR_DATA)
// and encodes it again as google/nftables does, or returns nil for an expression nftproxy
// never writes or that does not decode.
func normalizeExpr(fam byte, raw []byte) []byte {
	ad, err := netlink.NewAttributeDecoder(raw)
	if err != nil {
		return nil
	}
	ad.ByteOrder = binary.BigEndian
	var name string
	var data []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	if ad.Err() != nil {
		return nil
	}
	var e expr.Any
	switch name {
	case "ct":
		// The kernel reports the direction as one byte; google/nftables reads four.
		ct, err := decodeCt(data)
		if err != nil {
			return nil
		}
		e = ct
	case "bitwise":
		e = &expr.Bitwise{}
	case "cmp":
		e = &expr.Cmp{}
	case "fib":
		e = &expr.Fib{}
	case "payload":
		e = &expr.Payload{}
	case "lookup":
		e = &expr.Lookup{}
	case "meta":
		e = &expr.Meta{}
	case "masq":
		e = &expr.Masq{}
	case "reject":
		e = &expr.Reject{}
	case "numgen":
		e = &expr.Numgen{}
	case "nat":
		e = &expr.NAT{}
	case "dynset":
		e = &expr.Dynset{}
	case "immediate":
		imm := &expr.Immediate{}
		if err := expr.Unmarshal(fam, data, imm); err != nil {
			return nil
		}
		// An immediate that loads the verdict register is a verdict (as google/nftables
		// decodes rules).
		if imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
			e = &expr.Verdict{}
		} else {
			e = imm
		}
	default:
		return nil
	}
	if _, decoded := e.(*expr.Ct); !decoded {
		if err := expr.Unmarshal(fam, data, e); err != nil {
			return nil
		}
	}
	b, err := marshalExpr(fam, e)
	if err != nil {
		return nil
	}
	return b
}

// decodeCt decodes the attributes of a ct expression.
func decodeCt(data []byte) (*expr.Ct, error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	ct := &expr.Ct{}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_CT_KEY:
			ct.Key = expr.CtKey(ad.Uint32())
		case unix.NFTA_CT_DREG:
			ct.Register = ad.Uint32()
		case unix.NFTA_CT_SREG:
			ct.Register, ct.SourceRegister = ad.Uint32(), true
		case unix.NFTA_CT_DIRECTION:
			if b := ad.Bytes(); len(b) > 0 {
				ct.Direction = uint32(b[0])
			}
		}
	}
	return ct, ad.Err()
}
