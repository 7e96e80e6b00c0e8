package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftables netlink constants that golang.org/x/sys/unix does not define.
const (
	nfnlBatchGenID        = 1 // NFNL_BATCH_GENID, in the batch-begin message
	udataSetKeyByteOrder  = 0 // NFTNL_UDATA_SET_KEYBYTEORDER
	udataSetDataByteOrder = 1 // NFTNL_UDATA_SET_DATABYTEORDER
	udataSetKeyTypeof     = 3 // NFTNL_UDATA_SET_KEY_TYPEOF
	udataSetDataTypeof    = 4 // NFTNL_UDATA_SET_DATA_TYPEOF
	udataSetDataInterval  = 6 // NFTNL_UDATA_SET_DATA_INTERVAL
	udataSetComment       = 7 // NFTNL_UDATA_SET_COMMENT
	udataElemComment      = 0 // NFTNL_UDATA_SET_ELEM_COMMENT
	udataRuleComment      = 0 // NFTNL_UDATA_RULE_COMMENT
	byteOrderBig          = 2
	nfAccept              = 1 // NF_ACCEPT, the policy of every base chain
)

// batch accumulates nftables netlink messages for one transaction. Unlike google/nftables'
// Conn it gives full control over each message (set user data, batching of many elements per
// message, the generation ID of the batch) while reusing google/nftables' expression
// encoders. The first error is kept and reported by commit.
type batch struct {
	msgs []netlink.Message
	err  error
	// nextSetID numbers the sets created in this batch.
	nextSetID uint32
}

// newSetID returns a set ID unique within the batch, by which later messages of the same
// batch may refer to the set.
func (b *batch) newSetID() uint32 {
	b.nextSetID++
	return b.nextSetID
}

func (b *batch) setErr(err error) {
	if b.err == nil {
		b.err = err
	}
}

func (b *batch) add(family byte, typ uint16, flags netlink.HeaderFlags, attrs *netlink.AttributeEncoder) {
	data, err := attrs.Encode()
	if err != nil {
		b.setErr(fmt.Errorf("encode netlink message: %w", err))
		return
	}
	b.msgs = append(b.msgs, netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
			Flags: netlink.Request | flags,
		},
		Data: append([]byte{family, unix.NFNETLINK_V0, 0, 0}, data...),
	})
}

func newAttrs() *netlink.AttributeEncoder {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	return ae
}

func (b *batch) addTable(family byte, name string) {
	ae := newAttrs()
	ae.String(unix.NFTA_TABLE_NAME, name)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, 0)
	b.add(family, unix.NFT_MSG_NEWTABLE, netlink.Create, ae)
}

func (b *batch) delTable(family byte, name string) {
	ae := newAttrs()
	ae.String(unix.NFTA_TABLE_NAME, name)
	b.add(family, unix.NFT_MSG_DELTABLE, 0, ae)
}

// chainSpec describes a chain to create; hooked chains set hook.
type chainSpec struct {
	name     string
	hooked   bool
	hookNum  uint32
	priority int32
	chainTyp string
}

func (b *batch) addChain(family byte, table string, c chainSpec) {
	ae := newAttrs()
	ae.String(unix.NFTA_CHAIN_TABLE, table)
	ae.String(unix.NFTA_CHAIN_NAME, c.name)
	if c.hooked {
		ae.Nested(unix.NFTA_CHAIN_HOOK, func(nae *netlink.AttributeEncoder) error {
			nae.Uint32(unix.NFTA_HOOK_HOOKNUM, c.hookNum)
			nae.Uint32(unix.NFTA_HOOK_PRIORITY, uint32(c.priority))
			return nil
		})
		ae.Uint32(unix.NFTA_CHAIN_POLICY, nfAccept)
		ae.String(unix.NFTA_CHAIN_TYPE, c.chainTyp)
	}
	b.add(family, unix.NFT_MSG_NEWCHAIN, netlink.Create, ae)
}

// flushChain deletes all rules of a chain.
func (b *batch) flushChain(family byte, table, chain string) {
	ae := newAttrs()
	ae.String(unix.NFTA_RULE_TABLE, table)
	ae.String(unix.NFTA_RULE_CHAIN, chain)
	b.add(family, unix.NFT_MSG_DELRULE, 0, ae)
}

