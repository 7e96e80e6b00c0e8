package sync

import (
	"errors"
	"fmt"
	"iter"
	"maps"
	"reflect"
	"slices"
	gosync "sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/conntrack"
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
	// Conntrack, when set, reconciles the conntrack table after a sync that changed a UDP
	// or SCTP frontend or its endpoints, after every full sync, and when asked to.
	Conntrack Conntrack

	conntrackErrs []error
	// conntrackDue is set when the next sync must reconcile the conntrack table.
	conntrackDue bool
	affinityErrs []error
	// affinityDue is set when a release of affinity entries failed: the next sync checks
	// every entry.
	affinityDue bool

	node     map[model.Family]model.NodeConfig
	services map[model.ServiceName]*model.Service
	// pending holds Services changed since the last successful sync, with the time of their
	// first change; nil values are deletions.
	pending map[model.ServiceName]pendingChange
	tables  map[model.Family]*table
	// gen is the generation after the last commit, 0 when unknown.
	gen      uint32
	needFull bool
	// readFailures counts the full syncs in a row that could not read a table back.
	readFailures int
	// regrow is set when a commit found a map full (ENFILE): its elements, as the syncer
	// counts them, fit, so the kernel holds more than it can read back (elements whose
	// frontend no map names: someone else's). The next full sync replaces the endpoint maps
	// whole, which drops those (growMaps).
	regrow bool
}

// replaceAfterReadFailures is how many full syncs in a row may fail to read a table back
// before the next one replaces the tables unread: a node must be programmed even when its
// tables cannot be read (session affinity entries are lost then).
const replaceAfterReadFailures = 3

type pendingChange struct {
	svc   *model.Service
	since time.Time
	// triggers are the EndpointSlice trigger times of the change, by the slices' family.
	triggers map[model.Family][]time.Time
}

// SyncResult describes one sync.
type SyncResult struct {
	// Full is set for a sync that compared the whole table read back from the kernel.
	Full bool
	// Objects counts the kernel objects the transaction wrote (0 when nothing changed).
	Objects int
	// FamilyObjects counts them per family (a family without any is absent).
	FamilyObjects map[model.Family]int
	// Services counts the Services the sync rebuilt.
	Services int
	// Oldest is the time of the oldest change this sync programmed (zero if none).
	Oldest time.Time
	// TriggerTimes lists, by family, the trigger times (AddTriggerTimes) of the changes this
	// sync programmed: one network programming latency each.
	TriggerTimes map[model.Family][]time.Time
	// NoLocalInternal and NoLocalExternal count, per family, the Service ports with a Local
	// traffic policy of that kind and endpoints only on other nodes (model.Part).
	NoLocalInternal, NoLocalExternal map[model.Family]int
	// DriftRepaired is set when a full sync found the kernel different from what the
	// syncer had committed.
	DriftRepaired bool
	// ReplacedUnread holds the read errors of the tables a full sync replaced without
	// reading them, after replaceAfterReadFailures syncs in a row failed to read them.
	ReplacedUnread []error
	// EndpointsRead counts the elements of the endpoint maps a full sync read back: of a map
	// looked up by key (not one small enough to dump), none when the sync-state set showed
	// it unchanged since the last commit, those of the changed buckets when some did.
	EndpointsRead int
	// Elements counts the elements of each set and map after the sync, per family.
	Elements map[model.Family]map[string]int
	// AffinityReleased counts the session affinity entries deleted because their endpoint
	// went away.
	AffinityReleased int
	// Conntrack holds, per family, what the conntrack reconcile after the commit did (nil
	// when none ran).
	Conntrack []conntrack.Result
}

// NewSyncer returns a Syncer for the given families whose first sync is a full one.
func NewSyncer(backend nft.Backend, families ...model.Family) *Syncer {
	return &Syncer{
		Backend:  backend,
		Families: families,
		node:     map[model.Family]model.NodeConfig{},
		services: map[model.ServiceName]*model.Service{},
		pending:  map[model.ServiceName]pendingChange{},
		tables:   map[model.Family]*table{},
		needFull: true,
	}
}

