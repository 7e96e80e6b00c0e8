package integration

// TestExplainMatchesPackets: what `nftproxy explain` predicts is what real packets do.
//
// Every golden scenario (testdata/) is programmed over netlink into node1 of a fresh
// topology, without the daemon. Each endpoint address of its endpoint maps gets a namespace
// of its own with echo servers (TCP and UDP) on its ports: 10.244.1.x / fd00:244:1::x on
// node1's bridge, every other address on node2's (node1 routes other pod subnets, such as
// node3's 10.244.3.0/24, to node2). Then, for every frontend and many random tuples (random
// source among node1's pods, node2's pod, node1 itself, the external client and an outsider
// 192.0.2.99 / 2001:db8:99::99 on the client's link; random destination among the frontends,
// NodePorts on each node1 address, wrong ports and protocols, unallocated addresses and
// endpoints reached directly), the test reads the live table and affinity map, explains the
// tuple with package explain, connects, and checks:
//
//   - forward: every reply comes from a predicted endpoint, every predicted endpoint answers
//     one of up to 60 connections when each has a chance of 1/4 or more, and a reply's source is masqueraded
//     exactly when predicted (seen as node1's address towards the endpoint, see
//     masqueradeSource; not checked when that is the client's own address);
//   - with session affinity, after the first connection the kernel's entry makes explain
//     predict exactly the endpoint that answered;
//   - reject: the connection is refused (TCP reset, ICMP port unreachable);
//   - drop: it times out;
//   - from node1 itself, a packet rejected with ICMP or dropped in the output hook fails
//     the send at once with EPERM, which counts as either;
//   - untouched: an endpoint reached directly answers itself with the client's address;
//     anything else gets no echo reply.
//
// Not covered: SCTP (no SCTP echo server), tuples from node2's pod whose unmasqueraded
// endpoint is on node2 (node2 runs no proxy, so its replies skip node1's un-DNAT), and
// LoadBalancer IPs as sources (the "node address in the ranges" rule).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/explain"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

const (
	// explainTuples is the number of random tuples per scenario besides one per frontend.
	explainTuples = 24
	// explainWorkers is how many tuples of a scenario are tried at once (distinct tuples
	// never share an affinity entry).
	explainWorkers = 8
	// droppedWithin bounds a connection predicted to get no answer.
	droppedWithin = time.Second
)

// explainSource is a client of the explain test: where it sends from, and what explain is told.
type explainSource struct {
	name string
	ns   *topology.NetNS
	addr netip.Addr
	from explain.Origin
	iif  string
	// node is the node of a pod source (0 for others).
	node int
}

// explainTuple is one new connection to try.
type explainTuple struct {
	src   explainSource
	dst   netip.AddrPort
	proto model.Protocol
}

func (tu explainTuple) String() string {
	return fmt.Sprintf("%s %s (%s) -> %s/%s", tu.src.name, tu.src.addr, tu.src.from, tu.dst, tu.proto)
}

func TestExplainMatchesPackets(t *testing.T) {
	topology.RequirePrivileged(t)
	scenarios, err := scenario.Load("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("NFTPROXY_EXPLAIN_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("random tuples from seed %d (NFTPROXY_EXPLAIN_SEED=%d repeats them)", seed, seed)
	for i, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			t.Parallel()
			explainScenario(t, sc, rand.New(rand.NewPCG(seed, uint64(i))))
		})
	}
}

// explainWorld is one scenario programmed into a topology.
type explainWorld struct {
	tp       *topology.Topology
	be       *nft.Netlink
	want     map[model.Family]*model.Ruleset
	local    []netip.Addr
	echo     map[netip.AddrPort]bool
	sources  map[model.Family][]explainSource
	nodeAddr map[model.Family][]netip.Addr
	// count counts the verdicts explained.
	count func(explain.Verdict)
}

func explainScenario(t *testing.T, sc scenario.Scenario, rng *rand.Rand) {
	rulesets, err := sc.Render()
	if err != nil {
		t.Fatal(err)
	}
	w := newExplainWorld(t, rulesets)
	tuples := w.tuples(rng)
	var mu sync.Mutex
	verdicts := map[explain.Verdict]int{}
	w.count = func(v explain.Verdict) {
		mu.Lock()
		defer mu.Unlock()
		verdicts[v]++
	}
	defer func() { t.Logf("%d tuples: %v", len(tuples), verdicts) }()
	var wg sync.WaitGroup
	work := make(chan explainTuple)
	for range explainWorkers {
		wg.Go(func() {
			for tu := range work {
				w.check(t, tu)
			}
		})
	}
	for _, tu := range tuples {
		work <- tu
	}
	close(work)
	wg.Wait()
}

