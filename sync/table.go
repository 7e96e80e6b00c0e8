package sync

import (
	"iter"
	"maps"
	"runtime"
	"slices"
	gosync "sync"

	"github.com/nftproxy/nftproxy/model"
)

// table is the syncer's view of one family's table: the Parts of the Services it proxies,
// the claims they make, which together give the desired content, and what the kernel held
// after the last commit.
type table struct {
	fam      model.Family
	node     model.NodeConfig
	skeleton *model.Ruleset
	setDefs  map[string]*model.Set
	parts    map[model.ServiceName]*model.Part
	// claims records, per set and key, the Services whose Part holds that key: the first by
	// name, in place (a million endpoints make a million keys; claimMap), and shared the
	// others.
	claims map[string]*claimMap
	shared map[string]map[model.Key][]model.ServiceName
	// owners numbers the Services with a Part, for claims to name them in four bytes:
	// ownerIDs gives a Service's number, owners the Service of a number (free when none),
	// and freeIDs the numbers free.
	owners   []model.ServiceName
	ownerIDs map[model.ServiceName]uint32
	freeIDs  []uint32
	// twice names, per Service, the sets in which its Part holds a key twice (the first
	// element is the one claimed): a hairpin address that two ports share, say, or a
	// ClusterIP that is also the Service's external IP.
	twice map[model.ServiceName][]string
	// chainClaims counts the Parts that hold each service chain, and chainDefs keeps its
	// content (identical in every Part that holds it).
	chainClaims map[string]int
	chainDefs   map[string]*model.Chain
	// committedChains are the table's chains after the last commit.
	committedChains map[string]*model.Chain
	// The committed elements are not kept apart: after every commit they are the claimed
	// ones and the skeleton's (fixed). Until the next commit, prior holds, for each key
	// whose claim changed since, the committed element (nil: none). A full sync compares
	// the desired elements with those read back instead (diffAll).
	fixed map[string]map[model.Key]*model.Element
	prior map[string]map[model.Key]*model.Element
	// committed is set once the table was committed: from then on, changed claims record
	// their prior elements.
	committed bool
	// staleChains were flushed by an earlier commit and are deleted by the next one.
	staleChains map[string]bool
	// sizes holds the size of each endpoint map after the last commit (0: none, a table of
	// an earlier version), and resized the sizes the transaction being committed gives
	// them (growMaps).
	sizes, resized map[string]uint32
	// state holds the elements of the sync-state set after the last commit, by key (port),
	// and stateDigests the digests they record (nil: unknown); pendingState is what the
	// transaction being committed changes in them (writeState).
	state        map[uint16]model.Element
	stateDigests map[string][]uint64
	pendingState *stateChange
	// noLocalInternal and noLocalExternal sum the Parts' counts of the same names.
	noLocalInternal, noLocalExternal int
}

// claim is the claim of the Services whose Parts hold one key of a set. The first by name
// wins: its element is the desired one. Almost every key has a single owner; the table's
// shared lists the others.
type claim struct {
	elem  *model.Element // the first owner's element, inside its Part; nil: no claim
	first uint32         // the first owner, by its number in the table's owners
	tag   uint32         // 32 bits of the key's hash (claimMap)
}

func newTable(fam model.Family, node model.NodeConfig) *table {
	sk := model.Skeleton(node)
	t := &table{
		fam:         fam,
		node:        node,
		skeleton:    sk,
		setDefs:     map[string]*model.Set{},
		parts:       map[model.ServiceName]*model.Part{},
		claims:      map[string]*claimMap{},
		shared:      map[string]map[model.Key][]model.ServiceName{},
		ownerIDs:    map[model.ServiceName]uint32{},
		twice:       map[model.ServiceName][]string{},
		chainClaims: map[string]int{},
		chainDefs:   map[string]*model.Chain{},
		staleChains: map[string]bool{},
		sizes:       map[string]uint32{},
		resized:     map[string]uint32{},
		fixed:       map[string]map[model.Key]*model.Element{},
		prior:       map[string]map[model.Key]*model.Element{},
	}
	for _, set := range sk.Sets {
		def := *set
		def.Elements = nil
		t.setDefs[set.Name] = &def
		t.claims[set.Name] = newClaimMap(0, slices.Contains(model.SyncStateMaps, set.Name))
		fixed := make(map[model.Key]*model.Element, len(set.Elements))
		for i := range set.Elements {
			e := &set.Elements[i]
			fixed[e.Key()] = e
		}
		t.fixed[set.Name] = fixed
	}
	return t
}

// committedElement returns the element of set with key k that the kernel holds as of the
// last commit.
func (t *table) committedElement(set string, k model.Key) (*model.Element, bool) {
	if e, ok := t.prior[set][k]; ok {
		return e, e != nil
	}
	if e, ok := t.fixed[set][k]; ok {
		return e, true
	}
	if c := t.claims[set].get(k); c.elem != nil {
		return c.elem, true
	}
	return nil, false
}

