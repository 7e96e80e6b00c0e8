package sync

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"runtime"
	"slices"
	gosync "sync"
	"time"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// Syncer keeps nftproxy's tables in line with the Services it is given, writing only what
// changed. It holds, per family, each Service's Part of the ruleset, which Services claim
// each set element and chain, and what it last committed. A partial sync rebuilds the Parts
// of the Services that changed since the last sync and commits the difference their claims
// make; a full sync reads the tables back from the kernel and commits the difference to the
// whole desired ruleset. Either way the commit is one transaction, conditional on the
// ruleset generation the syncer last saw, so a change made by anyone else turns the next
// sync into a full one.
//
// A Syncer is not safe for concurrent use; the sync loop (Proxy) owns it.
type Syncer struct {
	// Backend reads and writes the tables.
	Backend nft.Backend
	// Families lists the families to program.
	Families []model.Family
	// Conntrack, when set, is told about UDP endpoints that went away and UDP Service ports
	// that got their first endpoint.
	Conntrack Conntrack

	conntrackErrs []error
	affinityErrs  []error

	node     map[model.Family]model.NodeConfig
	services map[model.ServiceName]*model.Service
	// pending holds Services changed since the last successful sync, with the time of their
	// first change; nil values are deletions.
	pending map[model.ServiceName]pendingChange
	tables  map[model.Family]*familyState
	// gen is the generation after the last commit, 0 when unknown.
	gen      uint32
	needFull bool
}

type pendingChange struct {
	svc   *model.Service
	since time.Time
}

// familyState is the syncer's view of one family's table.
type familyState struct {
	fam      model.Family
	node     model.NodeConfig
	skeleton *model.Ruleset
	setDefs  map[string]*model.Set
	parts    map[model.ServiceName]*model.Part
	// claims records, per set and key, the Services whose Part holds that key.
	claims map[string]map[model.Key]*claim
	// chainClaims counts the Parts that hold each dynamic chain, and chainDefs keeps its
	// content (identical in every Part that holds it).
	chainClaims map[string]int
	chainDefs   map[string]*model.Chain
	// committed is what the table holds after the last commit.
	committed *tableState
	// staleChains were flushed by an earlier commit and are deleted by the next one.
	staleChains map[string]bool
}

// claim lists the Services whose Parts hold one key of a set. The first by name wins: its
// element is the desired one. Almost every key has a single owner.
type claim struct {
	first model.ServiceName
	elem  *model.Element // the first owner's element, inside its Part
	// others are the other owners, sorted.
	others []model.ServiceName
}

// tableState is the content of one table, indexed.
type tableState struct {
	// elems points at the committed elements: in the Parts, in the transactions that
	// wrote them or in the tables read back, which never change once built. Pointers
	// rather than copies keep a third of a large table's elements out of the heap.
	elems  map[string]map[model.Key]*model.Element
	chains map[string]*model.Chain
}

// SyncResult describes one sync.
type SyncResult struct {
	// Full is set for a sync that compared the whole table read back from the kernel.
	Full bool
	// Objects counts the kernel objects the transaction wrote (0 when nothing changed).
	Objects int
	// Services counts the Services the sync rebuilt.
	Services int
	// Oldest is the time of the oldest change this sync programmed (zero if none).
	Oldest time.Time
	// DriftRepaired is set when a full sync found the kernel different from what the
	// syncer had committed.
	DriftRepaired bool
	// Elements counts the elements of each set and map after the sync, per family.
	Elements map[model.Family]map[string]int
	// AffinityReleased counts the session affinity entries deleted because their endpoint
	// went away.
	AffinityReleased int
}

// NewSyncer returns a Syncer for the given families whose first sync is a full one.
func NewSyncer(backend nft.Backend, families ...model.Family) *Syncer {
	return &Syncer{
		Backend:  backend,
		Families: families,
		node:     map[model.Family]model.NodeConfig{},
		services: map[model.ServiceName]*model.Service{},
		pending:  map[model.ServiceName]pendingChange{},
		tables:   map[model.Family]*familyState{},
		needFull: true,
	}
}

