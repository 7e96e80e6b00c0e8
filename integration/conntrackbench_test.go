package integration

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// BenchmarkKernelConntrackReconcile measures one conntrack reconcile as a sync runs it: the
// syncer's lookup (Syncer.ConntrackRules) for 10,000 UDP Services x 10 endpoints, and
// Netlink.Reconcile over a fresh namespace holding 100,000 UDP entries made through
// ctnetlink, 10 per Service, each DNATed to one of its endpoints (the steady state of the
// periodic reconcile: nothing is stale, every entry is dumped and decided). Service i has
// ClusterIP 10.96.0.0 + i port 53 and endpoints 10.(200+j).0.0 + i port 5353.
func BenchmarkKernelConntrackReconcile(b *testing.B) {
	topology.RequirePrivileged(b)
	const services, perService = 10000, 10
	ns := topology.NewNetNS(b, "ctbench")
	conn := ctDial(b, ns)
	add := func(a netip.Addr, n int) netip.Addr {
		v := a.As4()
		x := uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3]) + uint32(n)
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	client := netip.MustParseAddr("10.250.0.1")
	changes := map[model.ServiceName]*model.Service{}
	start := time.Now()
	for i := range services {
		clusterIP := add(netip.MustParseAddr("10.96.0.0"), i)
		port := model.ServicePort{Name: "dns", Protocol: model.UDP, Port: 53}
		for j := range perService {
			ep := add(netip.AddrFrom4([4]byte{byte(200 + j), 0, 0, 0}), i)
			port.Endpoints = append(port.Endpoints, model.Endpoint{Addr: ep, Port: 5353, Ready: true, Serving: true, NodeName: "node2"})
			err := ctCreate(conn, model.UDP, netip.AddrPortFrom(client, uint16(20000+j)), netip.AddrPortFrom(clusterIP, 53),
				netip.AddrPortFrom(ep, 5353), 0)
			if err != nil {
				b.Fatalf("create entry %d of service %d: %v", j, i, err)
			}
		}
		svc := &model.Service{Name: model.ServiceName{Namespace: "bench", Name: fmt.Sprintf("svc-%05d", i)},
			ClusterIPs: []netip.Addr{clusterIP}, Ports: []model.ServicePort{port}}
		changes[svc.Name] = svc
	}
	b.Logf("created %d entries in %v", services*perService, time.Since(start).Round(time.Millisecond))
	s := sync.NewSyncer(nft.NewFake(1), model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}})
	s.Update(changes, time.Now())
	if _, err := s.Sync(); err != nil {
		b.Fatal(err)
	}
	rec := conntrack.NewNetlink(ns.Path())
	var res []conntrack.Result
	for b.Loop() {
		res = rec.Reconcile(s.ConntrackRules())
	}
	if len(res) != 1 || res[0].Err != nil {
		b.Fatalf("reconcile: %+v", res)
	}
	if res[0].Entries != services*perService || res[0].Deleted != 0 {
		b.Fatalf("reconcile saw %d entries and deleted %d, want %d and 0", res[0].Entries, res[0].Deleted, services*perService)
	}
	b.ReportMetric(float64(res[0].Entries), "entries")
	b.ReportMetric(float64(res[0].Deleted), "deleted")
	b.ReportMetric(float64(services), "services")
}
