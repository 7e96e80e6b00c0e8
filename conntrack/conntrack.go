// Package conntrack owns nftproxy's use of the kernel's connection tracking table: finding
// and deleting the entries of flows that the rules no longer send where they went, over
// ctnetlink, in one network namespace.
//
// Words used here, beside model's:
//   - frontend: where a Service port takes traffic (a ClusterIP, ExternalIP or
//     LoadBalancer IP with its port, or a NodePort on the node addresses that serve them).
//   - stale entry: one whose original destination is a UDP or SCTP frontend and whose reply
//     source is not a serving endpoint of that Service port (see Stale).
//   - reconcile: one dump of a family's UDP (and SCTP) entries and the deletion of the
//     stale ones, all decided from that dump.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/nlrecv"
	"github.com/nftproxy/nftproxy/model"
)

// Netlink reconciles the conntrack table of one network namespace with nftproxy's rules
// over ctnetlink: it reads the dumps itself, deciding each entry as its message arrives,
// and deletes the stale ones with github.com/ti-mo/conntrack. Every call opens its own
// netlink connections and closes them, so a Netlink holds no resources and is safe for
// concurrent use.
//
// Entries are matched in the default and in any other conntrack zone. An entry that
// expires between the dump and its deletion is not an error.
type Netlink struct {
	netnsPath string
}

// NewNetlink returns a Netlink working in the network namespace whose
// handle is at netnsPath (e.g. /run/netns/<name> or /proc/<pid>/ns/net), or in the
// current network namespace of the process when netnsPath is "".
func NewNetlink(netnsPath string) *Netlink {
	return &Netlink{netnsPath: netnsPath}
}

// Result is what one reconcile did in one family.
type Result struct {
	Family model.Family
	// Entries counts the entries the kernel returned (of the protocols that have
	// frontends); Deleted those found stale and deleted.
	Entries, Deleted int
	// Took is the time the family's reconcile took: dump, decisions and deletions.
	Took time.Duration
	// Err is set when the dump failed (nothing was deleted) or some deletions did.
	Err error
}

