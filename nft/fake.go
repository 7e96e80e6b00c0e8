package nft

import (
	"math/rand/v2"
	gosync "sync"

	"github.com/nftproxy/nftproxy/model"
)

// Fake is an in-memory Backend. It applies each call atomically, keeps the resulting tables,
// records the last transaction and can be told to fail a share of them, so that tests of the
// sync loop can check convergence without a kernel.
type Fake struct {
	mu     gosync.Mutex
	tables map[model.Family]*model.Ruleset
	// FailRate is the probability (0 to 1) that a call fails with ErrInjected and changes
	// nothing.
	FailRate float64
	rng      *rand.Rand
	// Calls counts the calls made, failed ones included.
	Calls int
	// Last holds the rulesets of the last successful Replace.
	Last []*model.Ruleset
}

var _ Backend = (*Fake)(nil)

// NewFake returns an empty Fake whose injected failures follow seed.
func NewFake(seed uint64) *Fake {
	return &Fake{tables: map[model.Family]*model.Ruleset{}, rng: rand.New(rand.NewPCG(seed, seed))}
}

func (f *Fake) fail() bool {
	f.Calls++
	return f.FailRate > 0 && f.rng.Float64() < f.FailRate
}

// Replace implements Backend.
func (f *Fake) Replace(rulesets ...*model.Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail() {
		return ErrInjected
	}
	for _, rs := range rulesets {
		f.tables[rs.Family] = rs
	}
	f.Last = rulesets
	return nil
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
	return nil
}

// Render returns the table of fam as nft would list it, or "" when there is none.
func (f *Fake) Render(fam model.Family) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rs := f.tables[fam]; rs != nil {
		return model.Render(rs)
	}
	return ""
}
