package sync_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

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
