package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"syscall"
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
// encoders. The messages are written straight into the buffers that are sent: a full sync
// writes tens of megabytes, which should be neither copied nor held twice. The first error is
// kept and reported by commit.
type batch struct {
	// chunks are the filled buffers and buf the one being written. Each holds whole messages
	// (header, nfgenmsg, attributes), so that a message's length can be set once it is
	// written; commit sends them all with one sendmsg.
	chunks [][]byte
	buf    []byte
	// n counts the messages; last is the offset in buf of the last one.
	n, last int
	err     error
	// nextSetID numbers the sets created in this batch.
	nextSetID uint32
}

const (
	// chunkSize is the size of the buffers of a large batch; a small one's single buffer
	// grows up to it.
	chunkSize = 1 << 20
	// maxMsgSize bounds one message: a set element message (maxElemsPerMsg elements) or a
	// rule. A message starts in a fresh buffer when less than this is left in the current
	// one.
	maxMsgSize = 64 << 10
)

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

// begin starts a message of type typ (an NFT_MSG_*) for family: its header, whose length
// and sequence number are filled in later, and its nfgenmsg. It returns the message's offset
// in b.buf, for end.
func (b *batch) begin(family byte, typ uint16, flags netlink.HeaderFlags) int {
	if len(b.buf) > chunkSize-maxMsgSize {
		b.chunks = append(b.chunks, b.buf)
		b.buf = make([]byte, 0, chunkSize)
	}
	start := len(b.buf)
	b.buf = appendNlmsghdr(b.buf, unix.NFNL_SUBSYS_NFTABLES<<8|typ, netlink.Request|flags)
	b.buf = append(b.buf, family, unix.NFNETLINK_V0, 0, 0)
	return start
}

// end completes the message begun at start.
func (b *batch) end(start int) {
	binary.NativeEndian.PutUint32(b.buf[start:], uint32(len(b.buf)-start))
	b.n++
	b.last = start
}

// appendNlmsghdr appends a netlink message header whose length and sequence number are
// filled in later.
func appendNlmsghdr(b []byte, typ uint16, flags netlink.HeaderFlags) []byte {
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, uint16(flags))
	return append(b, 0, 0, 0, 0, 0, 0, 0, 0) // sequence, port ID (the kernel's: 0)
}

// eachMessage calls fn with the type and the payload (after the nfgenmsg) of each message.
func (b *batch) eachMessage(fn func(typ uint16, data []byte)) {
	for _, c := range append(slices.Clip(b.chunks), b.buf) {
		for len(c) >= unix.NLMSG_HDRLEN+4 {
			l := binary.NativeEndian.Uint32(c)
			if l < unix.NLMSG_HDRLEN+4 || int(l) > len(c) {
				return // a message left unfinished by an encoding error
			}
			fn(binary.NativeEndian.Uint16(c[4:])&0xff, c[unix.NLMSG_HDRLEN+4:l])
			c = c[l:]
		}
	}
}

// payloads returns the payload of each message, in order.
func (b *batch) payloads() [][]byte {
	out := make([][]byte, 0, b.n)
	b.eachMessage(func(_ uint16, data []byte) { out = append(out, data) })
	return out
}

