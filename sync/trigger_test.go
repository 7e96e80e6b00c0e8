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

// Conventions: ClusterIPs in 10.96.0.0/16, pods in 10.244.0.0/16, node node1.

func triggerService(name string, eps ...string) *model.Service {
	svc := &model.Service{Name: model.ServiceName{Namespace: "ns", Name: name},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0." + name[len(name)-1:])},
		Ports:      []model.ServicePort{{Protocol: model.TCP, Port: 80}}}
	for _, ep := range eps {
		svc.Ports[0].Endpoints = append(svc.Ports[0].Endpoints, model.Endpoint{Addr: netip.MustParseAddr(ep), Port: 8080, Ready: true})
	}
	return svc
}

// TestTriggerTimes checks that the sync that programs a Service's change returns every
// trigger time added for it, under the family it was given; that a change that cancels
// out takes its trigger times with it; and that a failed commit keeps them for the retry.
func TestTriggerTimes(t *testing.T) {
	fake := nft.NewFake(1)
	s := sync.NewSyncer(fake, families...)
	s.SetNode(map[model.Family]model.NodeConfig{
		model.IPv4: {Family: model.IPv4, NodeName: "node1"},
		model.IPv6: {Family: model.IPv6, NodeName: "node1"},
	})
	a, b := model.ServiceName{Namespace: "ns", Name: "a1"}, model.ServiceName{Namespace: "ns", Name: "b2"}
	t0 := time.Unix(1000, 0)
	s.Update(map[model.ServiceName]*model.Service{a: triggerService("a1"), b: triggerService("b2")}, t0)
	syncUntilDone(t, s)

	// a changes twice (two stamps), b changes and changes back (its stamp goes with it).
	t1, t2, t3 := t0.Add(time.Second), t0.Add(2*time.Second), t0.Add(3*time.Second)
	s.Update(map[model.ServiceName]*model.Service{a: triggerService("a1", "10.244.1.2"), b: triggerService("b2", "10.244.1.3")}, t1)
	s.AddTriggerTimes(map[model.ServiceName]map[model.Family][]time.Time{
		a: {model.IPv4: {t1}}, b: {model.IPv4: {t1}}})
	s.Update(map[model.ServiceName]*model.Service{a: triggerService("a1", "10.244.1.2", "10.244.1.4"), b: triggerService("b2")}, t2)
	s.AddTriggerTimes(map[model.ServiceName]map[model.Family][]time.Time{
		a: {model.IPv4: {t2}, model.IPv6: {t3}}, b: {model.IPv4: {t2}}})

	fake.SetFailRate(1)
	if _, err := s.Sync(); err == nil {
		t.Fatal("sync with a failing backend succeeded")
	}
	fake.SetFailRate(0)
	res := syncUntilDone(t, s)
	want := map[model.Family][]time.Time{model.IPv4: {t1, t2}, model.IPv6: {t3}}
	for _, fam := range families {
		got := slices.Clone(res.TriggerTimes[fam])
		slices.SortFunc(got, time.Time.Compare)
		if !slices.Equal(got, want[fam]) {
			t.Errorf("%v trigger times after the retried sync: got %v, want %v", fam, got, want[fam])
		}
	}
	if res := syncUntilDone(t, s); len(res.TriggerTimes) != 0 {
		t.Errorf("a sync with nothing pending returned trigger times %v", res.TriggerTimes)
	}
}
