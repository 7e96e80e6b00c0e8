package sync

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// Session affinity lives in the kernel: the packet path records in the affinity map which
// endpoint each client was sent to, and sends it there again while the entry lives. Only an
// endpoint that goes away needs the syncer: the entries that point at it must go too, or its
// clients would keep being sent to an address that no longer serves the Service.

// hasAffinity reports whether a Part records clients for session affinity.
func hasAffinity(p *model.Part) bool {
	if p == nil {
		return false
	}
	for _, pe := range p.Elements {
		if pe.Set == model.MapAffinityServices || pe.Set == model.MapAffinityNodePorts {
			return true
		}
	}
	return false
}

// slotPairs returns the destinations (Slot 0) of a Part's endpoint slots, each with its
// endpoints.
func slotPairs(p *model.Part) map[model.Key]map[netip.AddrPort]bool {
	out := map[model.Key]map[netip.AddrPort]bool{}
	if p == nil {
		return out
	}
	for _, pe := range p.Elements {
		if pe.Set != model.MapServiceEndpoints && pe.Set != model.MapNodePortEndpoints {
			continue
		}
		k := pe.Element.Key()
		k.Slot = 0
		if out[k] == nil {
			out[k] = map[netip.AddrPort]bool{}
		}
		out[k][pe.Endpoint] = true
	}
	return out
}

// appendAffinityReleases appends the destinations of a Service with session affinity that
// lose an endpoint when its Part old is replaced by new: their clients may be remembered
// with an endpoint that is gone. A Service that gets session affinity back (old without, new
// with) has all its destinations appended: the entries of when it last had affinity stayed
// in the map, and may name endpoints that went meanwhile, which nothing released then.
func appendAffinityReleases(out []model.Key, old, new *model.Part) []model.Key {
	if !hasAffinity(old) {
		if old != nil && hasAffinity(new) {
			out = slices.AppendSeq(out, maps.Keys(slotPairs(new)))
		}
		return out
	}
	now := slotPairs(new)
	for dst, eps := range slotPairs(old) {
		for ep := range eps {
			if !now[dst][ep] {
				out = append(out, dst)
				break
			}
		}
	}
	return out
}

// affinityValid reports whether e points at an endpoint that the destination it was
// recorded for still has in the syncer's view of the table.
func (t *table) affinityValid(e nft.AffinityEntry) bool {
	k := model.Key{Addr: e.Dst.Addr(), Proto: e.Proto, Port: e.Dst.Port()}
	if t.claims[model.MapServiceEndpoints].get(k).elem != nil {
		return t.slotHolds(model.MapServiceEndpoints, k, e.Endpoint)
	}
	// Not a Service address: a NodePort, reached on one of the node's addresses.
	return t.slotHolds(model.MapNodePortEndpoints, model.Key{Proto: e.Proto, Port: e.Dst.Port()}, e.Endpoint)
}

// slotHolds reports whether one of the slots of destination k (slots are numbered from 0
// without gaps) holds endpoint ep.
func (t *table) slotHolds(set string, k model.Key, ep netip.AddrPort) bool {
	for k.Slot = 0; ; k.Slot++ {
		c := t.claims[set].get(k)
		if c.elem == nil {
			return false
		}
		if c.elem.Endpoint == ep {
			return true
		}
	}
}

// releaseAffinity deletes the affinity entries that point at endpoints their destination no
// longer has: among the destinations dsts (Slot 0; an invalid address stands for a NodePort on
// any address), or all of them when all is set. Failures are kept for the loop to report,
// and the next call checks every entry (the rules are right either way, but a client sent
// to a gone endpoint refreshes its entry with each connection). It returns how many entries
// it deleted.
//
// Deleting is a commit of its own, which moves the ruleset generation on by one; the syncer
// counts it, so that the next sync does not take it for someone else's change.
func (s *Syncer) releaseAffinity(dsts map[model.Family][]model.Key, all bool) int {
	all = all || s.affinityDue
	s.affinityDue = false
	released := 0
	for _, fam := range s.Families {
		t := s.tables[fam]
		if t == nil || (!all && len(dsts[fam]) == 0) {
			continue
		}
		affected := map[model.Key]bool{}
		for _, k := range dsts[fam] {
			affected[k] = true
		}
		keep := func(e nft.AffinityEntry) bool {
			if !all {
				k := model.Key{Addr: e.Dst.Addr(), Proto: e.Proto, Port: e.Dst.Port()}
				np := model.Key{Proto: e.Proto, Port: e.Dst.Port()}
				if !affected[k] && !affected[np] {
					return true
				}
			}
			return t.affinityValid(e)
		}
		n, err := s.Backend.PruneAffinity(fam, keep)
		if err != nil {
			s.affinityErrs = append(s.affinityErrs, fmt.Errorf("release session affinity to gone endpoints: %w", err))
			// The entries left may make flows to gone endpoints: once they go, so do those.
			s.affinityDue, s.conntrackDue = true, true
			continue
		}
		if n > 0 && s.gen != 0 {
			s.gen++
		}
		released += n
	}
	return released
}

// AffinityErrors returns and forgets the session affinity cleanups that failed since the
// last call.
func (s *Syncer) AffinityErrors() []error {
	errs := s.affinityErrs
	s.affinityErrs = nil
	return errs
}