func newExplainWorld(t *testing.T, rulesets []*model.Ruleset) *explainWorld {
	t.Helper()
	tp := topology.New(t)
	for _, n := range []*topology.NetNS{tp.Node1, tp.Node2} {
		if err := n.SetSysctls(map[string]string{
			"net/bridge/bridge-nf-call-iptables":  "1",
			"net/bridge/bridge-nf-call-ip6tables": "1",
		}); err != nil {
			t.Fatalf("%s needs br_netfilter (modprobe br_netfilter): %v", n.Name, err)
		}
	}
	w := &explainWorld{tp: tp, be: kernelBackend(t, tp.Node1), want: map[model.Family]*model.Ruleset{},
		echo: map[netip.AddrPort]bool{}, sources: map[model.Family][]explainSource{}, nodeAddr: map[model.Family][]netip.Addr{}}
	if err := w.be.Replace(rulesets...); err != nil {
		t.Fatalf("program the scenario: %v", err)
	}

	// Endpoints, each address in a namespace of its own.
	ports := map[netip.Addr][]uint16{}
	for _, rs := range rulesets {
		w.want[rs.Family] = rs
		for _, s := range rs.Sets {
			if s.Data != model.EndpointData || s.Dynamic {
				continue
			}
			for _, e := range s.Elements {
				a := e.Endpoint.Addr()
				if !slices.Contains(ports[a], e.Endpoint.Port()) {
					ports[a] = append(ports[a], e.Endpoint.Port())
				}
			}
		}
	}
	gateways := map[netip.Prefix]bool{}
	n := 0
	for a, ps := range ports {
		n++
		node, ns := w.endpointNS(t, a, n, gateways)
		for _, p := range ps {
			topology.StartEcho(t, ns, "tcp+udp", netip.AddrPortFrom(a, p))
			w.echo[netip.AddrPortFrom(a, p)] = true
		}
		if node == 1 {
			fam := familyOf(a)
			w.sources[fam] = append(w.sources[fam], explainSource{name: "endpoint-pod", ns: ns, addr: a, from: explain.FromPod, iif: topology.BridgeName, node: 1})
		}
	}

	// Clients.
	// Client pods at addresses no scenario's endpoint has (AddPod's would be 10.244.x.2).
	pod1 := w.clientPod(t, 1, "10.244.1.250", "fd00:244:1::fa")
	pod2 := w.clientPod(t, 2, "10.244.2.250", "fd00:244:2::fa")
	tp.Client.IP(t, "addr add 192.0.2.99/32 dev "+topology.ClientIf, "addr add 2001:db8:99::99/128 dev "+topology.ClientIf+" nodad")
	for _, v6 := range []bool{false, true} {
		fam := model.IPv4
		client, outsider, node := tp.ClientIPv4, netip.MustParseAddr("192.0.2.99"), tp.Node1IPv4
		w.nodeAddr[fam] = []netip.Addr{tp.Node1IPv4, tp.Node1ExternalIPv4, netip.MustParseAddr(topology.Node1GatewayIPv4)}
		if v6 {
			fam = model.IPv6
			client, outsider, node = tp.ClientIPv6, netip.MustParseAddr("2001:db8:99::99"), tp.Node1IPv6
			w.nodeAddr[fam] = []netip.Addr{tp.Node1IPv6, tp.Node1ExternalIPv6, netip.MustParseAddr(topology.Node1GatewayIPv6)}
		}
		w.sources[fam] = append(w.sources[fam],
			explainSource{name: "pod1", ns: pod1.NS, addr: pod1.Addr(v6), from: explain.FromPod, iif: topology.BridgeName, node: 1},
			explainSource{name: "pod2", ns: pod2.NS, addr: pod2.Addr(v6), from: explain.FromPod, iif: topology.Node1ToNode2If, node: 2},
			explainSource{name: "node1", ns: tp.Node1, addr: node, from: explain.FromNode},
			explainSource{name: "client", ns: tp.Client, addr: client, from: explain.FromExternal, iif: topology.Node1ToClientIf},
			explainSource{name: "outsider", ns: tp.Client, addr: outsider, from: explain.FromExternal, iif: topology.Node1ToClientIf},
		)
	}
	err := tp.Node1.Do(func() error {
		addrs, err := net.InterfaceAddrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				w.local = append(w.local, p.Addr())
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func familyOf(a netip.Addr) model.Family {
	if a.Is4() {
		return model.IPv4
	}
	return model.IPv6
}

// endpointNS creates the namespace of endpoint address a (the n-th): on node1's bridge for
// node1's pod subnet, else on node2's, adding a gateway there and a route on node1 for a
// subnet neither has. It returns the node and the namespace.
func (w *explainWorld) endpointNS(t *testing.T, a netip.Addr, n int, gateways map[netip.Prefix]bool) (int, *topology.NetNS) {
	t.Helper()
	bits := 24
	if a.Is6() {
		bits = 64
	}
	subnet := netip.PrefixFrom(a, bits).Masked()
	gw := subnet.Addr().Next()
	node := 2
	switch subnet.String() {
	case topology.Node1PodCIDRv4, topology.Node1PodCIDRv6:
		node = 1
	case topology.Node2PodCIDRv4, topology.Node2PodCIDRv6:
	default:
		if !gateways[subnet] {
			gateways[subnet] = true
			via := topology.Node2IPv4
			if a.Is6() {
				via = topology.Node2IPv6
			}
			w.tp.Node2.IP(t, "addr add "+gw.String()+"/"+strconv.Itoa(bits)+" dev "+topology.BridgeName+" nodad")
			w.tp.Node1.IP(t, "route add "+subnet.String()+" via "+via)
		}
	}
	ns := topology.NewNetNS(t, "ep"+strconv.Itoa(n))
	host := "ve" + strconv.Itoa(n)
	w.tp.Node(node).IP(t,
		"link add "+host+" type veth peer name "+topology.PodIf+" netns "+ns.Name,
		"link set "+host+" master "+topology.BridgeName,
		"link set "+host+" type bridge_slave hairpin on",
		"link set "+host+" up",
	)
	ns.IP(t,
		"addr add "+netip.PrefixFrom(a, bits).String()+" dev "+topology.PodIf+" nodad",
		"link set "+topology.PodIf+" up",
		"route add default via "+gw.String(),
	)
	return node, ns
}

// clientPod creates a pod namespace on a node's bridge with the two addresses given.
func (w *explainWorld) clientPod(t *testing.T, node int, v4, v6 string) *topology.Pod {
	t.Helper()
	p := &topology.Pod{Name: "client" + strconv.Itoa(node), Node: node, NS: topology.NewNetNS(t, "client"+strconv.Itoa(node)),
		IPv4: netip.MustParseAddr(v4), IPv6: netip.MustParseAddr(v6), HostIf: "vc" + strconv.Itoa(node)}
	gw4, gw6 := topology.Node1GatewayIPv4, topology.Node1GatewayIPv6
	if node == 2 {
		gw4, gw6 = topology.Node2GatewayIPv4, topology.Node2GatewayIPv6
	}
	w.tp.Node(node).IP(t,
		"link add "+p.HostIf+" type veth peer name "+topology.PodIf+" netns "+p.NS.Name,
		"link set "+p.HostIf+" master "+topology.BridgeName,
		"link set "+p.HostIf+" up",
	)
	p.NS.IP(t,
		"addr add "+v4+"/24 dev "+topology.PodIf,
		"addr add "+v6+"/64 dev "+topology.PodIf+" nodad",
		"link set "+topology.PodIf+" up",
		"route add default via "+gw4,
		"route add ::/0 via "+gw6,
	)
	return p
}

// tuples returns one tuple per frontend and explainTuples random ones, each distinct.
func (w *explainWorld) tuples(rng *rand.Rand) []explainTuple {
	type dest struct {
		dst   netip.AddrPort
		proto model.Protocol
	}
	var frontends, extras []dest
	other := func(p model.Protocol) model.Protocol {
		if p == model.TCP {
			return model.UDP
		}
		return model.TCP
	}
	for fam, rs := range w.want {
		for _, s := range rs.Sets {
			for _, e := range s.Elements {
				switch s.Name {
				case model.MapServiceIPs, model.MapNoEndpointServices:
					frontends = append(frontends, dest{netip.AddrPortFrom(e.Addr, e.Port), e.Proto})
					extras = append(extras, dest{netip.AddrPortFrom(e.Addr, e.Port+1), e.Proto},
						dest{netip.AddrPortFrom(e.Addr, e.Port), other(e.Proto)})
				case model.MapServiceNodePorts, model.MapNoEndpointNodePorts:
					for _, a := range w.nodeAddr[fam] {
						frontends = append(frontends, dest{netip.AddrPortFrom(a, e.Port), e.Proto})
					}
				case model.MapServiceEndpoints:
					extras = append(extras, dest{e.Endpoint, e.Proto})
				}
			}
		}
		unallocated := netip.AddrFrom4([4]byte{10, 96, byte(rng.IntN(256)), byte(rng.IntN(256))})
		if fam == model.IPv6 {
			unallocated = netip.MustParseAddr("fd00:96::" + strconv.FormatUint(uint64(rng.IntN(0xffff)), 16))
		}
		extras = append(extras, dest{netip.AddrPortFrom(unallocated, 80), model.TCP})
	}
	seen := map[string]bool{}
	var out []explainTuple
	add := func(d dest) {
		if d.proto == model.SCTP {
			return
		}
		srcs := w.sources[familyOf(d.dst.Addr())]
		tu := explainTuple{src: srcs[rng.IntN(len(srcs))], dst: d.dst, proto: d.proto}
		k := fmt.Sprint(tu.src.addr, tu.dst, tu.proto)
		if !seen[k] {
			seen[k] = true
			out = append(out, tu)
		}
	}
	slices.SortFunc(frontends, func(a, b dest) int { return a.dst.Compare(b.dst) })
	for _, d := range frontends {
		add(d)
	}
	all := append(slices.Clone(frontends), extras...)
	slices.SortFunc(all, func(a, b dest) int { return a.dst.Compare(b.dst) })
	for range explainTuples {
		add(all[rng.IntN(len(all))])
	}
	return out
}

// explain reads the live table and affinity map and explains the tuple.
func (w *explainWorld) explain(tu explainTuple) (explain.Explanation, error) {
	fam := familyOf(tu.dst.Addr())
	rs, _, err := w.be.Read(fam, w.want[fam])
	if err != nil {
		return explain.Explanation{}, err
	}
	entries, err := w.be.AffinityEntries(fam)
	if err != nil {
		return explain.Explanation{}, err
	}
	st := explain.State{Ruleset: rs, LocalAddrs: w.local, Affinity: entries}
	return explain.Explain(st, explain.Packet{Src: tu.src.addr, Dst: tu.dst, Proto: tu.proto, From: tu.src.from, InInterface: tu.src.iif})
}

// check explains a tuple, sends connections and compares.
func (w *explainWorld) check(t *testing.T, tu explainTuple) {
	ex, err := w.explain(tu)
	if err != nil {
		t.Errorf("%s: explain: %v", tu, err)
		return
	}
	w.count(ex.Verdict)
	network := "tcp"
	if tu.proto == model.UDP {
		network = "udp"
	}
	switch ex.Verdict {
	case explain.Forward:
		masq := map[netip.AddrPort]bool{}
		for _, o := range ex.Outcomes {
			ep := netip.MustParseAddrPort(o.Endpoint)
			masq[ep] = o.Masquerade
			if tu.src.node == 2 && !o.Masquerade && w.nodeOf(ep.Addr()) == 2 {
				t.Logf("%s: not observable (node2's pod to its own node's endpoint %s unmasqueraded)", tu, ep)
				return
			}
		}
		// Enough connections to see every predicted endpoint when each has a chance of at
		// least 1/4 (a miss in 60 tries: 3e-8), else a few to check the ones seen.
		sample := ex.Affinity == nil
		for _, o := range ex.Outcomes {
			sample = sample && o.Probability >= 0.25
		}
		n := min(2*len(masq), 8)
		if sample {
			n = 60
		}
		seen := map[netip.AddrPort]bool{}
		for i := range n {
			r, err := dialBound(tu.src.ns, network, tu.src.addr, tu.dst, dialTimeout)
			if err != nil {
				t.Errorf("%s: predicted %s, connection %d failed: %v", tu, summarize(ex), i+1, err)
				return
			}
			want, ok := masq[r.Server]
			if !ok {
				t.Errorf("%s: answered by %s, not among the predicted endpoints: %s", tu, r.Server, summarize(ex))
				return
			}
			seen[r.Server] = true
			if ms := masqueradeSource(r.Server.Addr()); ms != tu.src.addr {
				if got := r.Source.Addr() == ms; got != want {
					t.Errorf("%s: %s saw source %s (masqueraded %t), predicted masquerade %t: %s", tu, r.Server, r.Source.Addr(), got, want, summarize(ex))
				}
			}
			if i == 0 && ex.Affinity != nil && ex.Affinity.TimeoutSeconds > 0 && len(masq) > 1 {
				// The kernel now remembers this client: explain must say so.
				again, err := w.explain(tu)
				if err != nil {
					t.Errorf("%s: explain: %v", tu, err)
					return
				}
				if eps := again.Endpoints(); len(eps) != 1 || eps[0] != r.Server || again.Affinity == nil || again.Affinity.Endpoint != r.Server.String() {
					t.Errorf("%s: after a connection to %s, explain predicts %s, want only it from the affinity map", tu, r.Server, summarize(again))
					return
				}
				masq = map[netip.AddrPort]bool{r.Server: want}
			}
			if sample && len(seen) == len(masq) {
				break
			}
		}
		if sample && len(seen) != len(masq) {
			t.Errorf("%s: predicted %s, but %d connections reached only %v", tu, summarize(ex), n, slices.SortedFunc(maps.Keys(seen), netip.AddrPort.Compare))
		}
	case explain.Reject:
		_, err := dialBound(tu.src.ns, network, tu.src.addr, tu.dst, dialTimeout)
		if !topology.IsRefused(err) && !(tu.src.from == explain.FromNode && errors.Is(err, syscall.EPERM)) {
			t.Errorf("%s: predicted %s, got %v, want refused", tu, summarize(ex), errOrAnswer(err))
		}
	case explain.Drop:
		_, err := dialBound(tu.src.ns, network, tu.src.addr, tu.dst, droppedWithin)
		if !topology.IsTimeout(err) && !(tu.src.from == explain.FromNode && errors.Is(err, syscall.EPERM)) {
			t.Errorf("%s: predicted %s, got %v, want a timeout", tu, summarize(ex), errOrAnswer(err))
		}
	case explain.Untouched:
		r, err := dialBound(tu.src.ns, network, tu.src.addr, tu.dst, droppedWithin)
		switch {
		case w.echo[tu.dst] && (err != nil || r.Server != tu.dst || r.Source.Addr() != tu.src.addr):
			t.Errorf("%s: predicted untouched, so the endpoint itself answers with the client's address; got %v %v", tu, r, err)
		case !w.echo[tu.dst] && err == nil:
			t.Errorf("%s: predicted %s, but %s answered (source %s)", tu, summarize(ex), r.Server, r.Source)
		}
	default:
		t.Errorf("%s: unexpected explanation %s", tu, summarize(ex))
	}
}

// nodeOf returns the node an endpoint namespace is on.
func (w *explainWorld) nodeOf(a netip.Addr) int {
	if node1PodsV4.Contains(a) || node1PodsV6.Contains(a) {
		return 1
	}
	return 2
}

func errOrAnswer(err error) string {
	if err == nil {
		return "an answer"
	}
	return err.Error()
}

// summarize prints an explanation in a failing row.
func summarize(ex explain.Explanation) string {
	s := string(ex.Verdict)
	if ex.Service != "" {
		s = ex.Service + " " + ex.Frontend + " " + s
	}
	if ex.Reason != "" {
		s += " (" + ex.Reason + ")"
	}
	for _, o := range ex.Outcomes {
		if o.Verdict == explain.Forward {
			s += fmt.Sprintf(" | %s %s masquerade=%t", o.Endpoint, o.Chance, o.Masquerade)
		}
	}
	for _, n := range ex.Notes {
		s += " [note: " + n + "]"
	}
	return s
}

// dialBound is topology.Dial from source address src.
func dialBound(ns *topology.NetNS, network string, src netip.Addr, target netip.AddrPort, timeout time.Duration) (topology.Reply, error) {
	var r topology.Reply
	err := ns.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		d := net.Dialer{}
		if network == "tcp" {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		} else {
			d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		c, err := d.DialContext(ctx, network, target.String())
		if err != nil {
			return err
		}
		defer c.Close()
		deadline, _ := ctx.Deadline()
		if err := c.SetDeadline(deadline); err != nil {
			return err
		}
		if network == "udp" {
			if _, err := c.Write([]byte("ping\n")); err != nil {
				return err
			}
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNRESET) {
				return fmt.Errorf("read: %w", syscall.ECONNREFUSED)
			}
			return err
		}
		r, err = topology.ParseReply(string(buf[:n]))
		return err
	})
	return r, err
}
