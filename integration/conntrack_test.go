package integration

// Conntrack cleanup against the real kernel: node1 DNATs a few UDP (and one TCP) "Services"
// with a tiny nft table of the test's own (no nftproxy), clients send one datagram each from
// a fixed source port so every conntrack entry is known by that port, then
// sync.NetlinkConntrack clears entries and `conntrack -L` run in node1 tells which are left.

import (
	"errors"
	"io/fs"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

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

// ctFlow is one connection the test makes: from a fixed source port in a namespace to a
// target, expected to be answered by server.
type ctFlow struct {
	name    string
	from    *topology.NetNS
	network string
	sport   uint16
	target  netip.AddrPort
	server  netip.AddrPort
	// dnat: the entry's reply comes from server, not from target.
	dnat bool
}

func TestConntrackClear(t *testing.T) {
	topology.RequirePrivileged(t)
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("conntrack (conntrack-tools) not found: %v", err)
	}
	t.Parallel()

	tp := topology.New(t)
	podA := tp.AddPod(t, 1, "ct-a") // 10.244.1.2, fd00:244:1::2
	podB := tp.AddPod(t, 1, "ct-b") // 10.244.1.3: the in-cluster client
	podC := tp.AddPod(t, 1, "ct-c") // 10.244.1.4

	a4 := at(podA.IPv4, dnsPort)
	a6 := at(podA.IPv6, dnsPort)
	c4 := at(podC.IPv4, dnsPort)
	cDirect := at(podC.IPv4, 30053) // a pod listening on the NodePort number, reached directly
	topology.StartEcho(t, podA.NS, "tcp+udp", a4)
	topology.StartEcho(t, podA.NS, "udp", a6)
	topology.StartEcho(t, podC.NS, "udp", c4)
	topology.StartEcho(t, podC.NS, "udp", cDirect)

	svc4 := addrPort("10.96.0.10:53")
	svc4b := addrPort("10.96.0.11:53")
	svc6 := addrPort("[fd00:96::10]:53")
	np4 := at(tp.Node1ExternalIPv4, 30053)
	np4node := at(tp.Node1IPv4, 30053)
	np6 := at(tp.Node1ExternalIPv6, 30053)

	// The stand-in for nftproxy's rules: plain DNAT, which also turns conntrack on in node1.
	ruleset := `table inet nftp_ct_test {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.96.0.10 udp dport 53 dnat ip to ` + a4.String() + `
		ip daddr 10.96.0.10 tcp dport 53 dnat ip to ` + a4.String() + `
		ip daddr 10.96.0.11 udp dport 53 dnat ip to ` + c4.String() + `
		ip6 daddr fd00:96::10 udp dport 53 dnat ip6 to ` + a6.String() + `
		ip daddr ` + tp.Node1ExternalIPv4.String() + ` udp dport 30053 dnat ip to ` + a4.String() + `
		ip daddr ` + tp.Node1IPv4.String() + ` udp dport 30053 dnat ip to ` + c4.String() + `
		ip6 daddr ` + tp.Node1ExternalIPv6.String() + ` udp dport 30053 dnat ip6 to ` + a6.String() + `
	}
}
`
	nft := exec.Command("ip", "netns", "exec", tp.Node1.Name, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(ruleset)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in node1: %v: %s\nruleset:\n%s", err, out, ruleset)
	}

	flows := map[string]ctFlow{}
	dial := func(f ctFlow) {
		t.Helper()
		r, err := topology.DialFrom(f.from, f.network, f.sport, f.target, dialTimeout)
		if err != nil {
			t.Fatalf("%s: %s %s from %s port %d: %v", f.name, f.network, f.target, f.from.Name, f.sport, err)
		}
		if r.Server != f.server {
			t.Fatalf("%s: %s %s answered by %s, want %s", f.name, f.network, f.target, r.Server, f.server)
		}
		flows[f.name] = f
	}
	// want checks that exactly the named flows (of all flows made so far) have entries in
	// node1, with the expected tuples.
	want := func(step string, names ...string) {
		t.Helper()
		entries := conntrackEntries(t, tp.Node1)
		var got []string
		for name, f := range flows {
			e, ok := entries[f.sport]
			if !ok {
				continue
			}
			got = append(got, name)
			replySrc := f.target
			if f.dnat {
				replySrc = f.server
			}
			if e.proto != f.network || e.origDst != f.target || e.replySrc != replySrc {
				t.Errorf("%s: entry of %s is %q, want %s to %s answered by %s", step, name, e.line, f.network, f.target, replySrc)
			}
		}
		slices.Sort(got)
		names = slices.Sorted(slices.Values(names))
		if !slices.Equal(got, names) {
			var all []string
			for _, e := range entries {
				all = append(all, e.line)
			}
			t.Fatalf("%s: entries left for %v, want %v\nconntrack -L:\n%s", step, got, names, strings.Join(all, "\n"))
		}
	}

	dial(ctFlow{name: "svc4-a", from: podB.NS, network: "udp", sport: 40001, target: svc4, server: a4, dnat: true})
	dial(ctFlow{name: "svc4b-c", from: podB.NS, network: "udp", sport: 40002, target: svc4b, server: c4, dnat: true})
	dial(ctFlow{name: "svc6-a", from: podB.NS, network: "udp", sport: 40003, target: svc6, server: a6, dnat: true})
	dial(ctFlow{name: "np4-a", from: tp.Client, network: "udp", sport: 40004, target: np4, server: a4, dnat: true})
	dial(ctFlow{name: "np4node-c", from: tp.Node2, network: "udp", sport: 40005, target: np4node, server: c4, dnat: true})
	dial(ctFlow{name: "np6-a", from: tp.Client, network: "udp", sport: 40006, target: np6, server: a6, dnat: true})
	dial(ctFlow{name: "direct-c-30053", from: tp.Client, network: "udp", sport: 40007, target: cDirect, server: cDirect})
	dial(ctFlow{name: "direct-a", from: tp.Client, network: "udp", sport: 40008, target: a4, server: a4})
	dial(ctFlow{name: "svc4-a-tcp", from: podB.NS, network: "tcp", sport: 40009, target: svc4, server: a4, dnat: true})
	all := []string{"svc4-a", "svc4b-c", "svc6-a", "np4-a", "np4node-c", "np6-a", "direct-c-30053", "direct-a", "svc4-a-tcp"}
	want("before", all...)

	ct := conntrack.NewNetlink(tp.Node1.Path())
	clear := func(step string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}

	// A destination: only UDP entries to that address and port, of its family. The address
	// is given IPv4-mapped, as it may come from a dual-stack parser.
	clear("ClearDestination svc4", ct.ClearDestination(model.UDP, netip.AddrPortFrom(netip.AddrFrom16(svc4.Addr().As16()), svc4.Port())))
	want("after ClearDestination(udp, 10.96.0.10:53)", "svc4b-c", "svc6-a", "np4-a", "np4node-c", "np6-a", "direct-c-30053", "direct-a", "svc4-a-tcp")
	clear("ClearDestination svc6", ct.ClearDestination(model.UDP, svc6))
	want("after ClearDestination(udp, [fd00:96::10]:53)", "svc4b-c", "np4-a", "np4node-c", "np6-a", "direct-c-30053", "direct-a", "svc4-a-tcp")

	// A NodePort: every local address, both families; not a remote host on that port.
	clear("ClearNodePort", ct.ClearNodePort(model.UDP, 30053))
	want("after ClearNodePort(udp, 30053)", "svc4b-c", "direct-c-30053", "direct-a", "svc4-a-tcp")
	// A TCP cleanup leaves UDP alone, and nothing is listening on TCP 30053.
	clear("ClearNodePort tcp", ct.ClearNodePort(model.TCP, 30053))
	want("after ClearNodePort(tcp, 30053)", "svc4b-c", "direct-c-30053", "direct-a", "svc4-a-tcp")

	// An endpoint: only entries DNATed to it, of its protocol and family.
	dial(ctFlow{name: "svc4-a-again", from: podB.NS, network: "udp", sport: 40010, target: svc4, server: a4, dnat: true})
	dial(ctFlow{name: "svc6-a-again", from: podB.NS, network: "udp", sport: 40011, target: svc6, server: a6, dnat: true})
	want("before ClearEndpoint", "svc4b-c", "direct-c-30053", "direct-a", "svc4-a-tcp", "svc4-a-again", "svc6-a-again")
	clear("ClearEndpoint a4", ct.ClearEndpoint(model.UDP, a4))
	want("after ClearEndpoint(udp, 10.244.1.2:5353)", "svc4b-c", "direct-c-30053", "direct-a", "svc4-a-tcp", "svc6-a-again")
	clear("ClearEndpoint a6", ct.ClearEndpoint(model.UDP, a6))
	want("after ClearEndpoint(udp, [fd00:244:1::2]:5353)", "svc4b-c", "direct-c-30053", "direct-a", "svc4-a-tcp")
	clear("ClearEndpoint c4", ct.ClearEndpoint(model.UDP, c4))
	want("after ClearEndpoint(udp, 10.244.1.4:5353)", "direct-c-30053", "direct-a", "svc4-a-tcp")
	// Nothing left to match is not an error.
	clear("ClearEndpoint c4 again", ct.ClearEndpoint(model.UDP, c4))
	clear("ClearEndpoint tcp a4", ct.ClearEndpoint(model.TCP, a4))
	want("after ClearEndpoint(tcp, 10.244.1.2:5353)", "direct-c-30053", "direct-a")
}

// TestConntrackBadNamespace checks that a missing namespace is reported, with its cause.
func TestConntrackBadNamespace(t *testing.T) {
	topology.RequirePrivileged(t)
	t.Parallel()
	ct := conntrack.NewNetlink("/run/netns/" + topology.NamePrefix() + "does-not-exist")
	err := ct.ClearNodePort(model.UDP, 30053)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ClearNodePort in a missing namespace: got %v, want an fs.ErrNotExist", err)
	}
	t.Logf("error: %v", err)
}
