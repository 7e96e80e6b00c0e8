package integration

// The sync loop of the daemon against the real kernel: a restart adopts the rules in place
// (no new connection fails, nothing is written), the periodic sync repairs tables someone
// else changed, and UDP flows move to a new endpoint because the daemon clears their
// conntrack entries.
//
// Conventions (on top of traffic_test.go's):
//
//	ClusterIPs  10.96.20.10 restart, 10.96.21.10 drift, 10.96.22.<row>0 UDP rows
//	UDP flows   one connected socket in a client pod bound to a fixed source port
//	            (udpSourcePort), so that every datagram is one and the same conntrack entry
//	            in node1; a datagram every udpInterval, each awaiting its answer as long
//	Daemons     a daemon the test may kill (SIGKILL) is started with startKillable, whose
//	            cleanup does not count a killed daemon as one that exited by itself

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scenario"
)

const (
	// syncedLine is the message the daemon logs after a sync that wrote something or was
	// a full one (every first sync is).
	syncedLine = `msg="synced rules"`
	// repairedLine is the warning of a sync that found the tables changed behind its back.
	repairedLine = `msg="nftproxy's tables were changed behind its back; repaired them"`

	// streamInterval is the pause between two new connections of a connection stream, and
	// streamDialTimeout bounds each one: a connection that misses the rules (un-DNATed, it
	// is routed to the client, which drops it) times out.
	streamInterval    = 5 * time.Millisecond
	streamDialTimeout = time.Second
	// killPause is how long the daemon stays dead before it is started again.
	killPause = 300 * time.Millisecond

	// driftRepairWithin is how soon a daemon with --sync-period=1s must have repaired a
	// tampered table: one period plus slack.
	driftRepairWithin = 3 * time.Second

	// udpSourcePort is the fixed source port of a UDP flow.
	udpSourcePort uint16 = 40053
	// udpInterval is the pace of a UDP flow's datagrams and how long each waits for its
	// answer.
	udpInterval = 50 * time.Millisecond
	// udpMoveWithin is how soon after a manifest change a UDP flow must reach its new
	// endpoint: a manifest poll or two (500 ms each), a sync, the conntrack cleanup.
	udpMoveWithin = 3 * time.Second
)

// --- Daemons the test kills ----------------------------------------------------------------

// killableProxy is an `nftproxy run` the test may kill.
type killableProxy struct {
	*proxyProcess
	name   string
	killed bool
}

// startKillable runs `nftproxy run` in node1 as harness.start does (with h.source, or
// --manifests) and makes it h.proxy (so that waitReply and checkProxy watch it). At cleanup a
// daemon the test has not killed must still run and is stopped with SIGTERM; if the test
// failed, the daemon's output is logged under name.
func (h *harness) startKillable(name string, flags ...string) *killableProxy {
	h.t.Helper()
	t := h.t
	source := h.source
	if source == nil {
		source = []string{"--manifests", h.dir}
	}
	args := slices.Concat([]string{"netns", "exec", h.tp.Node1.Name, proxyBin, "run"}, source, []string{
		"--hostname-override", nodeName,
		"--cluster-cidr", clusterCIDRs,
		"-v", "2",
	}, flags)
	p := &killableProxy{
		proxyProcess: &proxyProcess{cmd: exec.Command("ip", args...), done: make(chan struct{})},
		name:         name,
	}
	p.cmd.Stdout = &p.log
	p.cmd.Stderr = &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start nftproxy (%s): %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	h.proxy = p.proxyProcess
	t.Logf("started nftproxy (%s, pid %d) in %s: %s", name, p.cmd.Process.Pid, h.tp.Node1.Name, strings.Join(args[3:], " "))

	t.Cleanup(func() {
		if !p.killed {
			if p.exited() {
				t.Errorf("nftproxy (%s) exited before the test ended: %v", name, p.err)
			} else {
				p.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-p.done:
				case <-time.After(5 * time.Second):
					t.Errorf("nftproxy (%s) did not exit within 5s of SIGTERM; killing it", name)
					p.cmd.Process.Kill()
					<-p.done
				}
			}
		}
		if t.Failed() {
			if !p.killed {
				out, err := h.tp.Node1.Exec("nft", "list", "ruleset")
				if err != nil {
					out += err.Error()
				}
				t.Logf("ruleset of node1 (%s):\n%s", h.tp.Node1.Name, out)
			}
			t.Logf("nftproxy (%s) output:\n%s", name, p.log.String())
		}
	})
	return p
}

