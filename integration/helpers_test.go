package integration

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

const (
	// nodeName is node1's Node object, passed as --hostname-override.
	nodeName = "node1"
	// node2Name is the nodeName of endpoints on node2.
	node2Name = "node2"
	// nodeZone is node1's topology.kubernetes.io/zone label.
	nodeZone = "zone-a"
	// clusterCIDRs is --cluster-cidr: the pod networks of both nodes.
	clusterCIDRs = topology.PodCIDRv4 + "," + topology.PodCIDRv6

	// dialTimeout bounds one connection (connect, send, receive) in an assertion.
	dialTimeout = 2 * time.Second
	// readyTimeout bounds the wait for the proxy to program a Service.
	readyTimeout = 10 * time.Second
	// pollInterval is the pause between attempts while waiting.
	pollInterval = 50 * time.Millisecond
	// refusedWithin is how soon a rejected connection must fail: less than TCP's first
	// SYN retransmission (1s), so that the first packet's rejection is what refused it.
	refusedWithin = 500 * time.Millisecond
	// probeTimeout bounds one attempt while waiting.
	probeTimeout = 500 * time.Millisecond
)

var (
	node1PodsV4 = netip.MustParsePrefix(topology.Node1PodCIDRv4)
	node1PodsV6 = netip.MustParsePrefix(topology.Node1PodCIDRv6)
)

// addrPort parses "addr:port" / "[addr]:port" or panics.
func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// at joins an address and a port.
func at(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// family names an address family in row names.
func family(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// masqueradeSource is the source address an endpoint sees when node1 masquerades a
// connection to it: the address of node1's interface towards it (br0 for node1's pods,
// the node network for node2's pods).
func masqueradeSource(endpoint netip.Addr) netip.Addr {
	switch {
	case node1PodsV4.Contains(endpoint):
		return netip.MustParseAddr(topology.Node1GatewayIPv4)
	case node1PodsV6.Contains(endpoint):
		return netip.MustParseAddr(topology.Node1GatewayIPv6)
	case endpoint.Is4():
		return netip.MustParseAddr(topology.Node1IPv4)
	default:
		return netip.MustParseAddr(topology.Node1IPv6)
	}
}

// --- Manifests ------------------------------------------------------------------------------

// service describes a Service in namespace "default" and its EndpointSlices, written as one
// multi-document manifest file by harness.apply.
type service struct {
	Name string
	// Type is ClusterIP (default), NodePort or LoadBalancer.
	Type string
	// ClusterIPs holds one address per family; two make the Service dual-stack.
	ClusterIPs  []string
	ExternalIPs []string
	// LoadBalancerIPs go to status.loadBalancer.ingress.
	LoadBalancerIPs []string
	// ExternalTrafficPolicy and InternalTrafficPolicy are "Local" or "" (Cluster).
	ExternalTrafficPolicy string
	InternalTrafficPolicy string
	// LoadBalancerSourceRanges is spec.loadBalancerSourceRanges.
	LoadBalancerSourceRanges []string
	// HealthCheckNodePort is spec.healthCheckNodePort (0: none).
	HealthCheckNodePort uint16
	// AffinitySeconds, when not 0, sets sessionAffinity ClientIP with this timeout.
	AffinitySeconds int
	Ports           []servicePort
	// Slices are the Service's EndpointSlices; none means no slice at all.
	Slices []endpointSlice
}

// servicePort is one entry of spec.ports.
type servicePort struct {
	Name       string
	Protocol   string // TCP or UDP
	Port       uint16
	TargetPort uint16 // 0: same as Port
	NodePort   uint16 // 0: none
}

func (p servicePort) target() uint16 { return cmp.Or(p.TargetPort, p.Port) }

// network is the Dial network of the port's protocol ("tcp" or "udp").
func (p servicePort) network() string { return strings.ToLower(p.Protocol) }

// endpointSlice is a discovery.k8s.io/v1 EndpointSlice of the Service.
type endpointSlice struct {
	Name      string
	IPv6      bool
	Ports     []servicePort // Name, Protocol and target() are used
	Endpoints []endpoint
}

// endpoint is one endpoint of a slice.
type endpoint struct {
	Addr     netip.Addr
	NodeName string
	NotReady bool
	// Terminating marks a not-ready endpoint that is terminating but still serving.
	Terminating bool
	// ZoneHints and NodeHints are hints.forZones and hints.forNodes.
	ZoneHints, NodeHints []string
}

// podSlice returns a slice named name of the given family whose endpoints are the pods,
// ready, on the ports' target ports.
func podSlice(name string, v6 bool, ports []servicePort, pods ...*topology.Pod) endpointSlice {
	s := endpointSlice{Name: name, IPv6: v6, Ports: ports}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, podEndpoint(p, v6))
	}
	return s
}

