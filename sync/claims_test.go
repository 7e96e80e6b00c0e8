package sync

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/nftproxy/nftproxy/model"
)

// TestClaimMap checks the claims table against a Go map under random puts, replacements and
// deletions of keys that crowd few addresses and slots (long probe runs, deletions inside
// them, growth), with IPv4 keys beside their IPv4-mapped IPv6 twins, which are other keys:
// every claim put is found by its key until deleted or replaced (by another element of the
// same key: another Service's, as a claim passes from one owner to the next), every key
// deleted or never put is not, and the count and the iteration hold exactly the claims.
func TestClaimMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	elems := make([]model.Element, 0, 4096) // twins: elems[i] and elems[i^1] share a key
	for a := range 8 {
		v4 := netip.AddrFrom4([4]byte{10, 96, 0, byte(a)})
		for _, addr := range []netip.Addr{v4, netip.AddrFrom16(v4.As16())} {
			for slot := range 256 {
				e := model.Element{Addr: addr, Proto: model.TCP, Port: 80, Slot: uint32(slot)}
				elems = append(elems, e, e)
			}
		}
	}
	m := newClaimMap(0, true)
	want := map[model.Key]claim{}
	for step := range 200_000 {
		e := &elems[rng.IntN(len(elems))]
		k := e.Key()
		switch rng.IntN(3) {
		case 0, 1:
			c := claim{elem: e, first: uint32(step)}
			m.put(c)
			want[k] = c
		case 2:
			m.delete(k)
			delete(want, k)
		}
		if step%1000 != 0 {
			continue
		}
		if m.len() != len(want) {
			t.Fatalf("step %d: len %d, want %d", step, m.len(), len(want))
		}
		for i := range elems {
			k := elems[i].Key()
			got, w := m.get(k), want[k]
			if got.elem != w.elem || got.first != w.first { // the same element, not its twin
				t.Fatalf("step %d: get(%v) = %v/%d, want %v/%d", step, k, got.elem, got.first, w.elem, w.first)
			}
		}
		seen := 0
		for c := range m.all() {
			if w, ok := want[c.elem.Key()]; !ok || w.first != c.first {
				t.Fatalf("step %d: all() yields a claim on %v (first %d) the map does not hold", step, c.elem.Key(), c.first)
			}
			seen++
		}
		if seen != len(want) {
			t.Fatalf("step %d: all() yields %d claims, want %d", step, seen, len(want))
		}
		// The digests are those of the claimed elements, however they came and went.
		buckets := 1 << (step / 1000 % 11)
		wantDigests := make([]bucketDigest, buckets)
		for k, c := range want {
			d := &wantDigests[model.FrontendHash(k)&uint32(buckets-1)]
			d.sum += model.ElementDigest(c.elem)
			d.n++
		}
		if got := m.bucketDigests(buckets); !slices.Equal(got, wantDigests) {
			t.Fatalf("step %d: digests in %d buckets %v, want %v", step, buckets, got, wantDigests)
		}
	}
	var nilMap *claimMap
	if nilMap.get(elems[0].Key()).elem != nil || nilMap.len() != 0 {
		t.Errorf("a nil claimMap holds something")
	}
}
