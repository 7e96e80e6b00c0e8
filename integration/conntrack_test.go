package integration

// The conntrack reconciler against the real kernel: entries made through ctnetlink in a
// fresh namespace, each known by its source port, and conntrack.Netlink's Reconcile.
// conntrackEntries (`conntrack -L`) serves the daemon tests' failure messages.

import (
	"errors"
	"io/fs"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/model"
)

// ctEntry is one line of `conntrack -L`: the protocol and the original and reply tuples.
type ctEntry struct {
	proto              string
	origSrc, origDst   netip.AddrPort
	replySrc, replyDst netip.AddrPort
	line               string
}

// conntrackEntries lists node's conntrack table with the conntrack CLI, keyed by the
// original source port.
func conntrackEntries(t *testing.T, ns *topology.NetNS) map[uint16]ctEntry {
	t.Helper()
	out := ns.Run(t, "conntrack", "-L")
	entries := map[uint16]ctEntry{}
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		e := ctEntry{line: line}
		var addrs, ports []string
		for _, tok := range f {
			k, v, ok := strings.Cut(tok, "=")
			switch {
			case !ok && e.proto == "" && (tok == "tcp" || tok == "udp"):
				e.proto = tok
			case ok && (k == "src" || k == "dst"):
				addrs = append(addrs, v)
			case ok && (k == "sport" || k == "dport"):
				ports = append(ports, v)
			}
		}
		if e.proto == "" || len(addrs) < 4 || len(ports) < 4 {
			continue
		}
		var aps [4]netip.AddrPort
		for i := range aps {
			a, err := netip.ParseAddr(addrs[i])
			if err != nil {
				t.Fatalf("conntrack -L: bad address in %q: %v", line, err)
			}
			p, err := strconv.ParseUint(ports[i], 10, 16)
			if err != nil {
				t.Fatalf("conntrack -L: bad port in %q: %v", line, err)
			}
			aps[i] = netip.AddrPortFrom(a, uint16(p))
		}
		e.origSrc, e.origDst, e.replySrc, e.replyDst = aps[0], aps[1], aps[2], aps[3]
		entries[e.origSrc.Port()] = e
	}
	return entries
}