// Reconcile deletes, in each family of rules, the UDP and SCTP entries that are Stale. It
// dumps the family's entries once per protocol that has frontends (in practice once:
// UDP), filtered by protocol in the kernel (CTA_FILTER, Linux 5.8 and later; older kernels
// return every entry and the protocol is checked here), and decides every entry from that
// one dump. A family without UDP or SCTP frontends costs nothing. Failures are reported
// per family; deletion goes on past a failed entry.
func (c *Netlink) Reconcile(rules []*Rules) []Result {
	var out []Result
	var todo []*Rules
	for _, r := range rules {
		if r != nil && len(r.Frontends) > 0 {
			todo = append(todo, r)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	fail := func(err error) []Result {
		for _, r := range todo {
			out = append(out, Result{Family: r.Family, Err: err})
		}
		return out
	}
	nsFd, closeNS, err := c.openNS()
	if err != nil {
		return fail(err)
	}
	defer closeNS()
	var local map[netip.Addr]bool
	for _, r := range todo {
		if r.AllLocalNodePorts && local == nil {
			if local, err = localAddrs(nsFd); err != nil {
				return fail(err)
			}
		}
	}
	cfg := &netlink.Config{NetNS: nsFd}
	dump, err := dialDump(cfg)
	if err != nil {
		return fail(fmt.Errorf("dial ctnetlink: %w", err))
	}
	defer dump.Close()
	del, err := ct.Dial(cfg)
	if err != nil {
		return fail(fmt.Errorf("dial ctnetlink: %w", err))
	}
	defer del.Close()
	for _, r := range todo {
		start := time.Now()
		res := reconcileFamily(dump, del, r, nodePortIPs(r, local))
		res.Took = time.Since(start)
		out = append(out, res)
	}
	return out
}

// nodePortIPs returns the addresses of r's family that accept NodePorts: r.NodePortIPs, or
// with AllLocalNodePorts every local one except loopback.
func nodePortIPs(r *Rules, local map[netip.Addr]bool) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	if !r.AllLocalNodePorts {
		for _, a := range r.NodePortIPs {
			out[a.Unmap()] = true
		}
		return out
	}
	for a := range local {
		if r.Family.Contains(a) && !a.IsLoopback() {
			out[a] = true
		}
	}
	return out
}

// reconcileFamily dumps the entries of r's family and protocols and deletes the stale ones.
// Each entry is decided as its message streams in, from the few attributes the rule reads
// (see ctEntry.decode); only the stale ones are kept, and deleted once the dump is over.
func reconcileFamily(dump *dumpConn, del *ct.Conn, r *Rules, nodeIPs map[netip.Addr]bool) Result {
	res := Result{Family: r.Family}
	fam := netfilter.ProtoIPv4
	if r.Family == model.IPv6 {
		fam = netfilter.ProtoIPv6
	}
	var errs []error
	var stale []ctEntry
	for _, proto := range r.protocols() {
		var e ctEntry
		err := dump.dumpProto(fam, proto, func(attrs []byte) {
			if err := e.decode(attrs); err != nil {
				errs = append(errs, fmt.Errorf("decode entry: %w", err))
				return
			}
			if uint8(proto) != e.orig.Proto.Protocol || familyOf(e.orig.IP.DestinationAddress) != fam {
				return // a kernel older than 5.8 does not filter
			}
			res.Entries++
			entry := Entry{
				Proto:    proto,
				OrigDst:  netip.AddrPortFrom(e.orig.IP.DestinationAddress, e.orig.Proto.DestinationPort),
				ReplySrc: netip.AddrPortFrom(e.reply.IP.SourceAddress, e.reply.Proto.SourcePort),
			}
			if Stale(entry, r.Frontends, nodeIPs) {
				stale = append(stale, e)
			}
		})
		if err != nil {
			res.Err = fmt.Errorf("conntrack: dump %s %s entries: %w", r.Family, proto, err)
			return res
		}
	}
	for _, e := range stale {
		// Only the tuples and the zone identify an entry for deletion.
		err := del.Delete(ct.Flow{TupleOrig: e.orig, TupleReply: e.reply, Zone: e.zone})
		switch {
		case err == nil:
			res.Deleted++
		case !errors.Is(err, unix.ENOENT):
			errs = append(errs, fmt.Errorf("delete %s: %w", e.orig, err))
		}
	}
	if len(errs) > 0 {
		res.Err = fmt.Errorf("conntrack: reconcile %s entries: %w", r.Family, errors.Join(errs...))
	}
	return res
}

// ctnetlink attributes and flags the dump and its decoding use
// (linux/netfilter/nfnetlink_conntrack.h); ti-mo/conntrack v0.6.0's Filter does not offer
// the dump filter.
const (
	ctaTupleOrig             = 1
	ctaTupleReply            = 2
	ctaZone                  = 18
	ctaFilter                = 25
	ctaTupleIP               = 1
	ctaTupleProto            = 2
	ctaTupleZone             = 3
	ctaIPv4Src               = 1
	ctaIPv4Dst               = 2
	ctaIPv6Src               = 3
	ctaIPv6Dst               = 4
	ctaProtoNum              = 1
	ctaProtoSrcPort          = 2
	ctaProtoDstPort          = 3
	ctaFilterOrigFlags       = 1
	ctaFilterFlagCtaProtoNum = 1 << 3
	ipctnlMsgCtGet           = 1
	ipctnlMsgCtNew           = 0
)

// recvBufSize is the receive buffer for the dump. Passing the kernel a buffer of at least
// 32 KiB makes it fill each part of the dump up to about 32 KiB instead of one page: fewer
// parts, fewer system calls and restarts of the dump in the kernel.
const recvBufSize = 64 << 10

// dumpConn is a ctnetlink socket for dumps, read in place: every message is handed over
// as it arrives, in a buffer reused for the next datagram.
type dumpConn struct {
	sock *netlink.Conn
	raw  syscall.RawConn
	buf  []byte
}

// dialDump opens a dumpConn as cfg says.
func dialDump(cfg *netlink.Config) (*dumpConn, error) {
	sock, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, err
	}
	raw, err := sock.SyscallConn()
	if err != nil {
		sock.Close()
		return nil, err
	}
	return &dumpConn{sock: sock, raw: raw, buf: make([]byte, recvBufSize)}, nil
}