// delChain deletes an empty chain that nothing refers to.
func (b *batch) delChain(family byte, table, chain string) {
	ae := newAttrs()
	ae.String(unix.NFTA_CHAIN_TABLE, table)
	ae.String(unix.NFTA_CHAIN_NAME, chain)
	b.add(family, unix.NFT_MSG_DELCHAIN, 0, ae)
}

// setSpec describes a named set or map to create.
type setSpec struct {
	name    string
	id      uint32
	keyType uint32
	keyLen  uint32
	// dataType is 0 for a plain set, NFT_DATA_VERDICT for a verdict map, or the type number of
	// a data map's values, dataLen bytes long.
	dataType uint32
	dataLen  uint32
	// typeof is nft's description of the key and data as expressions, for sets whose key
	// has no named type; nil for sets declared with "type".
	typeof  []byte
	comment string
	// dynamic makes a set the packet path fills ("flags dynamic,timeout", "size").
	dynamic bool
	size    uint32
}

func (b *batch) addSet(family byte, table string, s setSpec) {
	var flags uint32
	if s.dataType != 0 {
		flags |= unix.NFT_SET_MAP
	}
	if s.dynamic {
		flags |= unix.NFT_SET_EVAL | unix.NFT_SET_TIMEOUT
	}
	ae := newAttrs()
	ae.String(unix.NFTA_SET_TABLE, table)
	ae.String(unix.NFTA_SET_NAME, s.name)
	ae.Uint32(unix.NFTA_SET_FLAGS, flags)
	ae.Uint32(unix.NFTA_SET_KEY_TYPE, s.keyType)
	ae.Uint32(unix.NFTA_SET_KEY_LEN, s.keyLen)
	if s.dataType != 0 {
		ae.Uint32(unix.NFTA_SET_DATA_TYPE, s.dataType)
		ae.Uint32(unix.NFTA_SET_DATA_LEN, s.dataLen)
	}
	if s.size != 0 {
		ae.Nested(unix.NFTA_SET_DESC, func(d *netlink.AttributeEncoder) error {
			d.Uint32(unix.NFTA_SET_DESC_SIZE, s.size)
			return nil
		})
	}
	ae.Uint32(unix.NFTA_SET_ID, s.id)
	var udata []byte
	if s.typeof != nil {
		// nft leaves the byte order of typeof keys and data unset.
		udata = appendUdataUint32(udata, udataSetKeyByteOrder, 0)
		udata = appendUdataUint32(udata, udataSetDataByteOrder, 0)
		udata = append(udata, s.typeof...)
		udata = appendUdataUint32(udata, udataSetDataInterval, 0)
	} else {
		udata = appendUdataUint32(udata, udataSetKeyByteOrder, byteOrderBig)
	}
	if s.comment != "" {
		udata = appendUdataString(udata, udataSetComment, s.comment)
	}
	ae.Bytes(unix.NFTA_SET_USERDATA, udata)
	b.add(family, unix.NFT_MSG_NEWSET, netlink.Create, ae)
}

// element is one set element ready for the wire.
type element struct {
	key     []byte
	verdict *expr.Verdict
	// data is the value of a data map's element.
	data    []byte
	comment string
}

// maxElemsPerMsg bounds the elements carried by one message, keeping each message far below
// the 64 KiB that a netlink attribute length can describe.
const maxElemsPerMsg = 256

// setElems adds (typ NFT_MSG_NEWSETELEM) or deletes (NFT_MSG_DELSETELEM) elements. The
// element lists are written by hand rather than with netlink.AttributeEncoder: a full sync
// writes hundreds of thousands of elements, and nested encoders cost an allocation each.
func (b *batch) setElems(family byte, typ uint16, table, set string, elems []element) {
	adding := typ == unix.NFT_MSG_NEWSETELEM
	for len(elems) > 0 {
		n := min(len(elems), maxElemsPerMsg)
		chunk := elems[:n]
		elems = elems[n:]
		data := []byte{family, unix.NFNETLINK_V0, 0, 0}
		data = appendNLAString(data, unix.NFTA_SET_ELEM_LIST_TABLE, table)
		data = appendNLAString(data, unix.NFTA_SET_ELEM_LIST_SET, set)
		list := len(data)
		data = appendNLAHeader(data, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		for i, el := range chunk {
			elem := len(data)
			data = appendNLAHeader(data, unix.NLA_F_NESTED|uint16(i+1))
			key := len(data)
			data = appendNLAHeader(data, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_KEY)
			data = appendNLA(data, unix.NFTA_DATA_VALUE, el.key)
			data = endNested(data, key)
			if adding && (el.verdict != nil || el.data != nil) {
				d := len(data)
				data = appendNLAHeader(data, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_DATA)
				if el.verdict != nil {
					v := len(data)
					data = appendNLAHeader(data, unix.NLA_F_NESTED|unix.NFTA_DATA_VERDICT)
					data = appendNLA(data, unix.NFTA_VERDICT_CODE, binary.BigEndian.AppendUint32(nil, uint32(int32(el.verdict.Kind))))
					if el.verdict.Chain != "" {
						data = appendNLAString(data, unix.NFTA_VERDICT_CHAIN, el.verdict.Chain)
					}
					data = endNested(data, v)
				} else {
					data = appendNLA(data, unix.NFTA_DATA_VALUE, el.data)
				}
				data = endNested(data, d)
			}
			if adding && el.comment != "" {
				data = appendNLA(data, unix.NFTA_SET_ELEM_USERDATA, appendUdataString(nil, udataElemComment, el.comment))
			}
			data = endNested(data, elem)
		}
		data = endNested(data, list)
		b.msgs = append(b.msgs, netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
				Flags: netlink.Request | netlink.Create,
			},
			Data: data,
		})
	}
}