// notePrior records the committed element of set with key k before its claim changes.
func (t *table) notePrior(set string, k model.Key) {
	if !t.committed {
		return
	}
	m := t.prior[set]
	if _, ok := m[k]; ok {
		return
	}
	if m == nil {
		m = map[model.Key]*model.Element{}
		t.prior[set] = m
	}
	m[k] = t.claims[set].get(k).elem
}

// markCommitted records that the kernel now holds the desired table: the claims, the
// skeleton's elements and the desired chains.
func (t *table) markCommitted() {
	t.committed = true
	clear(t.prior)
	maps.Copy(t.sizes, t.resized)
	clear(t.resized)
	if t.pendingState != nil {
		t.applyState(t.pendingState)
		t.pendingState = nil
	}
}

// committedCounts returns how many elements each set holds after the last commit.
func (t *table) committedCounts() map[string]int {
	out := map[string]int{}
	for name := range t.setDefs {
		if name != model.SetSyncState { // nftproxy's own, not the Services'
			out[name] = t.elementCount(name)
		}
	}
	return out
}

// buildAll sets the Parts of all services, sizing the claim maps first.
func (t *table) buildAll(services map[model.ServiceName]*model.Service) {
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
		if t.claims[set].len() == 0 {
			t.claims[set] = newClaimMap(n, t.claims[set].digests != nil)
		}
	}
	t.parts = make(map[model.ServiceName]*model.Part, len(services))
	for name, part := range parts {
		t.setPart(name, part, nil)
	}
}

// dirty collects the set keys and chains a change of Parts may have changed.
type dirty struct {
	elems  map[string]map[model.Key]bool
	chains map[string]bool
}

func (tk *dirty) element(set string, k model.Key) {
	if tk.elems == nil {
		tk.elems = map[string]map[model.Key]bool{}
	}
	if tk.elems[set] == nil {
		tk.elems[set] = map[model.Key]bool{}
	}
	tk.elems[set][k] = true
}

func (tk *dirty) chain(name string) {
	if tk.chains == nil {
		tk.chains = map[string]bool{}
	}
	tk.chains[name] = true
}