// SetNode sets the node configuration of each family. A change rebuilds every Service.
func (s *Syncer) SetNode(cfgs map[model.Family]model.NodeConfig) {
	if reflect.DeepEqual(cfgs, s.node) {
		return
	}
	s.node = maps.Clone(cfgs)
	s.tables = map[model.Family]*table{}
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

// AddTriggerTimes adds, to the pending change of each named Service, the times at which its
// changes were triggered (an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time),
// by family. The sync that programs the change returns them in SyncResult.TriggerTimes. Times
// for a Service without a pending change (none, or one that cancelled out) are dropped: there
// is nothing left to program.
func (s *Syncer) AddTriggerTimes(times map[model.ServiceName]map[model.Family][]time.Time) {
	for name, byFam := range times {
		p, ok := s.pending[name]
		if !ok {
			continue
		}
		for fam, ts := range byFam {
			if len(ts) == 0 {
				continue
			}
			if p.triggers == nil {
				p.triggers = map[model.Family][]time.Time{}
			}
			p.triggers[fam] = append(p.triggers[fam], ts...)
		}
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

// PendingServices returns the Services with a change not yet programmed (after a failed
// sync: the ones the next sync retries), sorted by name.
func (s *Syncer) PendingServices() []model.ServiceName {
	out := slices.Collect(maps.Keys(s.pending))
	slices.SortFunc(out, model.CompareNames)
	return out
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
		if errors.Is(err, unix.ENFILE) {
			s.regrow = true
		}
		return res, err
	}
	s.needFull = false
	res.Elements = map[model.Family]map[string]int{}
	res.NoLocalInternal, res.NoLocalExternal = map[model.Family]int{}, map[model.Family]int{}
	for fam, t := range s.tables {
		res.NoLocalInternal[fam], res.NoLocalExternal[fam] = t.noLocalInternal, t.noLocalExternal
		res.Elements[fam] = t.committedCounts()
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
		newer, ok := s.pending[name]
		if !ok {
			s.pending[name] = p
			continue
		}
		// Keep the older change's first time and trigger times with the newer value.
		newer.since = p.since
		for fam, ts := range p.triggers {
			if newer.triggers == nil {
				newer.triggers = map[model.Family][]time.Time{}
			}
			newer.triggers[fam] = append(slices.Clone(ts), newer.triggers[fam]...)
		}
		s.pending[name] = newer
	}
}

// triggerTimes collects the trigger times of changes, by family.
func triggerTimes(changes map[model.ServiceName]pendingChange) map[model.Family][]time.Time {
	var out map[model.Family][]time.Time
	for _, p := range changes {
		for fam, ts := range p.triggers {
			if out == nil {
				out = map[model.Family][]time.Time{}
			}
			out[fam] = append(out[fam], ts...)
		}
	}
	return out
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
	res := SyncResult{Services: len(changes), Oldest: oldest(changes), TriggerTimes: triggerTimes(changes)}
	tx := &nft.Transaction{}
	ctChanged := false
	releases := map[model.Family][]model.Key{}
	type undo struct {
		t     *table
		parts map[model.ServiceName]*model.Part
	}
	var undos []undo
	for _, fam := range s.Families {
		t := s.tables[fam]
		t.pendingState = nil
		prev := map[model.ServiceName]*model.Part{}
		touched := dirty{}
		for name := range changes {
			oldPart := t.parts[name]
			prev[name] = oldPart
			var newPart *model.Part
			if svc := s.services[name]; svc != nil {
				newPart = model.BuildPart(svc, s.node[fam])
			}
			t.setPart(name, newPart, &touched)
			ctChanged = ctChanged || conntrackViewChanged(fam, old[name], s.services[name], oldPart, newPart)
			releases[fam] = appendAffinityReleases(releases[fam], oldPart, newPart)
		}
		undos = append(undos, undo{t, prev})
		t.diffTouched(touched, tx)
		t.cleanStale(tx)
		t.growMaps(tx)
	}
	res.FamilyObjects = tx.ObjectsByFamily()
	res.Objects = tx.Objects()
	if !tx.Empty() {
		for _, fam := range s.Families {
			s.tables[fam].writeState(tx, nextGen(s.gen))
		}
	}
	if err := s.commit(tx); err != nil {
		for _, u := range undos {
			for name, p := range u.parts {
				u.t.setPart(name, p, nil)
			}
			// The claims are the committed elements again, in maps of the committed sizes.
			clear(u.t.prior)
			clear(u.t.resized)
			u.t.pendingState = nil
		}
		s.restorePending(changes, old)
		return res, err
	}
	s.afterCommit(tx)
	// Affinity first: a packet between the two would otherwise follow a remembered gone
	// endpoint and make a new flow to it, after the conntrack cleanup deleted the old one.
	res.AffinityReleased = s.releaseAffinity(releases, false)
	s.conntrackDue = s.conntrackDue || ctChanged
	s.reconcileConntrack(&res)
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

// afterCommit records a committed transaction in the families' committed state: the
// chains it wrote; the elements are the claimed ones once committed (table.markCommitted).
func (s *Syncer) afterCommit(tx *nft.Transaction) {
	for _, op := range tx.Ops {
		t := s.tables[op.Family]
		switch op.Kind {
		case nft.AddChain, nft.RewriteChain:
			t.committedChains[op.Chain.Name] = op.Chain
			delete(t.staleChains, op.Chain.Name)
		case nft.FlushChain:
			t.committedChains[op.Chain.Name] = &model.Chain{Name: op.Chain.Name}
			t.staleChains[op.Chain.Name] = true
		case nft.DeleteChain:
			delete(t.committedChains, op.Chain.Name)
			delete(t.staleChains, op.Chain.Name)
		}
	}
	for _, t := range s.tables {
		t.markCommitted()
	}
}

// syncFull rebuilds every Service, reads the tables back and commits the difference.
func (s *Syncer) syncFull() (SyncResult, error) {
	changes, old := s.takePending()
	res := SyncResult{Full: true, Services: len(s.services), Oldest: oldest(changes), TriggerTimes: triggerTimes(changes)}
	tx := &nft.Transaction{}
	tables := map[model.Family]*table{}
	replaced := map[*table]bool{}
	var diffed []*table
	var gen uint32
	for i, fam := range s.Families {
		t := newTable(fam, s.node[fam])
		// Build every Part while the kernel dumps the table's sets: the chains to expect
		// are known only once the Parts are.
		var chains []*model.Chain
		built := make(chan struct{})
		go func() {
			defer close(built)
			t.buildAll(s.services)
			chains = t.desiredChains()
		}()
		// The endpoint maps' elements come in batches, compared as they are (diffAll), but
		// for the buckets the sync-state set shows unchanged (trusted).
		batches := map[string][][]model.Element{}
		var trustMu gosync.Mutex
		trusted := map[string]*trust{}
		have, g, err := s.Backend.ReadTable(fam, t.skeleton.Sets, func() nft.Expected {
			<-built
			return nft.Expected{Chains: chains, Keys: t.claimedKeys,
				Elements: func(set string, elems []model.Element) {
					batches[set] = append(batches[set], elems)
				},
				Unchanged: func(set string, size uint32, state []model.Element, gen uint32) func(model.Key) bool {
					// The last attempt's answer counts: a read may start over at the same
					// generation.
					tr := t.trustState(set, size, state, gen)
					trustMu.Lock()
					defer trustMu.Unlock()
					if tr == nil {
						delete(trusted, set)
						return nil
					}
					trusted[set] = tr
					return tr.skip
				}}
		})
		<-built
		maps.DeleteFunc(trusted, func(_ string, tr *trust) bool { return err != nil || tr.gen != g })
		unread := err != nil && !errors.Is(err, nft.ErrIncompatible)
		if unread {
			if s.readFailures+1 < replaceAfterReadFailures {
				s.readFailures++
				s.restorePending(changes, old)
				return res, fmt.Errorf("read %s table: %w", fam, err)
			}
			res.ReplacedUnread = append(res.ReplacedUnread, fmt.Errorf("read %s table: %w", fam, err))
		}
		switch {
		case err != nil || have == nil:
			// No table, or one in another layout: replace it whole, the claimed elements
			// streamed from the claims as the batch is encoded (tx.More) rather than
			// copied into the Ruleset (at a million endpoints, 2 million elements).
			tx.Replace = append(tx.Replace, t.desiredSkeleton())
			replaced[t] = true
		default:
			read := readBack{rs: have, batches: batches, trusted: trusted}
			t.committedChains = chainIndex(have)
			t.readState(have.Set(model.SetSyncState))
			for _, set := range have.Sets {
				if !model.IsEndpointMap(set) {
					continue
				}
				if !s.regrow {
					t.sizes[set.Name] = set.Size
				}
				for _, batch := range read.elements(set.Name) {
					res.EndpointsRead += len(batch)
				}
			}
			diffed = append(diffed, t)
			// A sync-state set of this generation shows that nobody else committed since
			// the last commit: no drift.
			if prev := s.tables[fam]; prev != nil && prev.committed && len(trusted) == 0 && !prev.holds(read) {
				res.DriftRepaired = true
			}
			t.diffAll(read, chains, tx)
		}
		if i > 0 && g != gen && res.ReplacedUnread == nil {
			s.restorePending(changes, old)
			return res, fmt.Errorf("read tables: %w", nft.ErrGenerationChanged)
		}
		gen = g
		tables[fam] = t
	}
	if res.ReplacedUnread != nil {
		// Whatever the kernel holds, the transaction replaces it.
		gen = 0
	}
	if len(replaced) > 0 {
		claimed := map[model.Family]map[string][]*model.Element{}
		for t := range replaced {
			claimed[t.fam] = t.claimedByPart()
		}
		tx.More = func(fam model.Family, set string) (iter.Seq[*model.Element], int) {
			elems := claimed[fam][set]
			return slices.Values(elems), len(elems)
		}
	}
	for _, t := range diffed {
		t.growMaps(tx)
	}
	res.FamilyObjects = tx.ObjectsByFamily()
	res.Objects = tx.Objects()
	// Only a commit writes the sync-state set: one that records another generation (someone
	// else committed) stays as it is until nftproxy has something to change, rather than
	// make a commit of its own after every commit of other programs on the node.
	if !tx.Empty() {
		for _, fam := range s.Families {
			tables[fam].writeState(tx, nextGen(gen))
		}
	}
	s.gen = gen
	for t := range replaced {
		t.committedChains = t.desiredChainIndex()
	}
	err := s.commit(tx)
	if err != nil {
		s.restorePending(changes, old)
		return res, err
	}
	if res.ReplacedUnread == nil {
		s.readFailures = 0
	}
	s.regrow = false
	s.tables = tables
	// The diff's chain operations are recorded as they went (the flushed chains are deleted
	// by the next commit); afterCommit ignores Replace, whose tables hold the desired chains.
	// Every table now holds exactly the desired elements, and the ones read back go.
	s.afterCommit(tx)
	// A full sync cannot tell which endpoints clients are remembered with: check them all,
	// before the flows (as syncPartial).
	res.AffinityReleased = s.releaseAffinity(nil, true)
	// Nor what changed since the last commit (at start: anything, while the daemon was
	// down): check every entry. The rule keeps what is not stale.
	s.conntrackDue = true
	s.reconcileConntrack(&res)
	return res, nil
}

// Committed returns the rulesets the syncer believes the kernel holds, for tests: once a
// commit went through, the desired ruleset (the sync-state set's elements aside, as
// model.WithoutSyncState leaves them).
func (s *Syncer) Committed(fam model.Family) *model.Ruleset {
	t := s.tables[fam]
	if t == nil || !t.committed {
		return nil
	}
	return t.desired()
}
