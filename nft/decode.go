package nft

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// nftables netlink attributes and flags that golang.org/x/sys/unix does not define.
const (
	nftaTableUserdata      = 6  // NFTA_TABLE_USERDATA
	nftaChainFlags         = 10 // NFTA_CHAIN_FLAGS
	nftaChainUserdata      = 12 // NFTA_CHAIN_USERDATA
	nftaSetExpr            = 17 // NFTA_SET_EXPR
	nftaSetExpressions     = 18 // NFTA_SET_EXPRESSIONS
	nftaSetElemKeyEnd      = 10 // NFTA_SET_ELEM_KEY_END
	nftaSetElemExpressions = 11 // NFTA_SET_ELEM_EXPRESSIONS
	nftChainBase           = 1  // NFT_CHAIN_BASE, which the kernel reports in a base chain's flags
)

// unrecognizedRule is the comment of a rule of the kernel that nftproxy would not have
// written (it is returned without expressions, so it never equals a wanted rule).
const unrecognizedRule = "nftproxy: unrecognized rule"

// setDef is the definition of a set as a NEWSET message carries it, or the kernel dumps it.
type setDef struct {
	flags    uint32
	keyType  uint32
	keyLen   uint32
	dataType uint32
	dataLen  uint32
	udata    string
	// size is the most elements the set holds (NFTA_SET_DESC_SIZE; 0: no limit). A table
	// whose sizes differ from nftproxy's is still its: the syncer rewrites a map too small.
	size uint32
	// extra is set when the set has properties nftproxy never gives a set (timeouts,
	// expressions, stateful objects).
	extra bool
}

// equal reports whether two definitions describe the same set. The kernel ignores the data
// length of a verdict map and reports the size of its own verdict structure instead.
func (d setDef) equal(o setDef) bool {
	if d.dataType == unix.NFT_DATA_VERDICT && o.dataType == unix.NFT_DATA_VERDICT {
		d.dataLen, o.dataLen = 0, 0
	}
	d.size, o.size = 0, 0
	return d == o
}

// diff describes how d differs from want, for error messages.
func (d setDef) diff(want setDef) string {
	var out []string
	field := func(format string, got, want uint32) {
		if got != want {
			out = append(out, fmt.Sprintf(format+", want "+format, got, want))
		}
	}
	field("flags %#x", d.flags, want.flags)
	field("key type %#x", d.keyType, want.keyType)
	field("key length %d", d.keyLen, want.keyLen)
	field("data type %#x", d.dataType, want.dataType)
	if d.dataType != unix.NFT_DATA_VERDICT {
		field("data length %d", d.dataLen, want.dataLen)
	}
	if d.udata != want.udata {
		out = append(out, fmt.Sprintf("user data %q, want %q", d.udata, want.udata))
	}
	if d.extra {
		out = append(out, "has timeouts, expressions or objects")
	}
	return strings.Join(out, "; ")
}

// chainDef is the definition of a chain as a NEWCHAIN message carries it, or the kernel dumps
// it.
type chainDef struct {
	hooked   bool
	hookNum  uint32
	priority int32
	policy   uint32
	typ      string
	// extra is set when the chain has properties nftproxy never gives a chain (a device,
	// flags other than the kernel's own "base chain", user data).
	extra bool
}

func (d chainDef) String() string {
	if !d.hooked {
		return "regular chain"
	}
	return fmt.Sprintf("type %s hook %d priority %d policy %d", d.typ, d.hookNum, d.priority, d.policy)
}

// decodeSet decodes the attributes of a NEWSET message.
func decodeSet(data []byte) (name string, def setDef, err error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return "", def, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_NAME:
			name = ad.String()
		case unix.NFTA_SET_FLAGS:
			def.flags = ad.Uint32()
		case unix.NFTA_SET_KEY_TYPE:
			def.keyType = ad.Uint32()
		case unix.NFTA_SET_KEY_LEN:
			def.keyLen = ad.Uint32()
		case unix.NFTA_SET_DATA_TYPE:
			def.dataType = ad.Uint32()
		case unix.NFTA_SET_DATA_LEN:
			def.dataLen = ad.Uint32()
		case unix.NFTA_SET_USERDATA:
			def.udata = string(ad.Bytes())
		case unix.NFTA_SET_DESC:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				nd.ByteOrder = binary.BigEndian
				for nd.Next() {
					if nd.Type() == unix.NFTA_SET_DESC_SIZE {
						def.size = nd.Uint32()
					}
				}
				return nil
			})
		case unix.NFTA_SET_TIMEOUT, unix.NFTA_SET_OBJ_TYPE, nftaSetExpr, nftaSetExpressions:
			def.extra = true
		}
	}
	return name, def, ad.Err()
}

