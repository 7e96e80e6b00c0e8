package scalebench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/nft"
)

// nodeIP is the benchmark node's InternalIP, on a veth interface in each proxy namespace.
const nodeIP = "192.168.255.1"

// The data-plane probe: a Service (probeVIP:80) whose one endpoint (probeBackend) is a TCP
// listener in a "server pod" namespace behind the proxy's namespace, reached from a "client
// pod" namespace (probeClient) through the proxy's namespace acting as the node's router.
// Both pods are inside the proxies' --cluster-cidr 10.128.0.0/9, far above internal/scale's
// endpoints (10.128.0.1 counting up, N*M of them) and outside the single-change addresses
// (10.127.x.x); the ClusterIP sits below internal/scale's first one (10.96.0.10) and above the
// default/kubernetes Service's (10.96.0.1).
var (
	probeVIP     = netip.MustParseAddrPort("10.96.0.2:80")
	probeBackend = netip.MustParseAddrPort("10.255.0.2:8080")
	probeClient  = netip.MustParseAddr("10.255.1.2")
)

const (
	probeNamespace = "scalebench"
	probeName      = "probe"
)

// forwardAPIServer listens inside ns on the loopback port of srv.URL and forwards each
// connection to the API server (which runs in another namespace), so that a kubeconfig naming
// srv.URL works from inside ns.
func forwardAPIServer(t *testing.T, ns *topology.NetNS, srv *apiserver.Server) {
	t.Helper()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", u.Host)
		return err
	}); err != nil {
		t.Fatalf("forwarder in %s: %v", ns, err)
	}
	dial := srv.AdminConfig().Dial
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, err := dial(context.Background(), "tcp", u.Host)
				if err != nil {
					return
				}
				defer b.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(b, c); b.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				go func() { io.Copy(c, b); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
				<-done
				<-done
			}()
		}
	}()
}

// proxyNS creates a fresh namespace for one proxy: a veth pair, one end holding the node IP and
// a forwarder to the API server.
func proxyNS(t *testing.T, name string, srv *apiserver.Server) *topology.NetNS {
	t.Helper()
	ns := topology.NewNetNS(t, name)
	ns.IP(t, "link add eth0 type veth peer name eth1", "link set eth0 up", "link set eth1 up", "addr add "+nodeIP+"/24 dev eth0")
	forwardAPIServer(t, ns, srv)
	return ns
}

// attachPods turns the proxy namespace ns into a node with two pods, each a namespace on a veth
// pair: a server pod holding probeBackend with a TCP listener (topology.StartEcho), and a
// client pod holding probeClient, each with a default route via the node, which forwards. It
// returns the client pod.
func attachPods(t *testing.T, ns *topology.NetNS) *topology.NetNS {
	t.Helper()
	server := topology.NewNetNS(t, "srv")
	client := topology.NewNetNS(t, "cli")
	ns.IP(t,
		"link add vsrv type veth peer name eth0 netns "+server.Name,
		"link add vcli type veth peer name eth0 netns "+client.Name,
		"addr add 10.255.0.1/24 dev vsrv", "link set vsrv up",
		"addr add 10.255.1.1/24 dev vcli", "link set vcli up")
	server.IP(t, "addr add "+probeBackend.Addr().String()+"/24 dev eth0", "link set eth0 up", "route add default via 10.255.0.1")
	client.IP(t, "addr add "+probeClient.String()+"/24 dev eth0", "link set eth0 up", "route add default via 10.255.1.1")
	if err := ns.SetSysctls(map[string]string{"net/ipv4/ip_forward": "1"}); err != nil {
		t.Fatal(err)
	}
	topology.StartEcho(t, server, "tcp", probeBackend)
	return client
}