// podEndpoint returns the pod's ready endpoint of one family.
func podEndpoint(p *topology.Pod, v6 bool) endpoint {
	node := nodeName
	if p.Node == 2 {
		node = node2Name
	}
	return endpoint{Addr: p.Addr(v6), NodeName: node}
}

// yaml renders the Service and its slices as a multi-document manifest.
func (s service) yaml() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	var families []string
	for _, ip := range s.ClusterIPs {
		families = append(families, addrType(netip.MustParseAddr(ip).Is6()))
	}
	policy := "SingleStack"
	if len(families) > 1 {
		policy = "RequireDualStack"
	}
	w("apiVersion: v1")
	w("kind: Service")
	w("metadata:")
	w("  name: %s", s.Name)
	w("  namespace: default")
	w("spec:")
	w("  type: %s", cmp.Or(s.Type, "ClusterIP"))
	w("  clusterIP: %q", s.ClusterIPs[0])
	w("  clusterIPs: %s", flowList(s.ClusterIPs))
	w("  ipFamilies: %s", flowList(families))
	w("  ipFamilyPolicy: %s", policy)
	if len(s.ExternalIPs) > 0 {
		w("  externalIPs: %s", flowList(s.ExternalIPs))
	}
	if s.ExternalTrafficPolicy != "" {
		w("  externalTrafficPolicy: %s", s.ExternalTrafficPolicy)
	}
	if s.InternalTrafficPolicy != "" {
		w("  internalTrafficPolicy: %s", s.InternalTrafficPolicy)
	}
	if len(s.LoadBalancerSourceRanges) > 0 {
		w("  loadBalancerSourceRanges: %s", flowList(s.LoadBalancerSourceRanges))
	}
	if s.HealthCheckNodePort != 0 {
		w("  healthCheckNodePort: %d", s.HealthCheckNodePort)
	}
	if s.AffinitySeconds != 0 {
		w("  sessionAffinity: ClientIP")
		w("  sessionAffinityConfig: {clientIP: {timeoutSeconds: %d}}", s.AffinitySeconds)
	}
	w("  ports:")
	for _, p := range s.Ports {
		w("  - name: %s", p.Name)
		w("    protocol: %s", p.Protocol)
		w("    port: %d", p.Port)
		w("    targetPort: %d", p.target())
		if p.NodePort != 0 {
			w("    nodePort: %d", p.NodePort)
		}
	}
	if len(s.LoadBalancerIPs) > 0 {
		w("status:")
		w("  loadBalancer:")
		w("    ingress:")
		for _, ip := range s.LoadBalancerIPs {
			w("    - ip: %q", ip)
		}
	}
	for _, es := range s.Slices {
		w("---")
		w("apiVersion: discovery.k8s.io/v1")
		w("kind: EndpointSlice")
		w("metadata:")
		w("  name: %s", es.Name)
		w("  namespace: default")
		w("  labels:")
		w("    kubernetes.io/service-name: %s", s.Name)
		w("    endpointslice.kubernetes.io/managed-by: nftproxy-integration-test")
		w("addressType: %s", addrType(es.IPv6))
		w("ports:")
		for _, p := range es.Ports {
			w("- name: %s", p.Name)
			w("  protocol: %s", p.Protocol)
			w("  port: %d", p.target())
		}
		if len(es.Endpoints) == 0 {
			w("endpoints: []")
			continue
		}
		w("endpoints:")
		for _, ep := range es.Endpoints {
			w("- addresses: [%q]", ep.Addr.String())
			w("  conditions: {ready: %t, serving: %t, terminating: %t}", !ep.NotReady, !ep.NotReady || ep.Terminating, ep.Terminating)
			w("  nodeName: %s", ep.NodeName)
			if len(ep.ZoneHints)+len(ep.NodeHints) > 0 {
				w("  hints:")
			}
			if len(ep.ZoneHints) > 0 {
				w("    forZones:")
				for _, z := range ep.ZoneHints {
					w("    - name: %s", z)
				}
			}
			if len(ep.NodeHints) > 0 {
				w("    forNodes:")
				for _, n := range ep.NodeHints {
					w("    - name: %s", n)
				}
			}
		}
	}
	return b.String()
}

