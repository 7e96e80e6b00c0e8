package sync

import (
	"maps"
	"slices"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// The sync-state set (model.SyncState) records, in every commit, the generation the commit
// produces and the digests of the endpoint maps as the commit leaves them. A full sync that
// reads it at that generation knows the kernel holds what the syncer last committed, and
// reads back only the endpoint map buckets whose digests differ from the desired elements'
// (trustState): a restart after which nothing changed reads back no endpoint of a map it
// looks up by key (a map small enough to dump is dumped whole). A commit that only deletes
// session affinity entries (releaseAffinity) does not write the set: until the next commit
// that changes something, a restart trusts nothing.

// nextGen returns the generation a commit conditional on gen produces: gen + 1, skipping 0
// as the kernel does; 0 (unknown) for an unconditional commit.
func nextGen(gen uint32) uint32 {
	if gen == 0 {
		return 0
	}
	if gen++; gen == 0 {
		gen = 1
	}
	return gen
}

// sizeAfter returns the size endpoint map name has once the transaction being built is
// committed.
func (t *table) sizeAfter(name string) uint32 {
	if size, ok := t.resized[name]; ok {
		return size
	}
	return t.sizes[name]
}

// stateDigestsAfter returns the digests of the endpoint maps' claimed elements, per map, in
// as many buckets as the sizes the transaction being built leaves them call for (a map of
// unknown size is left out).
func (t *table) stateDigestsAfter() map[string][]uint64 {
	out := map[string][]uint64{}
	for _, name := range model.SyncStateMaps {
		size := t.sizeAfter(name)
		if t.setDefs[name] == nil || size == 0 {
			continue
		}
		ds := t.claims[name].bucketDigests(model.DigestBuckets(size))
		sums := make([]uint64, len(ds))
		for i, d := range ds {
			sums[i] = d.sum
		}
		out[name] = sums
	}
	return out
}

// writeState adds to tx what makes the sync-state set record gen, the generation tx's
// commit produces (0: unknown), and the claims as tx leaves them: the generation, and the
// digests of the buckets that changed (all of them when the set's elements could not be
// read as a SyncState, or a map's buckets changed in number). Every commit that changes something
// writes it in every table: any commit changes the generation. The elements are the table's once tx is committed
// (markCommitted).
func (t *table) writeState(tx *nft.Transaction, gen uint32) {
	digests := t.stateDigestsAfter()
	var dels, adds []model.Element
	if t.stateDigests == nil {
		// Not known: write the set anew.
		for _, port := range slices.Sorted(maps.Keys(t.state)) {
			dels = append(dels, t.state[port])
		}
		adds = model.SyncState{Generation: gen, Digests: digests}.Elements()
	} else {
		change := func(e model.Element) {
			if cur, ok := t.state[e.Port]; ok {
				if cur == e {
					return
				}
				dels = append(dels, cur)
			}
			adds = append(adds, e)
		}
		change(model.GenerationElement(gen))
		for i, name := range model.SyncStateMaps {
			old, sums := t.stateDigests[name], digests[name]
			for b, d := range sums {
				if len(old) != len(sums) || old[b] != d {
					change(model.DigestElement(i, b, len(sums), d))
				}
			}
			// Buckets that are no more.
			for b := len(sums); b < len(old); b++ {
				if cur, ok := t.state[model.SyncStatePort(i, b)]; ok {
					dels = append(dels, cur)
				}
			}
		}
	}
	def := t.setDefs[model.SetSyncState]
	if len(dels) > 0 {
		tx.Ops = append(tx.Ops, nft.Op{Kind: nft.DeleteElements, Family: t.fam, Set: withElements(def, dels)})
	}
	if len(adds) > 0 {
		tx.Ops = append(tx.Ops, nft.Op{Kind: nft.AddElements, Family: t.fam, Set: withElements(def, adds)})
	}
	t.pendingState = &stateChange{dels: dels, adds: adds, digests: digests}
}

// stateChange is what a transaction changes in the sync-state set.
type stateChange struct {
	dels, adds []model.Element
	digests    map[string][]uint64
}

// applyState records that the sync-state set holds what c made of it.
func (t *table) applyState(c *stateChange) {
	if t.state == nil {
		t.state = map[uint16]model.Element{}
	}
	for _, e := range c.dels {
		delete(t.state, e.Port)
	}
	for _, e := range c.adds {
		t.state[e.Port] = e
	}
	t.stateDigests = c.digests
}

// readState records the elements of the sync-state set as read back, and the digests they
// record, if they can be read.
func (t *table) readState(s *model.Set) {
	t.state = stateIndex(s)
	t.stateDigests = nil
	if s != nil {
		if st, err := model.ParseSyncState(s.Elements); err == nil {
			t.stateDigests = st.Digests
		}
	}
}

// stateIndex returns the elements of a sync-state set read back, by key.
func stateIndex(s *model.Set) map[uint16]model.Element {
	out := map[uint16]model.Element{}
	if s != nil {
		for _, e := range s.Elements {
			out[e.Port] = e
		}
	}
	return out
}

// trust is what a full sync's read learned from the sync-state set about one endpoint map:
// the buckets of frontends whose elements in the kernel are the desired ones, not read.
type trust struct {
	// gen is the generation of the read that learned it.
	gen     uint32
	buckets int
	ok      []bool
	// claimed counts the claimed elements of the buckets ok.
	claimed int
}

// skip reports whether the slots of frontend k are known to be the desired ones.
func (tr *trust) skip(k model.Key) bool {
	return tr.ok[model.FrontendHash(k)&uint32(tr.buckets-1)]
}

// trustState returns what the elements of the sync-state set, read at generation gen, tell
// of endpoint map set, of the given size: nil when they record another generation (someone
// committed since they were written: anything may have changed), cannot be read, or no
// bucket's digest is the desired elements'.
func (t *table) trustState(set string, size uint32, state []model.Element, gen uint32) *trust {
	if gen == 0 {
		return nil
	}
	st, err := model.ParseSyncState(state)
	if err != nil || st.Generation != gen {
		return nil
	}
	buckets := model.DigestBuckets(size)
	have, want := st.Digests[set], t.claims[set].bucketDigests(buckets)
	if len(have) != buckets || want == nil {
		return nil
	}
	tr := &trust{gen: gen, buckets: buckets, ok: make([]bool, buckets)}
	some := false
	for b := range have {
		if have[b] == want[b].sum {
			tr.ok[b], some = true, true
			tr.claimed += want[b].n
		}
	}
	if !some {
		return nil
	}
	return tr
}
