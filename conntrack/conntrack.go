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
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// Netlink reconciles the conntrack table of one network namespace with nftproxy's rules
// over ctnetlink (github.com/ti-mo/conntrack). Every call opens its own netlink
// connections and closes them, so a Netlink holds no resources and is safe for concurrent
// use.
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
	dump, err := netfilter.Dial(cfg)
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
func reconcileFamily(dump *netfilter.Conn, del *ct.Conn, r *Rules, nodeIPs map[netip.Addr]bool) Result {
	res := Result{Family: r.Family}
	fam := netfilter.ProtoIPv4
	if r.Family == model.IPv6 {
		fam = netfilter.ProtoIPv6
	}
	var errs []error
	for _, proto := range r.protocols() {
		msgs, err := dumpProto(dump, fam, proto)
		if err != nil {
			res.Err = fmt.Errorf("conntrack: dump %s %s entries: %w", r.Family, proto, err)
			return res
		}
		for _, m := range msgs {
			var ev ct.Event
			if err := ev.Unmarshal(m); err != nil {
				errs = append(errs, fmt.Errorf("decode entry: %w", err))
				continue
			}
			f := ev.Flow
			if uint8(proto) != f.TupleOrig.Proto.Protocol || familyOf(f.TupleOrig.IP.DestinationAddress) != fam {
				continue // a kernel older than 5.8 does not filter
			}
			res.Entries++
			e := Entry{
				Proto:    proto,
				OrigDst:  netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort),
				ReplySrc: netip.AddrPortFrom(f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort),
			}
			if !Stale(e, r.Frontends, nodeIPs) {
				continue
			}
			// Only the tuples and the zone identify an entry for deletion.
			err := del.Delete(ct.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Zone: f.Zone})
			switch {
			case err == nil:
				res.Deleted++
			case !errors.Is(err, unix.ENOENT):
				errs = append(errs, fmt.Errorf("delete %s: %w", f.TupleOrig, err))
			}
		}
	}
	if len(errs) > 0 {
		res.Err = fmt.Errorf("conntrack: reconcile %s entries: %w", r.Family, errors.Join(errs...))
	}
	return res
}

// ctnetlink attributes and flags the dump filter uses (linux/netfilter/nfnetlink_conntrack.h),
// which ti-mo/conntrack v0.6.0's Filter does not offer.
const (
	ctaTupleOrig             = 1
	ctaTupleProto            = 2
	ctaProtoNum              = 1
	ctaFilter                = 25
	ctaFilterOrigFlags       = 1
	ctaFilterFlagCtaProtoNum = 1 << 3
	ipctnlMsgCtGet           = 1
)

// dumpProto dumps the entries of family fam whose original tuple has protocol proto,
// filtered in the kernel.
func dumpProto(conn *netfilter.Conn, fam netfilter.ProtoFamily, proto model.Protocol) ([]netlink.Message, error) {
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
		return nil, err
	}
	return conn.Query(req)
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