func (b *batch) add(family byte, typ uint16, flags netlink.HeaderFlags, attrs *netlink.AttributeEncoder) {
	data, err := attrs.Encode()
	if err != nil {
		b.setErr(fmt.Errorf("encode netlink message: %w", err))
		return
	}
	start := b.begin(family, typ, flags)
	b.buf = append(b.buf, data...)
	b.end(start)
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

func (b *batch) delSet(family byte, table, name string) {
	ae := newAttrs()
	ae.String(unix.NFTA_SET_TABLE, table)
	ae.String(unix.NFTA_SET_NAME, name)
	b.add(family, unix.NFT_MSG_DELSET, 0, ae)
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

// wireElement is one set element as netlink carries it: its key, and its verdict or data, as
// bytes. The encoder makes one from each model.Element it writes; pruneAffinity makes them
// from the affinity map's keys.
type wireElement struct {
	key     []byte
	verdict *expr.Verdict
	// data is the value of a data map's element.
	data    []byte
	comment string
}

// maxElemsPerMsg bounds the elements carried by one message, keeping each message far below
// the 64 KiB that a netlink attribute length can describe.
const maxElemsPerMsg = 256

// elemWriter writes the elements of one set, maxElemsPerMsg to a message. The element
// lists are written by hand rather than with netlink.AttributeEncoder: a full sync writes
// hundreds of thousands of elements, and nested encoders cost an allocation each.
type elemWriter struct {
	b          *batch
	family     byte
	typ        uint16
	table, set string
	msg, list  int // offsets in b.buf of the open message and of its element list
	n          int // elements in the open message; 0 when none is open
}

// elemWriter returns a writer of elements to add (typ NFT_MSG_NEWSETELEM) or delete
// (NFT_MSG_DELSETELEM, nftMsgDestroySetElem) in set.
func (b *batch) elemWriter(family byte, typ uint16, table, set string) *elemWriter {
	return &elemWriter{b: b, family: family, typ: typ, table: table, set: set}
}

// add writes el; its slices may be reused once add returns.
func (w *elemWriter) add(el *wireElement) {
	b := w.b
	if w.n == 0 {
		w.msg = b.begin(w.family, w.typ, netlink.Create)
		b.buf = appendNLAString(b.buf, unix.NFTA_SET_ELEM_LIST_TABLE, w.table)
		b.buf = appendNLAString(b.buf, unix.NFTA_SET_ELEM_LIST_SET, w.set)
		w.list = len(b.buf)
		b.buf = appendNLAHeader(b.buf, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_LIST_ELEMENTS)
	}
	w.n++
	adding := w.typ == unix.NFT_MSG_NEWSETELEM
	data := b.buf
	elem := len(data)
	data = appendNLAHeader(data, unix.NLA_F_NESTED|uint16(w.n))
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
		data = appendNLAUdataString(data, unix.NFTA_SET_ELEM_USERDATA, udataElemComment, el.comment)
	}
	b.buf = endNested(data, elem)
	if w.n == maxElemsPerMsg {
		w.close()
	}
}

// close completes the open message, if any.
func (w *elemWriter) close() {
	if w.n == 0 {
		return
	}
	w.b.buf = endNested(w.b.buf, w.list)
	w.b.end(w.msg)
	w.n = 0
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

// appendNLAString appends an attribute holding s, NUL-terminated.
func appendNLAString(b []byte, typ uint16, s string) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(s)+1))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(append(b, s...), 0)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// appendNLAUdataString appends an attribute holding user data of one string TLV, as
// appendUdataString writes it.
func appendNLAUdataString(b []byte, typ uint16, utyp byte, s string) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+2+len(s)+1))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(append(append(b, utyp, byte(len(s)+1)), s...), 0)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
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

// commit sends the batch as one transaction over c. When genID is non-zero the kernel
// applies the batch only if the ruleset generation still equals it. Only the last message asks
// for an acknowledgement: the kernel reports errors for failed messages anyway, before that
// acknowledgement, and a batch of a hundred thousand messages would otherwise queue as many
// acknowledgements.
func (b *batch) commit(c *conn, genID uint32) error {
	if b.err != nil {
		return b.err
	}
	if b.n == 0 {
		return nil
	}
	// Sequence numbers: the batch's begin message, its messages, its end message.
	base := batchSeq.Add(uint32(b.n+2)) - uint32(b.n+2)
	first := base + 1
	seq := first
	bufs := make([][]byte, 0, len(b.chunks)+3)
	bufs = append(bufs, batchMessage(unix.NFNL_MSG_BATCH_BEGIN, first, genID))
	size := len(bufs[0])
	for _, c := range append(slices.Clip(b.chunks), b.buf) {
		for off := 0; off < len(c); {
			l := int(binary.NativeEndian.Uint32(c[off:]))
			if l < unix.NLMSG_HDRLEN+4 || off+l > len(c) {
				return errors.New("nftables batch holds an unfinished message")
			}
			seq++
			binary.NativeEndian.PutUint32(c[off+8:], seq)
			off += l
		}
		bufs = append(bufs, c)
		size += len(c)
	}
	last := seq
	// Only the last message asks for an acknowledgement.
	flags := binary.NativeEndian.Uint16(b.buf[b.last+6:])
	binary.NativeEndian.PutUint16(b.buf[b.last+6:], flags|unix.NLM_F_ACK)
	bufs = append(bufs, batchMessage(unix.NFNL_MSG_BATCH_END, seq+1, 0))
	size += len(bufs[len(bufs)-1])

	// The kernel takes the whole batch from one sendmsg, so the socket must be able to
	// hold it; root may raise the limit past net.core.wmem_max.
	if err := setBuffers(c.sock, size); err != nil {
		return err
	}
	if err := sendBuffers(c.sock, bufs); err != nil {
		return fmt.Errorf("send nftables batch of %d messages (%d bytes): %w", b.n+2, size, err)
	}
	return c.receiveAcks(first, last)
}

