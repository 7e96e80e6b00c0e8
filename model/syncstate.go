package model

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The sync-state set (SetSyncState) is nftproxy's note, in its own table, of what it last
// committed: the ruleset generation that commit produced, and, per endpoint map, a digest of
// its elements in buckets of frontends. Every commit of the syncer's that changes something
// rewrites it, in the same transaction (a commit that only deletes session affinity entries
// does not: the next restart then reads everything back).
// Whoever reads it at a generation equal to the one it records knows that nobody has changed
// the ruleset since nftproxy wrote it (every commit advances the generation), so that a bucket
// whose digest matches the digest of the desired elements of that bucket holds exactly those:
// a restarted nftproxy looks up only the slots of the other buckets' frontends, rather than
// a million elements when nothing changed while it was down.
//
// Its elements, keyed by a port number, carry the note in their comments:
//
//	0 comment "generation 1234"
//	1 comment "service-endpoints 0/2 9f3a2b1c4d5e6f70"
//	1025 comment "nodeport-endpoints 0/2 0000000000000000"
//
// Element 1 + i*MaxDigestBuckets + b is bucket b of the i-th map of SyncStateMaps.

// SyncStateMaps are the maps whose elements the sync-state set digests: the endpoint maps,
// the largest of a table by far.
var SyncStateMaps = []string{MapServiceEndpoints, MapNodePortEndpoints}

// MaxDigestBuckets is the most buckets a map's digest has (DigestBuckets).
const MaxDigestBuckets = 1 << 10

// digestBucketRoom is the room of an endpoint map per bucket of its digest: a bucket holds at
// most about 5,500 elements (the room is at least half as large again as the elements), which
// a restart that finds the bucket changed looks up in some 15 ms.
const digestBucketRoom = 1 << 13

// DigestBuckets returns how many buckets the digest of an endpoint map of the given size
// (Set.Size) has: a power of two, from 1 to MaxDigestBuckets, one per 8,192 of room. The
// sizes only grow (by powers of two), and with them the buckets.
func DigestBuckets(size uint32) int {
	b := 1
	for b < MaxDigestBuckets && uint64(b)*2*digestBucketRoom <= uint64(size) {
		b *= 2
	}
	return b
}

// FrontendHash returns the hash of the frontend of key k (its address, protocol and port,
// not its slot) that places k's element in a bucket of a map's digest: bucket
// FrontendHash(k) & (buckets-1). It is the same in every process and version that writes the
// same sync-state format.
func FrontendHash(k Key) uint32 {
	a, b, flags := addrWords(k.Addr)
	h := mix(mix(mix(0, a), b), flags|uint64(k.Proto)<<8|uint64(k.Port)<<16)
	return uint32(fmix(h))
}

// ElementDigest returns the digest of e: a 64-bit hash of every field of the element. The
// digest of a bucket is the sum of its elements' digests (modulo 2^64), which does not depend
// on their order and lets one element come or go without the others.
func ElementDigest(e *Element) uint64 {
	a, b, flags := addrWords(e.Addr)
	h := mix(mix(mix(0, a), b), flags|uint64(e.Proto)<<8|uint64(e.Port)<<16|uint64(e.Slot)<<32)
	ea, eb, eflags := addrWords(e.Endpoint.Addr())
	h = mix(mix(mix(h, ea), eb), eflags|uint64(e.Endpoint.Port())<<16|uint64(e.Verdict.Kind)<<32)
	if e.Verdict.Chain != "" {
		h = mix(h, stringHash(e.Verdict.Chain))
	}
	if e.Comment != "" {
		h = mix(h, stringHash(e.Comment)^1)
	}
	return fmix(h)
}

// addrWords returns a's 16 bytes as two words, and flags telling an IPv4 address from its
// IPv4-mapped IPv6 form and both from no address.
func addrWords(a netip.Addr) (hi, lo, flags uint64) {
	if !a.IsValid() {
		return 0, 0, 0
	}
	b := a.As16()
	for i := range 8 {
		hi = hi<<8 | uint64(b[i])
		lo = lo<<8 | uint64(b[8+i])
	}
	flags = 1
	if a.Is4() {
		flags = 2
	}
	return hi, lo, flags
}

// mix folds w into h.
func mix(h, w uint64) uint64 {
	hi, lo := bits.Mul64(h^w, 0x9e3779b97f4a7c15)
	return hi ^ lo
}