// kill stops the daemon with SIGKILL (no chance to clean up) and waits for it to be gone.
func (p *killableProxy) kill(t *testing.T) {
	t.Helper()
	if p.exited() {
		t.Fatalf("nftproxy (%s) exited before it was killed: %v\noutput:\n%s", p.name, p.err, p.log.String())
	}
	p.killed = true
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill nftproxy (%s): %v", p.name, err)
	}
	<-p.done
}

var (
	logObjects = regexp.MustCompile(`\bobjects=(\d+)`)
	logFull    = regexp.MustCompile(`\bfull=(true|false)`)
)

// waitLog waits until the daemon has logged n lines containing msg and returns the n-th;
// it fails t after readyTimeout or when the daemon exits.
func waitLog(t *testing.T, p *proxyProcess, name, msg string, n int) string {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		lines := logLines(p, msg)
		if len(lines) >= n {
			return lines[n-1]
		}
		if p.exited() {
			t.Fatalf("nftproxy (%s) exited before logging %s (%d times): %v\noutput:\n%s", name, msg, n, p.err, p.log.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("nftproxy (%s) did not log %s (%d times) within %v\noutput:\n%s", name, msg, n, readyTimeout, p.log.String())
		}
		time.Sleep(pollInterval)
	}
}

// logLines returns the daemon's log lines containing msg.
func logLines(p *proxyProcess, msg string) []string {
	var out []string
	for line := range strings.Lines(p.log.String()) {
		if strings.Contains(line, msg) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// syncedObjects parses a "synced rules" line into its full and objects fields.
func syncedObjects(t *testing.T, line string) (full bool, objects int) {
	t.Helper()
	o, f := logObjects.FindStringSubmatch(line), logFull.FindStringSubmatch(line)
	if o == nil || f == nil {
		t.Fatalf("log line %q: no objects= or full= field", line)
	}
	n, err := strconv.Atoi(o[1])
	if err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	return f[1] == "true", n
}

// generation reads node1's nftables ruleset generation, which every commit changes.
func (h *harness) generation(t *testing.T) uint32 {
	t.Helper()
	g, err := kernelBackend(t, h.tp.Node1).Generation()
	if err != nil {
		t.Fatalf("ruleset generation of node1: %v", err)
	}
	return g
}

// --- Connection stream ---------------------------------------------------------------------

// connStream opens new TCP connections to a target from a namespace, one every
// streamInterval, until stopped, and counts how many got their echo answer from one of the
// endpoints.
type connStream struct {
	start    time.Time
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	mu       sync.Mutex
	ok       int
	failed   int
	failures []string // the first few, with their time since start
}

// startConnStream starts the stream; it is stopped at cleanup at the latest.
func startConnStream(t *testing.T, from *topology.NetNS, target netip.AddrPort, endpoints []netip.AddrPort) *connStream {
	s := &connStream{start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { s.finish() })
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			at := time.Since(s.start)
			r, err := topology.Dial(from, "tcp", target, streamDialTimeout)
			if err == nil && !slices.Contains(endpoints, r.Server) {
				err = fmt.Errorf("answered by %s, not an endpoint %v", r.Server, endpoints)
			}
			s.mu.Lock()
			if err == nil {
				s.ok++
			} else {
				s.failed++
				if len(s.failures) < 10 {
					s.failures = append(s.failures, fmt.Sprintf("at %v: %v (refused=%t timeout=%t)",
						at.Round(time.Millisecond), err, topology.IsRefused(err), topology.IsTimeout(err)))
				}
			}
			s.mu.Unlock()
			time.Sleep(streamInterval)
		}
	}()
	return s
}

// since returns the time since the stream started, for the test's timeline.
func (s *connStream) since() time.Duration { return time.Since(s.start).Round(time.Millisecond) }

// finish stops the stream and returns its counts.
func (s *connStream) finish() (ok, failed int, failures []string) {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok, s.failed, s.failures
}