// SetNode sets the node configuration of each family. A change rebuilds every Service.
func (s *Syncer) SetNode(cfgs map[model.Family]model.NodeConfig) {
	if reflect.DeepEqual(cfgs, s.node) {
		return
	}
	s.node = maps.Clone(cfgs)
	s.tables = map[model.Family]*familyState{}
	s.needFull = true
}

// Update records the new state of Services: a nil value deletes the Service. Changes that
// bring a Service back to what was last synced cancel out.
func (s *Syncer) Update(changes map[model.ServiceName]*model.Service, now time.Time) {
	for name, svc := range changes {
		cur := s.services[name]
		if (svc == nil && cur == nil) || (svc != nil && cur != nil && reflect.DeepEqual(svc, cur)) {
			delete(s.pending, name)
			continue
		}
		p, ok := s.pending[name]
		if !ok {
			p.since = now
		}
		p.svc = svc
		s.pending[name] = p
	}
}

// Pending reports whether a sync has work: changes to program, a full sync due, or stale
// chains to delete.
func (s *Syncer) Pending() bool {
	if s.needFull || len(s.pending) > 0 {
		return true
	}
	for _, t := range s.tables {
		if len(t.staleChains) > 0 {
			return true
		}
	}
	return false
}

// RequestFull makes the next sync a full one.
func (s *Syncer) RequestFull() { s.needFull = true }

// Sync programs the pending changes. It does a full sync when one is due or when the
// ruleset generation shows that someone else changed the ruleset since the last commit;
// otherwise it only looks at the changed Services. On error nothing was committed and the
// next sync is a full one.
func (s *Syncer) Sync() (SyncResult, error) {
	if !s.needFull {
		gen, err := s.Backend.Generation()
		if err != nil {
			s.needFull = true
			return SyncResult{}, fmt.Errorf("read ruleset generation: %w", err)
		}
		if gen != s.gen {
			s.needFull = true
		}
	}
	var res SyncResult
	var err error
	if s.needFull {
		res, err = s.syncFull()
	} else {
		res, err = s.syncPartial()
	}
	if err != nil {
		s.needFull = true
		return res, err
	}
	s.needFull = false
	res.Elements = map[model.Family]map[string]int{}
	for fam, t := range s.tables {
		res.Elements[fam] = map[string]int{}
		for name, m := range t.committed.elems {
			res.Elements[fam][name] = len(m)
		}
	}
	return res, nil
}

// takePending moves the pending changes into the Service set and returns them.
func (s *Syncer) takePending() (map[model.ServiceName]pendingChange, map[model.ServiceName]*model.Service) {
	changes := s.pending
	old := make(map[model.ServiceName]*model.Service, len(changes))
	for name, p := range changes {
		old[name] = s.services[name]
		if p.svc == nil {
			delete(s.services, name)
		} else {
			s.services[name] = p.svc
		}
	}
	s.pending = map[model.ServiceName]pendingChange{}
	return changes, old
}

// restorePending undoes takePending after a failed sync.
func (s *Syncer) restorePending(changes map[model.ServiceName]pendingChange, old map[model.ServiceName]*model.Service) {
	for name, svc := range old {
		if svc == nil {
			delete(s.services, name)
		} else {
			s.services[name] = svc
		}
	}
	for name, p := range changes {
		if _, newer := s.pending[name]; !newer {
			s.pending[name] = p
		}
	}
}

func oldest(changes map[model.ServiceName]pendingChange) time.Time {
	var t time.Time
	for _, p := range changes {
		if t.IsZero() || p.since.Before(t) {
			t = p.since
		}
	}
	return t
}

