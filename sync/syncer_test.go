package sync_test

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

var families = []model.Family{model.IPv4, model.IPv6}

// scenarioInput returns a golden scenario's Services and node configuration, as
// `nftproxy render` computes them.
func scenarioInput(t *testing.T, sc scenario.Scenario) ([]model.Service, map[model.Family]model.NodeConfig) {
	t.Helper()
	services, nodes, err := sc.Input()
	if err != nil {
		t.Fatal(err)
	}
	return services, nodes
}

// syncUntilDone syncs until a sync succeeds, as the loop's retries would.
func syncUntilDone(t *testing.T, s *sync.Syncer) sync.SyncResult {
	t.Helper()
	for range 100 {
		res, err := s.Sync()
		if err == nil {
			return res
		}
	}
	t.Fatal("no sync succeeded in 100 attempts")
	return sync.SyncResult{}
}

// perturb returns a changed copy of svc: one endpoint fewer, or a port renumbered.
func perturb(svc model.Service, rng *rand.Rand) model.Service {
	out := svc
	out.Ports = slices.Clone(svc.Ports)
	for i := range out.Ports {
		p := &out.Ports[i]
		if len(p.Endpoints) > 1 && rng.IntN(2) == 0 {
			p.Endpoints = p.Endpoints[1:]
		} else {
			p.Port++
		}
	}
	return out
}

// TestConvergenceUnderFailures drives every golden scenario as a sequence of changes
// (Services appear one by one, some change and change back, a stray one comes and goes)
// against a Fake that fails 10% of transactions, and checks that the tables end up exactly
// as the golden files, and that the syncer's idea of the kernel matches the kernel.
func TestConvergenceUnderFailures(t *testing.T) {
	scenarios, err := scenario.Load("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			services, nodes := scenarioInput(t, sc)
			fake := nft.NewFake(uint64(len(sc.Name)))
			fake.FailRate = 0.1
			s := sync.NewSyncer(fake, families...)
			s.SetNode(nodes)
			rng := rand.New(rand.NewPCG(7, uint64(len(services))))
			now := time.Unix(0, 0)
			stray := model.Service{Name: model.ServiceName{Namespace: "zz", Name: "stray"},
				ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.99.99"), netip.MustParseAddr("fd00:96::9999")},
				Ports: []model.ServicePort{{Protocol: model.UDP, Port: 53, Endpoints: []model.Endpoint{
					{Addr: netip.MustParseAddr("10.244.9.9"), Port: 53, Ready: true},
					{Addr: netip.MustParseAddr("fd00:244:9::9"), Port: 53, Ready: true}}}}}
			s.Update(map[model.ServiceName]*model.Service{stray.Name: &stray}, now)
			syncUntilDone(t, s)
			for _, i := range rng.Perm(len(services)) {
				svc := services[i]
				changed := perturb(svc, rng)
				s.Update(map[model.ServiceName]*model.Service{svc.Name: &changed}, now)
				syncUntilDone(t, s)
				s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, now)
				syncUntilDone(t, s)
			}
			s.Update(map[model.ServiceName]*model.Service{stray.Name: nil}, now)
			for s.Pending() {
				syncUntilDone(t, s)
			}
			for _, fam := range families {
				want, err := os.ReadFile(sc.GoldenPath(fam))
				if err != nil {
					t.Fatal(err)
				}
				if got := fake.Render(fam); got != string(want) {
					t.Errorf("%s table differs from %s:\n%s", fam, sc.GoldenPath(fam), scenario.LineDiff(string(want), got))
				}
				if got := model.Render(s.Committed(fam)); got != string(want) {
					t.Errorf("the syncer's view of the %s table differs from %s:\n%s", fam, sc.GoldenPath(fam), scenario.LineDiff(string(want), got))
				}
			}
		})
	}
}

// scaleNode is the node the scale tests and benchmarks run as.
var scaleNode = model.NodeConfig{Family: model.IPv4, NodeName: scale.NodeName(0),
	ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}

// scaleSyncer returns a new syncer of scaleNode (a daemon just started) with n Services of m
// endpoints to program.
func scaleSyncer(backend nft.Backend, n, m int) *sync.Syncer {
	s := sync.NewSyncer(backend, model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: scaleNode})
	changes := map[model.ServiceName]*model.Service{}
	for i := range n {
		svc := scale.Service(i, m, 0)
		changes[svc.Name] = &svc
	}
	s.Update(changes, time.Now())
	return s
}