// TestRestartWithoutBlip: a daemon killed with SIGKILL and started again on the same
// manifests adopts the rules it finds: while it is dead and while it restarts, every one of a
// stream of new connections to a ClusterIP is answered, and the restarted daemon commits
// nothing (its first, full, sync writes 0 objects and the ruleset generation stays put).
func TestRestartWithoutBlip(t *testing.T) {
	t.Parallel()
	const minConnections = 100
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	local := h.pod(1, "local", httpPort)
	remote := h.pod(2, "remote", httpPort)
	ports := []servicePort{portHTTP}
	h.apply(service{Name: "restart", ClusterIPs: []string{"10.96.20.10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("restart-v4", false, ports, local, remote)}})
	flags := []string{"--min-sync-period=0"}
	target := addrPort("10.96.20.10:80")

	p := h.startKillable("first", flags...)
	waitLog(t, p.proxyProcess, p.name, syncedLine, 1)
	h.waitReply(t, client.NS, "tcp", target)
	gen := h.generation(t)

	stream := startConnStream(t, client.NS, target, endpointsOf(false, httpPort, local, remote))
	var timeline []string
	event := func(format string, args ...any) {
		timeline = append(timeline, fmt.Sprintf("%v: %s", stream.since(), fmt.Sprintf(format, args...)))
	}
	time.Sleep(killPause) // traffic before the first kill
	for _, name := range []string{"second", "third"} {
		p.kill(t)
		event("killed nftproxy (%s)", p.name)
		if g := h.generation(t); g != gen {
			t.Errorf("ruleset generation changed from %d to %d before nftproxy (%s) was killed", gen, g, p.name)
			gen = g
		}
		time.Sleep(killPause)
		p = h.startKillable(name, flags...)
		event("started nftproxy (%s)", name)
		line := waitLog(t, p.proxyProcess, name, syncedLine, 1)
		event("nftproxy (%s) synced: %s", name, line)
		if full, objects := syncedObjects(t, line); !full || objects != 0 {
			t.Errorf("nftproxy (%s): first sync after the restart logged full=%t objects=%d, want full=true objects=0 (adopt the rules in place): %s",
				name, full, objects, line)
		}
		if g := h.generation(t); g != gen {
			t.Errorf("nftproxy (%s): ruleset generation went from %d to %d across the restart, want no commit", name, gen, g)
			gen = g
		}
		time.Sleep(killPause) // traffic with the restarted daemon
	}
	ok, failed, failures := stream.finish()
	event("stream stopped")

	t.Logf("connections to %s: %d answered, %d failed; timeline:\n\t%s", target, ok, failed, strings.Join(timeline, "\n\t"))
	if failed > 0 {
		t.Errorf("%d of %d new connections from %s to ClusterIP %s failed across two SIGKILL restarts, want none; first failures:\n\t%s",
			failed, ok+failed, client.IPv4, target, strings.Join(failures, "\n\t"))
	}
	if ok < minConnections {
		t.Errorf("only %d connections to %s were answered during the restarts, want at least %d (stream too slow to tell a blip?)",
			ok, target, minConnections)
	}
	h.checkProxy(t)
}

// --- Drift repair --------------------------------------------------------------------------

// TestDriftRepair: with --sync-period=1s, the daemon notices within a period that someone
// else changed its table (one map element deleted; the whole table flushed) and puts it back
// exactly as it was, and the ClusterIP answers again.
func TestDriftRepair(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	client := h.tp.AddPod(t, 1, "client")
	local := h.pod(1, "local", httpPort)
	remote := h.pod(2, "remote", httpPort)
	ports := []servicePort{portHTTP}
	h.apply(service{Name: "drift", ClusterIPs: []string{"10.96.21.10"}, Ports: ports,
		Slices: []endpointSlice{podSlice("drift-v4", false, ports, local, remote)}})
	h.start("--sync-period=1s")
	target := addrPort("10.96.21.10:80")
	h.waitReply(t, client.NS, "tcp", target)
	endpoints := endpointsOf(false, httpPort, local, remote)

	listTable := func() string {
		return withoutSyncState(h.tp.Node1.Run(t, "nft", "list", "table", "ip", "nftproxy"))
	}
	want := listTable()
	element := fmt.Sprintf("%s . tcp . %d", target.Addr(), target.Port())
	// hasElement reports whether service-ips maps the ClusterIP's port (service-endpoints
	// has keys that start alike).
	hasElement := func() bool {
		return strings.Contains(h.tp.Node1.Run(t, "nft", "list", "map", "ip", "nftproxy", "service-ips"), element+" ")
	}
	if !hasElement() {
		t.Fatalf("map ip nftproxy service-ips has no element %q after the first sync:\n%s", element, want)
	}

	for i, row := range []struct {
		name string
		// tamper is the nft command (in node1) that changes the table behind the daemon's
		// back; it fails unless it changes something that was there.
		tamper []string
	}{
		{"element-deleted", []string{"nft", "delete", "element", "ip", "nftproxy", "service-ips", "{ " + element + " }"}},
		{"table-flushed", []string{"nft", "flush", "table", "ip", "nftproxy"}},
	} {
		t.Run(row.name, func(t *testing.T) {
			h.tp.Node1.Run(t, row.tamper...)
			tampered := time.Now()
			// What the change did, as seen right after it (unless a sync came in between).
			present := hasElement()
			_, err := topology.Dial(client.NS, "tcp", target, probeTimeout)
			t.Logf("%s: right after the change, service-ips maps %s: %t; a connection to it: %s",
				row.name, element, present, outcome(topology.Reply{}, err))

			var got string
			for {
				if got = listTable(); got == want {
					break
				}
				h.checkProxy(t)
				if time.Since(tampered) > driftRepairWithin {
					t.Fatalf("%s: table ip nftproxy not repaired within %v (--sync-period=1s); want (-) got (+):\n%s",
						row.name, driftRepairWithin, scenario.LineDiff(want, got))
				}
				time.Sleep(pollInterval)
			}
			t.Logf("%s: table back as it was %v after the change", row.name, time.Since(tampered).Round(time.Millisecond))
			// The daemon saw the change (a repair is logged, after its commit): nothing
			// else put the table back.
			waitLog(t, h.proxy, "daemon", repairedLine, i+1)

			name := fmt.Sprintf("%s: pod %s -> ClusterIP %s after the repair", row.name, client.IPv4, target)
			replies := dialN(t, name, client.NS, "tcp", target, 10)
			checkServers(t, name, replies, endpoints, 0)
		})
	}
}

// --- UDP flows and conntrack ---------------------------------------------------------------

// udpFlow is a connected UDP socket in a namespace, bound to a fixed source port: all its
// datagrams are one flow, one conntrack entry in node1.
type udpFlow struct {
	conn *net.UDPConn
	buf  []byte
}

func openUDPFlow(t *testing.T, ns *topology.NetNS, sport uint16, target netip.AddrPort) *udpFlow {
	t.Helper()
	var c *net.UDPConn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4",
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.IPv4Unspecified(), sport)),
			net.UDPAddrFromAddrPort(target))
		return err
	})
	if err != nil {
		t.Fatalf("udp socket in %s from port %d to %s: %v", ns.Name, sport, target, err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpFlow{conn: c, buf: make([]byte, 512)}
}

// ask sends one datagram and waits up to timeout for the answer. A rejection (ICMP port
// unreachable) shows as a refused error (topology.IsRefused), no answer as a timeout.
func (f *udpFlow) ask(timeout time.Duration) (topology.Reply, error) {
	if err := f.conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return topology.Reply{}, err
	}
	if _, err := f.conn.Write([]byte("ping\n")); err != nil {
		return topology.Reply{}, err
	}
	n, err := f.conn.Read(f.buf)
	if err != nil {
		return topology.Reply{}, err
	}
	return topology.ParseReply(string(f.buf[:n]))
}