func (c *dumpConn) Close() error { return c.sock.Close() }

// dumpProto dumps the entries of family fam whose original tuple has protocol proto,
// filtered in the kernel, and calls fn with the attributes of each entry (after its
// nfgenmsg header). attrs is only valid during the call.
func (c *dumpConn) dumpProto(fam netfilter.ProtoFamily, proto model.Protocol, fn func(attrs []byte)) error {
	flags := make([]byte, 4)
	binary.NativeEndian.PutUint32(flags, ctaFilterFlagCtaProtoNum)
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: ipctnlMsgCtGet,
		Family:      fam,
		Flags:       netlink.Request | netlink.Dump,
	}, []netfilter.Attribute{
		{Type: ctaTupleOrig, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaTupleProto, Nested: true, Children: []netfilter.Attribute{
				{Type: ctaProtoNum, Data: []byte{byte(proto)}},
			}},
		}},
		{Type: ctaFilter, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaFilterOrigFlags, Data: flags},
		}},
	})
	if err != nil {
		return err
	}
	sent, err := c.sock.Send(req)
	if err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	for {
		n, err := c.recv()
		if err != nil {
			return err
		}
		if done, err := parseDump(c.buf[:n], sent.Header.Sequence, fn); done || err != nil {
			return err
		}
	}
}

// parseDump hands fn the entries in one datagram of the reply to the dump request seq,
// and reports whether the reply is complete: then err is the kernel's error, if any.
func parseDump(b []byte, seq uint32, fn func(attrs []byte)) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		length := int(binary.NativeEndian.Uint32(b[0:4]))
		if length < unix.NLMSG_HDRLEN || length > len(b) {
			return true, fmt.Errorf("netlink reply of %d bytes claims %d", len(b), length)
		}
		mtype := binary.NativeEndian.Uint16(b[4:6])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		data := b[unix.NLMSG_HDRLEN:length]
		b = b[min(len(b), nlAlign(length)):]
		if mseq != seq {
			continue // a late reply to an earlier request
		}
		switch mtype {
		case unix.NLMSG_ERROR, unix.NLMSG_DONE:
			if len(data) >= 4 {
				if errno := int32(binary.NativeEndian.Uint32(data)); errno != 0 {
					return true, syscall.Errno(-errno)
				}
			}
			return true, nil
		case unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtNew:
			if len(data) >= 4 { // struct nfgenmsg
				fn(data[4:])
			}
		}
	}
	return false, nil
}

// recv reads one datagram into c.buf.
func (c *dumpConn) recv() (int, error) { return nlrecv.Recv(c.raw, c.buf) }

// ctEntry is what a reconcile reads of a conntrack entry: its tuples and zone, enough to
// decide it and to delete it.
type ctEntry struct {
	orig, reply ct.Tuple
	zone        uint16
}