// newScaleSyncer is scaleSyncer after its first sync.
func newScaleSyncer(t testing.TB, backend nft.Backend, n, m int) *sync.Syncer {
	t.Helper()
	s := scaleSyncer(backend, n, m)
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestOneEndpointChange checks what a partial sync writes when one endpoint of one Service
// is replaced: the two slot elements of the endpoint maps and the two hairpin elements.
func TestOneEndpointChange(t *testing.T) {
	fake := nft.NewFake(1)
	s := newScaleSyncer(t, fake, 100, 10)
	svc := scale.Service(42, 10, 0)
	svc.Ports[0].Endpoints[9].Addr = netip.MustParseAddr("10.200.0.1")
	s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, time.Now())
	res, err := s.Sync()
	if err != nil {
		t.Fatal(err)
	}
	if res.Full || res.Objects > 6 {
		t.Errorf("one endpoint change: full=%v, %d objects written, want a partial sync of at most 6:\n%s", res.Full, res.Objects, fake.Last)
	}
	for _, op := range fake.Last.Ops {
		if op.Kind != nft.AddElements && op.Kind != nft.DeleteElements {
			t.Errorf("one endpoint change wrote a %v operation on %v:\n%s", op.Kind, op.Chain, fake.Last)
		}
	}
	got := fake.Render(model.IPv4)
	if want := model.Render(s.Committed(model.IPv4)); got != want {
		t.Errorf("kernel and syncer disagree:\n%s", scenario.LineDiff(want, got))
	}
	res, err = s.Sync()
	if err != nil || res.Objects != 0 {
		t.Errorf("a sync without changes wrote %d objects (err %v)", res.Objects, err)
	}
}

// TestDriftRepair checks that a change made behind the syncer's back (an element deleted,
// changed or added by hand, a flushed table) is seen through the generation and repaired by the next sync.
func TestDriftRepair(t *testing.T) {
	fake := nft.NewFake(1)
	s := newScaleSyncer(t, fake, 20, 3)
	want := fake.Render(model.IPv4)
	for name, tamper := range map[string]func(rs *model.Ruleset){
		"element deleted": func(rs *model.Ruleset) {
			set := rs.Set(model.MapServiceEndpoints)
			set.Elements = set.Elements[1:]
		},
		"elements changed": func(rs *model.Ruleset) {
			// The first, one in the Fake's next batch of 7, and the last: a read hands
			// the elements over in batches.
			elems := rs.Set(model.MapServiceEndpoints).Elements
			for _, i := range []int{0, min(7, len(elems)-1), len(elems) - 1} {
				elems[i].Endpoint = netip.AddrPortFrom(netip.MustParseAddr("10.99.99.99"), 9999)
			}
		},
		"element added": func(rs *model.Ruleset) {
			set := rs.Set(model.MapServiceEndpoints)
			e := set.Elements[len(set.Elements)-1]
			e.Slot = 1000
			set.Elements = append(set.Elements, e)
		},
		"table flushed": func(rs *model.Ruleset) {
			for _, set := range rs.Sets {
				set.Elements = nil
			}
			for _, c := range rs.Chains {
				c.Rules = nil
			}
		},
	} {
		fake.Tamper(model.IPv4, tamper)
		if fake.Render(model.IPv4) == want {
			t.Fatalf("%s: tampering changed nothing", name)
		}
		res, err := s.Sync()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !res.Full || !res.DriftRepaired {
			t.Errorf("%s: full=%v drift=%v, want a full sync that repairs drift", name, res.Full, res.DriftRepaired)
		}
		if got := fake.Render(model.IPv4); got != want {
			t.Errorf("%s: not repaired:\n%s", name, scenario.LineDiff(want, got))
		}
	}
}