// nodeYAML is node1's Node object.
func nodeYAML() string {
	return `apiVersion: v1
kind: Node
metadata:
  name: ` + nodeName + `
  labels:
    kubernetes.io/hostname: ` + nodeName + `
    topology.kubernetes.io/zone: ` + nodeZone + `
spec:
  podCIDR: "` + topology.Node1PodCIDRv4 + `"
  podCIDRs: ["` + topology.Node1PodCIDRv4 + `", "` + topology.Node1PodCIDRv6 + `"]
status:
  addresses:
  - type: InternalIP
    address: "` + topology.Node1IPv4 + `"
  - type: InternalIP
    address: "` + topology.Node1IPv6 + `"
  - type: Hostname
    address: ` + nodeName + `
`
}

func addrType(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func flowList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// --- Harness --------------------------------------------------------------------------------

// harness is one test's cluster: the topology, the manifest directory and the proxy running
// in node1.
type harness struct {
	t     *testing.T
	tp    *topology.Topology
	dir   string
	proxy *proxyProcess
	// source are the flags that give the proxy its objects: --manifests dir unless a test
	// sets another source.
	source []string
	// nodePortDefault leaves --nodeport-addresses to nftproxy's default (the primary IPs)
	// instead of "all".
	nodePortDefault bool
}

// newHarness builds the topology and a manifest directory holding node1's Node object. The
// proxy is not started yet (see start), so that the first sync sees the test's Services.
func newHarness(t *testing.T) *harness {
	t.Helper()
	topology.RequirePrivileged(t)
	tp := topology.New(t)
	// A node1 pod reaching a node1 endpoint gets the reply straight over the bridge; it is
	// un-DNATed only if bridged IP traffic passes the IP hooks (br_netfilter), as in a real
	// cluster.
	if err := tp.Node1.SetSysctls(map[string]string{
		"net/bridge/bridge-nf-call-iptables":  "1",
		"net/bridge/bridge-nf-call-ip6tables": "1",
	}); err != nil {
		t.Fatalf("node1 needs br_netfilter (modprobe br_netfilter): %v", err)
	}
	h := &harness{t: t, tp: tp, dir: t.TempDir()}
	h.write("node-"+nodeName+".yaml", nodeYAML())
	return h
}

// pod adds a pod on node 1 or 2 with TCP and UDP echo servers on both of its addresses at
// each of ports.
func (h *harness) pod(node int, name string, ports ...uint16) *topology.Pod {
	h.t.Helper()
	p := h.tp.AddPod(h.t, node, name)
	for _, port := range ports {
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			topology.StartEcho(h.t, p.NS, "tcp+udp", at(a, port))
		}
	}
	return p
}

// apply writes the Service's manifest file, replacing an earlier version atomically.
func (h *harness) apply(s service) {
	h.t.Helper()
	h.write("svc-"+s.Name+".yaml", s.yaml())
}

// write replaces dir/name atomically (write a temporary file the proxy ignores, then rename).
func (h *harness) write(name, content string) {
	h.t.Helper()
	tmp := filepath.Join(h.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		h.t.Fatalf("write manifest: %v", err)
	}
	if err := os.Rename(tmp, filepath.Join(h.dir, name)); err != nil {
		h.t.Fatalf("write manifest: %v", err)
	}
}

// proxyProcess is a running `nftproxy run`.
type proxyProcess struct {
	cmd  *exec.Cmd
	log  lockedBuffer
	done chan struct{} // closed when the process has exited
	err  error         // exit status, valid once done is closed
}

