package sync_test

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// recordingConntrack records the rules of each reconcile and fails when told to.
type recordingConntrack struct {
	calls [][]*conntrack.Rules
	fail  error
}

func (r *recordingConntrack) Reconcile(rules []*conntrack.Rules) []conntrack.Result {
	r.calls = append(r.calls, rules)
	var out []conntrack.Result
	for _, rs := range rules {
		out = append(out, conntrack.Result{Family: rs.Family, Err: r.fail})
	}
	return out
}

var _ sync.Conntrack = (*conntrack.Netlink)(nil)

// dnsService is a NodePort Service with a UDP port 53 (NodePort 30053) and a TCP port 80,
// both served by eps on target port 5353 / 8080; ExternalIP 203.0.113.9.
func dnsService(name, clusterIP string, eps ...model.Endpoint) *model.Service {
	udp := model.ServicePort{Name: "dns", Protocol: model.UDP, Port: 53, NodePort: 30053}
	tcp := model.ServicePort{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080}
	for _, ep := range eps {
		udp.Endpoints = append(udp.Endpoints, ep)
		ep.Port = 8080
		tcp.Endpoints = append(tcp.Endpoints, ep)
	}
	return &model.Service{Name: model.ServiceName{Namespace: "default", Name: name}, Type: model.NodePort,
		ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)}, ExternalIPs: []netip.Addr{netip.MustParseAddr("203.0.113.9")},
		Ports: []model.ServicePort{udp, tcp}}
}

func ep(addr string, ready, serving bool) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddr(addr), Port: 5353, Ready: ready, Serving: serving, Terminating: !ready, NodeName: "node2"}
}

// formatRules prints rules as sorted lines "frontend -> endpoints".
func formatRules(r *conntrack.Rules) string {
	var lines []string
	for f, eps := range r.Frontends {
		dst := fmt.Sprintf("%s %s:%d", f.Proto, f.Addr, f.Port)
		if !f.Addr.IsValid() {
			dst = fmt.Sprintf("%s nodeport %d", f.Proto, f.Port)
		}
		var es []string
		for e := range eps {
			es = append(es, e.String())
		}
		slices.Sort(es)
		lines = append(lines, dst+" -> "+strings.Join(es, " "))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestConntrackRules: the lookup the reconciler gets holds every UDP frontend (ClusterIP,
// ExternalIP, NodePort, also those without endpoints) with the serving endpoints of its
// port (a terminating one that still serves included, one that does not serve left out),
// no TCP frontend, and where NodePorts are served.
func TestConntrackRules(t *testing.T) {
	s := sync.NewSyncer(nft.NewFake(1), model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}})
	svc := dnsService("dns", "10.96.0.10", ep("10.244.2.1", true, true), ep("10.244.2.2", false, true), ep("10.244.2.3", false, false))
	empty := dnsService("empty", "10.96.0.11")
	empty.ExternalIPs = nil
	empty.Ports[0].NodePort, empty.Ports[1].NodePort = 30054, 30081
	s.Update(map[model.ServiceName]*model.Service{svc.Name: svc, empty.Name: empty}, time.Now())
	syncUntilDone(t, s)
	rules := s.ConntrackRules()
	if len(rules) != 1 || rules[0].Family != model.IPv4 || !rules[0].AllLocalNodePorts {
		t.Fatalf("ConntrackRules: %+v, want one IPv4 Rules with NodePorts on every local address", rules)
	}
	want := strings.Join([]string{
		"udp 10.96.0.10:53 -> 10.244.2.1:5353 10.244.2.2:5353",
		"udp 10.96.0.11:53 -> ",
		"udp 203.0.113.9:53 -> 10.244.2.1:5353 10.244.2.2:5353",
		"udp nodeport 30053 -> 10.244.2.1:5353 10.244.2.2:5353",
		"udp nodeport 30054 -> ",
	}, "\n")
	if got := formatRules(rules[0]); got != want {
		t.Errorf("ConntrackRules frontends:\n%s\nwant:\n%s", got, want)
	}
}

// TestConntrackRulesSharedFrontend: two Services name the same external IP and UDP port, one
// with endpoints and one without; the reconciler sees the frontend as the rules treat it,
// without endpoints (the check for ports without endpoints comes before the DNAT), every
// time, whatever the order the Services are visited in.
func TestConntrackRulesSharedFrontend(t *testing.T) {
	s := sync.NewSyncer(nft.NewFake(1), model.IPv4)
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}})
	with := dnsService("with", "10.96.0.10", ep("10.244.2.1", true, true))
	without := dnsService("without", "10.96.0.11")
	without.Ports[0].NodePort, without.Ports[1].NodePort = 30054, 30081
	s.Update(map[model.ServiceName]*model.Service{with.Name: with, without.Name: without}, time.Now())
	syncUntilDone(t, s)
	f := conntrack.Frontend{Addr: netip.MustParseAddr("203.0.113.9"), Proto: model.UDP, Port: 53}
	for i := range 50 {
		if eps, ok := s.ConntrackRules()[0].Frontends[f]; !ok || len(eps) != 0 {
			t.Fatalf("call %d: the shared frontend has endpoints %v (present %v), want none", i, eps, ok)
		}
	}
}

