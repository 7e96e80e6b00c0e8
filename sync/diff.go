package sync

import (
	"maps"
	"reflect"
	"slices"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// tableIndex is the content of one table as read back, indexed by set and key and by chain
// name.
type tableIndex struct {
	// elems points at the elements of the table read back, which never change once built.
	elems  map[string]map[model.Key]*model.Element
	chains map[string]*model.Chain
}

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

// diffAll adds to tx what makes the committed (read back) table equal the desired one: the
// skeleton's and the claimed elements, and the chains want.
func (t *table) diffAll(want []*model.Chain, tx *nft.Transaction) {
	ops := t.newElementDiff()
	for _, sk := range t.skeleton.Sets {
		claims := t.claims[sk.Name]
		fixed := sk.ByKey()
		for k := range t.readBack[sk.Name] {
			if _, ok := fixed[k]; !ok && claims[k].elem == nil {
				ops.element(sk.Name, k, model.Element{}, false)
			}
		}
		for k, e := range fixed {
			ops.element(sk.Name, k, e, true)
		}
		for k, c := range claims {
			if _, ok := fixed[k]; !ok {
				ops.element(sk.Name, k, *c.elem, true)
			}
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

func indexRuleset(rs *model.Ruleset) *tableIndex {
	ts := &tableIndex{elems: map[string]map[model.Key]*model.Element{}, chains: map[string]*model.Chain{}}
	for _, s := range rs.Sets {
		m := make(map[model.Key]*model.Element, len(s.Elements))
		for i := range s.Elements {
			e := &s.Elements[i]
			m[e.Key()] = e
		}
		ts.elems[s.Name] = m
	}
	for _, c := range rs.Chains {
		ts.chains[c.Name] = c
	}
	return ts
}

// desiredChainIndex returns the desired chains by name.
func (t *table) desiredChainIndex() map[string]*model.Chain {
	out := map[string]*model.Chain{}
	for _, c := range t.desiredChains() {
		out[c.Name] = c
	}
	return out
}

// holds reports whether rb, a table read back, holds exactly what t committed last.
func (t *table) holds(rb *tableIndex) bool {
	if len(t.committedChains) != len(rb.chains) {
		return false
	}
	for name, c := range t.committedChains {
		oc, ok := rb.chains[name]
		if !ok || !reflect.DeepEqual(c.Rules, oc.Rules) {
			return false
		}
	}
	counts := t.committedCounts()
	for name, m := range rb.elems {
		if len(m) != counts[name] {
			return false
		}
		for k, e := range m {
			if have, ok := t.committedElement(name, k); !ok || *have != *e {
				return false
			}
		}
	}
	return true
}
