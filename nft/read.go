package nft

import (
	"cmp"
	"errors"
	"fmt"
	"iter"
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

// Expected is what ReadTable compares the kernel's table with beyond the sets' definitions,
// given once the caller knows it.
type Expected struct {
	// Chains are the chains the table should have, in order.
	Chains []*model.Chain
	// Keys yields the keys of the elements the endpoint map named set should hold, and
	// how many there are; it may be nil, or return nil for none. ReadTable looks those up
	// rather than dump the map (see lookup.go).
	Keys func(set string) (iter.Seq[model.Key], int)
	// Elements, when set, is handed the elements of the endpoint maps in batches, and the
	// endpoint maps of the returned table are left without elements: a caller that only
	// compares them spares the copy into one slice (a million elements, 100 MB, held twice
	// while copied). It is called from ReadTable's goroutine, and may keep the batches.
	Elements func(set string, elems []model.Element)
	// Unchanged, when set, is called before the endpoint map named set is looked up by key,
	// with the map's size and the elements of the table's sync-state set
	// (model.SetSyncState) as read at generation gen; the frontends for which the function
	// it returns (nil: none) reports true are not looked up, nor their slots: the caller
	// knows they hold what it wants (model.SyncState). A map small enough to dump is dumped
	// whole, without asking. It is called from ReadTable's goroutines, once per
	// attempt of a read that starts over (at the same generation or another): the last
	// attempt's answers count.
	Unchanged func(set string, size uint32, state []model.Element, gen uint32) func(frontend model.Key) bool
}

// Read returns nftproxy's table of family fam as the kernel holds it, decoded against want
// (the desired ruleset of that family), and the ruleset generation it was read at.
// It returns (nil, gen, nil) when the table does not exist, and an error matching
// ErrIncompatible (errors.Is) when the table exists but was not written in the layout
// want describes: a set or map missing, extra, or declared differently (flags, key type/len,
// data type/len, user data), or a base chain with a different hook/priority/type.
//
// The returned ruleset has want's sets, in want's order, with the elements the kernel holds
// (of an endpoint map: those nftproxy can have written, see lookup.go); then those of want's
// chains that exist, in want's order, followed by the chains the kernel has that want lacks,
// sorted by name. A rule equal to one of its chain's rules in want is that model.Rule; any
// other rule is a Rule without expressions whose comment says it was not recognized. The
// table is read at one generation: when the ruleset changes during the read, Read starts
// over, and after a few attempts gives up with an error matching ErrGenerationChanged.
func (n *Netlink) Read(fam model.Family, want *model.Ruleset) (*model.Ruleset, uint32, error) {
	if want == nil {
		want = &model.Ruleset{Family: fam}
	}
	if want.Family != fam {
		return nil, 0, fmt.Errorf("read %s table: desired ruleset is of family %s", fam, want.Family)
	}
	rs, gen, err := n.ReadTable(fam, want.Sets, func() Expected {
		return Expected{Chains: want.Chains, Keys: func(set string) (iter.Seq[model.Key], int) {
			s := want.Set(set)
			if s == nil {
				return nil, 0
			}
			return func(yield func(model.Key) bool) {
				for _, e := range s.Elements {
					if !yield(e.Key()) {
						return
					}
				}
			}, len(s.Elements)
		}}
	})
	if rs != nil {
		for _, s := range rs.Sets {
			slices.SortFunc(s.Elements, model.CompareElements)
		}
	}
	return rs, gen, err
}

// ReadTable implements Backend: it is Read with the desired chains and endpoint map keys
// supplied late, and the elements of the endpoint maps read by key in no particular order.
// The dumps of the other sets start at once, and expected is called, and may block, before
// the chains are read, so that the caller can build them meanwhile.
func (n *Netlink) ReadTable(fam model.Family, sets []*model.Set, expected func() Expected) (*model.Ruleset, uint32, error) {
	exp, err := newSetExpectation(fam, sets)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s table: %w", fam, err)
	}
	exp.dumpMax = cmp.Or(n.DumpMax, dumpMax)
	var chainErr error
	var once sync.Once
	exp.pending = func() error {
		once.Do(func() {
			want := expected()
			exp.keys, exp.elements, exp.unchanged = want.Keys, want.Elements, want.Unchanged
			chainErr = exp.addChains(want.Chains)
		})
		return chainErr
	}
	c, err := n.openConn()
	if err != nil {
		return nil, 0, err
	}
	defer c.sock.Close()
	for range readAttempts {
		var rs *model.Ruleset
		var batches [][][]model.Element
		gen, readErr, err := c.atOneGeneration(func(gen uint32) error {
			var err error
			rs, batches, err = c.readTable(exp, gen, n.takePrefetch(fam, gen))
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
		if rs != nil {
			// Only now: an attempt that saw a commit is forgotten, its elements with it.
			deliverEndpointMaps(exp, rs, batches)
		}
		return rs, gen, nil
	}
	return nil, 0, fmt.Errorf("read %s table: %w during each of %d attempts", fam, ErrGenerationChanged, readAttempts)
}