// appendNLAHeader appends the header of an attribute whose length endNested fills in.
func appendNLAHeader(b []byte, typ uint16) []byte {
	return binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(b, 0), typ)
}

// endNested sets the length of the attribute that starts at start to reach the end of b.
func endNested(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}

// appendNLA appends one netlink attribute, padded to 4 bytes.
func appendNLA(b []byte, typ uint16, payload []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func appendNLAString(b []byte, typ uint16, s string) []byte {
	return appendNLA(b, typ, append([]byte(s), 0))
}

func (b *batch) addRule(family byte, table, chain string, exprs []expr.Any, comment string) {
	ae := newAttrs()
	ae.String(unix.NFTA_RULE_TABLE, table)
	ae.String(unix.NFTA_RULE_CHAIN, chain)
	ae.Nested(unix.NFTA_RULE_EXPRESSIONS, func(list *netlink.AttributeEncoder) error {
		for _, x := range exprs {
			data, err := marshalExpr(family, x)
			if err != nil {
				return fmt.Errorf("marshal %T: %w", x, err)
			}
			list.Bytes(unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, data)
		}
		return nil
	})
	if comment != "" {
		ae.Bytes(unix.NFTA_RULE_USERDATA, appendUdataString(nil, udataRuleComment, comment))
	}
	b.add(family, unix.NFT_MSG_NEWRULE, netlink.Create|netlink.Append, ae)
}

// marshalExpr encodes one expression. google/nftables writes the direction of a ct
// expression ("ct original", "ct reply") as four bytes, of which the kernel reads the first
// (zero, whatever the direction), and leaves it out for the keys that name an address of one
// family ("ct original ip daddr"), which the kernel then refuses; those are encoded here, as
// nft does.
func marshalExpr(family byte, x expr.Any) ([]byte, error) {
	ct, ok := x.(*expr.Ct)
	if !ok || ct.SourceRegister || !ctKeyHasDirection(ct.Key) {
		return expr.Marshal(family, x)
	}
	var data []byte
	data = appendNLA(data, unix.NFTA_CT_DREG, binary.BigEndian.AppendUint32(nil, ct.Register))
	data = appendNLA(data, unix.NFTA_CT_KEY, binary.BigEndian.AppendUint32(nil, uint32(ct.Key)))
	data = appendNLA(data, unix.NFTA_CT_DIRECTION, []byte{byte(ct.Direction)})
	var out []byte
	out = appendNLAString(out, unix.NFTA_EXPR_NAME, "ct")
	return appendNLA(out, unix.NLA_F_NESTED|unix.NFTA_EXPR_DATA, data), nil
}

// ctKeyHasDirection reports whether a ct key reads one direction of the connection.
func ctKeyHasDirection(k expr.CtKey) bool {
	switch k {
	case unix.NFT_CT_SRC, unix.NFT_CT_DST, unix.NFT_CT_PROTO_SRC, unix.NFT_CT_PROTO_DST,
		unix.NFT_CT_SRC_IP, unix.NFT_CT_DST_IP, unix.NFT_CT_SRC_IP6, unix.NFT_CT_DST_IP6:
		return true
	}
	return false
}

// appendUdataString appends a user-data TLV holding a NUL-terminated string, as libnftnl does.
func appendUdataString(udata []byte, typ byte, s string) []byte {
	udata = append(udata, typ, byte(len(s)+1))
	udata = append(udata, s...)
	return append(udata, 0)
}

func appendUdataUint32(udata []byte, typ byte, v uint32) []byte {
	udata = append(udata, typ, 4)
	return binary.NativeEndian.AppendUint32(udata, v)
}

// ErrGenerationChanged reports that the ruleset changed between reading its generation and
// committing a batch that was conditional on it; nothing was applied.
var ErrGenerationChanged = errors.New("nftables ruleset generation changed")

// commit sends the batch as one transaction over conn. When genID is non-zero the kernel
// applies the batch only if the ruleset generation still equals it. Only the last message asks
// for an acknowledgement: the kernel reports errors for failed messages anyway, before that
// acknowledgement, and a batch of a hundred thousand messages would otherwise queue as many
// acknowledgements.
func (b *batch) commit(conn *netlink.Conn, genID uint32) error {
	if b.err != nil {
		return b.err
	}
	if len(b.msgs) == 0 {
		return nil
	}
	begin := newAttrs()
	if genID != 0 {
		begin.Uint32(nfnlBatchGenID, genID)
	}
	beginData, err := begin.Encode()
	if err != nil {
		return fmt.Errorf("encode batch begin: %w", err)
	}
	// The batch messages' nfgenmsg carries the subsystem as res_id, big endian.
	nfgen := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
	msgs := make([]netlink.Message, 0, len(b.msgs)+2)
	msgs = append(msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   append(nfgen, beginData...),
	})
	msgs = append(msgs, b.msgs...)
	msgs[len(msgs)-1].Header.Flags |= netlink.Acknowledge
	msgs = append(msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   nfgen,
	})

	// The kernel takes the whole batch from one sendmsg, so the socket must be able to
	// hold it; root may raise the limit past net.core.wmem_max.
	size := 0
	for i := range msgs {
		size += 16 + len(msgs[i].Data) + 4
	}
	if err := setBuffers(conn, size); err != nil {
		return err
	}
	sent, err := conn.SendMessages(msgs)
	if err != nil {
		return fmt.Errorf("send nftables batch of %d messages: %w", len(msgs), err)
	}
	return receiveAcks(conn, sent[len(sent)-2].Header.Sequence, sent[0].Header.Sequence)
}