// decodeChain decodes the attributes of a NEWCHAIN message.
func decodeChain(data []byte) (name string, def chainDef, err error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return "", def, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_CHAIN_NAME:
			name = ad.String()
		case unix.NFTA_CHAIN_HOOK:
			def.hooked = true
			ad.Nested(func(h *netlink.AttributeDecoder) error {
				for h.Next() {
					switch h.Type() {
					case unix.NFTA_HOOK_HOOKNUM:
						def.hookNum = h.Uint32()
					case unix.NFTA_HOOK_PRIORITY:
						def.priority = int32(h.Uint32())
					default:
						// A device (netdev hooks) or anything else nftproxy never sets.
						def.extra = true
					}
				}
				return nil
			})
		case unix.NFTA_CHAIN_POLICY:
			def.policy = ad.Uint32()
		case unix.NFTA_CHAIN_TYPE:
			def.typ = ad.String()
		case nftaChainFlags:
			if ad.Uint32()&^nftChainBase != 0 {
				def.extra = true
			}
		case nftaChainUserdata:
			def.extra = true
		}
	}
	return name, def, ad.Err()
}

// readTable reads the table of exp's family, or returns nil when it does not exist. The
// elements of the endpoint maps looked up (or prefetched) come back apart, in batches by the
// set's index, for deliverEndpointMaps once the read is known to be of one generation: a read
// that is started over must not hand exp.elements the same elements twice.
func (c *conn) readTable(exp *expectation, gen uint32, pf *prefetch) (*model.Ruleset, [][][]model.Element, error) {
	fam := exp.nfproto
	// The table.
	ae := newAttrs()
	ae.String(unix.NFTA_TABLE_NAME, model.TableName)
	var tableFlags uint32
	var tableUdata bool
	err := c.request(unix.NFT_MSG_GETTABLE, 0, fam, ae, func(data []byte) error {
		ad, err := netlink.NewAttributeDecoder(data)
		if err != nil {
			return err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_TABLE_FLAGS:
				tableFlags = ad.Uint32()
			case nftaTableUserdata:
				tableUdata = true
			}
		}
		return ad.Err()
	})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("get table: %w", err)
	}
	if tableFlags != 0 || tableUdata {
		return nil, nil, fmt.Errorf("table has flags %#x or user data: %w", tableFlags, ErrIncompatible)
	}

	// The sets: the kernel's must be exactly the ones nftproxy would create.
	ae = newAttrs()
	ae.String(unix.NFTA_SET_TABLE, model.TableName)
	kernelSets := map[string]setDef{}
	err = c.request(unix.NFT_MSG_GETSET, netlink.Dump, fam, ae, func(data []byte) error {
		table, err := attrString(data, unix.NFTA_SET_TABLE)
		if err != nil || table != model.TableName {
			return err
		}
		name, def, err := decodeSet(data)
		if err != nil {
			return fmt.Errorf("decode set: %w", err)
		}
		kernelSets[name] = def
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list sets: %w", err)
	}
	for name, def := range kernelSets {
		want, ok := exp.sets[name]
		if !ok {
			return nil, nil, fmt.Errorf("set %s: not one of nftproxy's: %w", name, ErrIncompatible)
		}
		if !want.equal(def) {
			return nil, nil, fmt.Errorf("set %s: %s: %w", name, def.diff(want), ErrIncompatible)
		}
	}
	out := &model.Ruleset{Family: exp.fam}
	for _, s := range exp.want.Sets {
		if _, ok := kernelSets[s.Name]; !ok {
			return nil, nil, fmt.Errorf("set %s: missing: %w", s.Name, ErrIncompatible)
		}
		out.Sets = append(out.Sets, &model.Set{Name: s.Name, Key: slices.Clone(s.Key), Data: s.Data, Comment: s.Comment,
			Dynamic: s.Dynamic, Size: kernelSets[s.Name].size})
	}
	// The elements, each set over a socket of its own while this one reads the chains and
	// rules; the endpoint maps once the others are read, by key (lookup.go), unless they
	// were prefetched at the same generation.
	setErrs := make([]error, len(out.Sets))
	batches := make([][][]model.Element, len(out.Sets)) // the endpoint maps looked up
	var wg sync.WaitGroup
	for i, s := range out.Sets {
		if s.Dynamic || isEndpointMap(s) {
			// The packet path owns a dynamic set's elements.
			continue
		}
		wg.Go(func() {
			setErrs[i] = c.readElementsApart(exp, s, 0, 0)
		})
	}
	var rs *model.Ruleset
	if exp.pending != nil {
		err = exp.pending()
	}
	if err == nil {
		rs, err = c.readChains(exp, out)
	}
	wg.Wait()
	if err == nil {
		for i, s := range out.Sets {
			if setErrs[i] != nil || !isEndpointMap(s) {
				continue
			}
			var keys iter.Seq[model.Key]
			n := 0
			if exp.keys != nil {
				keys, n = exp.keys(s.Name)
			}
			if elems, ok := pf.elements(s.Name, exp.sets[s.Name]); ok {
				batches[i] = elems
				continue
			}
			fronts := slices.DeleteFunc(slices.Clone(out.Sets), func(f *model.Set) bool { return !isFrontendSet(f, s) })
			wg.Go(func() {
				if n <= exp.dumpMax {
					// Small enough to dump, unless the kernel holds far more than expected.
					err := c.readElementsApart(exp, s, n, 2*exp.dumpMax)
					if !errors.Is(err, errDumpTooLarge) {
						setErrs[i] = err
						return
					}
				}
				if exp.unchanged != nil {
					var state []model.Element
					if st := out.Set(model.SetSyncState); st != nil {
						state = st.Elements
					}
					if skip := exp.unchanged(s.Name, s.Size, state, gen); skip != nil {
						keys, fronts = skipFrontends(keys, fronts, skip)
					}
				}
				batches[i], setErrs[i] = c.lookupEndpointMap(exp, s, keys, n, fronts)
			})
		}
		wg.Wait()
	}
	for i, err := range setErrs {
		if err != nil {
			return nil, nil, fmt.Errorf("read set %s: %w", out.Sets[i].Name, err)
		}
	}
	return rs, batches, err
}