// setPart replaces the Part of a Service (nil removes it), updating the claims and noting in
// touched (if not nil) what may have changed.
func (t *table) setPart(name model.ServiceName, part *model.Part, touched *dirty) {
	if old := t.parts[name]; old != nil {
		delete(t.parts, name)
		delete(t.twice, name)
		t.noLocalInternal -= old.NoLocalInternal
		t.noLocalExternal -= old.NoLocalExternal
		for _, pe := range old.Elements {
			k := pe.Element.Key()
			t.notePrior(pe.Set, k)
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
		t.releaseOwner(name)
		return
	}
	t.parts[name] = part
	t.noLocalInternal += part.NoLocalInternal
	t.noLocalExternal += part.NoLocalExternal
	for i := range part.Elements {
		pe := &part.Elements[i]
		k := pe.Element.Key()
		t.notePrior(pe.Set, k)
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

// ownerID returns the number of Service name, numbering it if it has none.
func (t *table) ownerID(name model.ServiceName) uint32 {
	if id, ok := t.ownerIDs[name]; ok {
		return id
	}
	var id uint32
	if n := len(t.freeIDs); n > 0 {
		id, t.freeIDs = t.freeIDs[n-1], t.freeIDs[:n-1]
		t.owners[id] = name
	} else {
		id = uint32(len(t.owners))
		t.owners = append(t.owners, name)
	}
	t.ownerIDs[name] = id
	return id
}

// releaseOwner frees the number of Service name, which claims nothing any more.
func (t *table) releaseOwner(name model.ServiceName) {
	if id, ok := t.ownerIDs[name]; ok {
		delete(t.ownerIDs, name)
		t.owners[id] = model.ServiceName{}
		t.freeIDs = append(t.freeIDs, id)
	}
}

// claim records that Service name's Part holds e under key k of set.
func (t *table) claim(set string, k model.Key, name model.ServiceName, e *model.Element) {
	claims := t.claims[set]
	c := claims.get(k)
	switch {
	case c.elem == nil:
		claims.put(claim{elem: e, first: t.ownerID(name)})
		return
	case t.owners[c.first] == name:
		// The same Part holds k twice (setPart took the claims of its old Part first): the
		// first element stays, as in model.Build and Part.Element (a Service whose external
		// IP is its ClusterIP holds that key with its cluster chain, then its external one).
		if !slices.Contains(t.twice[name], set) {
			t.twice[name] = append(t.twice[name], set)
		}
		return
	case model.CompareNames(name, t.owners[c.first]) < 0:
		t.addShared(set, k, t.owners[c.first])
		c = claim{elem: e, first: t.ownerID(name)}
	default:
		t.addShared(set, k, name)
	}
	claims.put(c)
}

// addShared adds name to the other owners of key k of set.
func (t *table) addShared(set string, k model.Key, name model.ServiceName) {
	m := t.shared[set]
	if m == nil {
		m = map[model.Key][]model.ServiceName{}
		t.shared[set] = m
	}
	m[k] = insertName(m[k], name)
}

// unclaim forgets that Service name's Part holds key k of set. The Service's Part must
// already be gone from t.parts.
func (t *table) unclaim(set string, k model.Key, name model.ServiceName) {
	claims := t.claims[set]
	c := claims.get(k)
	if c.elem == nil {
		return
	}
	others := t.shared[set][k]
	switch {
	case t.owners[c.first] != name:
		others = slices.DeleteFunc(others, func(n model.ServiceName) bool { return n == name })
	case len(others) == 0:
		claims.delete(k)
		return
	default:
		next := others[0]
		others = others[1:]
		if e := t.parts[next].Element(set, k); e != nil {
			claims.put(claim{elem: e, first: t.ownerID(next)})
		} else {
			claims.delete(k) // not reached: a Service is shared on the keys its Part holds
		}
	}
	if len(others) == 0 {
		delete(t.shared[set], k)
	} else {
		t.shared[set][k] = others
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
func (t *table) wantElement(set string, k model.Key) (model.Element, bool) {
	if c := t.claims[set].get(k); c.elem != nil {
		return *c.elem, true
	}
	return model.Element{}, false
}

// claimedKeys yields the keys of set that some Service claims, and their number.
func (t *table) claimedKeys(set string) (iter.Seq[model.Key], int) {
	return t.claims[set].keys(), t.claims[set].len()
}

// desiredSkeleton returns the desired ruleset without the claimed elements: the skeleton's
// sets with their fixed elements, the endpoint maps sized to their elements, and the desired
// chains. claimedElements gives the rest. It records the endpoint maps' sizes as the
// table's once the ruleset is committed (markCommitted).
func (t *table) desiredSkeleton() *model.Ruleset {
	sets := slices.Clone(t.skeleton.Sets)
	for i, s := range sets {
		if model.IsEndpointMap(s) {
			sized := *s
			sized.Size = model.EndpointMapSize(t.elementCount(s.Name))
			t.resized[s.Name] = sized.Size
			sets[i] = &sized
		}
	}
	return &model.Ruleset{Family: t.fam, Sets: sets, Chains: t.desiredChains()}
}

// elementCount returns how many elements set holds in the desired table (after a commit, the
// committed one): a key both fixed and claimed is one element.
func (t *table) elementCount(set string) int {
	n := t.claims[set].len()
	for k := range t.fixed[set] {
		if t.claims[set].get(k).elem == nil {
			n++
		}
	}
	return n
}

// claimedElements returns the claimed elements of set (the first owner's of each key), and
// how many there are.
func (t *table) claimedElements(set string) (iter.Seq[*model.Element], int) {
	claims := t.claims[set]
	return func(yield func(*model.Element) bool) {
		for c := range claims.all() {
			if !yield(c.elem) {
				return
			}
		}
	}, claims.len()
}

// claimedByPart returns the claimed elements of every set, as claimedElements gives them
// but in the order of the Parts that hold them: the encoder of a replaced table reads each
// once, and read in the claims' order (the map's) every element was a cache miss, 0.35 s at
// a million endpoints, where a Part's elements lie side by side. An element is the claimed
// one of its key unless its key is shared or its Part holds a key of its set twice; only
// then are the claims consulted. t must be built whole (buildAll): twice does not record a
// Part that a later unclaim made the first owner of a key it holds twice.
func (t *table) claimedByPart() map[string][]*model.Element {
	out := make(map[string][]*model.Element, len(t.claims))
	for set, claims := range t.claims {
		out[set] = make([]*model.Element, 0, claims.len())
	}
	for name, p := range t.parts {
		twiceIn := t.twice[name]
		for i := range p.Elements {
			pe := &p.Elements[i]
			shared := t.shared[pe.Set]
			if twice := len(twiceIn) > 0 && slices.Contains(twiceIn, pe.Set); twice || len(shared) > 0 {
				k := pe.Element.Key()
				if _, ok := shared[k]; (twice || ok) && t.claims[pe.Set].get(k).elem != &pe.Element {
					continue
				}
			}
			out[pe.Set] = append(out[pe.Set], &pe.Element)
		}
	}
	return out
}

// desired returns the whole desired ruleset, as model.Build of the same Services gives it:
// the skeleton with every claimed element (sorted) and chain, but the endpoint maps' sizes
// are those committed (model.Build sizes them to their elements; the syncer only grows a
// map that its elements outgrow).
func (t *table) desired() *model.Ruleset {
	rs := &model.Ruleset{Family: t.fam}
	for _, set := range t.skeleton.Sets {
		s := *set
		if size, ok := t.sizes[set.Name]; ok {
			s.Size = size
		}
		claimed, n := t.claimedElements(set.Name)
		s.Elements = slices.Grow(slices.Clone(set.Elements), n)
		for e := range claimed {
			s.Elements = append(s.Elements, *e)
		}
		slices.SortFunc(s.Elements, model.CompareElements)
		rs.Sets = append(rs.Sets, &s)
	}
	rs.Chains = t.desiredChains()
	return rs
}

// desiredChains returns the skeleton's chains followed by the claimed ones, by name.
func (t *table) desiredChains() []*model.Chain {
	chains := slices.Clone(t.skeleton.Chains)
	for _, name := range slices.Sorted(maps.Keys(t.chainDefs)) {
		chains = append(chains, t.chainDefs[name])
	}
	return chains
}