// TestChurnKeepsHeapFlat checks that a syncer under endpoint churn (one endpoint of a random
// Service replaced per sync, 1,000 Services x 10) keeps no more memory after 15,000 changes
// than after 5,000: nothing it keeps per change outlives the commit.
func TestChurnKeepsHeapFlat(t *testing.T) {
	fake := nft.NewFake(1)
	s := newScaleSyncer(t, fake, 1000, 10)
	rng := rand.New(rand.NewPCG(1, 2))
	var heap []uint64
	for round := range 3 {
		for j := range 5000 {
			svc := scale.Service(rng.IntN(1000), 10, 0)
			n := round*5000 + j
			svc.Ports[0].Endpoints[rng.IntN(10)].Addr = netip.AddrFrom4([4]byte{10, 250, byte(n >> 8), byte(n)})
			s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, time.Now())
			if _, err := s.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = append(heap, ms.HeapAlloc)
	}
	if grown := int64(heap[2]) - int64(heap[0]); grown > 1<<20 {
		t.Errorf("heap grew by %d kB from 5,000 to 15,000 changes (%d kB, %d kB, %d kB)",
			grown>>10, heap[0]>>10, heap[1]>>10, heap[2]>>10)
	}
}

// TestReplaceUnreadable checks that a node whose tables cannot be read back is programmed
// anyway: the third full sync in a row that fails to read replaces the tables unread, and
// once reads work again the syncer adopts the tables as usual.
func TestReplaceUnreadable(t *testing.T) {
	fake := nft.NewFake(1)
	newScaleSyncer(t, fake, 20, 3)
	want := fake.Render(model.IPv4)
	fake.Tamper(model.IPv4, func(rs *model.Ruleset) {
		set := rs.Set(model.MapServiceEndpoints)
		set.Elements = set.Elements[1:]
	})
	restarted := scaleSyncer(fake, 20, 3)
	fake.FailReads = 1000
	for i := range 2 {
		if _, err := restarted.Sync(); !errors.Is(err, nft.ErrInjected) {
			t.Fatalf("sync %d with the read failing: %v, want the read's error", i+1, err)
		}
	}
	res, err := restarted.Sync()
	if err != nil {
		t.Fatalf("third sync with the read failing: %v", err)
	}
	if len(res.ReplacedUnread) != 1 || !errors.Is(res.ReplacedUnread[0], nft.ErrInjected) {
		t.Errorf("ReplacedUnread = %v, want the one read error", res.ReplacedUnread)
	}
	if got := fake.Render(model.IPv4); got != want {
		t.Errorf("tables after the replacement:\n%s", scenario.LineDiff(want, got))
	}
	// Reads work again: the generation moved, so the next sync reads and adopts.
	fake.FailReads = 0
	fake.Tamper(model.IPv4, func(*model.Ruleset) {})
	res, err = restarted.Sync()
	if err != nil || !res.Full || res.ReplacedUnread != nil || res.Objects != 0 {
		t.Errorf("sync once reads work: full=%v replaced=%v objects=%d err=%v, want a full sync that adopts",
			res.Full, res.ReplacedUnread, res.Objects, err)
	}
}

// TestAdoption checks that a new syncer (a restarted daemon) finding its tables already in
// place writes nothing, and that one finding a stale table changes only the difference.
func TestAdoption(t *testing.T) {
	fake := nft.NewFake(1)
	newScaleSyncer(t, fake, 50, 4)
	calls := fake.Calls
	restarted := scaleSyncer(fake, 50, 4)
	res, err := restarted.Sync()
	if err != nil {
		t.Fatal(err)
	}
	if res.Objects != 0 || fake.Calls != calls {
		t.Errorf("adoption of an up-to-date table wrote %d objects in %d transactions", res.Objects, fake.Calls-calls)
	}
}

// TestAdoptionRewritesCommentedSlots checks a restart over the tables of an earlier nftproxy,
// whose endpoint slots carried their Service's comment: the first full sync rewrites those
// slots (deleted and added again, without a comment) and nothing else, and the next finds
// nothing to change.
func TestAdoptionRewritesCommentedSlots(t *testing.T) {
	fake := nft.NewFake(1)
	newScaleSyncer(t, fake, 20, 3)
	slots := 0
	fake.Tamper(model.IPv4, func(rs *model.Ruleset) {
		eps := rs.Set(model.MapServiceEndpoints).Elements
		for i := range eps {
			eps[i].Comment = "older/version:p"
		}
		slots = len(eps)
	})
	restarted := scaleSyncer(fake, 20, 3)
	res, err := restarted.Sync()
	if err != nil {
		t.Fatal(err)
	}
	if slots != 60 || res.Objects != 2*slots {
		t.Errorf("adopting %d commented slots wrote %d objects, want each deleted and added (%d)", slots, res.Objects, 2*slots)
	}
	if got := fake.Render(model.IPv4); strings.Contains(got, "older/version") {
		t.Errorf("a commented slot survived the first full sync:\n%s", got)
	}
	restarted.RequestFull()
	if res, err := restarted.Sync(); err != nil || res.Objects != 0 {
		t.Errorf("the next full sync wrote %d objects (err %v), want none", res.Objects, err)
	}
}

