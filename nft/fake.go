package nft

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	gosync "sync"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// Fake is an in-memory Backend. It applies each transaction atomically with the kernel's
// checks that matter to a syncer (an element or chain added twice with different content, a
// missing element or chain deleted, a chain deleted while it has rules or is referenced, a
// set deleted while a rule refers to it, more elements than a set's size, a stale
// generation), keeps the resulting tables, records the last transaction and can be told
// to fail a share of transactions, so that tests of the sync loop can check convergence
// without a kernel.
type Fake struct {
	mu     gosync.Mutex
	tables map[model.Family]*fakeTable
	gen    uint32
	// FailRate is the probability (0 to 1) that a transaction fails with ErrInjected and
	// changes nothing.
	FailRate float64
	rng      *rand.Rand
	// Calls counts the transactions applied, failed ones included.
	Calls int
	// Last holds the last successful transaction.
	Last *Transaction
	// FailReads is how many of the next ReadTable calls fail with ErrInjected.
	FailReads int
	// FailPrunes is how many of the next PruneAffinity calls fail with ErrInjected.
	FailPrunes int
	// affinity holds the affinity entries AddAffinity stood in for the packet path with.
	affinity map[model.Family][]AffinityEntry
}

var _ Backend = (*Fake)(nil)

// fakeTable is one family's table, indexed for cheap updates.
type fakeTable struct {
	sets   []*model.Set // definitions, without elements
	elems  map[string]map[model.Key]model.Element
	chains map[string]*model.Chain
	order  []string // chain creation order
}

// NewFake returns an empty Fake whose injected failures follow seed.
func NewFake(seed uint64) *Fake {
	return &Fake{tables: map[model.Family]*fakeTable{}, gen: 1, rng: rand.New(rand.NewPCG(seed, seed))}
}

func newFakeTable(rs *model.Ruleset) *fakeTable {
	t := &fakeTable{elems: map[string]map[model.Key]model.Element{}, chains: map[string]*model.Chain{}}
	for _, s := range rs.Sets {
		def := *s
		def.Elements = nil
		t.sets = append(t.sets, &def)
		t.elems[s.Name] = s.ByKey()
	}
	for _, c := range rs.Chains {
		t.chains[c.Name] = c
		t.order = append(t.order, c.Name)
	}
	return t
}

// ruleset returns the table as a Ruleset in canonical order: sets and fixed chains in the
// order they were created, then the chains derived from Services sorted by name, as model.Build
// orders them. (The kernel lists chains in creation order, so a chain deleted and created
// again moves to the end there; the order means nothing to packets.)
func (t *fakeTable) ruleset(fam model.Family) *model.Ruleset {
	rs := &model.Ruleset{Family: fam}
	for _, def := range t.sets {
		s := *def
		s.Elements = slices.SortedFunc(maps.Values(t.elems[def.Name]), model.CompareElements)
		rs.Sets = append(rs.Sets, &s)
	}
	var derived []string
	for _, name := range t.order {
		if model.IsServiceChain(name) {
			derived = append(derived, name)
			continue
		}
		c := t.chains[name]
		rs.Chains = append(rs.Chains, &model.Chain{Name: c.Name, Hook: c.Hook, Rules: slices.Clone(c.Rules)})
	}
	slices.Sort(derived)
	for _, name := range derived {
		c := t.chains[name]
		rs.Chains = append(rs.Chains, &model.Chain{Name: c.Name, Hook: c.Hook, Rules: slices.Clone(c.Rules)})
	}
	return rs
}

// references reports whether any element or rule of the table refers to chain.
func (t *fakeTable) references(chain string) bool {
	for _, def := range t.sets {
		if def.Data != model.VerdictData {
			continue
		}
		for _, e := range t.elems[def.Name] {
			if e.Verdict.Chain == chain {
				return true
			}
		}
	}
	for _, c := range t.chains {
		for _, r := range c.Rules {
			for _, x := range r.Exprs {
				if v, ok := x.(model.Verdict); ok && v.Chain == chain {
					return true
				}
			}
		}
	}
	return false
}

// SetFailRate sets FailRate while other goroutines may be using the Fake.
func (f *Fake) SetFailRate(rate float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.FailRate = rate
}

// CallCount returns Calls while other goroutines may be using the Fake.
func (f *Fake) CallCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Calls
}

func (f *Fake) fail() bool {
	f.Calls++
	return f.FailRate > 0 && f.rng.Float64() < f.FailRate
}

