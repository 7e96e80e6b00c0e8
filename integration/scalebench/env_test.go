package scalebench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
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

	"github.com/nftproxy/nftproxy/integration/apiserver"
	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/nft"
)

// nodeIP is the benchmark node's InternalIP, on a veth interface in each proxy namespace.
const nodeIP = "192.168.255.1"

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
	pid := p.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			hwm = kb * 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// Fields after the command: state(0) ... utime(11) stime(12).
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return hwm, (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

// metrics scrapes http://127.0.0.1:10249/metrics inside ns and returns the samples by their
// full name with labels ("name{labels}" or "name").
func metrics(ns *topology.NetNS) (map[string]float64, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := cl.Get("http://127.0.0.1:10249/metrics")
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
	return time.Time{}, errors.New("timed out waiting for the sync:\n" + p.tail())
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
