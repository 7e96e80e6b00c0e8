package sync

import (
	"iter"
	"maps"
	"reflect"
	"slices"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// elementDiff gathers the element additions and deletions that make a table's committed
// elements the desired ones, per set; emit writes them in a stable order.
type elementDiff struct {
	t    *table
	adds map[string][]model.Element
	dels map[string][]model.Element
}

func (t *table) newElementDiff() *elementDiff {
	return &elementDiff{t: t, adds: map[string][]model.Element{}, dels: map[string][]model.Element{}}
}

// element makes the committed element of set with key k equal want (absent when !ok).
func (o *elementDiff) element(set string, k model.Key, want model.Element, ok bool) {
	have, had := o.t.committedElement(set, k)
	switch {
	case had && ok && *have == want:
	case had && ok:
		o.dels[set] = append(o.dels[set], *have)
		o.adds[set] = append(o.adds[set], want)
	case had:
		o.dels[set] = append(o.dels[set], *have)
	case ok:
		o.adds[set] = append(o.adds[set], want)
	}
}

func (o *elementDiff) emit(tx *nft.Transaction, chainOps []nft.Op) {
	fam := o.t.fam
	var adds, dels []nft.Op
	for _, def := range o.t.skeleton.Sets {
		if d := o.dels[def.Name]; len(d) > 0 {
			slices.SortFunc(d, model.CompareElements)
			dels = append(dels, nft.Op{Kind: nft.DeleteElements, Family: fam, Set: withElements(o.t.setDefs[def.Name], d)})
		}
		if a := o.adds[def.Name]; len(a) > 0 {
			slices.SortFunc(a, model.CompareElements)
			adds = append(adds, nft.Op{Kind: nft.AddElements, Family: fam, Set: withElements(o.t.setDefs[def.Name], a)})
		}
	}
	// New chains first (elements may point at them), then deletions before additions (an
	// element whose value changes is deleted and added again), then chain rewrites and
	// flushes (nothing points at a flushed chain any more).
	for _, op := range chainOps {
		if op.Kind == nft.AddChain {
			tx.Ops = append(tx.Ops, op)
		}
	}
	tx.Ops = append(tx.Ops, dels...)
	tx.Ops = append(tx.Ops, adds...)
	for _, op := range chainOps {
		if op.Kind != nft.AddChain {
			tx.Ops = append(tx.Ops, op)
		}
	}
}

func withElements(def *model.Set, elems []model.Element) *model.Set {
	s := *def
	s.Elements = elems
	return &s
}

// chainOp returns the operation that makes the committed chain name equal want (nil: the
// chain is not wanted), if any.
func (t *table) chainOp(name string, want *model.Chain) (nft.Op, bool) {
	have, had := t.committedChains[name]
	switch {
	case want == nil && had && len(have.Rules) > 0:
		return nft.Op{Kind: nft.FlushChain, Family: t.fam, Chain: &model.Chain{Name: name}}, true
	case want == nil && had:
		// Already flushed; it is deleted by the next commit.
		t.staleChains[name] = true
	case want != nil && !had:
		return nft.Op{Kind: nft.AddChain, Family: t.fam, Chain: want}, true
	case want != nil && !reflect.DeepEqual(have.Rules, want.Rules):
		return nft.Op{Kind: nft.RewriteChain, Family: t.fam, Chain: want}, true
	}
	return nft.Op{}, false
}

// diffTouched adds to tx what makes the touched keys and chains of the committed table
// equal the desired ones.
func (t *table) diffTouched(touched dirty, tx *nft.Transaction) {
	ops := t.newElementDiff()
	for set, keys := range touched.elems {
		for k := range keys {
			want, ok := t.wantElement(set, k)
			ops.element(set, k, want, ok)
		}
	}
	var chainOps []nft.Op
	for _, name := range slices.Sorted(maps.Keys(touched.chains)) {
		if op, ok := t.chainOp(name, t.chainDefs[name]); ok {
			chainOps = append(chainOps, op)
		}
	}
	ops.emit(tx, chainOps)
}

// cleanStale deletes the chains flushed by an earlier commit that are still unwanted.
func (t *table) cleanStale(tx *nft.Transaction) {
	for _, name := range slices.Sorted(maps.Keys(t.staleChains)) {
		if t.chainDefs[name] != nil || t.isSkeletonChain(name) {
			continue
		}
		if c := t.committedChains[name]; c != nil && len(c.Rules) == 0 {
			tx.Ops = append(tx.Ops, nft.Op{Kind: nft.DeleteChain, Family: t.fam, Chain: &model.Chain{Name: name}})
		}
	}
}

func (t *table) isSkeletonChain(name string) bool {
	return t.skeleton.Chain(name) != nil
}

// readBack is a table as a full sync read it: the ruleset ReadTable returned, and the
// elements of its endpoint maps, which came apart in batches (nft.Expected.Elements). No
// set holds a key twice; the order means nothing.
type readBack struct {
	rs      *model.Ruleset
	batches map[string][][]model.Element
	// trusted holds, per endpoint map, the buckets not read back: the sync-state set shows
	// them holding the desired elements.
	trusted map[string]*trust
}

// elements returns the elements read of set, in batches.
func (rb readBack) elements(set string) [][]model.Element {
	out := rb.batches[set]
	if s := rb.rs.Set(set); s != nil && len(s.Elements) > 0 {
		out = append([][]model.Element{s.Elements}, out...)
	}
	return out
}

// diffAll adds to tx what makes the table read back (have) equal the desired one: the
// skeleton's and the claimed elements, and the chains want.
//
// Each element read is compared with the desired one of its key; only when fewer desired
// keys were found than there are is the read table indexed, to find those missing. At a
// million endpoints a restart finds them all, and one map lookup per element read is what
// the comparison costs: indexing the read elements and looking each desired key up in that
// index cost three.
func (t *table) diffAll(have readBack, want []*model.Chain, tx *nft.Transaction) {
	ops := t.newElementDiff()
	for _, sk := range t.skeleton.Sets {
		if sk.Name != model.SetSyncState { // written apart, by writeState
			ops.set(sk.Name, have.elements(sk.Name), have.trusted[sk.Name])
		}
	}
	var chainOps []nft.Op
	wanted := map[string]bool{}
	for _, c := range want {
		wanted[c.Name] = true
		if op, ok := t.chainOp(c.Name, c); ok {
			chainOps = append(chainOps, op)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(t.committedChains)) {
		if !wanted[name] {
			if op, ok := t.chainOp(name, nil); ok {
				chainOps = append(chainOps, op)
			}
		}
	}
	ops.emit(tx, chainOps)
	t.cleanStale(tx)
}

// set makes the elements of set, read back as read (in batches, no key twice), the desired
// ones: the skeleton's (fixed) and, for the other keys, the claimed. The buckets tr trusts
// (nil: none) were not read: they hold the claimed elements.
func (o *elementDiff) set(set string, read [][]model.Element, tr *trust) {
	fixed, claims := o.t.fixed[set], o.t.claims[set]
	desired := claims.len()
	for k := range fixed {
		if claims.get(k).elem == nil {
			desired++
		}
	}
	if tr != nil {
		desired -= tr.claimed
	}
	found, held := 0, 0
	for _, batch := range read {
		held += len(batch)
		for i := range batch {
			have := &batch[i]
			k := have.Key()
			want := fixed[k]
			if want == nil {
				want = claims.get(k).elem
			}
			switch {
			case want == nil:
				o.dels[set] = append(o.dels[set], *have)
				continue
			case *have != *want:
				o.dels[set] = append(o.dels[set], *have)
				o.adds[set] = append(o.adds[set], *want)
			}
			if tr == nil || !tr.skip(k) { // a trusted key is not among the desired counted
				found++
			}
		}
	}
	if found == desired {
		return
	}
	keys := make(map[model.Key]struct{}, held)
	for _, batch := range read {
		for i := range batch {
			keys[batch[i].Key()] = struct{}{}
		}
	}
	for k, e := range fixed {
		if _, ok := keys[k]; !ok {
			o.adds[set] = append(o.adds[set], *e)
		}
	}
	for c := range claims.all() {
		if k := c.elem.Key(); fixed[k] == nil {
			if _, ok := keys[k]; ok || tr != nil && tr.skip(k) {
				continue
			}
			o.adds[set] = append(o.adds[set], *c.elem)
		}
	}
}

// chainIndex returns the chains of rs by name.
func chainIndex(rs *model.Ruleset) map[string]*model.Chain {
	out := make(map[string]*model.Chain, len(rs.Chains))
	for _, c := range rs.Chains {
		out[c.Name] = c
	}
	return out
}

// desiredChainIndex returns the desired chains by name.
func (t *table) desiredChainIndex() map[string]*model.Chain {
	out := map[string]*model.Chain{}
	for _, c := range t.desiredChains() {
		out[c.Name] = c
	}
	return out
}

// holds reports whether have, a table read back, holds exactly what t committed last.
func (t *table) holds(have readBack) bool {
	if len(t.committedChains) != len(have.rs.Chains) {
		return false
	}
	for _, c := range have.rs.Chains {
		oc, ok := t.committedChains[c.Name]
		if !ok || !reflect.DeepEqual(c.Rules, oc.Rules) {
			return false
		}
	}
	counts := t.committedCounts()
	for _, s := range have.rs.Sets {
		if s.Name == model.SetSyncState {
			continue
		}
		n := 0
		for _, batch := range have.elements(s.Name) {
			n += len(batch)
			for i := range batch {
				e := &batch[i]
				if c, ok := t.committedElement(s.Name, e.Key()); !ok || *c != *e {
					return false
				}
			}
		}
		if n != counts[s.Name] {
			return false
		}
	}
	return true
}

// growMaps makes room, in tx, for the elements of the endpoint maps that would hold more
// than their size once tx is committed, or whose size is not known (0: a table of an earlier
// version, whose maps the kernel made resizable, or a full sync after the kernel found a map
// full, Syncer.regrow): such a map is created anew, sized to its elements
// (model.EndpointMapSize), holding every claimed element, in place of tx's changes to its
// elements. The rules that use it are flushed first and written again last, unless tx
// rewrites or flushes them itself. The sizes are the table's once tx is committed.
//
// tx.More gives the new maps' elements, in the claims' order (claimedByPart, which a
// replaced table's encoder reads faster, needs a table built whole: a partial sync's is
// not); it must be set before, if at all. The endpoint maps hold no fixed elements.
func (t *table) growMaps(tx *nft.Transaction) {
	grow := map[string]*model.Set{}
	for _, def := range t.skeleton.Sets {
		if !model.IsEndpointMap(def) {
			continue
		}
		n := t.elementCount(def.Name)
		if size := t.sizes[def.Name]; size != 0 && n <= int(size) {
			continue
		}
		sized := *def
		sized.Size = model.EndpointMapSize(n)
		grow[def.Name] = &sized
	}
	if len(grow) == 0 {
		return
	}
	handled := map[string]bool{}
	tx.Ops = slices.DeleteFunc(tx.Ops, func(op nft.Op) bool {
		if op.Family != t.fam {
			return false
		}
		switch op.Kind {
		case nft.AddElements, nft.DeleteElements:
			return grow[op.Set.Name] != nil
		case nft.RewriteChain, nft.FlushChain, nft.DeleteChain:
			handled[op.Chain.Name] = true
		}
		return false
	})
	var before, after []nft.Op
	for _, name := range slices.Sorted(maps.Keys(t.committedChains)) {
		c := t.committedChains[name]
		uses := false
		for set := range grow {
			uses = uses || c.UsesSet(set)
		}
		if !uses {
			continue
		}
		before = append(before, nft.Op{Kind: nft.FlushChain, Family: t.fam, Chain: &model.Chain{Name: name}})
		if !handled[name] {
			after = append(after, nft.Op{Kind: nft.RewriteChain, Family: t.fam, Chain: c})
		}
	}
	for _, def := range t.skeleton.Sets {
		if s := grow[def.Name]; s != nil {
			before = append(before, nft.Op{Kind: nft.ReplaceSet, Family: t.fam, Set: s})
			t.resized[def.Name] = s.Size
		}
	}
	tx.Ops = append(append(before, tx.Ops...), after...)
	more := tx.More
	tx.More = func(fam model.Family, set string) (iter.Seq[*model.Element], int) {
		if fam == t.fam && grow[set] != nil {
			return t.claimedElements(set)
		}
		if more == nil {
			return func(func(*model.Element) bool) {}, 0
		}
		return more(fam, set)
	}
}
