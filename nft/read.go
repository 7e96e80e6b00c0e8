package nft

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// ErrIncompatible reports that nftproxy's table exists but was not written in the layout the
// desired ruleset describes (a set or map missing, extra or declared differently, a base chain
// hooked differently, a chain nftproxy would not create): it cannot be updated in place and
// must be replaced as a whole.
var ErrIncompatible = errors.New("nftables table is not in nftproxy's layout")

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
	nlaTypeMask            = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
)

// readAttempts bounds how often Read starts over because the ruleset changed while it read.
const readAttempts = 5

// readTimeout bounds the wait for each reply while reading.
const readTimeout = 30 * time.Second

// recvBufSize is the receive buffer for replies. Passing the kernel a buffer of at least 32 KiB
// makes it fill each part of a dump up to its limit of about 32 KiB instead of one page: the
// kernel restarts every part of a set element dump from the start of the set, so fewer parts
// matter for large sets.
const recvBufSize = 64 << 10

// unrecognizedRule is the comment of a rule of the kernel that nftproxy would not have
// written (it is returned without expressions, so it never equals a wanted rule).
const unrecognizedRule = "nftproxy: unrecognized rule"

// Generation returns the current nftables ruleset generation (NFT_MSG_GETGEN) of the
// backend's network namespace.
func (n *Netlink) Generation() (uint32, error) {
	var gen uint32
	err := n.control(func(r *reader) (err error) {
		gen, err = r.generation()
		return err
	})
	return gen, err
}

// newReader opens a socket in the backend's namespace and a reader on it; closing r.conn
// closes both.
func (n *Netlink) newReader() (*reader, error) {
	c, err := n.dial()
	if err != nil {
		return nil, err
	}
	r, err := newReader(c, n.dial)
	if err != nil {
		c.Close()
		return nil, err
	}
	return r, nil
}

// Read returns nftproxy's table of family fam as the kernel holds it, decoded against want
// (the desired ruleset of that family), and the ruleset generation it was read at.
// It returns (nil, gen, nil) when the table does not exist, and an error matching
// ErrIncompatible (errors.Is) when the table exists but was not written in the layout
// want describes: a set or map missing, extra, or declared differently (flags, key type/len,
// data type/len, user data), or a base chain with a different hook/priority/type.
//
// The returned ruleset has want's sets, in want's order, with the elements the kernel holds;
// then those of want's chains that exist, in want's order, followed by the chains the kernel
// has that want lacks, sorted by name. A rule equal to one of its chain's rules in want is
// that model.Rule; any other rule is a Rule without expressions whose comment says it was not
// recognized. The table is read at one generation: when the ruleset changes during the read,
// Read starts over, and after a few attempts gives up with an error matching
// ErrGenerationChanged.
func (n *Netlink) Read(fam model.Family, want *model.Ruleset) (*model.Ruleset, uint32, error) {
	if want == nil {
		want = &model.Ruleset{Family: fam}
	}
	if want.Family != fam {
		return nil, 0, fmt.Errorf("read %s table: desired ruleset is of family %s", fam, want.Family)
	}
	return n.ReadTable(fam, want.Sets, func() []*model.Chain { return want.Chains })
}

// ReadTable implements Backend: it is Read with the desired chains supplied late. The set
// element dumps (the bulk of the work, done by the kernel) start at once, and chains is
// called, and may block, before the chains are read, so that the caller can build them
// meanwhile.
func (n *Netlink) ReadTable(fam model.Family, sets []*model.Set, chains func() []*model.Chain) (*model.Ruleset, uint32, error) {
	exp, err := newSetExpectation(fam, sets)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s table: %w", fam, err)
	}
	var chainErr error
	var once sync.Once
	exp.pendingChains = func() error {
		once.Do(func() { chainErr = exp.addChains(chains()) })
		return chainErr
	}
	r, err := n.newReader()
	if err != nil {
		return nil, 0, err
	}
	defer r.conn.Close()
	for range readAttempts {
		var rs *model.Ruleset
		gen, readErr, err := r.atOneGeneration(func(gen uint32) error {
			var err error
			rs, err = r.readTable(exp, n.takePrefetch(fam, gen))
			return err
		})
		switch {
		case errors.Is(err, ErrGenerationChanged):
			// Something committed while we read: what we saw may mix two generations.
			continue
		case err != nil:
			return nil, 0, fmt.Errorf("read %s table: %w", fam, err)
		case readErr != nil:
			return nil, gen, fmt.Errorf("read %s table: %w", fam, readErr)
		}
		return rs, gen, nil
	}
	return nil, 0, fmt.Errorf("read %s table: %w during each of %d attempts", fam, ErrGenerationChanged, readAttempts)
}

