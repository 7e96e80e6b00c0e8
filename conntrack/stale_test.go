package conntrack

import (
	"net/netip"
	"testing"

	"github.com/nftproxy/nftproxy/model"
)

// Conventions: ClusterIP 10.96.0.10, pods 10.244.1.0/24, node address 192.168.0.2 (NodePorts
// accepted there), another local address 172.18.0.2 (not a NodePort address), a client
// 10.244.1.100 and a host elsewhere 198.51.100.7.
func TestStale(t *testing.T) {
	ap := netip.MustParseAddrPort
	a, b, c := ap("10.244.1.2:5353"), ap("10.244.1.3:5353"), ap("10.244.1.4:5353")
	ab := Endpoints{a: true, b: true}
	frontends := map[Frontend]Endpoints{
		{Addr: netip.MustParseAddr("10.96.0.10"), Proto: model.UDP, Port: 53}:     ab,
		{Addr: netip.MustParseAddr("10.96.0.11"), Proto: model.UDP, Port: 53}:     {},
		{Addr: netip.MustParseAddr("10.96.0.12"), Proto: model.SCTP, Port: 99}:    {a: true},
		{Addr: netip.MustParseAddr("203.0.113.9"), Proto: model.UDP, Port: 53}:    ab,
		{Addr: netip.MustParseAddr("fd00:96::10"), Proto: model.UDP, Port: 53}:    {ap("[fd00:244:1::2]:5353"): true},
		{Proto: model.UDP, Port: 30053}:                                           ab,
		{Proto: model.UDP, Port: 30054}:                                           {},
		{Addr: netip.MustParseAddr("192.168.0.2"), Proto: model.UDP, Port: 30055}: {c: true},
		{Proto: model.UDP, Port: 30055}:                                           ab,
	}
	nodePortIPs := map[netip.Addr]bool{netip.MustParseAddr("192.168.0.2"): true}
	for _, row := range []struct {
		name  string
		proto model.Protocol
		dst   string
		reply string
		stale bool
	}{
		{"same endpoint: keep", model.UDP, "10.96.0.10:53", a.String(), false},
		{"other serving endpoint: keep", model.UDP, "10.96.0.10:53", b.String(), false},
		{"reply source no longer serving: delete", model.UDP, "10.96.0.10:53", c.String(), true},
		{"endpoint's port changed: delete", model.UDP, "10.96.0.10:53", "10.244.1.2:53", true},
		{"not DNATed while endpoints exist: delete", model.UDP, "10.96.0.10:53", "10.96.0.10:53", true},
		{"not DNATed while none: keep", model.UDP, "10.96.0.11:53", "10.96.0.11:53", false},
		{"DNATed to an endpoint of a port that has none now: delete", model.UDP, "10.96.0.11:53", a.String(), true},
		{"TCP: never", model.TCP, "10.96.0.10:53", c.String(), false},
		{"TCP not DNATed: never", model.TCP, "10.96.0.10:53", "10.96.0.10:53", false},
		{"SCTP stale: delete", model.SCTP, "10.96.0.12:99", b.String(), true},
		{"SCTP same endpoint: keep", model.SCTP, "10.96.0.12:99", a.String(), false},
		{"UDP to the SCTP frontend's port: never", model.UDP, "10.96.0.12:99", b.String(), false},
		{"other port of the ClusterIP: never", model.UDP, "10.96.0.10:54", c.String(), false},
		{"not addressed to a frontend: never", model.UDP, "198.51.100.7:53", c.String(), false},
		{"ExternalIP stale: delete", model.UDP, "203.0.113.9:53", c.String(), true},
		{"IPv6 same endpoint: keep", model.UDP, "[fd00:96::10]:53", "[fd00:244:1::2]:5353", false},
		{"IPv6 stale: delete", model.UDP, "[fd00:96::10]:53", "[fd00:244:1::3]:5353", true},
		{"IPv4-mapped reply source of a serving endpoint: keep", model.UDP, "10.96.0.10:53", "[::ffff:10.244.1.2]:5353", false},
		{"NodePort on a node address, same endpoint: keep", model.UDP, "192.168.0.2:30053", a.String(), false},
		{"NodePort on a node address, stale: delete", model.UDP, "192.168.0.2:30053", c.String(), true},
		{"NodePort not DNATed while endpoints exist: delete", model.UDP, "192.168.0.2:30053", "192.168.0.2:30053", true},
		{"NodePort not DNATed while none: keep", model.UDP, "192.168.0.2:30054", "192.168.0.2:30054", false},
		{"NodePort on a non-node address: never", model.UDP, "172.18.0.2:30053", c.String(), false},
		{"NodePort port to a host elsewhere: never", model.UDP, "198.51.100.7:30053", c.String(), false},
		{"address frontend wins over a NodePort: keep", model.UDP, "192.168.0.2:30055", c.String(), false},
		{"address frontend wins over a NodePort: delete", model.UDP, "192.168.0.2:30055", a.String(), true},
	} {
		e := Entry{Proto: row.proto, OrigDst: ap(row.dst), ReplySrc: ap(row.reply)}
		if got := Stale(e, frontends, nodePortIPs); got != row.stale {
			t.Errorf("%s: Stale(%s %s, reply from %s) = %t, want %t", row.name, row.proto, row.dst, row.reply, got, row.stale)
		}
	}
}
