package sync_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// stickyService is a NodePort Service with session affinity and the given endpoints on port
// 8080; plain is the same without affinity.
func stickyService(name string, clusterIP string, nodePort uint16, timeout uint32, eps ...string) *model.Service {
	svc := &model.Service{Name: model.ServiceName{Namespace: "default", Name: name}, Type: model.NodePort,
		ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)}, AffinityTimeout: timeout}
	p := model.ServicePort{Name: "http", Protocol: model.TCP, Port: 80, NodePort: nodePort}
	for _, a := range eps {
		p.Endpoints = append(p.Endpoints, model.Endpoint{Addr: netip.MustParseAddr(a), Port: 8080, Ready: true, Serving: true})
	}
	svc.Ports = []model.ServicePort{p}
	return svc
}

func affinityTo(client, dst, ep string) nft.AffinityEntry {
	return nft.AffinityEntry{Client: netip.MustParseAddr(client), Dst: netip.MustParseAddrPort(dst), Proto: model.TCP,
		Endpoint: netip.AddrPortFrom(netip.MustParseAddr(ep), 8080)}
}

// TestAffinityReleasedWithEndpoint: when an endpoint of a Service with session affinity goes
// away, the clients remembered with it are forgotten (through the ClusterIP and through the
// NodePort) and nobody else is; a restarted syncer checks every remembered client.
func TestAffinityReleasedWithEndpoint(t *testing.T) {
	fake := nft.NewFake(1)
	s := sync.NewSyncer(fake, model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}})
	sticky := stickyService("sticky", "10.96.0.10", 30010, 10800, "10.244.1.1", "10.244.1.2", "10.244.1.3")
	other := stickyService("other", "10.96.0.20", 30020, 60, "10.244.1.2")
	s.Update(map[model.ServiceName]*model.Service{sticky.Name: sticky, other.Name: other}, time.Now())
	syncUntilDone(t, s)

	keepA := affinityTo("10.244.9.1", "10.96.0.10:80", "10.244.1.1")
	goneB := affinityTo("10.244.9.2", "10.96.0.10:80", "10.244.1.2")
	goneBNodePort := affinityTo("203.0.113.2", "192.168.0.2:30010", "10.244.1.2")
	keepOther := affinityTo("10.244.9.2", "10.96.0.20:80", "10.244.1.2")
	for _, e := range []nft.AffinityEntry{keepA, goneB, goneBNodePort, keepOther} {
		fake.AddAffinity(model.IPv4, e)
	}

	// 10.244.1.2 leaves sticky (it still serves other).
	sticky = stickyService("sticky", "10.96.0.10", 30010, 10800, "10.244.1.1", "10.244.1.3")
	s.Update(map[model.ServiceName]*model.Service{sticky.Name: sticky}, time.Now())
	if res := syncUntilDone(t, s); res.Full {
		t.Fatal("an endpoint change took a full sync")
	}
	if got, want := fake.Affinity(model.IPv4), []nft.AffinityEntry{keepA, keepOther}; !slices.Equal(got, want) {
		t.Errorf("affinity after 10.244.1.2 left sticky: %v, want %v", got, want)
	}

	// While no syncer runs, 10.244.1.1 goes too; the restarted syncer forgets its clients.
	s = sync.NewSyncer(fake, model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}})
	sticky = stickyService("sticky", "10.96.0.10", 30010, 10800, "10.244.1.3")
	s.Update(map[model.ServiceName]*model.Service{sticky.Name: sticky, other.Name: other}, time.Now())
	syncUntilDone(t, s)
	if got, want := fake.Affinity(model.IPv4), []nft.AffinityEntry{keepOther}; !slices.Equal(got, want) {
		t.Errorf("affinity after a restart without 10.244.1.1: %v, want %v", got, want)
	}
}

// stickySyncer returns a Fake and a syncer of node1 that programmed sticky (10.96.0.10:80 and
// NodePort 30010, session affinity 3h) with the endpoints eps.
func stickySyncer(t *testing.T, eps ...string) (*nft.Fake, *sync.Syncer) {
	t.Helper()
	fake := nft.NewFake(1)
	s := sync.NewSyncer(fake, model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}})
	sticky := stickyService("sticky", "10.96.0.10", 30010, 10800, eps...)
	s.Update(map[model.ServiceName]*model.Service{sticky.Name: sticky}, time.Now())
	syncUntilDone(t, s)
	return fake, s
}

// TestAffinityReleasedAfterAffinityWasOff: a Service whose session affinity is turned off
// loses an endpoint meanwhile, then gets affinity back; the clients remembered with the gone
// endpoint from before are forgotten then (their entries stayed in the map, and a client
// sent to its endpoint refreshes its entry with each connection).
func TestAffinityReleasedAfterAffinityWasOff(t *testing.T) {
	fake, s := stickySyncer(t, "10.244.1.1", "10.244.1.2")
	update := func(svc *model.Service) {
		t.Helper()
		s.Update(map[model.ServiceName]*model.Service{svc.Name: svc}, time.Now())
		if res := syncUntilDone(t, s); res.Full {
			t.Fatalf("a change of %s took a full sync", svc.Name)
		}
	}
	keep := affinityTo("10.244.9.1", "10.96.0.10:80", "10.244.1.1")
	gone := affinityTo("10.244.9.2", "10.96.0.10:80", "10.244.1.2")
	goneNodePort := affinityTo("203.0.113.2", "192.168.0.2:30010", "10.244.1.2")
	for _, e := range []nft.AffinityEntry{keep, gone, goneNodePort} {
		fake.AddAffinity(model.IPv4, e)
	}
	update(stickyService("sticky", "10.96.0.10", 30010, 0, "10.244.1.1", "10.244.1.2"))
	update(stickyService("sticky", "10.96.0.10", 30010, 0, "10.244.1.1"))
	update(stickyService("sticky", "10.96.0.10", 30010, 10800, "10.244.1.1"))
	if got, want := fake.Affinity(model.IPv4), []nft.AffinityEntry{keep}; !slices.Equal(got, want) {
		t.Errorf("affinity after it came back without 10.244.1.2: %v, want %v", got, want)
	}
}