// TestConntrackReconcileWhen: the reconciler runs after every full sync, after a partial
// sync that changed a UDP frontend or its serving endpoints, when asked, and again after
// it failed; not after a partial sync that changed only TCP ports or nothing.
func TestConntrackReconcileWhen(t *testing.T) {
	ct := &recordingConntrack{}
	s := sync.NewSyncer(nft.NewFake(1), model.IPv4)
	s.Conntrack = ct
	s.SetNode(map[model.Family]model.NodeConfig{model.IPv4: {Family: model.IPv4, NodeName: "node1"}})
	a, b := ep("10.244.2.1", true, true), ep("10.244.2.2", true, true)
	svc := dnsService("dns", "10.96.0.10", a, b)
	step := func(name string, change *model.Service, wantRun bool) {
		t.Helper()
		if change != nil {
			s.Update(map[model.ServiceName]*model.Service{change.Name: change}, time.Now())
		}
		n := len(ct.calls)
		res, err := s.Sync()
		if err != nil {
			t.Fatalf("%s: sync: %v", name, err)
		}
		if ran := len(ct.calls) > n; ran != wantRun {
			t.Errorf("%s: reconcile ran: %t, want %t", name, ran, wantRun)
		}
		if ran := res.Conntrack != nil; ran != wantRun {
			t.Errorf("%s: SyncResult.Conntrack set: %t, want %t", name, ran, wantRun)
		}
	}
	step("first (full) sync", svc, true)
	step("nothing changed", nil, false)
	tcpOnly := dnsService("dns", "10.96.0.10", a, b)
	tcpOnly.Ports[1].Endpoints = tcpOnly.Ports[1].Endpoints[:1]
	step("a TCP endpoint removed", tcpOnly, false)
	step("a UDP endpoint removed", dnsService("dns", "10.96.0.10", a), true)
	terminating := dnsService("dns", "10.96.0.10", a)
	terminating.Ports[1].Endpoints[0].Ready = false // the TCP port only
	step("TCP endpoint terminating", terminating, false)
	s.RequestConntrackReconcile()
	step("asked (the periodic tick)", nil, true)
	ct.fail = errors.New("injected")
	step("an ExternalIP added", func() *model.Service {
		x := dnsService("dns", "10.96.0.10", a)
		x.ExternalIPs = append(x.ExternalIPs, netip.MustParseAddr("203.0.113.10"))
		return x
	}(), true)
	if errs := s.ConntrackErrors(); len(errs) != 1 {
		t.Errorf("ConntrackErrors after a failed reconcile: %v, want one", errs)
	}
	ct.fail = nil
	step("after a failed reconcile", nil, true)
	step("and then", nil, false)
	s.RequestFull()
	step("full sync with nothing changed", nil, true)
	got := maps.Collect(func(yield func(conntrack.Frontend, conntrack.Endpoints) bool) {
		for f, e := range ct.calls[len(ct.calls)-1][0].Frontends {
			if !yield(f, e) {
				return
			}
		}
	})
	if len(got) != 4 {
		t.Errorf("last reconcile's frontends: %v, want ClusterIP, two ExternalIPs and the NodePort", got)
	}
}
