package model

import (
	"net/netip"
	"testing"
)

// TestSyncStateRoundTrip checks that the sync-state set's elements give back what they
// record, and that elements someone else changed record nothing.
func TestSyncStateRoundTrip(t *testing.T) {
	st := SyncState{Generation: 4_000_000_000, Digests: map[string][]uint64{
		MapServiceEndpoints:  {1, 0xffffffffffffffff, 0, 42},
		MapNodePortEndpoints: {7},
	}}
	elems := st.Elements()
	got, err := ParseSyncState(elems)
	if err != nil {
		t.Fatal(err)
	}
	if got.Generation != st.Generation || len(got.Digests) != 2 ||
		got.Digests[MapServiceEndpoints][1] != 0xffffffffffffffff || got.Digests[MapNodePortEndpoints][0] != 7 {
		t.Errorf("parsed %+v, want %+v", got, st)
	}
	for _, e := range elems {
		if len(e.Comment) > maxCommentLen {
			t.Errorf("element %d: comment %q is longer than nft lists", e.Port, e.Comment)
		}
	}
	for name, broken := range map[string][]Element{
		"no generation":    elems[1:],
		"a bucket missing": append(elems[:2:2], elems[3:]...),
		"a bucket moved":   append(append([]Element{}, elems[:1]...), Element{Port: 9, Comment: elems[1].Comment}),
		"not a digest":     {elems[0], {Port: 1, Comment: "service-endpoints 0/3 12"}},
		"not a generation": {{Port: 0, Comment: "generation x"}},
	} {
		if _, err := ParseSyncState(broken); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}

// TestDigests checks the digests' properties the syncer relies on: the buckets grow with
// the map's room and stay within bounds, a frontend's slots share a bucket, and an element
// changed in any field has another digest.
func TestDigests(t *testing.T) {
	for size, want := range map[uint32]int{0: 1, EndpointMapMinSize: 2, 1 << 15: 4, 1 << 21: 256, 1 << 31: MaxDigestBuckets} {
		if got := DigestBuckets(size); got != want {
			t.Errorf("DigestBuckets(%d) = %d, want %d", size, got, want)
		}
	}
	e := Element{Addr: netip.MustParseAddr("10.96.0.10"), Proto: TCP, Port: 53, Slot: 2,
		Endpoint: netip.MustParseAddrPort("10.244.1.5:53")}
	other := e
	other.Slot = 7
	if FrontendHash(e.Key()) != FrontendHash(other.Key()) {
		t.Errorf("two slots of one frontend hash apart")
	}
	changes := map[string]func(*Element){
		"address":          func(x *Element) { x.Addr = netip.MustParseAddr("10.96.0.11") },
		"IPv4-mapped":      func(x *Element) { x.Addr = netip.AddrFrom16(x.Addr.As16()) },
		"protocol":         func(x *Element) { x.Proto = UDP },
		"port":             func(x *Element) { x.Port = 54 },
		"slot":             func(x *Element) { x.Slot = 3 },
		"endpoint address": func(x *Element) { x.Endpoint = netip.MustParseAddrPort("10.244.1.6:53") },
		"endpoint port":    func(x *Element) { x.Endpoint = netip.MustParseAddrPort("10.244.1.5:54") },
		"verdict":          func(x *Element) { x.Verdict = Verdict{Kind: Goto, Chain: "c"} },
		"comment":          func(x *Element) { x.Comment = "ns/svc:dns" },
	}
	for name, change := range changes {
		x := e
		change(&x)
		if ElementDigest(&x) == ElementDigest(&e) {
			t.Errorf("an element with another %s has the same digest", name)
		}
	}
}
