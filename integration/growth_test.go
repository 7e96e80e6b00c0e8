package integration

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scale"
	"github.com/nftproxy/nftproxy/model"
)

// bulkService returns a Service at 10.96.31.20:80 with n endpoints that serve nothing, in
// slices of 1,000 (the EndpointSlice controller's largest): they only fill the endpoint map.
func bulkService(n int) service {
	ports := []servicePort{portHTTP}
	svc := service{Name: "bulk", ClusterIPs: []string{"10.96.31.20"}, Ports: ports}
	for i := 0; i < n; i += 1000 {
		s := endpointSlice{Name: fmt.Sprintf("bulk-%d", i/1000), Ports: ports}
		for j := i; j < min(i+1000, n); j++ {
			s.Endpoints = append(s.Endpoints, endpoint{Addr: netip.AddrFrom4([4]byte{10, 250, byte(j >> 8), byte(j)}), NodeName: node2Name})
		}
		svc.Slices = append(svc.Slices, s)
	}
	return svc
}

// TestTrafficEndpointMapGrows checks the endpoint map's size in the kernel: created for the
// endpoints there are, when more come than it has room for, the daemon creates it anew,
// larger, in the same transaction as the new endpoints, holding every one of them; clients
// of a Service with session affinity stay with their endpoint (the affinity map is left as
// it was), and a new client is served through the new map.
func TestTrafficEndpointMapGrows(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.pod(1, "a", httpPort)
	b := h.pod(2, "b", httpPort)
	c := h.pod(2, "c", httpPort)
	caller := h.pod(1, "caller")
	ports := []servicePort{portHTTP}
	h.apply(service{Name: "sticky", ClusterIPs: []string{"10.96.31.10"}, AffinitySeconds: 3600,
		Ports: ports, Slices: []endpointSlice{podSlice("sticky-v4", false, ports, a, b, c)}})
	// 10,000 and sticky's 3, and half as many again: the smallest map.
	h.apply(bulkService(10000))
	h.start()
	sticky := addrPort("10.96.31.10:80")
	h.waitReply(t, caller.NS, "tcp", sticky)
	first := oneServer(t, "caller pod -> sticky", dialN(t, "caller pod -> sticky", caller.NS, "tcp", sticky, 20))

	mapSize := func() string {
		out := h.tp.Node1.Run(t, "nft", "-t", "list", "map", "ip", "nftproxy", model.MapServiceEndpoints)
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "size" {
				return f[1]
			}
		}
		t.Fatalf("the endpoint map has no size:\n%s", out)
		return ""
	}
	least := fmt.Sprint(model.EndpointMapMinSize)
	if got := mapSize(); got != least {
		t.Fatalf("endpoint map of 10,003 endpoints: size %s, want %s", got, least)
	}

	// 17,003 do not fit in 16,384.
	h.apply(bulkService(17000))
	grown := fmt.Sprint(model.EndpointMapSize(17003))
	deadline := time.Now().Add(readyTimeout)
	for mapSize() != grown {
		if time.Now().After(deadline) {
			t.Fatalf("after 17,003 endpoints, the endpoint map's size is still %s, want %s", mapSize(), grown)
		}
		time.Sleep(pollInterval)
	}
	// Grown in the sync that added the endpoints: none failed (a map too small for its
	// elements fails the commit, and the full sync after it would grow the map too).
	if log := h.proxy.log.String(); strings.Contains(log, "sync failed") {
		t.Errorf("a sync failed while the map grew:\n%s", log)
	}
	// The last endpoint of the last slice, and sticky's slots, are in the new map.
	h.tp.Node1.Run(t, "nft", "get", "element", "ip", "nftproxy", model.MapServiceEndpoints,
		"{ 10.96.31.20 . tcp . 80 . 16999 }")
	row := "caller pod -> sticky after the map grew"
	if got := oneServer(t, row, dialN(t, row, caller.NS, "tcp", sticky, 20)); got != first {
		t.Errorf("%s: sent to %s, want %s, where it went before", row, got, first)
	}
	if m := h.affinityMap(t); !strings.Contains(m, caller.IPv4.String()+" . 10.96.31.10 . tcp . 80") {
		t.Errorf("the caller's affinity entry is gone after the map grew:\n%s", m)
	}
	// A new client is served through the new map.
	caller2 := h.pod(1, "caller2")
	h.waitReply(t, caller2.NS, "tcp", sticky)
}

// TestEndpointMapFullOfOthersElements checks a map that the kernel finds full although its
// elements, as the syncer reads them back, fit: someone else added slots of frontends that
// no map names, which a read by key does not find (the maps are read by key past
// Netlink.DumpMax elements, here always). The commit that adds an endpoint fails (ENFILE);
// the next sync creates the map anew, without those slots, and programs the endpoint.
func TestEndpointMapFullOfOthersElements(t *testing.T) {
	topology.RequirePrivileged(t)
	t.Parallel()
	ns := topology.NewNetNS(t, "full")
	be := kernelBackend(t, ns)
	be.DumpMax = -1
	s := newBenchSyncer(be, benchShape{100, 100}.build()) // 10,000 slots, 1,000 of NodePorts
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	// Fill the map to its size with slots of frontends nobody proxies.
	var b strings.Builder
	for i := range int(model.EndpointMapMinSize) - 10000 {
		fmt.Fprintf(&b, "add element ip nftproxy %s { 10.99.%d.%d . tcp . 80 . 0 : 10.98.0.1 . 80 }\n",
			model.MapServiceEndpoints, i>>8, i&0xff)
	}
	file := filepath.Join(t.TempDir(), "others.nft")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "-f", file)

	svc := scale.Service(100, 1, 0)
	s.Update(map[model.ServiceName]*model.Service{svc.Name: &svc}, time.Now())
	if _, err := s.Sync(); !errors.Is(err, unix.ENFILE) {
		t.Fatalf("sync into the full map: %v, want ENFILE", err)
	}
	if _, err := s.Sync(); err != nil {
		t.Fatalf("the sync after the map was found full: %v", err)
	}
	slot := fmt.Sprintf("{ %s . tcp . 80 . 0 }", scale.ClusterIP(100))
	if _, err := ns.Exec("nft", "get", "element", "ip", "nftproxy", model.MapServiceEndpoints, slot); err != nil {
		t.Errorf("the new Service's slot %s is not in the map: %v", slot, err)
	}
	if _, err := ns.Exec("nft", "get", "element", "ip", "nftproxy", model.MapServiceEndpoints, "{ 10.99.0.0 . tcp . 80 . 0 }"); err == nil {
		t.Errorf("the map created anew still holds someone else's slot 10.99.0.0 . tcp . 80 . 0")
	}
}
