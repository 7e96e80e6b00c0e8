package nft

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nftproxy/nftproxy/model"
)

// readAttempts bounds how often Read starts over because the ruleset changed while it read.
const readAttempts = 5

// Generation returns the current nftables ruleset generation (NFT_MSG_GETGEN) of the
// backend's network namespace.
func (n *Netlink) Generation() (uint32, error) {
	var gen uint32
	err := n.control(func(c *conn) (err error) {
		gen, err = c.generation()
		return err
	})
	return gen, err
}

// Read returns nftproxy's table of family fam as the kernel holds it, decoded against want
// (the desired ruleset of that family), and the ruleset generation it was read at.
// It returns (nil, gen, nil) when the table does not exist, and an error matching
// ErrIncompatible (errors.Is) when the table exists but was not written in the layout
// want describes: a set or map missing, extra, or declared differently (flags, key type/len,
// data type/len, user data), or a base chain with a different hook/priority/type.
//
// The returned ruleset has want's sets, in want's order, with the elements the kernel holds;
// then those of want's chains that exist, in want's order, followed by the chains the kernel
// has that want lacks, sorted by name. A rule equal to one of its chain's rules in want is
// that model.Rule; any other rule is a Rule without expressions whose comment says it was not
// recognized. The table is read at one generation: when the ruleset changes during the read,
// Read starts over, and after a few attempts gives up with an error matching
// ErrGenerationChanged.
func (n *Netlink) Read(fam model.Family, want *model.Ruleset) (*model.Ruleset, uint32, error) {
	if want == nil {
		want = &model.Ruleset{Family: fam}
	}
	if want.Family != fam {
		return nil, 0, fmt.Errorf("read %s table: desired ruleset is of family %s", fam, want.Family)
	}
	return n.ReadTable(fam, want.Sets, func() []*model.Chain { return want.Chains })
}

// ReadTable implements Backend: it is Read with the desired chains supplied late. The set
// element dumps (the bulk of the work, done by the kernel) start at once, and chains is
// called, and may block, before the chains are read, so that the caller can build them
// meanwhile.
func (n *Netlink) ReadTable(fam model.Family, sets []*model.Set, chains func() []*model.Chain) (*model.Ruleset, uint32, error) {
	exp, err := newSetExpectation(fam, sets)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s table: %w", fam, err)
	}
	var chainErr error
	var once sync.Once
	exp.pendingChains = func() error {
		once.Do(func() { chainErr = exp.addChains(chains()) })
		return chainErr
	}
	c, err := n.openConn()
	if err != nil {
		return nil, 0, err
	}
	defer c.sock.Close()
	for range readAttempts {
		var rs *model.Ruleset
		gen, readErr, err := c.atOneGeneration(func(gen uint32) error {
			var err error
			rs, err = c.readTable(exp, n.takePrefetch(fam, gen))
			return err
		})
		switch {
		case errors.Is(err, ErrGenerationChanged):
			// Something committed while we read: what we saw may mix two generations.
			continue
		case err != nil:
			return nil, 0, fmt.Errorf("read %s table: %w", fam, err)
		case readErr != nil:
			return nil, gen, fmt.Errorf("read %s table: %w", fam, readErr)
		}
		return rs, gen, nil
	}
	return nil, 0, fmt.Errorf("read %s table: %w during each of %d attempts", fam, ErrGenerationChanged, readAttempts)
}

// prefetch holds the elements of some sets of one table, dumped ahead of the ReadTable that
// needs them, and the generation they were dumped at.
type prefetch struct {
	done chan struct{}
	// gen is the generation of the dump; ok is set when it is consistent.
	gen uint32
	ok  bool
	// sets are the sets read, with their elements, and defs their definitions.
	sets map[string]*model.Set
	defs map[string]setDef
}

// Prefetch starts dumping the elements of sets of fam's table in the background, for the
// next ReadTable of fam to use instead of dumping them itself if nothing was committed in
// between. A restarted proxy reads its largest maps this way while it is still listing the
// cluster's objects. The sets' elements must not refer to chains (endpoint maps do not).
func (n *Netlink) Prefetch(fam model.Family, sets []*model.Set) {
	pf := &prefetch{done: make(chan struct{}), sets: map[string]*model.Set{}, defs: map[string]setDef{}}
	n.pmu.Lock()
	if n.prefetched == nil {
		n.prefetched = map[model.Family]*prefetch{}
	}
	n.prefetched[fam] = pf
	n.pmu.Unlock()
	go func() {
		defer close(pf.done)
		pf.ok = pf.read(n, fam, sets) == nil
	}()
}

// read dumps the sets' elements at one generation.
func (pf *prefetch) read(n *Netlink, fam model.Family, sets []*model.Set) error {
	exp, err := newSetExpectation(fam, sets)
	if err != nil {
		return err
	}
	c, err := n.openConn()
	if err != nil {
		return err
	}
	defer c.sock.Close()
	gen, readErr, err := c.atOneGeneration(func(uint32) error {
		errs := make([]error, len(sets))
		var wg sync.WaitGroup
		for i, def := range sets {
			s := &model.Set{Name: def.Name, Key: slices.Clone(def.Key), Data: def.Data}
			pf.sets[s.Name], pf.defs[s.Name] = s, exp.sets[s.Name]
			wg.Go(func() { errs[i] = c.readElementsApart(exp, s, 0) })
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	if err != nil {
		return err
	}
	if readErr != nil {
		return readErr // no table yet, typically
	}
	pf.gen = gen
	return nil
}

// takePrefetch returns fam's prefetched sets if they were dumped at generation gen (nothing
// was committed since), waiting for a dump in progress, or nil. Either way the prefetch is
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

// elements returns the prefetched elements of the set name if it was read with the
// definition def.
func (pf *prefetch) elements(name string, def setDef) ([]model.Element, bool) {
	if pf == nil {
		return nil, false
	}
	s, ok := pf.sets[name]
	if !ok || !pf.defs[name].equal(def) {
		return nil, false
	}
	return s.Elements, true
}