// syncPartial rebuilds the changed Services and commits the difference to the last commit.
func (s *Syncer) syncPartial() (SyncResult, error) {
	changes, old := s.takePending()
	res := SyncResult{Services: len(changes), Oldest: oldest(changes)}
	tx := &nft.Transaction{}
	var udp []udpChange
	releases := map[model.Family][]model.Key{}
	type undo struct {
		t     *familyState
		parts map[model.ServiceName]*model.Part
	}
	var undos []undo
	for _, fam := range s.Families {
		t := s.tables[fam]
		prev := map[model.ServiceName]*model.Part{}
		touched := touchedKeys{}
		for name := range changes {
			oldPart := t.parts[name]
			prev[name] = oldPart
			var newPart *model.Part
			if svc := s.services[name]; svc != nil {
				newPart = model.BuildPart(svc, s.node[fam])
			}
			t.setPart(name, newPart, &touched)
			udp = appendUDPChanges(udp, oldPart, newPart)
			releases[fam] = appendAffinityReleases(releases[fam], oldPart, newPart)
		}
		undos = append(undos, undo{t, prev})
		t.diffTouched(touched, tx)
		t.cleanStale(tx)
	}
	res.Objects = tx.Objects()
	if err := s.commit(tx); err != nil {
		for _, u := range undos {
			for name, p := range u.parts {
				u.t.setPart(name, p, nil)
			}
		}
		s.restorePending(changes, old)
		return res, err
	}
	s.afterCommit(tx)
	s.clearConntrack(udp)
	res.AffinityReleased = s.releaseAffinity(releases, false)
	return res, nil
}

// commit applies tx conditionally on the last known generation and records the new one.
func (s *Syncer) commit(tx *nft.Transaction) error {
	if tx.Empty() {
		return nil
	}
	if err := s.Backend.Apply(tx, s.gen); err != nil {
		return err
	}
	// Every commit advances the generation by one. Should someone else commit right after
	// us, the next sync sees a generation it does not expect and reads the tables back.
	s.gen++
	return nil
}

// afterCommit records a committed transaction in the families' committed state.
func (s *Syncer) afterCommit(tx *nft.Transaction) {
	for _, op := range tx.Ops {
		t := s.tables[op.Family]
		switch op.Kind {
		case nft.AddElements:
			m := t.committed.elems[op.Set.Name]
			for i := range op.Set.Elements {
				e := &op.Set.Elements[i]
				m[e.Key()] = e
			}
		case nft.DeleteElements:
			m := t.committed.elems[op.Set.Name]
			for _, e := range op.Set.Elements {
				delete(m, e.Key())
			}
		case nft.AddChain, nft.RewriteChain:
			t.committed.chains[op.Chain.Name] = op.Chain
			delete(t.staleChains, op.Chain.Name)
		case nft.FlushChain:
			t.committed.chains[op.Chain.Name] = &model.Chain{Name: op.Chain.Name}
			t.staleChains[op.Chain.Name] = true
		case nft.DeleteChain:
			delete(t.committed.chains, op.Chain.Name)
			delete(t.staleChains, op.Chain.Name)
		}
	}
}

// syncFull rebuilds every Service, reads the tables back and commits the difference.
func (s *Syncer) syncFull() (SyncResult, error) {
	changes, old := s.takePending()
	res := SyncResult{Full: true, Services: len(s.services), Oldest: oldest(changes)}
	tx := &nft.Transaction{}
	tables := map[model.Family]*familyState{}
	replaced := map[*familyState]bool{}
	var gen uint32
	for i, fam := range s.Families {
		t := newFamilyState(fam, s.node[fam])
		// Build every Part while the kernel dumps the table's sets: the chains to expect
		// are known only once the Parts are.
		var chains []*model.Chain
		built := make(chan struct{})
		go func() {
			defer close(built)
			t.buildAll(s.services)
			chains = t.desiredChains()
		}()
		have, g, err := s.Backend.ReadTable(fam, t.skeleton.Sets, func() []*model.Chain {
			<-built
			return chains
		})
		<-built
		switch {
		case err != nil && !errors.Is(err, nft.ErrIncompatible):
			s.restorePending(changes, old)
			return res, fmt.Errorf("read %s table: %w", fam, err)
		case err != nil || have == nil:
			// No table, or one in another layout: replace it whole. Only this case needs
			// every element as a list; the diff looks elements up in the claims.
			tx.Replace = append(tx.Replace, t.desired(false))
			replaced[t] = true
		default:
			t.committed = indexRuleset(have)
			if prev := s.tables[fam]; prev != nil && prev.committed != nil && !prev.committed.equal(t.committed) {
				res.DriftRepaired = true
			}
			t.diffAll(chains, tx)
		}
		if i > 0 && g != gen {
			s.restorePending(changes, old)
			return res, fmt.Errorf("read tables: %w", nft.ErrGenerationChanged)
		}
		gen = g
		tables[fam] = t
	}
	res.Objects = tx.Objects()
	s.gen = gen
	// Once committed, every table holds exactly the desired elements: index them from the
	// claims (pointers into the Parts) while the kernel commits, so that neither a copy of
	// the elements nor the tables read back outlive the sync.
	next := make(map[*familyState]*tableState, len(tables))
	var mu gosync.Mutex
	var wg gosync.WaitGroup
	for _, t := range tables {
		wg.Go(func() {
			ts := t.indexClaims()
			mu.Lock()
			next[t] = ts
			mu.Unlock()
		})
	}
	err := s.commit(tx)
	wg.Wait()
	if err != nil {
		s.restorePending(changes, old)
		return res, err
	}
	s.tables = tables
	// The diff's chain operations are recorded as they went (the flushed chains are deleted
	// by the next commit); afterCommit ignores Replace, whose tables take the index whole.
	s.afterCommit(tx)
	for t, ts := range next {
		if replaced[t] {
			t.committed = ts
		} else {
			t.committed.elems = ts.elems
		}
	}
	var udp []udpChange
	for name, p := range changes {
		if p.svc == nil {
			continue
		}
		// A full sync cannot tell which endpoints went away; clear the destinations of UDP
		// ports that have endpoints now, which covers "first endpoint".
		for _, t := range tables {
			udp = appendUDPChanges(udp, nil, t.parts[name])
		}
	}
	s.clearConntrack(udp)
	// Nor which endpoints clients are remembered with: check them all.
	res.AffinityReleased = s.releaseAffinity(nil, true)
	return res, nil
}