// deliverEndpointMaps gives the elements of the endpoint maps of out, dumped (in the set) or
// looked up (in batches, by the set's index), to exp.elements if it takes them, or else to
// the sets, in one slice each.
func deliverEndpointMaps(exp *expectation, out *model.Ruleset, batches [][][]model.Element) {
	for i, s := range out.Sets {
		if !isEndpointMap(s) {
			continue
		}
		all := append([][]model.Element{s.Elements}, batches[i]...)
		if exp.elements == nil {
			s.Elements = slices.Concat(all...)
			continue
		}
		s.Elements = nil
		for _, b := range all {
			if len(b) > 0 {
				exp.elements(s.Name, b)
			}
		}
	}
}

// readChains reads the chains and rules of the table into out.
func (c *conn) readChains(exp *expectation, out *model.Ruleset) (*model.Ruleset, error) {
	fam := exp.nfproto

	ae := newAttrs()
	ae.String(unix.NFTA_CHAIN_TABLE, model.TableName)
	chains := map[string]*model.Chain{}
	var unknown []*model.Chain
	err := c.request(unix.NFT_MSG_GETCHAIN, netlink.Dump, fam, ae, func(data []byte) error {
		table, err := attrString(data, unix.NFTA_CHAIN_TABLE)
		if err != nil || table != model.TableName {
			return err
		}
		name, def, err := decodeChain(data)
		if err != nil {
			return fmt.Errorf("decode chain: %w", err)
		}
		if want, ok := exp.chains[name]; ok {
			if def != want {
				return fmt.Errorf("chain %s is %v, want %v: %w", name, def, want, ErrIncompatible)
			}
			wc := exp.want.Chain(name)
			ch := &model.Chain{Name: name}
			if wc.Hook != nil {
				h := *wc.Hook
				ch.Hook = &h
			}
			chains[name] = ch
			return nil
		}
		if def.hooked || def.extra || !model.IsServiceChain(name) {
			return fmt.Errorf("chain %s (%v) is not one nftproxy would create: %w", name, def, ErrIncompatible)
		}
		ch := &model.Chain{Name: name}
		chains[name] = ch
		unknown = append(unknown, ch)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}

	// The rules of every chain, in one dump.
	ae = newAttrs()
	ae.String(unix.NFTA_RULE_TABLE, model.TableName)
	err = c.request(unix.NFT_MSG_GETRULE, netlink.Dump, fam, ae, func(data []byte) error {
		table, err := attrString(data, unix.NFTA_RULE_TABLE)
		if err != nil || table != model.TableName {
			return err
		}
		chain, fp, err := ruleFingerprint(fam, data, true)
		if err != nil {
			return fmt.Errorf("decode rule: %w", err)
		}
		ch := chains[chain]
		if ch == nil {
			return fmt.Errorf("rule of unlisted chain %s", chain)
		}
		rule, ok := exp.rules[chain][fp]
		if !ok || fp == "" {
			rule = model.Rule{Comment: unrecognizedRule}
		}
		ch.Rules = append(ch.Rules, rule)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	for _, ch := range exp.want.Chains {
		if got := chains[ch.Name]; got != nil {
			out.Chains = append(out.Chains, got)
		}
	}
	slices.SortFunc(unknown, func(a, b *model.Chain) int { return cmp.Compare(a.Name, b.Name) })
	out.Chains = append(out.Chains, unknown...)
	return out, nil
}

// attrString returns the string attribute typ of a message's attributes, or "".
func attrString(data []byte, typ uint16) (string, error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return "", err
	}
	for ad.Next() {
		if ad.Type() == typ {
			return ad.String(), nil
		}
	}
	return "", ad.Err()
}
