package nft

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/model"
)

// readTestRulesets returns rulesets that use every expression the encoder writes, for both
// families, each with Services, endpoints and so elements: the IPv6 ones from IPv6 copies of
// the same Services (see ipv6Services).
func readTestRulesets() []*model.Ruleset {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	svcs := map[model.Family][]model.Service{
		model.IPv4: scale.Services(30, 3),
		model.IPv6: ipv6Services(scale.Services(30, 3)),
	}
	var out []*model.Ruleset
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		configs := []model.NodeConfig{
			{Family: fam},
			{Family: fam, ClusterCIDRs: []netip.Prefix{p("10.244.0.0/16"), p("fd00:244::/32")}},
			{Family: fam, ClusterCIDRs: []netip.Prefix{p("10.240.0.0/13"), p("fd00:244::/31")}},
			{Family: fam, MasqueradeAll: true},
			{Family: fam, NodePortAddresses: []netip.Prefix{p("192.168.0.0/16"), p("fd00::/8")},
				LocalAddresses: []netip.Addr{a("192.168.0.2"), a("fd00::2")}},
		}
		for _, cfg := range configs {
			out = append(out, model.Build(svcs[fam], cfg))
		}
	}
	return out
}

// ipv6Services returns IPv6-only copies of IPv4 Services: every address a.b.c.d becomes
// fd00::a.b.c.d (fd00::a0b:c0d), a unique address of the IPv6 family. (IPv4-mapped addresses
// would not do: the IPv6 family does not contain them, so Build would drop every Service.)
func ipv6Services(v4 []model.Service) []model.Service {
	six := func(a netip.Addr) netip.Addr {
		b := [16]byte{0: 0xfd}
		v := a.As4()
		copy(b[12:], v[:])
		return netip.AddrFrom16(b)
	}
	out := make([]model.Service, 0, len(v4))
	for _, s := range v4 {
		s.ClusterIPs = []netip.Addr{six(s.ClusterIPs[0])}
		ports := make([]model.ServicePort, len(s.Ports))
		for i, sp := range s.Ports {
			sp.Endpoints = slices.Clone(sp.Endpoints)
			for j := range sp.Endpoints {
				sp.Endpoints[j].Addr = six(sp.Endpoints[j].Addr)
			}
			ports[i] = sp
		}
		s.Ports = ports
		out = append(out, s)
	}
	return out
}

// TestReadTestRulesetsHaveElements checks that the rulesets the tests below decode are no
// skeletons: in each family, Services give the verdict maps and the endpoint maps elements.
func TestReadTestRulesetsHaveElements(t *testing.T) {
	for _, rs := range readTestRulesets() {
		for _, name := range []string{model.MapServiceIPs, model.MapServiceEndpoints} {
			if s := rs.Set(name); s == nil || len(s.Elements) == 0 {
				t.Errorf("%s ruleset: set %s has no elements", rs.Family, name)
			}
		}
	}
}

// TestFingerprintRoundTrip checks that decoding every expression the encoder writes with
// google/nftables and encoding it again gives the same bytes, so that a rule read back from
// the kernel (which Read normalizes that way) can be recognized.
func TestFingerprintRoundTrip(t *testing.T) {
	for _, rs := range readTestRulesets() {
		exp, err := newExpectation(rs.Family, rs)
		if err != nil {
			t.Fatal(err)
		}
		b := &batch{}
		e := newEncoder(b, rs.Family)
		for _, c := range rs.Chains {
			if err := e.addRules(c); err != nil {
				t.Fatal(err)
			}
		}
		rules := 0
		b.eachMessage(func(typ uint16, data []byte) {
			rules++
			chain, fp, err := ruleFingerprint(nfproto(rs.Family), data, true)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := exp.rules[chain][fp]; !ok || fp == "" {
				t.Errorf("%s: a rule of chain %s is not recognized after a round trip", rs.Family, chain)
			}
		})
		if rules == 0 {
			t.Errorf("%s: the encoder wrote no rules", rs.Family)
		}
	}
}

