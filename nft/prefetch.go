package nft

import (
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/nftproxy/nftproxy/model"
)

// prefetch holds the endpoint maps of one table, read ahead of the ReadTable that needs them,
// and the generation they were read at.
type prefetch struct {
	done chan struct{}
	// gen is the generation of the read; ok is set when it is consistent.
	gen uint32
	ok  bool
	// elems are the elements of the endpoint maps read, by name, in the batches read, and
	// defs their definitions.
	elems map[string][][]model.Element
	defs  map[string]setDef
	// unneeded is set when the table's sync-state set records the generation of the read:
	// the endpoint maps were not read.
	unneeded bool
}

// Prefetch starts reading the endpoint maps of fam's table in the background, for the next
// ReadTable of fam to use instead of looking their elements up itself if nothing was
// committed in between. Without the keys a caller expects, it walks the slots of every
// frontend the table's maps hold (lookup.go): all that nftproxy wrote. A restarted proxy
// reads its largest maps this way while it lists the cluster and checks the kernel (whose
// probe commits nothing).
func (n *Netlink) Prefetch(fam model.Family) {
	pf := &prefetch{done: make(chan struct{}), elems: map[string][][]model.Element{}, defs: map[string]setDef{}}
	n.pmu.Lock()
	if n.prefetched == nil {
		n.prefetched = map[model.Family]*prefetch{}
	}
	n.prefetched[fam] = pf
	n.pmu.Unlock()
	go func() {
		defer close(pf.done)
		pf.ok = pf.read(n, fam) == nil
	}()
}

// read reads the endpoint maps at one generation: first the maps of their frontends, then
// the maps themselves, by key.
func (pf *prefetch) read(n *Netlink, fam model.Family) error {
	defs := model.Skeleton(model.NodeConfig{Family: fam}).Sets
	exp, err := newSetExpectation(fam, defs)
	if err != nil {
		return err
	}
	c, err := n.openConn()
	if err != nil {
		return err
	}
	defer c.sock.Close()
	gen, readErr, err := c.atOneGeneration(func(gen uint32) error {
		var maps, fronts []*model.Set
		var state *model.Set
		for _, def := range defs {
			s := &model.Set{Name: def.Name, Key: slices.Clone(def.Key), Data: def.Data}
			switch {
			case isEndpointMap(def):
				maps = append(maps, s)
			case def.Name == model.SetSyncState:
				state = s
			case !def.Dynamic:
				fronts = append(fronts, s)
			}
		}
		// The sync-state set records the generation of nftproxy's last commit: if nobody
		// committed since, the full sync reads back only what changed meanwhile
		// (Expected.Unchanged), which it knows and this read does not.
		if state != nil {
			if err := c.readElementsApart(exp, state, 0, 0); err != nil {
				return err
			}
			if st, err := model.ParseSyncState(state.Elements); err == nil && st.Generation == gen {
				pf.unneeded = true
				return nil
			}
		}
		read := make([][][]model.Element, len(maps))
		fronts = slices.DeleteFunc(fronts, func(f *model.Set) bool {
			return !slices.ContainsFunc(maps, func(m *model.Set) bool { return isFrontendSet(f, m) })
		})
		if err := readAll(fronts, func(_ int, s *model.Set) error { return c.readElementsApart(exp, s, 0, 0) }); err != nil {
			return err
		}
		err := readAll(maps, func(i int, s *model.Set) (err error) {
			ff := slices.DeleteFunc(slices.Clone(fronts), func(f *model.Set) bool { return !isFrontendSet(f, s) })
			read[i], err = c.lookupEndpointMap(exp, s, nil, 0, ff)
			return err
		})
		for i, m := range maps {
			pf.elems[m.Name] = read[i]
		}
		return err
	})
	if err != nil {
		return err
	}
	if readErr != nil {
		return readErr // no table yet, typically
	}
	if pf.unneeded {
		return nil
	}
	for _, def := range defs {
		if isEndpointMap(def) {
			pf.defs[def.Name] = exp.sets[def.Name]
		}
	}
	pf.gen = gen
	return nil
}

// readAll calls read for each set (and its index) at once, and joins the errors.
func readAll(sets []*model.Set, read func(int, *model.Set) error) error {
	errs := make([]error, len(sets))
	var wg sync.WaitGroup
	for i, s := range sets {
		wg.Go(func() { errs[i] = read(i, s) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// takePrefetch returns fam's prefetched maps if they were read at generation gen (nothing
// was committed since), waiting for a read in progress, or nil. Either way the prefetch is
// used up.
func (n *Netlink) takePrefetch(fam model.Family, gen uint32) *prefetch {
	n.pmu.Lock()
	pf := n.prefetched[fam]
	delete(n.prefetched, fam)
	n.pmu.Unlock()
	if pf == nil {
		return nil
	}
	<-pf.done
	if !pf.ok || pf.gen != gen {
		return nil
	}
	return pf
}

// PrefetchFound reports whether a read that Prefetch started, and that no ReadTable has used
// yet, found its family's table (as a restarted daemon does), waiting for the reads in
// progress.
func (n *Netlink) PrefetchFound() bool {
	n.pmu.Lock()
	pfs := slices.Collect(maps.Values(n.prefetched))
	n.pmu.Unlock()
	found := false
	for _, pf := range pfs {
		<-pf.done
		found = found || pf.ok
	}
	return found
}

// elements returns the prefetched elements of the endpoint map name, in batches, if it was
// read with the definition def.
func (pf *prefetch) elements(name string, def setDef) ([][]model.Element, bool) {
	if pf == nil {
		return nil, false
	}
	elems, ok := pf.elems[name]
	if !ok || !pf.defs[name].equal(def) {
		return nil, false
	}
	return elems, true
}
