package conntrack

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// entryAttrs encodes the attributes of a ctnetlink entry as the kernel sends them,
// with some the decoder must skip.
func entryAttrs(t *testing.T, orig, reply ct.Tuple, zone uint16) []byte {
	t.Helper()
	tuple := func(tu ct.Tuple) func(*netlink.AttributeEncoder) error {
		return func(ae *netlink.AttributeEncoder) error {
			ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
				src, dst := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
				if tu.IP.SourceAddress.Is6() {
					src, dst = ctaIPv6Src, ctaIPv6Dst
				}
				ae.Bytes(src, tu.IP.SourceAddress.AsSlice())
				ae.Bytes(dst, tu.IP.DestinationAddress.AsSlice())
				return nil
			})
			ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaProtoNum, tu.Proto.Protocol)
				ae.Uint16(ctaProtoSrcPort, tu.Proto.SourcePort)
				ae.Uint16(ctaProtoDstPort, tu.Proto.DestinationPort)
				return nil
			})
			if tu.Zone != 0 {
				ae.Uint16(ctaTupleZone, tu.Zone)
			}
			return nil
		}
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(ctaTupleOrig, tuple(orig))
	ae.Nested(ctaTupleReply, tuple(reply))
	ae.Uint32(3, 0x18e)    // CTA_STATUS
	ae.Uint32(7, 120)      // CTA_TIMEOUT
	ae.Bytes(8, []byte{1}) // odd-sized, padded
	if zone != 0 {
		ae.Uint16(ctaZone, zone)
	}
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nlmsg encodes one netlink message of type typ with an nfgenmsg header before attrs.
func nlmsg(typ uint16, seq uint32, data []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(data))
	b = append(b, data...)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	return append(b, make([]byte, nlAlign(len(b))-len(b))...)
}

func TestParseDump(t *testing.T) {
	const newMsg = unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtNew
	tup := func(src, dst string, proto uint8, zone uint16) ct.Tuple {
		s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
		return ct.Tuple{
			IP:    ct.IPTuple{SourceAddress: s.Addr(), DestinationAddress: d.Addr()},
			Proto: ct.ProtoTuple{Protocol: proto, SourcePort: s.Port(), DestinationPort: d.Port()},
			Zone:  zone,
		}
	}
	want := []ctEntry{
		{orig: tup("10.244.1.100:20000", "10.96.0.10:53", unix.IPPROTO_UDP, 0),
			reply: tup("10.244.1.2:5353", "10.244.1.100:20000", unix.IPPROTO_UDP, 0)},
		{orig: tup("[fd00::1]:1234", "[fd00:96::10]:99", unix.IPPROTO_SCTP, 7),
			reply: tup("[fd00:244::2]:99", "[fd00::1]:1234", unix.IPPROTO_SCTP, 7), zone: 7},
	}
	nfgen := []byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}
	var first, second []byte
	for i, e := range want {
		m := nlmsg(newMsg, 42, append(append([]byte{}, nfgen...), entryAttrs(t, e.orig, e.reply, e.zone)...))
		if i == 0 {
			first = append(first, m...)
			first = append(first, nlmsg(newMsg, 41, append(nfgen, entryAttrs(t, e.orig, e.reply, 0)...))...) // another request's
		} else {
			second = append(second, m...)
		}
	}
	second = append(second, nlmsg(unix.NLMSG_DONE, 42, make([]byte, 4))...)

	var got []ctEntry
	fn := func(attrs []byte) {
		var e ctEntry
		if err := e.decode(attrs); err != nil {
			t.Errorf("decode: %v", err)
		}
		got = append(got, e)
	}
	if done, err := parseDump(first, 42, fn); done || err != nil {
		t.Fatalf("first datagram: done %v, err %v; want false, nil", done, err)
	}
	if done, err := parseDump(second, 42, fn); !done || err != nil {
		t.Fatalf("second datagram: done %v, err %v; want true, nil", done, err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i], want[i])
		}
	}

	errMsg := make([]byte, 4)
	errno := -int32(unix.EINVAL)
	binary.NativeEndian.PutUint32(errMsg, uint32(errno))
	if done, err := parseDump(nlmsg(unix.NLMSG_ERROR, 42, errMsg), 42, fn); !done || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("error message: done %v, err %v; want true, EINVAL", done, err)
	}

	attrs := entryAttrs(t, want[0].orig, want[0].reply, 0)
	for _, n := range []int{3, 10, 30} {
		var e ctEntry
		if err := e.decode(attrs[:n]); err == nil {
			t.Errorf("decode of the first %d bytes: no error", n)
		}
	}
}

// TestDecodeAllocs checks that deciding an entry allocates nothing.
func TestDecodeAllocs(t *testing.T) {
	o := ct.Tuple{IP: ct.IPTuple{SourceAddress: netip.MustParseAddr("fd00::1"), DestinationAddress: netip.MustParseAddr("fd00::2")},
		Proto: ct.ProtoTuple{Protocol: unix.IPPROTO_UDP, SourcePort: 1, DestinationPort: 2}}
	attrs := entryAttrs(t, o, o, 3)
	var e ctEntry
	if n := testing.AllocsPerRun(100, func() {
		if err := e.decode(attrs); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("decode allocates %v times, want 0", n)
	}
}