// decode fills e from the attributes of a ctnetlink entry message, reading only
// CTA_TUPLE_ORIG, CTA_TUPLE_REPLY and CTA_ZONE and skipping the rest.
func (e *ctEntry) decode(b []byte) error {
	*e = ctEntry{}
	it := nlrecv.Attrs{B: b}
	for it.Next() {
		typ, v := it.Type, it.Data
		var err error
		switch typ {
		case ctaTupleOrig:
			err = decodeTuple(v, &e.orig)
		case ctaTupleReply:
			err = decodeTuple(v, &e.reply)
		case ctaZone:
			e.zone, err = attrUint16(v)
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

// decodeTuple decodes the children of a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY attribute.
func decodeTuple(b []byte, t *ct.Tuple) error {
	it := nlrecv.Attrs{B: b}
	for it.Next() {
		typ, v := it.Type, it.Data
		var err error
		switch typ {
		case ctaTupleIP:
			err = decodeIPTuple(v, &t.IP)
		case ctaTupleProto:
			err = decodeProtoTuple(v, &t.Proto)
		case ctaTupleZone:
			t.Zone, err = attrUint16(v)
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

func decodeIPTuple(b []byte, t *ct.IPTuple) error {
	it := nlrecv.Attrs{B: b}
	for it.Next() {
		typ, v := it.Type, it.Data
		var dst *netip.Addr
		switch typ {
		case ctaIPv4Src, ctaIPv6Src:
			dst = &t.SourceAddress
		case ctaIPv4Dst, ctaIPv6Dst:
			dst = &t.DestinationAddress
		default:
			continue
		}
		var ok bool
		if *dst, ok = netip.AddrFromSlice(v); !ok {
			return fmt.Errorf("address attribute of %d bytes", len(v))
		}
	}
	return it.Err()
}

func decodeProtoTuple(b []byte, t *ct.ProtoTuple) error {
	it := nlrecv.Attrs{B: b}
	for it.Next() {
		typ, v := it.Type, it.Data
		var err error
		switch typ {
		case ctaProtoNum:
			if len(v) < 1 {
				return errors.New("empty protocol attribute")
			}
			t.Protocol = v[0]
		case ctaProtoSrcPort:
			t.SourcePort, err = attrUint16(v)
		case ctaProtoDstPort:
			t.DestinationPort, err = attrUint16(v)
		}
		if err != nil {
			return err
		}
	}
	return it.Err()
}

// attrUint16 reads a big-endian 16-bit attribute (ports and zones).
func attrUint16(v []byte) (uint16, error) {
	if len(v) != 2 {
		return 0, fmt.Errorf("16-bit attribute of %d bytes", len(v))
	}
	return binary.BigEndian.Uint16(v), nil
}

// openNS returns a descriptor of the namespace at c.netnsPath (0, the current namespace,
// when it is "") and the function that closes it.
func (c *Netlink) openNS() (int, func(), error) {
	if c.netnsPath == "" {
		return 0, func() {}, nil
	}
	ns, err := os.Open(c.netnsPath)
	if err != nil {
		return 0, nil, fmt.Errorf("conntrack: open network namespace: %w", err)
	}
	if ns.Fd() != 0 {
		return int(ns.Fd()), func() { ns.Close() }, nil
	}
	// netlink.Config reads NetNS 0 as "the current namespace" (possible when stdin is
	// closed): move the handle to another descriptor.
	dup, err := unix.FcntlInt(ns.Fd(), unix.F_DUPFD_CLOEXEC, 1)
	ns.Close()
	if err != nil {
		return 0, nil, fmt.Errorf("conntrack: duplicate network namespace handle: %w", err)
	}
	return dup, func() { unix.Close(dup) }, nil
}

// localAddrs returns the addresses assigned to the interfaces of the network namespace
// nsFd (0: the current one), read with an rtnetlink address dump.
func localAddrs(nsFd int) (map[netip.Addr]bool, error) {
	conn, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("dial rtnetlink: %w", err)
	}
	defer conn.Close()
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  unix.RTM_GETADDR,
			Flags: netlink.Request | netlink.Dump,
		},
		// struct ifaddrmsg with ifa_family AF_UNSPEC: both families.
		Data: make([]byte, unix.SizeofIfAddrmsg),
	})
	if err != nil {
		return nil, fmt.Errorf("dump local addresses: %w", err)
	}
	addrs := map[netip.Addr]bool{}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR || len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofIfAddrmsg:])
		if err != nil {
			return nil, fmt.Errorf("decode local address: %w", err)
		}
		// IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
		// point-to-point link, and the only one given for most IPv6 addresses.
		var ifaLocal, ifaAddress netip.Addr
		for ad.Next() {
			switch ad.Type() {
			case unix.IFA_LOCAL:
				ifaLocal, _ = netip.AddrFromSlice(ad.Bytes())
			case unix.IFA_ADDRESS:
				ifaAddress, _ = netip.AddrFromSlice(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode local address: %w", err)
		}
		if ifaLocal.IsValid() {
			addrs[ifaLocal.Unmap()] = true
		} else if ifaAddress.IsValid() {
			addrs[ifaAddress.Unmap()] = true
		}
	}
	return addrs, nil
}

// familyOf returns the netfilter family of an address (IPv4-mapped IPv6 counts as IPv4).
func familyOf(a netip.Addr) netfilter.ProtoFamily {
	if a.Unmap().Is4() {
		return netfilter.ProtoIPv4
	}
	return netfilter.ProtoIPv6
}

// unmapAddrPort turns an IPv4-mapped IPv6 address into IPv4, keeping the port.
func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func nlAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }
