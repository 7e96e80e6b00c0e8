package topology

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// Every namespace created by this process must be gone.
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), NamePrefix()) {
				fmt.Fprintf(os.Stderr, "leaked network namespace %s\n", e.Name())
				code = 1
			}
		}
	}
	os.Exit(code)
}

const dialTimeout = 3 * time.Second

func TestTopologyTraffic(t *testing.T) {
	RequirePrivileged(t)
	start := time.Now()
	tp := New(t)
	pod1 := tp.AddPod(t, 1, "pod1")
	pod2 := tp.AddPod(t, 2, "pod2")
	pod1b := tp.AddPod(t, 1, "pod1b")
	t.Logf("topology with 3 pods set up in %v", time.Since(start))

	if pod1.IPv4.String() != "10.244.1.2" || pod1b.IPv4.String() != "10.244.1.3" ||
		pod2.IPv6.String() != "fd00:244:2::2" {
		t.Fatalf("unexpected pod addresses: %s %s %s", pod1.IPv4, pod1b.IPv4, pod2.IPv6)
	}

	const port = 8080
	for _, p := range []*Pod{pod1, pod2, pod1b} {
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			StartEcho(t, p.NS, "tcp+udp", netip.AddrPortFrom(a, port))
		}
	}

	type row struct {
		name    string
		from    *NetNS
		network string
		target  netip.AddrPort
		wantSrc netip.Addr
	}
	var rows []row
	for _, network := range []string{"tcp", "udp"} {
		for _, v6 := range []bool{false, true} {
			fam := "ipv4"
			client := tp.ClientIPv4
			if v6 {
				fam = "ipv6"
				client = tp.ClientIPv6
			}
			rows = append(rows,
				row{fmt.Sprintf("pod1-to-node2-pod/%s/%s", network, fam), pod1.NS, network,
					netip.AddrPortFrom(pod2.Addr(v6), port), pod1.Addr(v6)},
				row{fmt.Sprintf("node2-pod-to-pod1/%s/%s", network, fam), pod2.NS, network,
					netip.AddrPortFrom(pod1.Addr(v6), port), pod2.Addr(v6)},
				row{fmt.Sprintf("pod1-to-pod1b-same-bridge/%s/%s", network, fam), pod1.NS, network,
					netip.AddrPortFrom(pod1b.Addr(v6), port), pod1.Addr(v6)},
				row{fmt.Sprintf("client-to-node1-pod/%s/%s", network, fam), tp.Client, network,
					netip.AddrPortFrom(pod1b.Addr(v6), port), client},
				row{fmt.Sprintf("client-to-node2-pod/%s/%s", network, fam), tp.Client, network,
					netip.AddrPortFrom(pod2.Addr(v6), port), client},
			)
		}
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			got, err := Dial(r.from, r.network, r.target, dialTimeout)
			if err != nil {
				t.Fatalf("%s: Dial(%s, %s, %s): %v", r.name, r.from.Name, r.network, r.target, err)
			}
			if got.Server != r.target {
				t.Errorf("%s: server = %s, want %s (reply %v)", r.name, got.Server, r.target, got)
			}
			if got.Source.Addr() != r.wantSrc {
				t.Errorf("%s: source = %s, want address %s (reply %v)", r.name, got.Source, r.wantSrc, got)
			}
		})
	}

	t.Run("udp-fixed-source-port", func(t *testing.T) {
		target := netip.AddrPortFrom(pod2.IPv6, port)
		for i := range 3 {
			got, err := DialFrom(pod1.NS, "udp", 40000, target, dialTimeout)
			if err != nil {
				t.Fatalf("udp-fixed-source-port: attempt %d: %v", i, err)
			}
			if want := netip.AddrPortFrom(pod1.IPv6, 40000); got.Source != want {
				t.Fatalf("udp-fixed-source-port: attempt %d: source %s, want %s", i, got.Source, want)
			}
		}
	})

	for _, network := range []string{"tcp", "udp"} {
		for _, v6 := range []bool{false, true} {
			name := fmt.Sprintf("refused/%s/ipv%d", network, map[bool]int{false: 4, true: 6}[v6])
			t.Run(name, func(t *testing.T) {
				target := netip.AddrPortFrom(pod2.Addr(v6), port+1)
				start := time.Now()
				_, err := Dial(pod1.NS, network, target, dialTimeout)
				elapsed := time.Since(start)
				if !IsRefused(err) {
					t.Fatalf("%s: Dial %s: err = %v (timeout=%v), want refused", name, target, err, IsTimeout(err))
				}
				if IsTimeout(err) {
					t.Errorf("%s: refused error also reports a timeout: %v", name, err)
				}
				if elapsed > time.Second {
					t.Errorf("%s: refusal took %v, want well under %v", name, elapsed, dialTimeout)
				}
			})
		}
	}

	t.Run("timeout-not-refused", func(t *testing.T) {
		// Node1 does not proxy, so a "ClusterIP" leaves via the default
		// route and dies in the client namespace (which does not forward).
		target := netip.MustParseAddrPort("10.96.0.10:80")
		_, err := Dial(tp.Node1, "tcp", target, 300*time.Millisecond)
		if !IsTimeout(err) || IsRefused(err) {
			t.Fatalf("timeout-not-refused: Dial %s: err = %v, want a timeout", target, err)
		}
	})
}

func TestNetNSDoRestores(t *testing.T) {
	RequirePrivileged(t)
	ns := NewNetNS(t, "do")
	ino := func() uint64 {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			t.Fatalf("stat netns: %v", err)
		}
		return st.Ino
	}
	runtime.LockOSThread()
	before := ino()
	runtime.UnlockOSThread()

	var inside uint64
	if err := ns.Do(func() error { inside = ino(); return nil }); err != nil {
		t.Fatalf("Do: %v", err)
	}
	var want unix.Stat_t
	if err := unix.Stat(ns.Path(), &want); err != nil {
		t.Fatalf("stat %s: %v", ns.Path(), err)
	}
	if inside != want.Ino {
		t.Errorf("inside Do: netns inode %d, want %d", inside, want.Ino)
	}
	if inside == before {
		t.Errorf("Do did not switch namespace (inode %d)", inside)
	}
	// Many goroutines, all back in the original namespace afterwards.
	for range 20 {
		if err := ns.Do(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	runtime.LockOSThread()
	after := ino()
	runtime.UnlockOSThread()
	if after != before {
		t.Errorf("after Do: netns inode %d, want original %d", after, before)
	}

	fd, err := ns.Fd()
	if err != nil {
		t.Fatalf("Fd: %v", err)
	}
	unix.Close(fd)

	if out := ns.Run(t, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
		t.Errorf("lo not up in %s: %s", ns.Name, out)
	}
}