// batchSeq numbers the messages of the batches this process sends, so that no two batches
// on one socket share a sequence number.
var batchSeq atomic.Uint32

// batchMessage returns the batch begin or end message (typ) with sequence number seq; a
// begin message carries the generation ID the batch is conditional on, unless it is 0.
func batchMessage(typ uint16, seq, genID uint32) []byte {
	m := appendNlmsghdr(nil, typ, netlink.Request)
	// The nfgenmsg of batch messages carries the subsystem as res_id, big endian.
	m = append(m, unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES)
	if genID != 0 {
		m = appendNLA(m, nfnlBatchGenID, binary.BigEndian.AppendUint32(nil, genID))
	}
	binary.NativeEndian.PutUint32(m, uint32(len(m)))
	binary.NativeEndian.PutUint32(m[8:], seq)
	return m
}

// sendBuffers sends bufs as one netlink datagram to the kernel.
func sendBuffers(sock *netlink.Conn, bufs [][]byte) error {
	raw, err := sock.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var sendErr error
	err = raw.Write(func(fd uintptr) bool {
		for {
			_, sendErr = unix.SendmsgBuffers(int(fd), bufs, nil, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}, 0)
			if sendErr != unix.EINTR {
				break
			}
		}
		return sendErr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return sendErr
}

// ackTimeout bounds the wait for the kernel's answer to a batch. A batch is applied within
// sendmsg; the answer is queued by then, so this only guards against a lost socket.
const ackTimeout = 60 * time.Second

// receiveAcks reads the kernel's answers to the batch whose begin message is numbered begin
// and whose last message, the only one asking for an acknowledgement, is numbered last. It
// returns the first error the kernel reported, once it has the answer to last, or at once
// when the kernel refused the batch as a whole (an error for begin: a stale generation ID).
//
// The kernel processes every message of a failed batch and answers each that failed or asked
// for an acknowledgement, in order, so the answer to last always comes, and comes last.
// Reading the sequence numbers of the answers, rather than waiting for more errors to stop
// arriving, keeps a rejected batch from costing a timeout.
func (c *conn) receiveAcks(begin, last uint32) error {
	if err := c.sock.SetReadDeadline(time.Now().Add(ackTimeout)); err != nil {
		return fmt.Errorf("set netlink read deadline: %w", err)
	}
	var first error
	for {
		n, err := c.recv(c.buf)
		if err != nil {
			return fmt.Errorf("receive nftables acknowledgements: %w", err)
		}
		for b := c.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			length := int(binary.NativeEndian.Uint32(b[0:4]))
			if length < unix.NLMSG_HDRLEN || length > len(b) {
				return fmt.Errorf("receive nftables acknowledgements: reply of %d bytes claims %d", len(b), length)
			}
			typ := binary.NativeEndian.Uint16(b[4:6])
			seq := binary.NativeEndian.Uint32(b[8:12])
			data := b[unix.NLMSG_HDRLEN:length]
			b = b[min(len(b), nlmsgAlign(length)):]
			if typ != unix.NLMSG_ERROR || seq < begin || seq > last || len(data) < 4 {
				continue // not an answer to this batch
			}
			if errno := -int32(binary.NativeEndian.Uint32(data)); errno != 0 && first == nil {
				first = batchError(syscall.Errno(errno))
			}
			if seq == last || (seq == begin && first != nil) {
				return first
			}
		}
	}
}

// batchError is the error of a batch the kernel refused with errno.
func batchError(errno syscall.Errno) error {
	switch errno {
	case unix.ERESTART:
		return ErrGenerationChanged
	case unix.ENFILE:
		// strerror says "too many open files in system".
		return fmt.Errorf("nftables rejected the batch: a set is full: %w", errno)
	}
	return fmt.Errorf("nftables rejected the batch: %w", errno)
}

// setBuffers makes room for a batch of size bytes in the socket's send buffer and for the
// replies in its receive buffer.
func setBuffers(sock *netlink.Conn, size int) error {
	const floor = 4 << 20
	want := max(2*size, floor)
	raw, err := sock.SyscallConn()
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
