// Package conntrack owns nftproxy's use of the kernel's connection tracking table: finding
// and deleting the entries of flows that the rules no longer send where they went, over
// ctnetlink, in one network namespace.
package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// Netlink deletes conntrack entries with github.com/ti-mo/conntrack (ctnetlink) in one
// network namespace. Every call opens its own netlink connection, dumps the table of the
// address family concerned, deletes the matching entries and closes the connection, so a
// Netlink holds no resources and is safe for concurrent use.
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

// ClearEndpoint deletes the entries of proto that were DNATed to ep: their reply tuple
// comes from ep's address and port and their status has the destination NAT bit.
// Connections made to ep directly (without DNAT) are left alone.
func (c *Netlink) ClearEndpoint(proto model.Protocol, ep netip.AddrPort) error {
	ep = unmapAddrPort(ep)
	if !ep.Addr().IsValid() {
		return fmt.Errorf("conntrack: clear %s entries of endpoint: invalid endpoint %s", proto, ep)
	}
	err := c.clear([]netfilter.ProtoFamily{familyOf(ep.Addr())}, false, func(f *ct.Flow, _ map[netip.Addr]bool) bool {
		return f.Status&ct.StatusDstNAT != 0 &&
			f.TupleReply.Proto.Protocol == uint8(proto) &&
			f.TupleReply.IP.SourceAddress.Unmap() == ep.Addr() &&
			f.TupleReply.Proto.SourcePort == ep.Port()
	})
	if err != nil {
		return fmt.Errorf("conntrack: clear %s entries of endpoint %s: %w", proto, ep, err)
	}
	return nil
}

// ClearDestination deletes the entries of proto whose original destination is dst
// (address and port), NATed or not.
func (c *Netlink) ClearDestination(proto model.Protocol, dst netip.AddrPort) error {
	dst = unmapAddrPort(dst)
	if !dst.Addr().IsValid() {
		return fmt.Errorf("conntrack: clear %s entries to destination: invalid destination %s", proto, dst)
	}
	err := c.clear([]netfilter.ProtoFamily{familyOf(dst.Addr())}, false, func(f *ct.Flow, _ map[netip.Addr]bool) bool {
		return f.TupleOrig.Proto.Protocol == uint8(proto) &&
			f.TupleOrig.IP.DestinationAddress.Unmap() == dst.Addr() &&
			f.TupleOrig.Proto.DestinationPort == dst.Port()
	})
	if err != nil {
		return fmt.Errorf("conntrack: clear %s entries to destination %s: %w", proto, dst, err)
	}
	return nil
}

// ClearNodePort deletes the entries of proto, IPv4 and IPv6, whose original destination
// port is port and whose original destination address is one of the addresses assigned to
// an interface of the namespace (including loopback), NATed or not. Flows that merely pass
// through the node to a remote host on the same port are left alone.
func (c *Netlink) ClearNodePort(proto model.Protocol, port uint16) error {
	families := []netfilter.ProtoFamily{netfilter.ProtoIPv4, netfilter.ProtoIPv6}
	err := c.clear(families, true, func(f *ct.Flow, local map[netip.Addr]bool) bool {
		return f.TupleOrig.Proto.Protocol == uint8(proto) &&
			f.TupleOrig.Proto.DestinationPort == port &&
			local[f.TupleOrig.IP.DestinationAddress.Unmap()]
	})
	if err != nil {
		return fmt.Errorf("conntrack: clear %s entries to node port %d: %w", proto, port, err)
	}
	return nil
}

// clear dumps the entries of each family and deletes those match accepts. When withLocal
// is set, match also gets the namespace's local addresses. Deletion goes on past a failed
// entry; all failures are returned joined.
func (c *Netlink) clear(families []netfilter.ProtoFamily, withLocal bool, match func(*ct.Flow, map[netip.Addr]bool) bool) error {
	nsFd := 0
	if c.netnsPath != "" {
		ns, err := os.Open(c.netnsPath)
		if err != nil {
			return fmt.Errorf("open network namespace: %w", err)
		}
		defer ns.Close()
		nsFd = int(ns.Fd())
		if nsFd == 0 {
			// netlink.Config reads NetNS 0 as "the current namespace" (possible when
			// stdin is closed): move the handle to another descriptor.
			dup, err := unix.FcntlInt(ns.Fd(), unix.F_DUPFD_CLOEXEC, 1)
			if err != nil {
				return fmt.Errorf("duplicate network namespace handle: %w", err)
			}
			defer unix.Close(dup)
			nsFd = dup
		}
	}

	var local map[netip.Addr]bool
	if withLocal {
		var err error
		if local, err = localAddrs(nsFd); err != nil {
			return err
		}
	}

	conn, err := ct.Dial(&netlink.Config{NetNS: nsFd})
	if err != nil {
		return fmt.Errorf("dial ctnetlink: %w", err)
	}
	defer conn.Close()

	var errs []error
	for _, fam := range families {
		flows, err := conn.DumpFilter(ct.NewFilter().Family(fam), nil)
		if err != nil {
			return fmt.Errorf("dump %s entries: %w", fam, err)
		}
		for i := range flows {
			f := &flows[i]
			// The kernel filters by family since Linux 4.20; check again for older ones.
			if familyOf(f.TupleOrig.IP.DestinationAddress) != fam || !match(f, local) {
				continue
			}
			// Only the tuples and the zone identify an entry for deletion; the other
			// attributes of the dump are not sent back.
			del := ct.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Zone: f.Zone}
			if err := conn.Delete(del); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete %s: %w", f.TupleOrig, err))
			}
		}
	}
	return errors.Join(errs...)
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