func newFamilyState(fam model.Family, node model.NodeConfig) *familyState {
	sk := model.Skeleton(node)
	t := &familyState{
		fam:         fam,
		node:        node,
		skeleton:    sk,
		setDefs:     map[string]*model.Set{},
		parts:       map[model.ServiceName]*model.Part{},
		claims:      map[string]map[model.Key]*claim{},
		chainClaims: map[string]int{},
		chainDefs:   map[string]*model.Chain{},
		staleChains: map[string]bool{},
	}
	for _, set := range sk.Sets {
		def := *set
		def.Elements = nil
		t.setDefs[set.Name] = &def
		t.claims[set.Name] = map[model.Key]*claim{}
	}
	return t
}

// buildAll sets the Parts of all services, sizing the claim maps first.
func (t *familyState) buildAll(services map[model.ServiceName]*model.Service) {
	// Parts are independent: build them on every CPU.
	names := slices.Collect(maps.Keys(services))
	built := make([]*model.Part, len(names))
	workers := min(runtime.GOMAXPROCS(0), 8)
	var wg gosync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(names); i += workers {
				built[i] = model.BuildPart(services[names[i]], t.node)
			}
		})
	}
	wg.Wait()
	parts := make(map[model.ServiceName]*model.Part, len(services))
	counts := map[string]int{}
	for i, part := range built {
		parts[names[i]] = part
		for _, pe := range part.Elements {
			counts[pe.Set]++
		}
	}
	for set, n := range counts {
		if len(t.claims[set]) == 0 {
			t.claims[set] = make(map[model.Key]*claim, n)
		}
	}
	t.parts = make(map[model.ServiceName]*model.Part, len(services))
	for name, part := range parts {
		t.setPart(name, part, nil)
	}
}

// touchedKeys collects the set keys and chains a change of Parts may have changed.
type touchedKeys struct {
	elems  map[string]map[model.Key]bool
	chains map[string]bool
}

func (tk *touchedKeys) element(set string, k model.Key) {
	if tk.elems == nil {
		tk.elems = map[string]map[model.Key]bool{}
	}
	if tk.elems[set] == nil {
		tk.elems[set] = map[model.Key]bool{}
	}
	tk.elems[set][k] = true
}

func (tk *touchedKeys) chain(name string) {
	if tk.chains == nil {
		tk.chains = map[string]bool{}
	}
	tk.chains[name] = true
}