// prefetch holds the elements of some sets of one table, dumped ahead of the ReadTable that
// needs them, and the generation they were dumped at.
type prefetch struct {
	done chan struct{}
	// gen is the generation of the dump; ok is set when it is consistent.
	gen uint32
	ok  bool
	// sets are the sets read, with their elements, and defs their definitions.
	sets map[string]*model.Set
	defs map[string]setDef
}

// Prefetch starts dumping the elements of sets of fam's table in the background, for the
// next ReadTable of fam to use instead of dumping them itself if nothing was committed in
// between. A restarted proxy reads its largest maps this way while it is still listing the
// cluster's objects. The sets' elements must not refer to chains (endpoint maps do not).
func (n *Netlink) Prefetch(fam model.Family, sets []*model.Set) {
	pf := &prefetch{done: make(chan struct{}), sets: map[string]*model.Set{}, defs: map[string]setDef{}}
	n.pmu.Lock()
	if n.prefetched == nil {
		n.prefetched = map[model.Family]*prefetch{}
	}
	n.prefetched[fam] = pf
	n.pmu.Unlock()
	go func() {
		defer close(pf.done)
		pf.ok = pf.read(n, fam, sets) == nil
	}()
}

// read dumps the sets' elements at one generation.
func (pf *prefetch) read(n *Netlink, fam model.Family, sets []*model.Set) error {
	exp, err := newSetExpectation(fam, sets)
	if err != nil {
		return err
	}
	r, err := n.newReader()
	if err != nil {
		return err
	}
	defer r.conn.Close()
	gen, readErr, err := r.atOneGeneration(func(uint32) error {
		errs := make([]error, len(sets))
		var wg sync.WaitGroup
		for i, def := range sets {
			s := &model.Set{Name: def.Name, Key: slices.Clone(def.Key), Data: def.Data}
			pf.sets[s.Name], pf.defs[s.Name] = s, exp.sets[s.Name]
			wg.Go(func() { errs[i] = r.readElementsApart(exp, s, 0) })
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	if err != nil {
		return err
	}
	if readErr != nil {
		return readErr // no table yet, typically
	}
	pf.gen = gen
	return nil
}

// takePrefetch returns fam's prefetched sets if they were dumped at generation gen (nothing
// was committed since), waiting for a dump in progress, or nil. Either way the prefetch is
// used up.
func (n *Netlink) takePrefetch(fam model.Family, gen uint32) *prefetch {
	n.pmu.Lock()
	pf := n.prefetched[fam]
	delete(n.prefetched, fam)
	n.pmu.Unlock()
	if pf == nil {
		return nil
	}
	<-pf.done
	if !pf.ok || pf.gen != gen {
		return nil
	}
	return pf
}

// elements returns the prefetched elements of the set name if it was read with the
// definition def.
func (pf *prefetch) elements(name string, def setDef) ([]model.Element, bool) {
	if pf == nil {
		return nil, false
	}
	s, ok := pf.sets[name]
	if !ok || !pf.defs[name].equal(def) {
		return nil, false
	}
	return s.Elements, true
}

// --- What nftproxy would write ----------------------------------------------------------------

// setDef is the definition of a set as a NEWSET message carries it, or the kernel dumps it.
type setDef struct {
	flags    uint32
	keyType  uint32
	keyLen   uint32
	dataType uint32
	dataLen  uint32
	udata    string
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
	// pendingChains, when set, completes the chains and rules before they are needed.
	pendingChains func() error
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

// --- Reading ------------------------------------------------------------------------------

// reader sends nftables requests over one netlink socket and walks the replies in place.
type reader struct {
	conn *netlink.Conn
	raw  syscall.RawConn
	buf  []byte
	// dial opens another socket like conn.
	dial func() (*netlink.Conn, error)
	// interrupted is set when the kernel flagged a dump as inconsistent (NLM_F_DUMP_INTR).
	interrupted atomic.Bool
}

func newReader(c *netlink.Conn, dial func() (*netlink.Conn, error)) (*reader, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &reader{conn: c, raw: raw, buf: make([]byte, recvBufSize), dial: dial}, nil
}

// generation returns the current ruleset generation.
func (r *reader) generation() (uint32, error) {
	var gen uint32
	found := false
	err := r.request(unix.NFT_MSG_GETGEN, 0, unix.AF_UNSPEC, nil, func(data []byte) error {
		ad, err := netlink.NewAttributeDecoder(data)
		if err != nil {
			return err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				gen, found = ad.Uint32(), true
			}
		}
		return ad.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("get ruleset generation: %w", err)
	}
	if !found {
		return 0, errors.New("get ruleset generation: no generation in the reply")
	}
	return gen, nil
}

// atOneGeneration runs read between two reads of the ruleset generation, the first followed
// by a wait for any commit in progress, and returns the generation read ran at with read's
// error. It returns ErrGenerationChanged when anything committed meanwhile or a dump was
// flagged inconsistent: then what read saw may mix two generations. Other errors are those
// of the generation reads.
func (r *reader) atOneGeneration(read func(gen uint32) error) (gen uint32, readErr, err error) {
	if gen, err = r.generation(); err != nil {
		return 0, nil, err
	}
	if err := r.barrier(); err != nil {
		return 0, nil, err
	}
	r.interrupted.Store(false)
	readErr = read(gen)
	after, err := r.generation()
	if err != nil {
		return 0, nil, err
	}
	if after != gen || r.interrupted.Load() {
		return 0, nil, ErrGenerationChanged
	}
	return gen, readErr, nil
}

// barrier returns once no commit is in progress. The kernel bumps the generation early in a
// commit, before the new ruleset becomes visible: a generation read inside that window is
// the new one while the dump that follows may still see the old ruleset, and no later
// generation read would tell. An empty batch takes and releases the commit lock, so the
// commit that generation belongs to, if any, has finished when it returns; sending to the
// kernel is synchronous and an empty batch is acknowledged by nothing.
func (r *reader) barrier() error {
	seq := batchSeq.Add(2) - 1
	err := sendBuffers(r.conn, [][]byte{
		batchMessage(unix.NFNL_MSG_BATCH_BEGIN, seq, 0),
		batchMessage(unix.NFNL_MSG_BATCH_END, seq+1, 0),
	})
	if err != nil {
		return fmt.Errorf("wait for commits in progress: %w", err)
	}
	return nil
}

// request sends an nftables request of type typ (NFT_MSG_GET*) and calls fn with the
// attributes of each reply message (after its nfgenmsg header). A dump request lists every
// object; others get one reply. Once fn fails, the rest of the reply is read and discarded, so
// that the socket stays usable, and fn's error is returned.
func (r *reader) request(typ uint16, flags netlink.HeaderFlags, family byte, attrs *netlink.AttributeEncoder, fn func(data []byte) error) error {
	var payload []byte
	if attrs != nil {
		var err error
		if payload, err = attrs.Encode(); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	dump := flags&netlink.Dump != 0
	if !dump {
		// The acknowledgement marks the end of the reply.
		flags |= netlink.Acknowledge
	}
	req, err := r.conn.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
			Flags: netlink.Request | flags,
		},
		Data: append([]byte{family, unix.NFNETLINK_V0, 0, 0}, payload...),
	})
	if err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	if err := r.conn.SetReadDeadline(time.Now().Add(readTimeout)); err != nil {
		return fmt.Errorf("set netlink read deadline: %w", err)
	}
	reply := replyParser{seq: req.Header.Sequence, dump: dump, fn: fn, interrupted: &r.interrupted}
	for {
		n, err := r.recv(r.buf)
		if err != nil {
			return err
		}
		if done, err := reply.parse(r.buf[:n]); done || err != nil {
			return err
		}
	}
}

// replyParser walks the messages of the reply to one request.
type replyParser struct {
	seq         uint32
	dump        bool
	fn          func(data []byte) error
	fnErr       error
	interrupted *atomic.Bool
}

// parse handles the messages of one datagram, and reports whether the reply is complete: then
// err is the kernel's error or fn's.
func (p *replyParser) parse(b []byte) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		length := int(binary.NativeEndian.Uint32(b[0:4]))
		if length < unix.NLMSG_HDRLEN || length > len(b) {
			return true, fmt.Errorf("netlink reply of %d bytes claims %d", len(b), length)
		}
		mtype := binary.NativeEndian.Uint16(b[4:6])
		mflags := binary.NativeEndian.Uint16(b[6:8])
		seq := binary.NativeEndian.Uint32(b[8:12])
		data := b[unix.NLMSG_HDRLEN:length]
		b = b[min(len(b), nlmsgAlign(length)):]
		if seq != p.seq {
			continue // a late reply to an earlier request
		}
		switch mtype {
		case unix.NLMSG_ERROR, unix.NLMSG_DONE:
			if mtype == unix.NLMSG_DONE && !p.dump {
				continue
			}
			if len(data) >= 4 {
				if errno := int32(binary.NativeEndian.Uint32(data)); errno != 0 {
					return true, syscall.Errno(-errno)
				}
			}
			if mtype == unix.NLMSG_DONE || !p.dump {
				return true, p.fnErr
			}
		default:
			if mflags&unix.NLM_F_DUMP_INTR != 0 {
				p.interrupted.Store(true)
			}
			if p.fnErr != nil {
				continue
			}
			if len(data) < 4 {
				p.fnErr = errors.New("netlink reply without nfgenmsg header")
				continue
			}
			p.fnErr = p.fn(data[4:])
		}
	}
	return false, nil
}