// exited reports whether the proxy has exited.
func (p *proxyProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// start runs `nftproxy run` in node1 with --manifests, --hostname-override, --cluster-cidr,
// --nodeport-addresses all (unless flags give it or h.nodePortDefault is set) and the extra
// flags. At cleanup it stops the proxy and, if the test failed, logs the proxy's
// output and node1's ruleset.
func (h *harness) start(flags ...string) {
	h.t.Helper()
	t := h.t
	source := h.source
	if source == nil {
		source = []string{"--manifests", h.dir}
	}
	args := append([]string{"netns", "exec", h.tp.Node1.Name, proxyBin, "run"}, source...)
	args = append(args,
		"--hostname-override", nodeName,
		"--cluster-cidr", clusterCIDRs,
		"-v", "2")
	if !h.nodePortDefault && !slices.ContainsFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--nodeport-addresses") }) {
		// The tests reach NodePorts on node1's client-side address too, which is not its
		// primary IP (the default since kube-proxy's nftables mode): see
		// nodeport_addresses_test.go for the default.
		args = append(args, "--nodeport-addresses", "all")
	}
	args = append(args, flags...)
	p := &proxyProcess{cmd: exec.Command("ip", args...), done: make(chan struct{})}
	p.cmd.Stdout = &p.log
	p.cmd.Stderr = &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start nftproxy: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	h.proxy = p
	t.Logf("started nftproxy in %s: %s", h.tp.Node1.Name, strings.Join(args[3:], " "))

	t.Cleanup(func() {
		if p.exited() {
			t.Errorf("nftproxy exited before the test ended: %v", p.err)
		}
		if t.Failed() {
			out, err := h.tp.Node1.Exec("nft", "list", "ruleset")
			if err != nil {
				out += err.Error()
			}
			t.Logf("ruleset of node1 (%s):\n%s", h.tp.Node1.Name, out)
		}
		if !p.exited() {
			// "ip netns exec" execs the proxy, so the pid is the proxy's.
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				t.Errorf("nftproxy did not exit within 5s of SIGTERM; killing it")
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("nftproxy output:\n%s", p.log.String())
		}
	})
}

// checkProxy fails t at once if the proxy has exited.
func (h *harness) checkProxy(t *testing.T) {
	t.Helper()
	if h.proxy != nil && h.proxy.exited() {
		t.Fatalf("nftproxy exited: %v\noutput:\n%s", h.proxy.err, h.proxy.log.String())
	}
}