// Apply implements Backend.
func (f *Fake) Apply(tx *Transaction, genID uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tx.Empty() {
		return nil
	}
	if f.fail() {
		return ErrInjected
	}
	if genID != 0 && genID != f.gen {
		return ErrGenerationChanged
	}
	// Apply in place, journaling how to undo each step, and roll back on the first error:
	// copying the tables for every transaction would make the Fake, not the syncer, the
	// cost of a small change.
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	for i, rs := range tx.Replace {
		old, had := f.tables[rs.Family]
		t := newFakeTable(tx.Replaced(i))
		f.tables[rs.Family] = t
		undo = append(undo, func() {
			if had {
				f.tables[rs.Family] = old
			} else {
				delete(f.tables, rs.Family)
			}
		})
		for _, def := range t.sets {
			if err := t.checkSize(def); err != nil {
				return fmt.Errorf("%s table: %w", rs.Family, err)
			}
		}
	}
	for i, op := range tx.Ops {
		t := f.tables[op.Family]
		if t == nil {
			return fmt.Errorf("operation %d: no %s table", i, op.Family)
		}
		if err := t.apply(tx, op, &undo); err != nil {
			return fmt.Errorf("operation %d: %w", i, err)
		}
	}
	undo = nil
	f.gen++
	f.Last = tx
	return nil
}

// setIndex returns the index in t.sets of the set named name, or -1.
func (t *fakeTable) setIndex(name string) int {
	return slices.IndexFunc(t.sets, func(s *model.Set) bool { return s.Name == name })
}

// checkSize fails, as the kernel refuses an element beyond a set's size (ENFILE), when the
// set def holds more elements than its size.
func (t *fakeTable) checkSize(def *model.Set) error {
	if n := len(t.elems[def.Name]); def.Size != 0 && n > int(def.Size) {
		return fmt.Errorf("set %s: %d elements, room for %d: %w", def.Name, n, def.Size, unix.ENFILE)
	}
	return nil
}

// replaceSet applies a ReplaceSet operation of tx, appending to undo what reverts it.
func (t *fakeTable) replaceSet(tx *Transaction, op Op, undo *[]func()) error {
	i := t.setIndex(op.Set.Name)
	if i < 0 {
		return fmt.Errorf("set %s: no such set", op.Set.Name)
	}
	for _, c := range t.chains {
		if c.UsesSet(op.Set.Name) {
			return fmt.Errorf("set %s: delete a set that chain %s refers to", op.Set.Name, c.Name)
		}
	}
	oldDef, oldElems := t.sets[i], t.elems[op.Set.Name]
	def := *tx.wholeSet(op.Family, op.Set)
	elems := make(map[model.Key]model.Element, len(def.Elements))
	for _, e := range def.Elements {
		if old, ok := elems[e.Key()]; ok && old != e {
			return fmt.Errorf("set %s: element %v added twice with other data", op.Set.Name, e.Key())
		}
		elems[e.Key()] = e
	}
	def.Elements = nil
	for _, e := range elems {
		if e.Verdict.Chain != "" && t.chains[e.Verdict.Chain] == nil {
			return fmt.Errorf("set %s: element refers to missing chain %s", op.Set.Name, e.Verdict.Chain)
		}
	}
	t.sets[i], t.elems[op.Set.Name] = &def, elems
	*undo = append(*undo, func() { t.sets[i], t.elems[op.Set.Name] = oldDef, oldElems })
	return t.checkSize(&def)
}

// apply applies one operation of tx, appending to undo what reverts it.
func (t *fakeTable) apply(tx *Transaction, op Op, undo *[]func()) error {
	// Chain changes are undone by restoring the chain index and order as they were.
	chains, order := maps.Clone(t.chains), slices.Clone(t.order)
	restoreChains := func() { t.chains, t.order = chains, order }
	switch op.Kind {
	case AddElements, DeleteElements:
		m, ok := t.elems[op.Set.Name]
		if !ok {
			return fmt.Errorf("set %s: no such set", op.Set.Name)
		}
		for _, e := range op.Set.Elements {
			k := e.Key()
			old, ok := m[k]
			if op.Kind == DeleteElements {
				if !ok {
					return fmt.Errorf("set %s: delete missing element %v", op.Set.Name, k)
				}
				delete(m, k)
				*undo = append(*undo, func() { m[k] = old })
				continue
			}
			if ok && old != e {
				return fmt.Errorf("set %s: element %v exists with other data", op.Set.Name, k)
			}
			if e.Verdict.Chain != "" && t.chains[e.Verdict.Chain] == nil {
				return fmt.Errorf("set %s: element refers to missing chain %s", op.Set.Name, e.Verdict.Chain)
			}
			m[k] = e
			if !ok {
				*undo = append(*undo, func() { delete(m, k) })
			}
		}
		if op.Kind == AddElements {
			return t.checkSize(t.sets[t.setIndex(op.Set.Name)])
		}
		return nil
	case ReplaceSet:
		return t.replaceSet(tx, op, undo)
	case AddChain:
		if old, ok := t.chains[op.Chain.Name]; ok {
			if len(old.Rules) > 0 || len(op.Chain.Rules) > 0 {
				return fmt.Errorf("chain %s exists", op.Chain.Name)
			}
		} else {
			t.order = append(t.order, op.Chain.Name)
		}
		t.chains[op.Chain.Name] = op.Chain
	case RewriteChain, FlushChain:
		old, ok := t.chains[op.Chain.Name]
		if !ok {
			return fmt.Errorf("chain %s: no such chain", op.Chain.Name)
		}
		c := &model.Chain{Name: old.Name, Hook: old.Hook}
		if op.Kind == RewriteChain {
			c.Rules = op.Chain.Rules
		}
		t.chains[c.Name] = c
	case DeleteChain:
		c, ok := t.chains[op.Chain.Name]
		switch {
		case !ok:
			return fmt.Errorf("chain %s: no such chain", op.Chain.Name)
		case len(c.Rules) > 0:
			return fmt.Errorf("chain %s: delete a chain that has rules", op.Chain.Name)
		case t.references(op.Chain.Name):
			return fmt.Errorf("chain %s: delete a chain in use", op.Chain.Name)
		}
		delete(t.chains, op.Chain.Name)
		t.order = slices.DeleteFunc(t.order, func(n string) bool { return n == op.Chain.Name })
	default:
		return fmt.Errorf("unknown operation %d", op.Kind)
	}
	*undo = append(*undo, restoreChains)
	return nil
}