// setPart replaces the Part of a Service (nil removes it), updating the claims and noting in
// touched (if not nil) what may have changed.
func (t *familyState) setPart(name model.ServiceName, part *model.Part, touched *touchedKeys) {
	if old := t.parts[name]; old != nil {
		delete(t.parts, name)
		for _, pe := range old.Elements {
			k := pe.Element.Key()
			t.unclaim(pe.Set, k, name)
			if touched != nil {
				touched.element(pe.Set, k)
			}
		}
		for _, c := range old.Chains {
			if t.chainClaims[c.Name]--; t.chainClaims[c.Name] <= 0 {
				delete(t.chainClaims, c.Name)
				delete(t.chainDefs, c.Name)
			}
			if touched != nil {
				touched.chain(c.Name)
			}
		}
	}
	if part == nil || (len(part.Elements) == 0 && len(part.Chains) == 0) {
		return
	}
	t.parts[name] = part
	for i := range part.Elements {
		pe := &part.Elements[i]
		k := pe.Element.Key()
		t.claim(pe.Set, k, name, &pe.Element)
		if touched != nil {
			touched.element(pe.Set, k)
		}
	}
	for _, c := range part.Chains {
		t.chainClaims[c.Name]++
		t.chainDefs[c.Name] = c
		if touched != nil {
			touched.chain(c.Name)
		}
	}
}

// claim records that Service name's Part holds e under key k of set.
func (t *familyState) claim(set string, k model.Key, name model.ServiceName, e *model.Element) {
	c := t.claims[set][k]
	switch {
	case c == nil:
		t.claims[set][k] = &claim{first: name, elem: e}
	case c.first == name:
		c.elem = e
	case model.CompareNames(name, c.first) < 0:
		c.others = insertName(c.others, c.first)
		c.first, c.elem = name, e
	default:
		c.others = insertName(c.others, name)
	}
}

// unclaim forgets that Service name's Part holds key k of set. The Service's Part must
// already be gone from t.parts.
func (t *familyState) unclaim(set string, k model.Key, name model.ServiceName) {
	c := t.claims[set][k]
	switch {
	case c == nil:
	case c.first != name:
		c.others = slices.DeleteFunc(c.others, func(n model.ServiceName) bool { return n == name })
	case len(c.others) == 0:
		delete(t.claims[set], k)
	default:
		c.first, c.others = c.others[0], c.others[1:]
		c.elem = t.parts[c.first].Element(set, k)
	}
}

func insertName(names []model.ServiceName, name model.ServiceName) []model.ServiceName {
	i, found := slices.BinarySearchFunc(names, name, model.CompareNames)
	if found {
		return names
	}
	return slices.Insert(names, i, name)
}

// wantElement returns the desired element of set with key k, if any Service claims it.
func (t *familyState) wantElement(set string, k model.Key) (model.Element, bool) {
	if c := t.claims[set][k]; c != nil {
		return *c.elem, true
	}
	return model.Element{}, false
}

// desired returns the whole desired ruleset: the skeleton with every claimed element and
// chain. It equals model.Build of the same Services, except that elements are sorted only
// when sorted is set (the kernel does not care about their order).
func (t *familyState) desired(sorted bool) *model.Ruleset {
	rs := &model.Ruleset{Family: t.fam}
	for _, set := range t.skeleton.Sets {
		s := *set
		claims := t.claims[set.Name]
		s.Elements = make([]model.Element, 0, len(set.Elements)+len(claims))
		s.Elements = append(s.Elements, set.Elements...)
		for _, c := range claims {
			s.Elements = append(s.Elements, *c.elem)
		}
		if sorted {
			slices.SortFunc(s.Elements, model.CompareElements)
		}
		rs.Sets = append(rs.Sets, &s)
	}
	rs.Chains = t.desiredChains()
	return rs
}

// desiredChains returns the skeleton's chains followed by the claimed ones, by name.
func (t *familyState) desiredChains() []*model.Chain {
	chains := slices.Clone(t.skeleton.Chains)
	for _, name := range slices.Sorted(maps.Keys(t.chainDefs)) {
		chains = append(chains, t.chainDefs[name])
	}
	return chains
}

// opBuilder gathers element additions and deletions per set, in a stable order.
type opBuilder struct {
	t    *familyState
	adds map[string][]model.Element
	dels map[string][]model.Element
}