// waitReply dials target from ns until an echo server answers (the proxy has programmed the
// Service) and returns that answer; it fails t after readyTimeout.
func (h *harness) waitReply(t *testing.T, from *topology.NetNS, network string, target netip.AddrPort) topology.Reply {
	t.Helper()
	start := time.Now()
	for {
		r, err := topology.Dial(from, network, target, probeTimeout)
		if err == nil {
			return r
		}
		h.checkProxy(t)
		if time.Since(start) > readyTimeout {
			t.Fatalf("%s %s from %s: no answer within %v (proxy not programmed?): last error: %v",
				network, target, from.Name, readyTimeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// dialN makes n connections to target from ns (sequentially) and returns the replies; any
// failure fails the test, naming the row.
func dialN(t *testing.T, row string, from *topology.NetNS, network string, target netip.AddrPort, n int) []topology.Reply {
	t.Helper()
	replies := make([]topology.Reply, 0, n)
	for i := range n {
		r, err := topology.Dial(from, network, target, dialTimeout)
		if err != nil {
			t.Fatalf("%s: connection %d/%d: %s %s from %s: %v (refused=%t timeout=%t)",
				row, i+1, n, network, target, from.Name, err, topology.IsRefused(err), topology.IsTimeout(err))
		}
		replies = append(replies, r)
	}
	return replies
}

// countServers counts the replies per server address:port.
func countServers(replies []topology.Reply) map[netip.AddrPort]int {
	m := map[netip.AddrPort]int{}
	for _, r := range replies {
		m[r.Server]++
	}
	return m
}

// checkServers fails the row when a reply came from a server outside want, or when one of
// want got fewer than min of the replies.
func checkServers(t *testing.T, row string, replies []topology.Reply, want []netip.AddrPort, min int) {
	t.Helper()
	counts := countServers(replies)
	wanted := map[netip.AddrPort]bool{}
	for _, w := range want {
		wanted[w] = true
		if counts[w] < min {
			t.Errorf("%s: endpoint %s answered %d of %d connections, want at least %d (all: %v)",
				row, w, counts[w], len(replies), min, counts)
		}
	}
	for s, n := range counts {
		if !wanted[s] {
			t.Errorf("%s: %d connections answered by %s, which is not an endpoint %v", row, n, s, want)
		}
	}
}

// checkSources fails the row for each distinct wrong source: wantSource gives the expected
// source address for a reply.
func checkSources(t *testing.T, row string, replies []topology.Reply, wantSource func(topology.Reply) netip.Addr) {
	t.Helper()
	bad := map[string]int{}
	for _, r := range replies {
		if want := wantSource(r); r.Source.Addr() != want {
			bad[fmt.Sprintf("server %s saw source %s, want %s", r.Server, r.Source.Addr(), want)]++
		}
	}
	for msg, n := range bad {
		t.Errorf("%s: %s (%d of %d connections)", row, msg, n, len(replies))
	}
}

// checkRefused dials target once and fails the row unless the connection is refused (TCP
// reset or ICMP port unreachable) well before the dial timeout.
func checkRefused(t *testing.T, row string, from *topology.NetNS, network string, target netip.AddrPort) {
	t.Helper()
	const timeout = 3 * time.Second
	start := time.Now()
	r, err := topology.Dial(from, network, target, timeout)
	elapsed := time.Since(start)
	switch {
	case err == nil:
		t.Errorf("%s: %s %s from %s answered (%v), want refused", row, network, target, from.Name, r)
	case topology.IsTimeout(err):
		t.Errorf("%s: %s %s from %s timed out after %v (dropped), want refused at once: %v",
			row, network, target, from.Name, elapsed.Round(time.Millisecond), err)
	case !topology.IsRefused(err):
		t.Errorf("%s: %s %s from %s: %v, want refused", row, network, target, from.Name, err)
	case elapsed > refusedWithin:
		// A TCP refusal after ~1s means the first rejection was lost and only the
		// retransmitted SYN (initial RTO 1s) was refused.
		t.Errorf("%s: %s %s from %s refused after %v, want at once (within %v)",
			row, network, target, from.Name, elapsed.Round(time.Millisecond), refusedWithin)
	}
}

// checkDropped dials target over TCP once and fails the row unless the connection times out
// (its packets are dropped), as opposed to being answered or refused.
func checkDropped(t *testing.T, row string, from *topology.NetNS, target netip.AddrPort) {
	t.Helper()
	const timeout = 1500 * time.Millisecond
	r, err := topology.Dial(from, "tcp", target, timeout)
	switch {
	case err == nil:
		t.Errorf("%s: tcp %s from %s answered by %s (source %s), want dropped", row, target, from.Name, r.Server, r.Source)
	case !topology.IsTimeout(err):
		t.Errorf("%s: tcp %s from %s: %v, want dropped (a timeout)", row, target, from.Name, err)
	}
}

// lockedBuffer is a bytes.Buffer safe for the proxy's concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// kernelBackend returns a netlink backend programming ns; its socket is closed when tb ends, so
// that the namespace can go away with the test.
func kernelBackend(tb testing.TB, ns *topology.NetNS) *nft.Netlink {
	be := nft.NewNetlink(ns.Path())
	tb.Cleanup(func() { _ = be.Close() })
	return be
}

// withoutSyncState returns nft's listing of a table without the elements of its sync-state
// set (model.SetSyncState), which record the generation of each commit: the table as the
// Services make it, which model.Render(model.Build(...)) lists.
func withoutSyncState(listing string) string {
	start := strings.Index(listing, "\tset "+model.SetSyncState+" {\n")
	if start < 0 {
		return listing
	}
	end := strings.Index(listing[start:], "\n\t}\n")
	if end < 0 {
		return listing
	}
	block := listing[start : start+end]
	from := strings.Index(block, "\n\t\telements = { ")
	if from < 0 {
		return listing
	}
	return listing[:start+from] + listing[start+end:]
}