// TestElementRoundTrip checks that the element decoder reads back every element the encoder
// writes, in both families: the messages the kernel dumps carry elements as the encoder's
// NEWSETELEM messages do.
func TestElementRoundTrip(t *testing.T) {
	for _, rs := range readTestRulesets() {
		exp, err := newExpectation(rs.Family, rs)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rs.Sets {
			if len(s.Elements) == 0 {
				continue
			}
			b := &batch{}
			if err := newEncoder(b, rs.Family).writeElements(unix.NFT_MSG_NEWSETELEM, s, s.Elements); err != nil {
				t.Fatalf("%s set %s: encode: %v", rs.Family, s.Name, err)
			}
			d := newElemDecoder(exp, &model.Set{Name: s.Name, Key: s.Key, Data: s.Data}, 0)
			// The same in chunks of two, as lookups keep them.
			dc := newElemDecoder(exp, &model.Set{Name: s.Name, Key: s.Key, Data: s.Data}, 0)
			dc.chunk = 2
			b.eachMessage(func(_ uint16, data []byte) {
				if err := d.decodeMessage(data); err != nil {
					t.Errorf("%s set %s: decode: %v", rs.Family, s.Name, err)
				}
				if err := dc.decodeMessage(data); err != nil {
					t.Errorf("%s set %s: decode in chunks: %v", rs.Family, s.Name, err)
				}
			})
			for from := range len(d.elems) + 1 {
				var got []model.Element
				dc.each(from, func(e *model.Element) { got = append(got, *e) })
				if !slices.Equal(got, d.elems[from:]) {
					t.Errorf("%s set %s: in chunks, from element %d: %v; want %v", rs.Family, s.Name, from, got, d.elems[from:])
				}
			}
			if n := dc.count(); n != len(d.elems) {
				t.Errorf("%s set %s: in chunks, %d elements; want %d", rs.Family, s.Name, n, len(d.elems))
			}
			if all := slices.Concat(dc.take()...); !slices.Equal(all, d.elems) || dc.count() != 0 {
				t.Errorf("%s set %s: in chunks, all are %v (then %d left); want %v", rs.Family, s.Name, all, dc.count(), d.elems)
			}
			got := slices.SortedFunc(slices.Values(d.elems), model.CompareElements)
			want := slices.SortedFunc(slices.Values(s.Elements), model.CompareElements)
			if len(got) != len(want) {
				t.Errorf("%s set %s: decoded %d elements, wrote %d", rs.Family, s.Name, len(got), len(want))
				continue
			}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("%s set %s: element %d decoded as %+v, want %+v", rs.Family, s.Name, i, got[i], want[i])
					break
				}
			}
		}
	}
}

// TestExpectationDefinitions checks that the expected set and chain definitions are those
// the encoder writes.
func TestExpectationDefinitions(t *testing.T) {
	rs := model.Build(nil, model.NodeConfig{Family: model.IPv4})
	exp, err := newExpectation(model.IPv4, rs)
	if err != nil {
		t.Fatal(err)
	}
	sm := exp.sets[model.MapServiceEndpoints]
	if sm.flags == 0 || sm.keyLen != 16 || sm.dataLen != 8 || sm.udata == "" {
		t.Errorf("service-endpoints: %v", sm)
	}
	if c := exp.chains[model.ChainNATPrerouting]; !c.hooked || c.typ != "nat" || c.priority != -100 || c.policy != nfAccept {
		t.Errorf("nat-prerouting: %v", c)
	}
	if c := exp.chains[model.ChainServices]; c.hooked {
		t.Errorf("services: %v", c)
	}
	if got := exp.verdicts[-4]; got != model.Goto {
		t.Errorf("verdict code -4 is %v, want goto", got)
	}
}

func TestDecodeKey(t *testing.T) {
	keys := [][]model.KeyField{
		{model.KeyAddr},
		{model.KeyAddr, model.KeyAddr},
		{model.KeyAddr, model.KeyProto, model.KeyPort},
		{model.KeyProto, model.KeyPort},
		{model.KeyAddr, model.KeyProto, model.KeyPort, model.KeySlot},
		{model.KeyProto, model.KeyPort, model.KeySlot},
	}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		addr := netip.MustParseAddr("10.1.2.3")
		if fam == model.IPv6 {
			addr = netip.MustParseAddr("fd00::1:2:3")
		}
		for _, key := range keys {
			in := model.Element{Proto: model.UDP, Port: 53000, Slot: 70000}
			for _, k := range key {
				if k == model.KeyAddr {
					in.Addr = addr
				}
			}
			if !hasField(key, model.KeyProto) {
				in.Proto = 0
			}
			if !hasField(key, model.KeyPort) {
				in.Port = 0
			}
			if !hasField(key, model.KeySlot) {
				in.Slot = 0
			}
			raw := model.ElementKey(fam, key, in)
			var got model.Element
			if !decodeKey(fam, key, raw, &got) || got != in {
				t.Errorf("%s %v: decode(%x) = %+v, want %+v", fam, key, raw, got, in)
			}
			if len(key) > 1 && key[len(key)-1] == model.KeyPort {
				bad := append([]byte(nil), raw...)
				bad[len(bad)-1] = 1 // padding of the port
				if decodeKey(fam, key, bad, &got) {
					t.Errorf("%s %v: decoded %x, whose padding is not zero", fam, key, bad)
				}
			}
		}
	}
}

func hasField(key []model.KeyField, f model.KeyField) bool {
	for _, k := range key {
		if k == f {
			return true
		}
	}
	return false
}

func TestUdataString(t *testing.T) {
	u := appendUdataUint32(nil, 3, 7)
	u = appendUdataString(u, udataElemComment, "ns/svc:http")
	got, ok := udataString(u, udataElemComment)
	if !ok || string(got) != "ns/svc:http" {
		t.Errorf("udataString = %q, %v", got, ok)
	}
	if _, ok := udataString(u[:len(u)-1], udataElemComment); ok {
		t.Error("udataString accepted a truncated TLV")
	}
}

