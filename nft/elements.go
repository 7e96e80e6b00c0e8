package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/nlrecv"
	"github.com/nftproxy/nftproxy/model"
)

// readElementsApart reads the elements of s over a new socket; with limit > 0, it gives up
// with errDumpTooLarge after that many.
func (c *conn) readElementsApart(exp *expectation, s *model.Set, sizeHint, limit int) error {
	sock, err := c.dial()
	if err != nil {
		return err
	}
	defer sock.Close()
	sub, err := newConn(sock, c.dial)
	if err != nil {
		return err
	}
	err = sub.readElements(exp, s, sizeHint, limit)
	if sub.interrupted.Load() {
		c.interrupted.Store(true)
	}
	return err
}

// errDumpTooLarge stops a dump that went past its limit; the socket is unusable after it.
var errDumpTooLarge = errors.New("set dump past its limit")

// readElements dumps the elements of set s into s.Elements, sorted; with limit > 0, it gives
// up with errDumpTooLarge after that many.
func (c *conn) readElements(exp *expectation, s *model.Set, sizeHint, limit int) error {
	d := newElemDecoder(exp, s, sizeHint)
	ae := newAttrs()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, model.TableName)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, s.Name)
	decode := func(data []byte) error {
		if err := d.decodeMessage(data); err != nil {
			return err
		}
		if limit > 0 && len(d.elems) > limit {
			return errDumpTooLarge
		}
		return nil
	}
	if err := c.request(unix.NFT_MSG_GETSETELEM, netlink.Dump, exp.nfproto, ae, decode); err != nil {
		return err
	}
	slices.SortFunc(d.elems, model.CompareElements)
	if hasDuplicateKeys(d.elems) {
		c.interrupted.Store(true)
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
	// With chunk > 0, elems never grows past chunk elements: a full elems moves to full and
	// a new one starts, so that the elements decoded are never copied as they accumulate (a
	// lookup of a million-element map copied them over and over: 3.5 s of CPU).
	chunk int
	full  [][]model.Element
	// n counts the elements in full and elems.
	n int
}

// newElemDecoder returns a decoder of the elements of s, a set of exp, with room for
// sizeHint of them.
func newElemDecoder(exp *expectation, s *model.Set, sizeHint int) *elemDecoder {
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
	return d
}

func (d *elemDecoder) intern(b []byte) string {
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	d.strs[s] = s
	return s
}

// decodeMessage decodes one NEWSETELEM message of the dump.
func (d *elemDecoder) decodeMessage(data []byte) error {
	return eachElement(data, d.decodeElement)
}

// eachElement calls fn with the attributes of each element of one NEWSETELEM message.
func eachElement(data []byte, fn func(elem []byte) error) error {
	msg := nlrecv.Attrs{B: data}
	for msg.Next() {
		if msg.Type != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		// Each element is an NFTA_LIST_ELEM; like the kernel, ignore the attribute type.
		list := nlrecv.Attrs{B: msg.Data}
		for list.Next() {
			if err := fn(list.Data); err != nil {
				return err
			}
		}
		if list.Bad {
			return errMalformed
		}
	}
	if msg.Bad {
		return errMalformed
	}
	return nil
}

// decodeElement decodes the attributes of one element into a model.Element.
func (d *elemDecoder) decodeElement(b []byte) error {
	var e model.Element
	var key, data []byte
	var verdictCode int32
	var verdictChain []byte
	hasVerdict := false
	bad := false
	it := nlrecv.Attrs{B: b}
	for it.Next() {
		switch it.Type {
		case unix.NFTA_SET_ELEM_KEY:
			k := nlrecv.Attrs{B: it.Data}
			for k.Next() {
				if k.Type == unix.NFTA_DATA_VALUE {
					key = k.Data
				}
			}
			bad = bad || k.Bad
		case unix.NFTA_SET_ELEM_DATA:
			da := nlrecv.Attrs{B: it.Data}
			for da.Next() {
				switch da.Type {
				case unix.NFTA_DATA_VALUE:
					data = da.Data
				case unix.NFTA_DATA_VERDICT:
					hasVerdict = true
					va := nlrecv.Attrs{B: da.Data}
					for va.Next() {
						switch va.Type {
						case unix.NFTA_VERDICT_CODE:
							if len(va.Data) == 4 {
								verdictCode = int32(binary.BigEndian.Uint32(va.Data))
							}
						case unix.NFTA_VERDICT_CHAIN:
							verdictChain = trimNUL(va.Data)
						}
					}
					bad = bad || va.Bad
				}
			}
			bad = bad || da.Bad
		case unix.NFTA_SET_ELEM_USERDATA:
			if c, ok := udataString(it.Data, udataElemComment); ok {
				e.Comment = d.intern(c)
			}
		case unix.NFTA_SET_ELEM_FLAGS:
			if len(it.Data) == 4 && binary.BigEndian.Uint32(it.Data) != 0 {
				// An interval end or a catch-all element: nftproxy writes neither.
				return fmt.Errorf("element with flags %#x: %w", binary.BigEndian.Uint32(it.Data), ErrIncompatible)
			}
		case unix.NFTA_SET_ELEM_TIMEOUT, unix.NFTA_SET_ELEM_EXPR, unix.NFTA_SET_ELEM_OBJREF, nftaSetElemKeyEnd, nftaSetElemExpressions:
			return fmt.Errorf("element with attribute %d: %w", it.Type, ErrIncompatible)
		}
	}
	if bad || it.Bad {
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
	if d.chunk > 0 && len(d.elems) == cap(d.elems) && len(d.elems) > 0 {
		d.full = append(d.full, d.elems)
		d.elems = make([]model.Element, 0, d.chunk)
	}
	d.elems = append(d.elems, e)
	d.n++
	return nil
}

// count returns how many elements d decoded.
func (d *elemDecoder) count() int { return d.n }

// last returns the element d decoded last; d has decoded one.
func (d *elemDecoder) last() *model.Element { return &d.elems[len(d.elems)-1] }

// each calls fn with every element d decoded from the from-th on, in order.
func (d *elemDecoder) each(from int, fn func(*model.Element)) {
	for _, c := range append(d.full[:len(d.full):len(d.full)], d.elems) {
		if from >= len(c) {
			from -= len(c)
			continue
		}
		for i := from; i < len(c); i++ {
			fn(&c[i])
		}
		from = 0
	}
}

// take returns the elements d decoded, in the slices it decoded them into, and forgets them.
func (d *elemDecoder) take() [][]model.Element {
	out := d.full
	if len(d.elems) > 0 {
		out = append(out, d.elems)
	}
	d.full, d.elems, d.n = nil, nil, 0
	return out
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