func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// recv reads one datagram into buf.
func (r *reader) recv(buf []byte) (int, error) {
	var n, flags int
	var rerr error
	err := r.raw.Read(func(fd uintptr) bool {
		for {
			n, _, flags, _, rerr = unix.Recvmsg(int(fd), buf, nil, unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, fmt.Errorf("receive netlink reply: %w", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return 0, errors.New("receive netlink reply: truncated")
	}
	return n, nil
}

// readTable reads the table of exp's family, or returns nil when it does not exist.
func (r *reader) readTable(exp *expectation, pf *prefetch) (*model.Ruleset, error) {
	fam := exp.nfproto
	// The table.
	ae := newAttrs()
	ae.String(unix.NFTA_TABLE_NAME, model.TableName)
	var tableFlags uint32
	var tableUdata bool
	err := r.request(unix.NFT_MSG_GETTABLE, 0, fam, ae, func(data []byte) error {
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
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get table: %w", err)
	}
	if tableFlags != 0 || tableUdata {
		return nil, fmt.Errorf("table has flags %#x or user data: %w", tableFlags, ErrIncompatible)
	}

	// The sets: the kernel's must be exactly the ones nftproxy would create.
	ae = newAttrs()
	ae.String(unix.NFTA_SET_TABLE, model.TableName)
	kernelSets := map[string]setDef{}
	err = r.request(unix.NFT_MSG_GETSET, netlink.Dump, fam, ae, func(data []byte) error {
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
		return nil, fmt.Errorf("list sets: %w", err)
	}
	for name, def := range kernelSets {
		want, ok := exp.sets[name]
		if !ok {
			return nil, fmt.Errorf("set %s: not one of nftproxy's: %w", name, ErrIncompatible)
		}
		if !want.equal(def) {
			return nil, fmt.Errorf("set %s: %s: %w", name, def.diff(want), ErrIncompatible)
		}
	}
	out := &model.Ruleset{Family: exp.fam}
	for _, s := range exp.want.Sets {
		if _, ok := kernelSets[s.Name]; !ok {
			return nil, fmt.Errorf("set %s: missing: %w", s.Name, ErrIncompatible)
		}
		out.Sets = append(out.Sets, &model.Set{Name: s.Name, Key: slices.Clone(s.Key), Data: s.Data, Comment: s.Comment,
			Dynamic: s.Dynamic, Size: s.Size})
	}
	// The elements, each set over a socket of its own while this one reads the chains and
	// rules: the kernel's cost of a set dump grows with the square of the set's size, and
	// concurrent dumps share it out over the CPUs.
	setErrs := make([]error, len(out.Sets))
	var wg sync.WaitGroup
	for i, s := range out.Sets {
		if s.Dynamic {
			// The packet path owns its elements.
			continue
		}
		if elems, ok := pf.elements(s.Name, exp.sets[s.Name]); ok {
			s.Elements = elems
			continue
		}
		wg.Go(func() {
			setErrs[i] = r.readElementsApart(exp, s, len(exp.want.Sets[i].Elements))
		})
	}
	var rs *model.Ruleset
	if exp.pendingChains != nil {
		err = exp.pendingChains()
	}
	if err == nil {
		rs, err = r.readChains(exp, out)
	}
	wg.Wait()
	for i, err := range setErrs {
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", out.Sets[i].Name, err)
		}
	}
	return rs, err
}

// readElementsApart reads the elements of s over a new socket.
func (r *reader) readElementsApart(exp *expectation, s *model.Set, sizeHint int) error {
	c, err := r.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	sub, err := newReader(c, r.dial)
	if err != nil {
		return err
	}
	err = sub.readElements(exp, s, sizeHint)
	if sub.interrupted.Load() {
		r.interrupted.Store(true)
	}
	return err
}

// readChains reads the chains and rules of the table into out.
func (r *reader) readChains(exp *expectation, out *model.Ruleset) (*model.Ruleset, error) {
	fam := exp.nfproto

	ae := newAttrs()
	ae.String(unix.NFTA_CHAIN_TABLE, model.TableName)
	chains := map[string]*model.Chain{}
	var unknown []*model.Chain
	err := r.request(unix.NFT_MSG_GETCHAIN, netlink.Dump, fam, ae, func(data []byte) error {
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
			c := &model.Chain{Name: name}
			if wc.Hook != nil {
				h := *wc.Hook
				c.Hook = &h
			}
			chains[name] = c
			return nil
		}
		if def.hooked || def.extra || !model.IsServiceChain(name) {
			return fmt.Errorf("chain %s (%v) is not one nftproxy would create: %w", name, def, ErrIncompatible)
		}
		c := &model.Chain{Name: name}
		chains[name] = c
		unknown = append(unknown, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}

	// The rules of every chain, in one dump.
	ae = newAttrs()
	ae.String(unix.NFTA_RULE_TABLE, model.TableName)
	err = r.request(unix.NFT_MSG_GETRULE, netlink.Dump, fam, ae, func(data []byte) error {
		table, err := attrString(data, unix.NFTA_RULE_TABLE)
		if err != nil || table != model.TableName {
			return err
		}
		chain, fp, err := ruleFingerprint(fam, data, true)
		if err != nil {
			return fmt.Errorf("decode rule: %w", err)
		}
		c := chains[chain]
		if c == nil {
			return fmt.Errorf("rule of unlisted chain %s", chain)
		}
		rule, ok := exp.rules[chain][fp]
		if !ok || fp == "" {
			rule = model.Rule{Comment: unrecognizedRule}
		}
		c.Rules = append(c.Rules, rule)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	for _, c := range exp.want.Chains {
		if got := chains[c.Name]; got != nil {
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

// readElements dumps the elements of set s into s.Elements, sorted.
func (r *reader) readElements(exp *expectation, s *model.Set, sizeHint int) error {
	d := &elemDecoder{
		fam:      exp.fam,
		set:      s,
		verdicts: exp.verdicts,
		strs:     map[string]string{},
		elems:    make([]model.Element, 0, sizeHint),
	}
	d.keyLen = len(model.ElementKey(exp.fam, s.Key, model.Element{}))
	if s.Data == model.EndpointData {
		// The set's definition, which the kernel's matches, gives the length of its data.
		d.dataLen = int(exp.sets[s.Name].dataLen)
	}
	ae := newAttrs()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, model.TableName)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, s.Name)
	if err := r.request(unix.NFT_MSG_GETSETELEM, netlink.Dump, exp.nfproto, ae, d.message); err != nil {
		return err
	}
	slices.SortFunc(d.elems, model.CompareElements)
	if hasDuplicateKeys(d.elems) {
		r.interrupted.Store(true)
	}
	s.Elements = d.elems
	return nil
}

// hasDuplicateKeys reports whether sorted elems hold a key twice, which no set can. A dump
// shows one when the kernel resized the set's hash table while the dump went on (it does that
// in the background after a large commit): each round of a dump walks the table from its start
// and skips the elements sent before, so a walk over a resized table sends some elements twice
// and skips as many others, and nothing else tells. The read is then as good as one that saw
// a commit.
func hasDuplicateKeys(elems []model.Element) bool {
	for i := 1; i < len(elems); i++ {
		if model.CompareElements(elems[i-1], elems[i]) == 0 {
			return true
		}
	}
	return false
}

// elemDecoder decodes the element messages of one set.
type elemDecoder struct {
	fam      model.Family
	set      *model.Set
	verdicts map[int32]model.VerdictKind
	keyLen   int
	dataLen  int
	// strs interns comments and chain names, which many elements share.
	strs  map[string]string
	elems []model.Element
}

func (d *elemDecoder) intern(b []byte) string {
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	d.strs[s] = s
	return s
}

// message decodes one NEWSETELEM message of the dump.
func (d *elemDecoder) message(data []byte) error {
	return eachElement(data, d.element)
}

// eachElement calls fn with the attributes of each element of one NEWSETELEM message.
func eachElement(data []byte, fn func(elem []byte) error) error {
	msg := attrIter{b: data}
	for msg.next() {
		if msg.typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		// Each element is an NFTA_LIST_ELEM; like the kernel, ignore the attribute type.
		list := attrIter{b: msg.data}
		for list.next() {
			if err := fn(list.data); err != nil {
				return err
			}
		}
		if list.bad {
			return errMalformed
		}
	}
	if msg.bad {
		return errMalformed
	}
	return nil
}

// errMalformed reports attributes whose lengths do not add up.
var errMalformed = errors.New("malformed netlink attributes")

// element decodes the attributes of one element.
func (d *elemDecoder) element(b []byte) error {
	var e model.Element
	var key, data []byte
	var verdictCode int32
	var verdictChain []byte
	hasVerdict := false
	bad := false
	it := attrIter{b: b}
	for it.next() {
		switch it.typ {
		case unix.NFTA_SET_ELEM_KEY:
			k := attrIter{b: it.data}
			for k.next() {
				if k.typ == unix.NFTA_DATA_VALUE {
					key = k.data
				}
			}
			bad = bad || k.bad
		case unix.NFTA_SET_ELEM_DATA:
			da := attrIter{b: it.data}
			for da.next() {
				switch da.typ {
				case unix.NFTA_DATA_VALUE:
					data = da.data
				case unix.NFTA_DATA_VERDICT:
					hasVerdict = true
					va := attrIter{b: da.data}
					for va.next() {
						switch va.typ {
						case unix.NFTA_VERDICT_CODE:
							if len(va.data) == 4 {
								verdictCode = int32(binary.BigEndian.Uint32(va.data))
							}
						case unix.NFTA_VERDICT_CHAIN:
							verdictChain = trimNUL(va.data)
						}
					}
					bad = bad || va.bad
				}
			}
			bad = bad || da.bad
		case unix.NFTA_SET_ELEM_USERDATA:
			if c, ok := udataString(it.data, udataElemComment); ok {
				e.Comment = d.intern(c)
			}
		case unix.NFTA_SET_ELEM_FLAGS:
			if len(it.data) == 4 && binary.BigEndian.Uint32(it.data) != 0 {
				// An interval end or a catch-all element: nftproxy writes neither.
				return fmt.Errorf("element with flags %#x: %w", binary.BigEndian.Uint32(it.data), ErrIncompatible)
			}
		case unix.NFTA_SET_ELEM_TIMEOUT, unix.NFTA_SET_ELEM_EXPR, unix.NFTA_SET_ELEM_OBJREF, nftaSetElemKeyEnd, nftaSetElemExpressions:
			return fmt.Errorf("element with attribute %d: %w", it.typ, ErrIncompatible)
		}
	}
	if bad || it.bad {
		return errMalformed
	}
	if len(key) != d.keyLen || !decodeKey(d.fam, d.set.Key, key, &e) {
		return fmt.Errorf("element key %x: %w", key, ErrIncompatible)
	}
	switch d.set.Data {
	case model.VerdictData:
		kind, ok := d.verdicts[verdictCode]
		if !hasVerdict || !ok {
			return fmt.Errorf("element %x: verdict %d: %w", key, verdictCode, ErrIncompatible)
		}
		e.Verdict = model.Verdict{Kind: kind}
		if kind == model.Jump || kind == model.Goto {
			e.Verdict.Chain = d.intern(verdictChain)
		}
	case model.EndpointData:
		if len(data) != d.dataLen || data[len(data)-2] != 0 || data[len(data)-1] != 0 {
			return fmt.Errorf("element %x: endpoint %x: %w", key, data, ErrIncompatible)
		}
		n := len(data) - 4
		var addr netip.Addr
		if n == 4 {
			addr = netip.AddrFrom4([4]byte(data[:4]))
		} else {
			addr = netip.AddrFrom16([16]byte(data[:16]))
		}
		e.Endpoint = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(data[n:]))
	}
	d.elems = append(d.elems, e)
	return nil
}

// decodeKey fills the key fields of e from a key as model.ElementKey writes it, and reports
// whether it is one (padding included).
func decodeKey(fam model.Family, fields []model.KeyField, b []byte, e *model.Element) bool {
	concat := len(fields) > 1
	for _, k := range fields {
		n := model.KeyFieldLen(fam, k, concat)
		if len(b) < n {
			return false
		}
		f := b[:n]
		b = b[n:]
		switch k {
		case model.KeyAddr:
			if n == 4 {
				e.Addr = netip.AddrFrom4([4]byte(f))
			} else {
				e.Addr = netip.AddrFrom16([16]byte(f))
			}
		case model.KeyProto:
			e.Proto = model.Protocol(f[0])
			if !zero(f[1:]) {
				return false
			}
		case model.KeyPort:
			e.Port = binary.BigEndian.Uint16(f)
			if !zero(f[2:]) {
				return false
			}
		case model.KeySlot:
			e.Slot = binary.NativeEndian.Uint32(f)
		default:
			return false
		}
	}
	return len(b) == 0
}

func zero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func trimNUL(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == 0 {
		return b[:len(b)-1]
	}
	return b
}

// udataString returns the string of TLV typ in nft's user data.
func udataString(udata []byte, typ byte) ([]byte, bool) {
	for len(udata) >= 2 {
		t, n := udata[0], int(udata[1])
		if len(udata) < 2+n {
			return nil, false
		}
		if t == typ {
			return trimNUL(udata[2 : 2+n]), true
		}
		udata = udata[2+n:]
	}
	return nil, false
}

// attrIter walks the netlink attributes in b without copying or allocating: the levels of a
// set element dump are walked for each of hundreds of thousands of elements per read, and a
// netlink.AttributeDecoder allocates once per level and copies every attribute it steps on.
type attrIter struct {
	b []byte
	// typ (flags masked off) and data are those of the current attribute; data aliases b.
	typ  uint16
	data []byte
	// bad is set when the attributes' lengths do not add up; next then returns false.
	bad bool
}

// next steps to the next attribute and reports whether there is one.
func (it *attrIter) next() bool {
	if len(it.b) < unix.NLA_HDRLEN {
		it.bad = it.bad || len(it.b) != 0
		return false
	}
	n := int(binary.NativeEndian.Uint16(it.b[0:2]))
	if n < unix.NLA_HDRLEN || n > len(it.b) {
		it.bad = true
		return false
	}
	it.typ = binary.NativeEndian.Uint16(it.b[2:4]) & nlaTypeMask
	it.data = it.b[unix.NLA_HDRLEN:n]
	it.b = it.b[min(len(it.b), (n+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
	return true
}