func (t *familyState) newOps() *opBuilder {
	return &opBuilder{t: t, adds: map[string][]model.Element{}, dels: map[string][]model.Element{}}
}

// element makes the committed element of set with key k equal want (absent when !ok).
func (o *opBuilder) element(set string, k model.Key, want model.Element, ok bool) {
	have, had := o.t.committed.elems[set][k]
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

func (o *opBuilder) emit(tx *nft.Transaction, chainOps []nft.Op) {
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
func (t *familyState) chainOp(name string, want *model.Chain) (nft.Op, bool) {
	have, had := t.committed.chains[name]
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
func (t *familyState) diffTouched(touched touchedKeys, tx *nft.Transaction) {
	ops := t.newOps()
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
func (t *familyState) cleanStale(tx *nft.Transaction) {
	for _, name := range slices.Sorted(maps.Keys(t.staleChains)) {
		if t.chainDefs[name] != nil || t.isSkeletonChain(name) {
			continue
		}
		if c := t.committed.chains[name]; c != nil && len(c.Rules) == 0 {
			tx.Ops = append(tx.Ops, nft.Op{Kind: nft.DeleteChain, Family: t.fam, Chain: &model.Chain{Name: name}})
		}
	}
}

func (t *familyState) isSkeletonChain(name string) bool {
	return t.skeleton.Chain(name) != nil
}

// diffAll adds to tx what makes the committed (read back) table equal the desired one: the
// skeleton's and the claimed elements, and the chains want.
func (t *familyState) diffAll(want []*model.Chain, tx *nft.Transaction) {
	ops := t.newOps()
	for _, sk := range t.skeleton.Sets {
		claims := t.claims[sk.Name]
		fixed := sk.ByKey()
		for k := range t.committed.elems[sk.Name] {
			if _, ok := fixed[k]; !ok && claims[k] == nil {
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
	for _, name := range slices.Sorted(maps.Keys(t.committed.chains)) {
		if !wanted[name] {
			if op, ok := t.chainOp(name, nil); ok {
				chainOps = append(chainOps, op)
			}
		}
	}
	ops.emit(tx, chainOps)
	t.cleanStale(tx)
}

func indexRuleset(rs *model.Ruleset) *tableState {
	ts := &tableState{elems: map[string]map[model.Key]*model.Element{}, chains: map[string]*model.Chain{}}
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

// indexClaims returns the desired table as committed state: the skeleton's elements and the
// claimed ones, pointing into the skeleton and the Parts.
func (t *familyState) indexClaims() *tableState {
	ts := &tableState{elems: map[string]map[model.Key]*model.Element{}, chains: map[string]*model.Chain{}}
	for _, set := range t.skeleton.Sets {
		claims := t.claims[set.Name]
		m := make(map[model.Key]*model.Element, len(set.Elements)+len(claims))
		for i := range set.Elements {
			e := &set.Elements[i]
			m[e.Key()] = e
		}
		for k, c := range claims {
			m[k] = c.elem
		}
		ts.elems[set.Name] = m
	}
	for _, c := range t.desiredChains() {
		ts.chains[c.Name] = c
	}
	return ts
}

func (ts *tableState) equal(o *tableState) bool {
	if len(ts.chains) != len(o.chains) || len(ts.elems) != len(o.elems) {
		return false
	}
	for name, c := range ts.chains {
		oc, ok := o.chains[name]
		if !ok || !reflect.DeepEqual(c.Rules, oc.Rules) {
			return false
		}
	}
	for name, m := range ts.elems {
		om := o.elems[name]
		if len(m) != len(om) {
			return false
		}
		for k, e := range m {
			if oe, ok := om[k]; !ok || *oe != *e {
				return false
			}
		}
	}
	return true
}

// Committed returns the rulesets the syncer believes the kernel holds, for tests.
func (s *Syncer) Committed(fam model.Family) *model.Ruleset {
	t := s.tables[fam]
	if t == nil || t.committed == nil {
		return nil
	}
	rs := t.desired(true)
	for _, set := range rs.Sets {
		set.Elements = set.Elements[:0]
		for _, e := range t.committed.elems[set.Name] {
			set.Elements = append(set.Elements, *e)
		}
		slices.SortFunc(set.Elements, model.CompareElements)
	}
	return rs
}