// waitProbe dials the probe Service from the client pod until the echo server behind it
// answers (the proxy has programmed it), for at most timeout. It gives up early when p (if not
// nil) exits before the first answer; a killed proxy's rules stay, so pass nil then.
func waitProbe(client *topology.NetNS, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			return fmt.Errorf("proxy exited:\n%s", p.tail())
		}
		r, err := topology.Dial(client, "tcp", probeVIP, time.Second)
		if err == nil {
			if r.Server != probeBackend || r.Source.Addr() != probeClient {
				return fmt.Errorf("probe %s answered %s, want server %s and source %s", probeVIP, r, probeBackend, probeClient)
			}
			return nil
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	tail := ""
	if p != nil {
		tail = "\n" + p.tail()
	}
	return fmt.Errorf("probe %s unreachable from the client pod after %v: %w%s", probeVIP, timeout, last, tail)
}

// connectBlock is the number of connects in one block of connectPair.
const connectBlock = 100

// connectPair measures the connect times to the probe Service from two client pods, in
// alternating blocks of connectBlock in ABBA order (a b, b a, a b, ...), so that both see the
// same machine (load, frequency) over the same minutes; each pod first makes connectWarmup
// untimed connects. It returns count times for a and count for b, in seconds.
func connectPair(a, b *topology.NetNS, count int) (da, db []float64, err error) {
	for _, c := range []*topology.NetNS{a, b} {
		if _, err := connectTimes(c, connectWarmup, 0); err != nil {
			return nil, nil, err
		}
	}
	for i := 0; len(da) < count || len(db) < count; i++ {
		order := []*topology.NetNS{a, b}
		if i%2 == 1 {
			order = []*topology.NetNS{b, a}
		}
		for _, c := range order {
			out := &da
			if c == b {
				out = &db
			}
			k := min(connectBlock, count-len(*out))
			if k == 0 {
				continue
			}
			d, err := connectTimes(c, 0, k)
			if err != nil {
				return nil, nil, err
			}
			*out = append(*out, d...)
		}
	}
	return da, db, nil
}

// connectTimes opens warm + count TCP connections one after the other from the client pod to
// the probe Service and returns the duration of each of the last count connect(2) calls in
// seconds. Each is a blocking connect on a fresh socket (it returns when the SYN-ACK is in),
// timed with the monotonic clock around the system call, then closed at once with a reset
// (SO_LINGER 0), so no TIME_WAIT piles up. The loop runs on one OS thread.
func connectTimes(client *topology.NetNS, warm, count int) ([]float64, error) {
	out := make([]float64, 0, count)
	sa := &unix.SockaddrInet4{Port: int(probeVIP.Port()), Addr: probeVIP.Addr().As4()}
	err := client.Do(func() error {
		for i := range warm + count {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			tv := unix.Timeval{Sec: 2}
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
				unix.Close(fd)
				return fmt.Errorf("SO_SNDTIMEO: %w", err)
			}
			t0 := time.Now()
			err = connectBlocking(fd, sa)
			d := time.Since(t0)
			if err != nil {
				unix.Close(fd)
				return fmt.Errorf("connect %d to %s: %w", i, probeVIP, err)
			}
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
			if i >= warm {
				out = append(out, d.Seconds())
			}
		}
		return nil
	})
	return out, err
}

// connectBlocking connects the blocking socket fd to sa. A signal (the Go runtime preempts
// goroutines with SIGURG) can interrupt connect(2) while the handshake goes on in the kernel;
// it then waits for the handshake to finish and reports its outcome.
func connectBlocking(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err != unix.EINTR {
		return err
	}
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(fds, 5000); err == unix.EINTR {
			continue
		} else if err != nil {
			return fmt.Errorf("poll after interrupted connect: %w", err)
		}
		if fds[0].Revents == 0 {
			return fmt.Errorf("connect: no answer within 5s")
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

// proc is a proxy process running in a namespace.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func startProc(t *testing.T, ns *topology.NetNS, logPath, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs bin in place: the pid is the proxy's.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(p.kill)
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) kill() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// stats returns the peak RSS (VmHWM, bytes) and CPU seconds (utime+stime) of p so far.
func (p *proc) stats() (hwm int64, cpu float64, err error) {
	u, err := usageOf(p.cmd.Process.Pid)
	return u.hwm, u.cpu, err
}

// usage is a process's memory and CPU time so far.
type usage struct {
	rss, hwm int64   // VmRSS and VmHWM, bytes
	cpu      float64 // utime+stime, seconds
}

// usageOf reads the usage of process pid from /proc.
func usageOf(pid int) (usage, error) {
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("read status: %w", err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmHWM:":
			u.hwm = kb * 1024
		case "VmRSS:":
			u.rss = kb * 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("read stat: %w", err)
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// Fields after the command: state(0) ... utime(11) stime(12).
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	u.cpu = (ut + st) / 100 // USER_HZ is 100 on Linux
	return u, nil
}

// serverMemory returns the RSS and peak RSS (VmHWM) of the process named comm (etcd,
// kube-apiserver) that runs in network namespace ns, or zeros when there is none.
func serverMemory(ns *topology.NetNS, comm string) (rss, hwm int64) {
	var want syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &want); err != nil {
		return 0, 0
	}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		if u, err := usageOf(pid); err == nil {
			return u.rss, u.hwm
		}
	}
	return 0, 0
}