// TestSharedKeys checks keys that several Services claim (an external IP and port that
// three Services name, and their NodePort): the first Service by name wins, as model.Build
// has it, whichever Service comes, changes or goes, and in whatever order; a cold sync of
// the same Services (and one naming the key twice) writes the same table whole.
func TestSharedKeys(t *testing.T) {
	ext := netip.MustParseAddr("192.0.2.10")
	svc := func(ns string, i int) model.Service {
		return model.Service{Name: model.ServiceName{Namespace: ns, Name: "web"},
			ClusterIPs:  []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})},
			ExternalIPs: []netip.Addr{ext},
			Ports: []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080, Endpoints: []model.Endpoint{
				{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i), 1}), Port: 8080, Ready: true},
				{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i), 2}), Port: 8080, Ready: true},
			}}}}
	}
	node := model.NodeConfig{Family: model.IPv4, NodeName: "node1"}
	fake := nft.NewFake(1)
	s := sync.NewSyncer(fake, model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: node})
	have := map[model.ServiceName]model.Service{}
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"a", "b", "c"}
	for step := range 60 {
		ns := names[rng.IntN(len(names))]
		name := model.ServiceName{Namespace: ns, Name: "web"}
		var change *model.Service
		if _, ok := have[name]; ok && rng.IntN(3) == 0 {
			delete(have, name)
		} else {
			v := svc(ns, 1+rng.IntN(3))
			change = &v
			have[name] = v
		}
		s.Update(map[model.ServiceName]*model.Service{name: change}, time.Unix(0, 0))
		syncUntilDone(t, s)
		for s.Pending() { // chains emptied by a commit go with the next
			syncUntilDone(t, s)
		}
		var all []model.Service
		for _, v := range have {
			all = append(all, v)
		}
		want := model.Render(model.Build(all, node))
		if got := fake.Render(model.IPv4); got != want {
			t.Fatalf("step %d (%s %s): the table differs from model.Build:\n%s", step, name, map[bool]string{true: "gone", false: "set"}[change == nil], scenario.LineDiff(want, got))
		}
		if got := model.Render(s.Committed(model.IPv4)); got != want {
			t.Fatalf("step %d: the syncer's view differs from model.Build:\n%s", step, scenario.LineDiff(want, got))
		}
		// A restarted daemon writes the same table whole, with one Service that names
		// an external IP of its own twice besides, and one whose external IP is its own
		// ClusterIP: the same key twice in its Part, with two values (the cluster and the
		// external chain); the first one is the Service's, as in model.Build.
		twice := svc("twice", 4)
		twice.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.20"), netip.MustParseAddr("192.0.2.20")}
		twice.Ports[0].NodePort = 30081
		own := svc("own", 5)
		own.ExternalIPs = own.ClusterIPs
		own.Ports[0].NodePort = 30082
		all = append(all, twice, own)
		cold := nft.NewFake(1)
		restarted := sync.NewSyncer(cold, model.IPv4)
		restarted.SetNode(map[model.Family]model.NodeConfig{model.IPv4: node})
		changes := map[model.ServiceName]*model.Service{}
		for i := range all {
			changes[all[i].Name] = &all[i]
		}
		restarted.Update(changes, time.Unix(0, 0))
		built := model.Build(all, node)
		res, err := restarted.Sync()
		if err != nil {
			t.Fatalf("step %d: cold sync: %v", step, err)
		}
		if got, want := cold.Render(model.IPv4), model.Render(built); got != want {
			t.Fatalf("step %d: a cold sync differs from model.Build:\n%s", step, scenario.LineDiff(want, got))
		}
		if want := objects(built); res.Objects != want {
			t.Fatalf("step %d: a cold sync wrote %d objects; model.Build has %d", step, res.Objects, want)
		}
	}
}

// objects counts the kernel objects of rs: the table, its sets and their elements, its chains
// and their rules.
func objects(rs *model.Ruleset) int {
	n := 1
	for _, s := range rs.Sets {
		n += 1 + len(s.Elements)
	}
	for _, c := range rs.Chains {
		n += 1 + len(c.Rules)
	}
	return n
}