// Replace replaces the tables of the given rulesets' families.
func (f *Fake) Replace(rulesets ...*model.Ruleset) error {
	return f.Apply(&Transaction{Replace: rulesets}, 0)
}

// ReadTable implements Backend. The Fake always holds tables in the layout it was given, so
// it never reports ErrIncompatible.
func (f *Fake) ReadTable(fam model.Family, _ []*model.Set, expected func() Expected) (*model.Ruleset, uint32, error) {
	exp := expected()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailReads > 0 {
		f.FailReads--
		return nil, 0, ErrInjected
	}
	t := f.tables[fam]
	if t == nil {
		return nil, f.gen, nil
	}
	rs := t.ruleset(fam)
	if exp.Unchanged != nil {
		// As Netlink looks the endpoint maps up (every one here, where Netlink dumps a small
		// map whole): not the slots of the frontends the caller knows unchanged.
		var state []model.Element
		if st := rs.Set(model.SetSyncState); st != nil {
			state = st.Elements
		}
		for _, s := range rs.Sets {
			if !isEndpointMap(s) {
				continue
			}
			if skip := exp.Unchanged(s.Name, s.Size, state, f.gen); skip != nil {
				s.Elements = slices.DeleteFunc(s.Elements, func(e model.Element) bool { return skip(frontendKey(e.Key())) })
			}
		}
	}
	if exp.Elements != nil {
		// As Netlink does, in batches (small ones, so that there are several).
		for _, s := range rs.Sets {
			if !isEndpointMap(s) {
				continue
			}
			for b := range slices.Chunk(s.Elements, fakeReadBatch) {
				exp.Elements(s.Name, b)
			}
			s.Elements = nil
		}
	}
	return rs, f.gen, nil
}

// fakeReadBatch is how many endpoint map elements the Fake hands Expected.Elements at a time.
const fakeReadBatch = 7

// Generation implements Backend.
func (f *Fake) Generation() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, nil
}

// Delete implements Backend.
func (f *Fake) Delete(families ...model.Family) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail() {
		return ErrInjected
	}
	for _, fam := range families {
		delete(f.tables, fam)
	}
	f.gen++
	return nil
}

// Tamper changes the table of fam behind the syncer's back, as an operator running nft
// would, and bumps the generation.
func (f *Fake) Tamper(fam model.Family, change func(rs *model.Ruleset)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[fam]
	if t == nil {
		return
	}
	rs := t.ruleset(fam)
	change(rs)
	f.tables[fam] = newFakeTable(rs)
	f.gen++
}

// AddAffinity adds an entry to fam's affinity map, as the packet path would when a client
// connects to a Service with session affinity.
func (f *Fake) AddAffinity(fam model.Family, e AffinityEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.affinity == nil {
		f.affinity = map[model.Family][]AffinityEntry{}
	}
	f.affinity[fam] = append(f.affinity[fam], e)
}

// Affinity returns fam's affinity entries.
func (f *Fake) Affinity(fam model.Family) []AffinityEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.affinity[fam])
}

// PruneAffinity implements Backend.
func (f *Fake) PruneAffinity(fam model.Family, keep func(AffinityEntry) bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailPrunes > 0 {
		f.FailPrunes--
		return 0, ErrInjected
	}
	before := len(f.affinity[fam])
	if before == 0 {
		return 0, nil
	}
	f.affinity[fam] = slices.DeleteFunc(f.affinity[fam], func(e AffinityEntry) bool { return !keep(e) })
	return before - len(f.affinity[fam]), nil
}

// Render returns the table of fam as nft would list it, but for the elements of the
// sync-state set (model.WithoutSyncState; SyncState gives them), or "" when there is none.
func (f *Fake) Render(fam model.Family) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.tables[fam]; t != nil {
		return model.Render(model.WithoutSyncState(t.ruleset(fam)))
	}
	return ""
}

// SyncState returns the elements of the sync-state set of fam's table (model.SyncState),
// which Render leaves out.
func (f *Fake) SyncState(fam model.Family) []model.Element {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.tables[fam]; t != nil {
		return slices.SortedFunc(maps.Values(t.elems[model.SetSyncState]), model.CompareElements)
	}
	return nil
}