// fmix is MurmurHash3's 64-bit finalizer: every bit of the result depends on every bit of h.
func fmix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// stringHash is FNV-1a of s.
func stringHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := range len(s) {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// SyncState is the content of the sync-state set.
type SyncState struct {
	// Generation is the ruleset generation that the commit writing it produced (0: unknown,
	// never current).
	Generation uint32
	// Digests holds, per map of SyncStateMaps, the digest of each bucket: the sum of the
	// ElementDigest of the map's elements whose FrontendHash falls in it.
	Digests map[string][]uint64
}

// Elements returns the elements of the sync-state set that record st.
func (st SyncState) Elements() []Element {
	out := []Element{GenerationElement(st.Generation)}
	for i, name := range SyncStateMaps {
		digests := st.Digests[name]
		for b, d := range digests {
			out = append(out, DigestElement(i, b, len(digests), d))
		}
	}
	return out
}

// GenerationElement returns the element of the sync-state set that records gen.
func GenerationElement(gen uint32) Element {
	return Element{Port: 0, Comment: "generation " + strconv.FormatUint(uint64(gen), 10)}
}

// DigestElement returns the element of the sync-state set that records the digest of bucket
// b of buckets of the mapIndex-th map of SyncStateMaps.
func DigestElement(mapIndex, b, buckets int, digest uint64) Element {
	return Element{Port: SyncStatePort(mapIndex, b),
		Comment: fmt.Sprintf("%s %d/%d %016x", SyncStateMaps[mapIndex], b, buckets, digest)}
}

// SyncStatePort returns the key (a port number) of the sync-state set's element that records
// bucket of the mapIndex-th map of SyncStateMaps.
func SyncStatePort(mapIndex, bucket int) uint16 {
	return uint16(1 + mapIndex*MaxDigestBuckets + bucket)
}

// ParseSyncState returns the SyncState the elements of a sync-state set record. An element
// it cannot read, or a map's buckets incomplete, make an error: such a set records nothing.
func ParseSyncState(elems []Element) (SyncState, error) {
	st := SyncState{Digests: map[string][]uint64{}}
	seen := map[string]int{}
	genSeen := false
	for _, e := range elems {
		if e.Port == 0 {
			g, ok := strings.CutPrefix(e.Comment, "generation ")
			n, err := strconv.ParseUint(g, 10, 32)
			if !ok || err != nil {
				return SyncState{}, fmt.Errorf("sync-state element 0: comment %q is not a generation", e.Comment)
			}
			st.Generation, genSeen = uint32(n), true
			continue
		}
		name, bucket, buckets, digest, err := parseDigest(e.Comment)
		if err != nil {
			return SyncState{}, fmt.Errorf("sync-state element %d: %w", e.Port, err)
		}
		i := -1
		for j, m := range SyncStateMaps {
			if m == name {
				i = j
			}
		}
		if i < 0 || e.Port != SyncStatePort(i, bucket) {
			return SyncState{}, fmt.Errorf("sync-state element %d: comment %q does not belong to it", e.Port, e.Comment)
		}
		d := st.Digests[name]
		switch {
		case d == nil:
			d = make([]uint64, buckets)
			st.Digests[name] = d
		case len(d) != buckets:
			return SyncState{}, fmt.Errorf("sync-state: map %s has digests of %d and of %d buckets", name, len(d), buckets)
		}
		d[bucket] = digest
		seen[name]++
	}
	if !genSeen {
		return SyncState{}, errors.New("sync-state: no generation")
	}
	for name, d := range st.Digests {
		if seen[name] != len(d) {
			return SyncState{}, fmt.Errorf("sync-state: map %s has %d of its %d buckets", name, seen[name], len(d))
		}
	}
	return st, nil
}

// parseDigest parses "<map> <bucket>/<buckets> <digest in hex>".
func parseDigest(c string) (name string, bucket, buckets int, digest uint64, err error) {
	fields := strings.Fields(c)
	if len(fields) != 3 {
		return "", 0, 0, 0, fmt.Errorf("comment %q is not a digest", c)
	}
	b, n, ok := strings.Cut(fields[1], "/")
	bucket, err1 := strconv.Atoi(b)
	buckets, err2 := strconv.Atoi(n)
	digest, err3 := strconv.ParseUint(fields[2], 16, 64)
	if !ok || err1 != nil || err2 != nil || err3 != nil || buckets < 1 || buckets > MaxDigestBuckets ||
		buckets&(buckets-1) != 0 || bucket < 0 || bucket >= buckets {
		return "", 0, 0, 0, fmt.Errorf("comment %q is not a digest", c)
	}
	return fields[0], bucket, buckets, digest, nil
}

// WithoutSyncState returns rs with its sync-state set empty: the table as the Services and
// the node make it, which model.Build returns, where the kernel's also holds nftproxy's note
// of its last commit. rs is not changed.
func WithoutSyncState(rs *Ruleset) *Ruleset {
	if rs == nil {
		return nil
	}
	out := *rs
	out.Sets = slices.Clone(rs.Sets)
	for i, s := range out.Sets {
		if s.Name == SetSyncState && len(s.Elements) > 0 {
			empty := *s
			empty.Elements = nil
			out.Sets[i] = &empty
		}
	}
	return &out
}
