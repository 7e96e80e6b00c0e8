package integration

// UDP flows and the conntrack reconciler, with the daemon: eight UDP flows, each a socket
// on its own fixed source port (one conntrack entry each), to a ClusterIP with two
// endpoints on port 5353 (pods "a" on node1 and "b" on node2), from a pod on node1.
// ClusterIPs 10.96.23.0/24; source ports 40100-40107.

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
)

const udpFlowCount = 8

// udpFlowsCase is the harness with the Service written (the daemon not started yet), its
// two endpoints and the eight flows.
type udpFlowsCase struct {
	h          *harness
	target     netip.AddrPort
	a, b       netip.AddrPort
	podA, podB *topology.Pod
	flows      []*udpFlow
}

func newUDPFlowsCase(t *testing.T, clusterIP string) *udpFlowsCase {
	t.Helper()
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("conntrack (conntrack-tools) not found: %v", err)
	}
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	podA, podB := h.pod(1, "a", dnsPort), h.pod(2, "b", dnsPort)
	ports := []servicePort{portDNS}
	h.apply(service{Name: "dns", ClusterIPs: []string{clusterIP}, Ports: ports,
		Slices: []endpointSlice{podSlice("dns-v4", false, ports, podA, podB)}})
	c := &udpFlowsCase{h: h, target: at(netip.MustParseAddr(clusterIP), portDNS.Port),
		a: at(podA.IPv4, dnsPort), b: at(podB.IPv4, dnsPort), podA: podA, podB: podB}
	for i := range udpFlowCount {
		c.flows = append(c.flows, openUDPFlow(t, client.NS, uint16(40100+i), c.target))
	}
	return c
}

// answers asks every flow once (a lost datagram is asked again, up to 3 times) and
// returns who answered each.
func (c *udpFlowsCase) answers() []string {
	out := make([]string, len(c.flows))
	for i, f := range c.flows {
		for range 3 {
			if out[i] = outcome(f.ask(4 * udpInterval)); out[i] != "no answer" {
				break
			}
		}
	}
	return out
}

// describe lists each flow's answer and conntrack entry, for failure messages.
func (c *udpFlowsCase) describe(t *testing.T, got []string) string {
	var b strings.Builder
	entries := conntrackEntries(t, c.h.tp.Node1)
	for i, o := range got {
		port := uint16(40100 + i)
		fmt.Fprintf(&b, "\n\tflow from port %d: %s; entry: %s", port, o, entries[port].line)
	}
	return b.String()
}

// waitAnswering waits until each flow is answered by one of the two endpoints, and returns
// which answered each.
func (c *udpFlowsCase) waitAnswering(t *testing.T) []string {
	t.Helper()
	for i, f := range c.flows {
		if ok, _, seen := f.until(time.Now(), readyTimeout, func(o string) bool { return o == c.a.String() || o == c.b.String() }); !ok {
			t.Fatalf("flow %d to %s: no endpoint answered within %v: %v", i, c.target, readyTimeout, seen)
		}
	}
	answers := c.answers()
	t.Logf("eight flows to %s, before:%s", c.target, c.describe(t, answers))
	return answers
}

// TestUDPFlowsKeepEndpoint: with nothing changed, each of eight UDP flows keeps its endpoint
// across a SIGKILL and restart of the daemon (whose first sync is a full one) and across a
// full sync forced by a ruleset change behind the daemon's back. kube-proxy keeps them too;
// deleting the entries of every UDP Service at a full sync moved 2 to 5 of the 8.
func TestUDPFlowsKeepEndpoint(t *testing.T) {
	t.Parallel()
	c := newUDPFlowsCase(t, "10.96.23.10")
	flags := []string{"--sync-period=1s"}
	p := c.h.startKillable("first", flags...)
	waitLog(t, p.proxyProcess, p.name, syncedLine, 1)
	before := c.waitAnswering(t)

	check := func(when string) {
		t.Helper()
		got := c.answers()
		moved := 0
		for i := range got {
			if got[i] != before[i] {
				moved++
			}
		}
		if moved > 0 {
			t.Errorf("%s: %d of %d flows changed endpoint, want none; before:%s\nafter:%s",
				when, moved, len(got), c.describe(t, before), c.describe(t, got))
		}
	}

	p.kill(t)
	p = c.h.startKillable("restarted", flags...)
	line := waitLog(t, p.proxyProcess, p.name, syncedLine, 1)
	if full, _ := syncedObjects(t, line); !full {
		t.Errorf("first sync after the restart was not a full one: %s", line)
	}
	time.Sleep(1500 * time.Millisecond) // and one periodic reconcile
	check("after SIGKILL and restart")

	// Someone else commits to the ruleset: the next periodic check sees the generation
	// move and does a full sync.
	c.h.tp.Node1.Run(t, "nft", "add", "table", "ip", "nftp_other")
	line = waitLog(t, p.proxyProcess, p.name, syncedLine, 2)
	if full, _ := syncedObjects(t, line); !full {
		t.Fatalf("sync after a ruleset change behind the daemon's back was not a full one: %s", line)
	}
	check("after a forced full sync")
	if lines := logLines(p.proxyProcess, "conntrack entries"); len(lines) > 0 {
		t.Errorf("the restarted daemon deleted conntrack entries, want none:\n%s", strings.Join(lines, "\n"))
	}
	c.h.checkProxy(t)
}

// TestUDPEndpointRemovedWhileDown: endpoint "a" (which still answers) is removed from the
// Service while the daemon is down; once it is back, the flows that were on "a" move to
// "b" within udpMoveWithin of its first sync, and those on "b" stay.
func TestUDPEndpointRemovedWhileDown(t *testing.T) {
	t.Parallel()
	c := newUDPFlowsCase(t, "10.96.23.20")
	p := c.h.startKillable("first")
	waitLog(t, p.proxyProcess, p.name, syncedLine, 1)
	before := c.waitAnswering(t)

	p.kill(t)
	ports := []servicePort{portDNS}
	c.h.apply(service{Name: "dns", ClusterIPs: []string{c.target.Addr().String()}, Ports: ports,
		Slices: []endpointSlice{podSlice("dns-v4", false, ports, c.podB)}})
	p = c.h.startKillable("restarted")
	waitLog(t, p.proxyProcess, p.name, syncedLine, 1)
	started := time.Now()
	for i, f := range c.flows {
		ok, took, seen := f.until(started, udpMoveWithin, func(o string) bool { return o == c.b.String() })
		if !ok {
			t.Errorf("flow from port %d (was on %s): not answered by %s within %v of the restarted daemon's first sync: %v; entry: %s",
				40100+i, before[i], c.b, udpMoveWithin, seen, ctEntryOf(t, c.h, uint16(40100+i)))
			continue
		}
		if before[i] == c.a.String() {
			t.Logf("flow from port %d moved from %s to %s %v after the first sync", 40100+i, c.a, c.b, took.Round(time.Millisecond))
		}
	}
	c.h.checkProxy(t)
}