// ctDial opens a ctnetlink connection in ns.
func ctDial(t testing.TB, ns *topology.NetNS) *ct.Conn {
	t.Helper()
	fd, err := ns.Fd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	conn, err := ct.Dial(&netlink.Config{NetNS: fd})
	if err != nil {
		t.Fatalf("ctnetlink in %s: %v", ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// ctCreate makes a conntrack entry from src to origDst whose answers come from replySrc
// (the endpoint it was DNATed to, or origDst itself), as a packet would have.
func ctCreate(conn *ct.Conn, proto model.Protocol, src, origDst, replySrc netip.AddrPort, zone uint16) error {
	f := ct.NewFlow(uint8(proto), 0, src.Addr(), origDst.Addr(), src.Port(), origDst.Port(), 600, 0)
	f.TupleReply.IP.SourceAddress = replySrc.Addr()
	f.TupleReply.Proto.SourcePort = replySrc.Port()
	f.Zone = zone
	if proto == model.TCP {
		f.ProtoInfo.TCP = &ct.ProtoInfoTCP{State: 3} // established
	}
	return conn.Create(f)
}

// TestConntrackReconcile: in a fresh namespace whose conntrack table holds entries made
// through ctnetlink (no traffic needed), one Reconcile deletes exactly the stale UDP and
// SCTP entries, in both families and in any zone, and reports how many; TCP entries and
// flows not addressed to a frontend stay.
func TestConntrackReconcile(t *testing.T) {
	topology.RequirePrivileged(t)
	t.Parallel()
	ns := topology.NewNetNS(t, "ctrec")
	// 192.168.0.2 is the node address (NodePorts on every local address but loopback);
	// 198.51.100.7 a host elsewhere.
	ns.IP(t, "addr add 192.168.0.2/32 dev lo", "addr add fd00:1::2/128 dev lo")
	conn := ctDial(t, ns)

	ap := netip.MustParseAddrPort
	a, b, c := ap("10.244.1.2:5353"), ap("10.244.1.3:5353"), ap("10.244.1.4:5353")
	a6, c6 := ap("[fd00:244:1::2]:5353"), ap("[fd00:244:1::4]:5353")
	ab := conntrack.Endpoints{a: true, b: true}
	rules := []*conntrack.Rules{
		{Family: model.IPv4, AllLocalNodePorts: true, Frontends: map[conntrack.Frontend]conntrack.Endpoints{
			{Addr: netip.MustParseAddr("10.96.0.10"), Proto: model.UDP, Port: 53}:  ab,
			{Addr: netip.MustParseAddr("10.96.0.10"), Proto: model.TCP, Port: 53}:  ab, // never given by the syncer; still never touched
			{Addr: netip.MustParseAddr("10.96.0.11"), Proto: model.UDP, Port: 53}:  {},
			{Addr: netip.MustParseAddr("10.96.0.12"), Proto: model.SCTP, Port: 99}: {a: true},
			{Proto: model.UDP, Port: 30053}:                                        ab,
		}},
		{Family: model.IPv6, AllLocalNodePorts: true, Frontends: map[conntrack.Frontend]conntrack.Endpoints{
			{Addr: netip.MustParseAddr("fd00:96::10"), Proto: model.UDP, Port: 53}: {a6: true},
		}},
	}
	client, client6 := netip.MustParseAddr("10.244.1.100"), netip.MustParseAddr("fd00:244:1::64")
	type row struct {
		name     string
		proto    model.Protocol
		dst      string
		reply    netip.AddrPort // invalid: not DNATed
		zone     uint16
		stale    bool
		optional bool // SCTP: skipped when the kernel has no SCTP conntrack
	}
	rows := []row{
		{"udp-same-endpoint", model.UDP, "10.96.0.10:53", a, 0, false, false},
		{"udp-endpoint-gone", model.UDP, "10.96.0.10:53", c, 0, true, false},
		{"udp-not-dnated-with-endpoints", model.UDP, "10.96.0.10:53", netip.AddrPort{}, 0, true, false},
		{"udp-not-dnated-without-endpoints", model.UDP, "10.96.0.11:53", netip.AddrPort{}, 0, false, false},
		{"tcp-endpoint-gone", model.TCP, "10.96.0.10:53", c, 0, false, false},
		{"udp-not-a-frontend", model.UDP, "198.51.100.7:53", c, 0, false, false},
		{"udp-nodeport-endpoint-gone", model.UDP, "192.168.0.2:30053", c, 0, true, false},
		{"udp-nodeport-same-endpoint", model.UDP, "192.168.0.2:30053", b, 0, false, false},
		{"udp-nodeport-port-elsewhere", model.UDP, "198.51.100.7:30053", c, 0, false, false},
		{"udp-nodeport-on-loopback", model.UDP, "127.0.0.1:30053", c, 0, false, false},
		{"udp-endpoint-gone-zone-7", model.UDP, "10.96.0.10:53", c, 7, true, false},
		{"udp6-same-endpoint", model.UDP, "[fd00:96::10]:53", a6, 0, false, false},
		{"udp6-endpoint-gone", model.UDP, "[fd00:96::10]:53", c6, 0, true, false},
		{"sctp-same-endpoint", model.SCTP, "10.96.0.12:99", a, 0, false, true},
		{"sctp-endpoint-gone", model.SCTP, "10.96.0.12:99", c, 0, true, true},
	}
	byPort := map[uint16]row{}
	want := map[model.Family]int{}
	for i, r := range rows {
		dst := ap(r.dst)
		src := netip.AddrPortFrom(client, uint16(41000+i))
		if dst.Addr().Is6() {
			src = netip.AddrPortFrom(client6, uint16(41000+i))
		}
		if dst.Addr().IsLoopback() {
			src = netip.AddrPortFrom(dst.Addr(), uint16(41000+i))
		}
		reply := r.reply
		if !reply.IsValid() {
			reply = dst
		}
		if err := ctCreate(conn, r.proto, src, dst, reply, r.zone); err != nil {
			if r.optional {
				t.Logf("%s: no SCTP conntrack in this kernel (%v); SCTP rows skipped", r.name, err)
				continue
			}
			t.Fatalf("%s: create entry: %v", r.name, err)
		}
		byPort[src.Port()] = r
		if r.stale {
			fam := model.IPv4
			if dst.Addr().Is6() {
				fam = model.IPv6
			}
			want[fam]++
		}
	}

	results := conntrack.NewNetlink(ns.Path()).Reconcile(rules)
	for _, res := range results {
		if res.Err != nil {
			t.Errorf("Reconcile %s: %v", res.Family, res.Err)
		}
		t.Logf("Reconcile %s: %d entries, %d deleted, %v", res.Family, res.Entries, res.Deleted, res.Took)
		if res.Deleted != want[res.Family] {
			t.Errorf("Reconcile %s: deleted %d entries, want %d", res.Family, res.Deleted, want[res.Family])
		}
	}
	if len(results) != 2 {
		t.Errorf("Reconcile: %d results, want one per family", len(results))
	}

	flows, err := conn.Dump(nil)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	left := map[uint16]bool{}
	for _, f := range flows {
		left[f.TupleOrig.Proto.SourcePort] = true
	}
	for port, r := range byPort {
		if left[port] == r.stale {
			t.Errorf("%s (%s to %s, reply from %v): entry left: %t, want %t", r.name, r.proto, r.dst, r.reply, left[port], !r.stale)
		}
	}
}

// TestConntrackBadNamespace checks that a missing namespace is reported, with its cause.
func TestConntrackBadNamespace(t *testing.T) {
	topology.RequirePrivileged(t)
	t.Parallel()
	ctn := conntrack.NewNetlink("/run/netns/" + topology.NamePrefix() + "does-not-exist")
	res := ctn.Reconcile([]*conntrack.Rules{{Family: model.IPv4, Frontends: map[conntrack.Frontend]conntrack.Endpoints{
		{Proto: model.UDP, Port: 30053}: {}}}})
	if len(res) != 1 || !errors.Is(res[0].Err, fs.ErrNotExist) {
		t.Fatalf("Reconcile in a missing namespace: got %+v, want one result with an fs.ErrNotExist", res)
	}
	t.Logf("error: %v", res[0].Err)
}