// TestAffinityReleaseRetried: when deleting the entries of a gone endpoint fails, the next
// sync, with nothing else to do, deletes them.
func TestAffinityReleaseRetried(t *testing.T) {
	fake, s := stickySyncer(t, "10.244.1.1", "10.244.1.2")
	keep := affinityTo("10.244.9.1", "10.96.0.10:80", "10.244.1.1")
	gone := affinityTo("10.244.9.2", "10.96.0.10:80", "10.244.1.2")
	fake.AddAffinity(model.IPv4, keep)
	fake.AddAffinity(model.IPv4, gone)

	sticky := stickyService("sticky", "10.96.0.10", 30010, 10800, "10.244.1.1")
	s.Update(map[model.ServiceName]*model.Service{sticky.Name: sticky}, time.Now())
	fake.FailPrunes = 1
	syncUntilDone(t, s)
	if errs := s.AffinityErrors(); len(errs) != 1 {
		t.Fatalf("a failed release reported %v", errs)
	}
	if got, want := fake.Affinity(model.IPv4), []nft.AffinityEntry{keep, gone}; !slices.Equal(got, want) {
		t.Fatalf("affinity after the failed release: %v, want %v", got, want)
	}
	if res := syncUntilDone(t, s); res.Full || res.AffinityReleased != 1 {
		t.Errorf("the next sync: full %v, released %d entries; want a partial one releasing 1", res.Full, res.AffinityReleased)
	}
	if got, want := fake.Affinity(model.IPv4), []nft.AffinityEntry{keep}; !slices.Equal(got, want) {
		t.Errorf("affinity after the next sync: %v, want %v", got, want)
	}
}

// affinityAtReconcile records, at each conntrack reconcile, the affinity entries the Fake
// holds then.
type affinityAtReconcile struct {
	fake *nft.Fake
	seen [][]nft.AffinityEntry
}

func (a *affinityAtReconcile) Reconcile(rules []*conntrack.Rules) []conntrack.Result {
	a.seen = append(a.seen, a.fake.Affinity(model.IPv4))
	return nil
}

// TestAffinityReleasedBeforeFlows: the entries that remember a gone endpoint are deleted
// before the flows to it are: a client's packet in between would otherwise be sent to the
// gone endpoint again, by its entry, in a new flow that no cleanup looks at until the next.
func TestAffinityReleasedBeforeFlows(t *testing.T) {
	fake := nft.NewFake(1)
	node := map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}}
	rec := &affinityAtReconcile{fake: fake}
	s := sync.NewSyncer(fake, model.IPv4)
	s.Conntrack = rec
	s.SetNode(node)
	sticky := func(eps ...string) *model.Service {
		svc := stickyService("dns", "10.96.0.10", 30053, 10800, eps...)
		svc.Ports[0].Protocol = model.UDP
		return svc
	}
	udpAffinityTo := func(client, ep string) nft.AffinityEntry {
		e := affinityTo(client, "10.96.0.10:80", ep)
		e.Proto = model.UDP
		return e
	}
	s.Update(map[model.ServiceName]*model.Service{sticky().Name: sticky("10.244.1.1", "10.244.1.2")}, time.Now())
	syncUntilDone(t, s)
	keep, gone := udpAffinityTo("10.244.9.1", "10.244.1.1"), udpAffinityTo("10.244.9.2", "10.244.1.2")
	fake.AddAffinity(model.IPv4, keep)
	fake.AddAffinity(model.IPv4, gone)

	rec.seen = nil
	s.Update(map[model.ServiceName]*model.Service{sticky().Name: sticky("10.244.1.1")}, time.Now())
	if res := syncUntilDone(t, s); res.Full {
		t.Fatal("an endpoint change took a full sync")
	}
	if len(rec.seen) != 1 || !slices.Equal(rec.seen[0], []nft.AffinityEntry{keep}) {
		t.Errorf("partial sync: affinity at the conntrack reconcile %v, want one reconcile seeing %v", rec.seen, []nft.AffinityEntry{keep})
	}

	// A restarted syncer finds the entry again (left by a prune that never ran).
	fake.AddAffinity(model.IPv4, gone)
	rec.seen = nil
	s = sync.NewSyncer(fake, model.IPv4)
	s.Conntrack = rec
	s.SetNode(node)
	s.Update(map[model.ServiceName]*model.Service{sticky().Name: sticky("10.244.1.1")}, time.Now())
	syncUntilDone(t, s)
	if len(rec.seen) != 1 || !slices.Equal(rec.seen[0], []nft.AffinityEntry{keep}) {
		t.Errorf("full sync: affinity at the conntrack reconcile %v, want one reconcile seeing %v", rec.seen, []nft.AffinityEntry{keep})
	}
}