// outcome names an ask's result: the server that answered, "refused" or "no answer".
func outcome(r topology.Reply, err error) string {
	switch {
	case err == nil:
		return r.Server.String()
	case topology.IsRefused(err):
		return "refused"
	case topology.IsTimeout(err):
		return "no answer"
	}
	return err.Error()
}

// until asks, one datagram every udpInterval, until done accepts an outcome or within has
// passed since from; it returns whether done accepted one, when, and the count of each
// outcome seen.
func (f *udpFlow) until(from time.Time, within time.Duration, done func(string) bool) (bool, time.Duration, map[string]int) {
	seen := map[string]int{}
	tick := time.NewTicker(udpInterval)
	defer tick.Stop()
	for {
		o := outcome(f.ask(udpInterval))
		seen[o]++
		if done(o) {
			return true, time.Since(from), seen
		}
		if time.Since(from) > within {
			return false, time.Since(from), seen
		}
		<-tick.C
	}
}

// ctEntryOf returns node1's conntrack entry of the flow from sport, for failure messages.
func ctEntryOf(t *testing.T, h *harness, sport uint16) string {
	t.Helper()
	if e, ok := conntrackEntries(t, h.tp.Node1)[sport]; ok {
		return e.line
	}
	return "(none)"
}

// TestUDPEndpointReplaced: one UDP flow (a socket with a fixed source port, a datagram every
// 50 ms, so its conntrack entry never expires) to a ClusterIP reaches the Service's new
// endpoint within udpMoveWithin of the manifest change that makes it the only one. Without
// the daemon's conntrack cleanup the flow would stay on its conntrack entry: DNATed to the
// old endpoint, which still answers, or un-NATed (routed to the client, which drops it) when
// the flow began before the ClusterIP was a Service. A rejected datagram leaves no entry
// (it is dropped before conntrack confirms one), so the row that starts without endpoints
// checks the move from rejection to answer of one socket, not the cleanup.
func TestUDPEndpointReplaced(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("conntrack (conntrack-tools) not found: %v", err)
	}
	const (
		startOldEndpoint = "old endpoint" // the Service has one endpoint, in pod "old"
		startNoEndpoints = "no endpoints" // the Service has no EndpointSlice: rejected
		startNoService   = "no Service"   // no Service has the ClusterIP yet: not proxied
	)
	for _, row := range []struct {
		name      string
		clusterIP string
		start     string
	}{
		{"old-endpoint-still-answering", "10.96.22.10", startOldEndpoint},
		{"first-endpoint-after-reject", "10.96.22.20", startNoEndpoints},
		{"service-created-while-flow-runs", "10.96.22.30", startNoService},
	} {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			client := h.tp.AddPod(t, 1, "client")
			next := h.pod(2, "new", dnsPort)
			ports := []servicePort{portDNS}
			svc := service{Name: "dns", ClusterIPs: []string{row.clusterIP}, Ports: ports}
			target := at(netip.MustParseAddr(row.clusterIP), portDNS.Port)
			wantNew := at(next.IPv4, dnsPort)
			flowName := fmt.Sprintf("udp flow %s:%d -> %s", client.IPv4, udpSourcePort, target)

			// before lists the outcomes the flow must see before the change.
			var before []string
			switch row.start {
			case startOldEndpoint:
				old := h.pod(1, "old", dnsPort)
				svc.Slices = []endpointSlice{podSlice("dns-v4", false, ports, old)}
				before = []string{at(old.IPv4, dnsPort).String()}
				h.apply(svc)
			case startNoEndpoints:
				before = []string{"refused"}
				h.apply(svc)
			case startNoService:
				before = []string{"no answer"}
			}
			h.start()
			waitLog(t, h.proxy, "daemon", syncedLine, 1)
			flow := openUDPFlow(t, client.NS, udpSourcePort, target)

			// Before: the flow settles on the first outcome wanted (the rules are in place
			// once the daemon logged its sync; the wait covers a slow first answer), then
			// sees only wanted outcomes.
			start := time.Now()
			if ok, _, seen := flow.until(start, readyTimeout, func(o string) bool { return slices.Contains(before, o) }); !ok {
				t.Fatalf("%s: with %s, never got %q within %v: %v", flowName, row.start, before, readyTimeout, seen)
			}
			for i := range 5 {
				if o := outcome(flow.ask(udpInterval)); !slices.Contains(before, o) {
					t.Fatalf("%s: with %s, datagram %d: %s, want %q (node1's conntrack entry: %s)",
						flowName, row.start, i+1, o, before, ctEntryOf(t, h, udpSourcePort))
				}
			}
			t.Logf("%s with %s: %q; node1's conntrack entry: %s", flowName, row.start, before, ctEntryOf(t, h, udpSourcePort))

			// The change: pod "new" is the only endpoint.
			svc.Slices = []endpointSlice{podSlice("dns-v4", false, ports, next)}
			h.apply(svc)
			changed := time.Now()
			ok, took, seen := flow.until(changed, udpMoveWithin, func(o string) bool { return o == wantNew.String() })
			if !ok {
				t.Fatalf("%s: not answered by the new endpoint %s within %v of the manifest change (outcomes: %v); node1's conntrack entry of the flow: %s",
					flowName, wantNew, udpMoveWithin, seen, ctEntryOf(t, h, udpSourcePort))
			}
			t.Logf("%s: answered by the new endpoint %s %v after the manifest change (outcomes until then: %v)",
				flowName, wantNew, took.Round(time.Millisecond), seen)
			// And it stays there.
			for i := range 5 {
				if o := outcome(flow.ask(udpInterval)); o != wantNew.String() {
					t.Errorf("%s: datagram %d after the move: %s, want the new endpoint %s", flowName, i+1, o, wantNew)
				}
			}
			h.checkProxy(t)
		})
	}
}