// TestHasDuplicateKeys checks the sign of a set dump that crossed a resize of the kernel's
// hash table: a key twice. Elements that differ in any key field are not duplicates.
func TestHasDuplicateKeys(t *testing.T) {
	a := netip.MustParseAddr("10.96.0.1")
	el := func(addr netip.Addr, port uint16, slot uint32) model.Element {
		return model.Element{Addr: addr, Proto: model.TCP, Port: port, Slot: slot}
	}
	distinct := []model.Element{el(a, 80, 0), el(a, 80, 1), el(a, 81, 0), el(a.Next(), 80, 0)}
	if hasDuplicateKeys(distinct) {
		t.Errorf("distinct keys reported as duplicates: %v", distinct)
	}
	twice := []model.Element{el(a, 80, 0), el(a, 80, 1), el(a, 80, 1), el(a, 81, 0)}
	twice[2].Endpoint = netip.MustParseAddrPort("10.244.1.2:8080") // the data does not matter
	if !hasDuplicateKeys(twice) {
		t.Errorf("a key twice not reported: %v", twice)
	}
}

// TestLookupReplies checks how the answers to a datagram of lookups are read: a found
// element is decoded, a missing key (ENOENT) skipped, the answer to the last message ends the
// datagram, and an answer holding an element other than the one looked up fails the read
// (the caller counts on no key being found twice).
func TestLookupReplies(t *testing.T) {
	for _, rs := range readTestRulesets() {
		exp, err := newExpectation(rs.Family, rs)
		if err != nil {
			t.Fatal(err)
		}
		s := rs.Set(model.MapServiceEndpoints)
		if s == nil || len(s.Elements) < 3 {
			t.Fatalf("%s: the test ruleset needs three endpoint slots", rs.Family)
		}
		// answer returns the kernel's answer to lookup number seq: the element e.
		answer := func(seq uint32, e model.Element) []byte {
			b := &batch{}
			if err := newEncoder(b, rs.Family).writeElements(unix.NFT_MSG_NEWSETELEM, s, []model.Element{e}); err != nil {
				t.Fatal(err)
			}
			m := slices.Clone(b.buf)
			binary.NativeEndian.PutUint32(m[8:], seq)
			return m
		}
		notFound := func(seq uint32) []byte {
			m := appendNlmsghdr(nil, unix.NLMSG_ERROR, 0)
			errno := -int32(unix.ENOENT)
			m = binary.NativeEndian.AppendUint32(m, uint32(errno))
			m = append(m, make([]byte, unix.NLMSG_HDRLEN)...)
			binary.NativeEndian.PutUint32(m, uint32(len(m)))
			binary.NativeEndian.PutUint32(m[8:], seq)
			return m
		}
		// The answer to the last message, the generation's.
		done := func(seq uint32) []byte { return batchMessage(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWGEN, seq, 0) }
		a, b, c := s.Elements[0], s.Elements[1], s.Elements[2]
		batchKeys := []model.Key{a.Key(), b.Key(), c.Key()}
		const first = 100
		last := uint32(first + len(batchKeys))

		d := newElemDecoder(exp, &model.Set{Name: s.Name, Key: s.Key, Data: s.Data}, 0)
		dgram := slices.Concat(answer(first, a), notFound(first+1), answer(first+2, c), done(last))
		ok, err := parseLookupReplies(dgram, s.Name, batchKeys, first, last, d)
		if !ok || err != nil {
			t.Errorf("%s: found, missing, found, done: done=%v err=%v", rs.Family, ok, err)
		}
		if got := slices.Concat(d.take()...); !slices.Equal(got, []model.Element{a, c}) {
			t.Errorf("%s: decoded %v, want %v", rs.Family, got, []model.Element{a, c})
		}

		d = newElemDecoder(exp, &model.Set{Name: s.Name, Key: s.Key, Data: s.Data}, 0)
		dgram = slices.Concat(answer(first, a), answer(first+1, a), done(last))
		if _, err := parseLookupReplies(dgram, s.Name, batchKeys, first, last, d); err == nil {
			t.Errorf("%s: the answer to the lookup of %v held %v, and the read went on", rs.Family, b.Key(), a)
		}

		d = newElemDecoder(exp, &model.Set{Name: s.Name, Key: s.Key, Data: s.Data}, 0)
		dgram = slices.Concat(answer(first, a), batchMessage(unix.NLMSG_DONE, first+1, 0), answer(first+2, c), done(last))
		if _, err := parseLookupReplies(dgram, s.Name, batchKeys, first, last, d); err == nil {
			t.Errorf("%s: the lookup of %v was answered by a message of another type, and the read went on", rs.Family, b.Key())
		}
	}
}