// etcdDBSize returns the size of the database of srv's etcd (etcd_mvcc_db_total_size_in_bytes),
// or 0 when it cannot be read.
func etcdDBSize(t *testing.T, srv *apiserver.Server) int64 {
	dial := srv.AdminConfig().Dial
	m, err := scrape(srv.EtcdURL+"/metrics", dial)
	if err != nil {
		t.Logf("etcd metrics: %v", err)
		return 0
	}
	return int64(m["etcd_mvcc_db_total_size_in_bytes"])
}

// metrics scrapes http://127.0.0.1:10249/metrics inside ns and returns the samples by their
// full name with labels ("name{labels}" or "name").
func metrics(ns *topology.NetNS) (map[string]float64, error) {
	return scrape("http://127.0.0.1:10249/metrics", func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	})
}

// scrape gets the Prometheus text at url, connecting with dial, and returns the samples by
// their full name with labels.
func scrape(url string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (map[string]float64, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: dial}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		out[l[:i]] = v
	}
	return out, sc.Err()
}

// elements returns the number of elements of map name in table (family ip) inside ns, or -1
// when it does not exist.
func elements(ns *topology.NetNS, table, name string) (int, error) {
	fd, err := ns.Fd()
	if err != nil {
		return 0, err
	}
	defer syscall.Close(fd)
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		return 0, err
	}
	defer c.CloseLasting()
	set, err := c.GetSetByName(&nftables.Table{Name: table, Family: nftables.TableFamilyIPv4}, name)
	if err != nil {
		return -1, nil
	}
	els, err := c.GetSetElements(set)
	if err != nil {
		return 0, err
	}
	return len(els), nil
}

// generation returns the nftables ruleset generation of ns.
func generation(ns *topology.NetNS) (uint32, error) {
	return nft.NewNetlink(ns.Path()).Generation()
}

// waitSynced polls until the proxy has completed a sync (its last-sync timestamp gauge is at
// least since) and the kernel's service-ips map holds at least n elements. It returns when
// that was first seen, and the own sync-duration sum and count at that point.
func waitSynced(ns *topology.NetNS, p *proc, table string, n int, since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.exited() {
			return time.Time{}, fmt.Errorf("proxy exited:\n%s", p.tail())
		}
		m, err := metrics(ns)
		if err == nil {
			ts := metric(m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
			if ts > 0 && ts >= float64(since.UnixNano())/1e9-0.001 {
				now := time.Now()
				cnt, err := elements(ns, table, "service-ips")
				if err != nil {
					return time.Time{}, err
				}
				if cnt >= n {
					return now, nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Time{}, &dnfError{limit: timeout, tail: p.tail()}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func median(xs []float64) float64 { return quantile(xs, 0.5) }

func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	idx := int(math.Ceil(q*float64(len(s)))) - 1
	if idx < 0 {
		idx = 0
	}
	return s[idx]
}

// metric returns sample name of m: unlabelled, or else kube-proxy's ip_family="IPv4" one
// (kube-proxy labels its sync metrics by IP family).
func metric(m map[string]float64, name string) float64 {
	if v, ok := m[name]; ok {
		return v
	}
	for k, v := range m {
		if strings.HasPrefix(k, name+"{") && strings.Contains(k, `ip_family="IPv4"`) {
			return v
		}
	}
	return 0
}
