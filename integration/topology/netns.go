package topology

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// PrivilegedEnv is the environment variable that, when set to "required",
// turns the skip in RequirePrivileged into a test failure.
const PrivilegedEnv = "NFTPROXY_PRIVILEGED_TESTS"

// netnsDir is where `ip netns add` bind-mounts named network namespaces.
const netnsDir = "/run/netns"

var (
	privOnce sync.Once
	privErr  error

	nsCounter atomic.Uint64
)

// NamePrefix returns the prefix shared by every namespace this process
// creates ("nftp-<pid>-"); useful for leak checks.
func NamePrefix() string {
	return fmt.Sprintf("nftp-%d-", os.Getpid())
}

// RequirePrivileged skips the test with a message starting with
// "needs root and network namespaces: " when the process is not root or
// `ip netns` is unusable. When the environment variable
// NFTPROXY_PRIVILEGED_TESTS is "required" it calls t.Fatalf instead.
// The probe (creating and deleting one namespace) runs once per process.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	privOnce.Do(func() { privErr = probePrivileged() })
	if privErr == nil {
		return
	}
	if os.Getenv(PrivilegedEnv) == "required" {
		t.Fatalf("needs root and network namespaces: %v (%s=required)", privErr, PrivilegedEnv)
	}
	t.Skipf("needs root and network namespaces: %v (set %s=required to fail instead)", privErr, PrivilegedEnv)
}

func probePrivileged() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not running as root (euid %d)", os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("ip (iproute2) not found: %w", err)
	}
	name := fmt.Sprintf("%sprobe", NamePrefix())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// NetNS is a named network namespace created with `ip netns add`; its
// handle lives at /run/netns/<Name>.
type NetNS struct {
	// Name is the namespace name as used by `ip netns` and `ip -n`.
	Name string
}

// NewNetNS creates a namespace named "nftp-<pid>-<counter>-<suffix>" and
// deletes it in t.Cleanup. The loopback interface is brought up, IPv6
// duplicate address detection is disabled (so addresses are usable at
// once), rp_filter is off and ICMP error rate limiting is disabled (so
// refused connections are reported reliably). Forwarding stays off.
func NewNetNS(t testing.TB, suffix string) *NetNS {
	t.Helper()
	n := &NetNS{Name: fmt.Sprintf("%s%d-%s", NamePrefix(), nsCounter.Add(1), suffix)}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, bytes.TrimSpace(out))
		}
	})
	if err := n.SetSysctls(baseSysctls); err != nil {
		t.Fatalf("netns %s: %v", n.Name, err)
	}
	n.IP(t, "link set lo up")
	return n
}

// baseSysctls are applied to every namespace before any interface exists.
var baseSysctls = map[string]string{
	"net/ipv6/conf/all/accept_dad":     "0",
	"net/ipv6/conf/default/accept_dad": "0",
	"net/ipv4/conf/all/rp_filter":      "0",
	"net/ipv4/conf/default/rp_filter":  "0",
	"net/ipv4/icmp_ratelimit":          "0",
	"net/ipv6/icmp/ratelimit":          "0",
}

// forwardingSysctls turn a namespace into a router.
var forwardingSysctls = map[string]string{
	"net/ipv4/ip_forward":              "1",
	"net/ipv6/conf/all/forwarding":     "1",
	"net/ipv6/conf/default/forwarding": "1",
}

// String returns the namespace name.
func (n *NetNS) String() string { return n.Name }

// Path returns the path of the namespace handle (/run/netns/<Name>).
func (n *NetNS) Path() string { return filepath.Join(netnsDir, n.Name) }

// Fd opens the namespace handle read-only (O_CLOEXEC) and returns the file
// descriptor, e.g. for nftables.WithNetNSFd. The caller must close it.
func (n *NetNS) Fd() (int, error) {
	fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", n.Path(), err)
	}
	return fd, nil
}

// Run executes `ip netns exec <Name> args...` and returns its stdout. On
// failure it calls t.Fatalf with the command and its combined output.
func (n *NetNS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		t.Fatalf("netns %s: %v", n.Name, err)
	}
	return out
}

// Exec is like Run but returns the error (which includes stderr) instead
// of failing the test.
func (n *NetNS) Exec(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %v\nstdout: %s\nstderr: %s",
			strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// IP runs a batch of iproute2 commands inside the namespace with a single
// `ip -n <Name> -batch -` process; each element is one command line
// without the leading "ip" (e.g. "addr add 10.0.0.1/24 dev eth0").
// It calls t.Fatalf on the first failing line.
func (n *NetNS) IP(t testing.TB, lines ...string) {
	t.Helper()
	if err := n.ipBatch(lines...); err != nil {
		t.Fatalf("netns %s: %v", n.Name, err)
	}
}

func (n *NetNS) ipBatch(lines ...string) error {
	cmd := exec.Command("ip", "-n", n.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -batch: %v: %s\nbatch:\n%s", err, bytes.TrimSpace(out), strings.Join(lines, "\n"))
	}
	return nil
}

// SetSysctls writes the given sysctls inside the namespace. Keys are paths
// below /proc/sys, with "/" or "." as separator (e.g. "net.ipv4.ip_forward").
func (n *NetNS) SetSysctls(kv map[string]string) error {
	return n.Do(func() error {
		for k, v := range kv {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
			}
		}
		return nil
	})
}

// Do runs fn on a dedicated, locked OS thread that has been switched into
// the namespace with setns(2), then switches the thread back to its
// original namespace. Sockets created inside fn stay in the namespace and
// may be used from any goroutine afterwards. Goroutines started by fn do
// NOT run in the namespace. If the original namespace cannot be restored
// the thread is discarded by the runtime.
func (n *NetNS) Do(fn func() error) error {
	target, err := n.Fd()
	if err != nil {
		return err
	}
	defer unix.Close(target)

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine.
			errc <- fmt.Errorf("restore netns after %s: %w (fn: %v)", n.Name, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