// receiveAcks reads replies until the acknowledgement of the message numbered lastSeq,
// returning the first error the kernel reported.
func receiveAcks(conn *netlink.Conn, lastSeq, beginSeq uint32) error {
	var first error
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := conn.SetReadDeadline(deadline); err != nil {
			return fmt.Errorf("set netlink read deadline: %w", err)
		}
		replies, err := conn.Receive()
		if err != nil {
			// netlink wraps every error, timeouts included, in an OpError: tell them apart
			// first, or a rejected batch would spin here.
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if first != nil {
					return first
				}
				return fmt.Errorf("receive nftables acknowledgements: %w", err)
			}
			var opErr *netlink.OpError
			if !errors.As(err, &opErr) {
				return fmt.Errorf("receive nftables acknowledgements: %w", err)
			}
			// Receive turns error replies into errors; the sequence of the failed message
			// is not available, so keep reading briefly for the rest.
			if first == nil {
				if errors.Is(opErr.Err, unix.ERESTART) {
					first = ErrGenerationChanged
				} else {
					first = fmt.Errorf("nftables rejected the batch: %w", err)
				}
			}
			if d := time.Now().Add(200 * time.Millisecond); d.Before(deadline) {
				deadline = d
			}
			continue
		}
		for _, r := range replies {
			if r.Header.Sequence == lastSeq && r.Header.Type == netlink.Error {
				return first
			}
		}
	}
}

// setBuffers makes room for a batch of size bytes in the socket's send buffer and for the
// replies in its receive buffer.
func setBuffers(conn *netlink.Conn, size int) error {
	const floor = 4 << 20
	want := max(2*size, floor)
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], want); e != nil {
				// Without CAP_NET_ADMIN the forced variant is refused; the plain one is
				// capped by net.core.{w,r}mem_max.
				if e2 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], want); e2 != nil {
					sockErr = e2
				}
			}
		}
	})
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if sockErr != nil {
		return fmt.Errorf("size netlink socket buffers: %w", sockErr)
	}
	return nil
}
