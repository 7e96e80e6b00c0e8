package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
)

// affinityMap returns what node1's kernel holds in the affinity map.
func (h *harness) affinityMap(t *testing.T) string {
	t.Helper()
	return h.tp.Node1.Run(t, "nft", "list", "map", "ip", "nftproxy", "affinity")
}

// oneServer fails the row unless every reply came from the same server, and returns it.
func oneServer(t *testing.T, row string, replies []topology.Reply) netip.AddrPort {
	t.Helper()
	counts := countServers(replies)
	if len(counts) != 1 {
		t.Fatalf("%s: %d connections spread over %v, want all on one endpoint", row, len(replies), counts)
	}
	return replies[0].Server
}

// TestTrafficSessionAffinity: with sessionAffinity ClientIP, all new connections of a client
// go to one endpoint, through the ClusterIP and through the NodePort, and the kernel holds the
// client's entry; each connection refreshes the timeout, after which the choice is free
// again; an endpoint that goes away releases its clients at once.
func TestTrafficSessionAffinity(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.pod(1, "a", httpPort)
	b := h.pod(2, "b", httpPort)
	c := h.pod(2, "c", httpPort)
	caller := h.pod(1, "caller")
	caller2 := h.pod(1, "caller2")
	ports := []servicePort{withNodePort(portHTTP, 30380)}
	sticky := service{Name: "sticky", Type: "NodePort", ClusterIPs: []string{"10.96.30.10"}, AffinitySeconds: 3600,
		Ports: ports, Slices: []endpointSlice{podSlice("sticky-v4", false, ports, a, b, c)}}
	h.apply(sticky)
	h.apply(service{Name: "short", ClusterIPs: []string{"10.96.30.20"}, AffinitySeconds: 1,
		Ports: []servicePort{portHTTP}, Slices: []endpointSlice{podSlice("short-v4", false, []servicePort{portHTTP}, a, b, c)}})
	h.start()
	clusterIP := addrPort("10.96.30.10:80")
	h.waitReply(t, caller.NS, "tcp", clusterIP)

	// The wait above made the first connection; every one after it goes where it went.
	first := oneServer(t, "caller pod -> sticky", dialN(t, "caller pod -> sticky", caller.NS, "tcp", clusterIP, 50))
	oneServer(t, "second caller pod -> sticky", dialN(t, "second caller pod -> sticky", caller2.NS, "tcp", clusterIP, 50))
	oneServer(t, "client -> sticky NodePort", dialN(t, "client -> sticky NodePort", h.tp.Client, "tcp", at(h.tp.Node1ExternalIPv4, 30380), 30))
	entry := fmt.Sprintf("%s . 10.96.30.10 . tcp . 80", caller.IPv4)
	if m := h.affinityMap(t); !strings.Contains(m, entry) || !strings.Contains(m, first.Addr().String()+" . 8080") {
		t.Errorf("the kernel's affinity map does not hold %s : %s:\n%s", entry, first, m)
	}

	t.Run("timeout-refreshed-then-expires", func(t *testing.T) {
		target := addrPort("10.96.30.20:80")
		// Each connection comes before the 1 s timeout of the previous one runs out.
		var replies []topology.Reply
		for range 6 {
			replies = append(replies, dialN(t, "caller pod -> short", caller.NS, "tcp", target, 1)...)
			time.Sleep(400 * time.Millisecond)
		}
		oneServer(t, "caller pod -> short, every 400 ms over 2.4 s", replies)
		// Idle longer than the timeout: the entry is gone and the next choice is free.
		seen := map[netip.AddrPort]bool{}
		for range 8 {
			time.Sleep(1300 * time.Millisecond)
			if m := h.affinityMap(t); strings.Contains(m, fmt.Sprintf("%s . 10.96.30.20", caller.IPv4)) {
				t.Fatalf("the affinity entry of %s to short outlived its 1 s timeout:\n%s", caller.IPv4, m)
			}
			seen[dialN(t, "caller pod -> short after the timeout", caller.NS, "tcp", target, 1)[0].Server] = true
		}
		if len(seen) < 2 {
			t.Errorf("8 connections, each after the timeout, all went to %v: the choice is not free again", seen)
		}
	})

	t.Run("endpoint-gone-releases-clients", func(t *testing.T) {
		var rest []*topology.Pod
		for _, p := range []*topology.Pod{a, b, c} {
			if p.IPv4 != first.Addr() {
				rest = append(rest, p)
			}
		}
		sticky.Slices = []endpointSlice{podSlice("sticky-v4", false, ports, rest...)}
		h.apply(sticky)
		// The gone endpoint still serves; only the release keeps the caller away from it.
		deadline := time.Now().Add(readyTimeout)
		for strings.Contains(h.affinityMap(t), entry) {
			if time.Now().After(deadline) {
				t.Fatalf("the affinity entry %s to the removed endpoint %s is still in the kernel after %v:\n%s",
					entry, first, readyTimeout, h.affinityMap(t))
			}
			time.Sleep(pollInterval)
		}
		row := "caller pod -> sticky after its endpoint left"
		replies := dialN(t, row, caller.NS, "tcp", clusterIP, 30)
		if got := oneServer(t, row, replies); got == first {
			t.Errorf("%s: still sent to the removed endpoint %s", row, first)
		}
	})
}
