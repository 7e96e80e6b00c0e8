package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/nftproxy/nftproxy/internal/logkey"
)

// ConntrackSysctls are kube-proxy's conntrack settings (--conntrack-* flags, the
// configuration file's conntrack section), written at start to the netfilter sysctls as
// kube-proxy writes them. A zero value leaves its sysctl as it is.
type ConntrackSysctls struct {
	// MaxPerCore times the number of CPUs, at least Min and at most 1Mi, is nf_conntrack_max
	// (and a quarter of it the least conntrack hash size); MaxPerCore 0 leaves both alone.
	MaxPerCore int32
	Min        int32
	// TCPEstablishedTimeout is nf_conntrack_tcp_timeout_established.
	TCPEstablishedTimeout time.Duration
	// TCPCloseWaitTimeout is nf_conntrack_tcp_timeout_close_wait.
	TCPCloseWaitTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal to 1 (false leaves it alone).
	TCPBeLiberal bool
	// UDPTimeout is nf_conntrack_udp_timeout, UDPStreamTimeout nf_conntrack_udp_timeout_stream.
	UDPTimeout       time.Duration
	UDPStreamTimeout time.Duration
}

// kube-proxy's defaults.
const (
	DefaultConntrackMaxPerCore            = 32 * 1024
	DefaultConntrackMin                   = 128 * 1024
	DefaultConntrackTCPEstablishedTimeout = 24 * time.Hour
	DefaultConntrackTCPCloseWaitTimeout   = time.Hour
	// conntrackMaxLimit caps nf_conntrack_max on machines with many cores, as kube-proxy.
	conntrackMaxLimit = 1 << 20
)

// BindFlags registers the --conntrack-* flags on fs and sets c to their defaults.
func (c *ConntrackSysctls) BindFlags(fs *pflag.FlagSet) {
	fs.Int32Var(&c.MaxPerCore, "conntrack-max-per-core", DefaultConntrackMaxPerCore, "most conntrack entries per CPU core: nf_conntrack_max is this times the CPUs, at least --conntrack-min (0 leaves nf_conntrack_max as it is and ignores --conntrack-min)")
	fs.Int32Var(&c.Min, "conntrack-min", DefaultConntrackMin, "least nf_conntrack_max, whatever --conntrack-max-per-core gives")
	fs.DurationVar(&c.TCPEstablishedTimeout, "conntrack-tcp-timeout-established", DefaultConntrackTCPEstablishedTimeout, "idle timeout of established TCP connections, nf_conntrack_tcp_timeout_established (0 leaves it as it is)")
	fs.DurationVar(&c.TCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait", DefaultConntrackTCPCloseWaitTimeout, "timeout of TCP connections in CLOSE_WAIT, nf_conntrack_tcp_timeout_close_wait (0 leaves it as it is)")
	fs.BoolVar(&c.TCPBeLiberal, "conntrack-tcp-be-liberal", false, "set nf_conntrack_tcp_be_liberal to 1: out-of-window TCP packets are not marked INVALID")
	fs.DurationVar(&c.UDPTimeout, "conntrack-udp-timeout", 0, "idle timeout of UNREPLIED UDP flows, nf_conntrack_udp_timeout (0 leaves it as it is)")
	fs.DurationVar(&c.UDPStreamTimeout, "conntrack-udp-timeout-stream", 0, "idle timeout of ASSURED UDP flows, nf_conntrack_udp_timeout_stream (0 leaves it as it is)")
}

// Validate refuses negative values.
func (c *ConntrackSysctls) Validate() error {
	if c.MaxPerCore < 0 || c.Min < 0 {
		return errors.New("--conntrack-max-per-core and --conntrack-min must be at least 0")
	}
	for _, d := range []time.Duration{c.TCPEstablishedTimeout, c.TCPCloseWaitTimeout, c.UDPTimeout, c.UDPStreamTimeout} {
		if d < 0 {
			return errors.New("conntrack timeouts must be at least 0")
		}
	}
	return nil
}

// Max returns the nf_conntrack_max that c asks for on a machine with numCPU CPUs, 0 for none.
func (c *ConntrackSysctls) Max(numCPU int) int {
	if c.MaxPerCore <= 0 {
		return 0
	}
	scaled := int(c.MaxPerCore) * numCPU
	if scaled > conntrackMaxLimit {
		return conntrackMaxLimit
	}
	return max(scaled, int(c.Min))
}

// The files Apply writes, relative to its root.
const (
	sysctlNetfilterDir = "proc/sys/net/netfilter"
	conntrackHashsize  = "sys/module/nf_conntrack/parameters/hashsize"
	cpusOnline         = "sys/devices/system/cpu/online"
)

// errReadOnly: a sysctl cannot be written here.
var errReadOnly = errors.New("read-only")

// Apply writes the sysctls under root ("/" on a node; tests give a directory that stands
// for it), each only if its value differs, and raises the conntrack hash size to a quarter
// of nf_conntrack_max when it is smaller. The sysctls that are read-only (an unprivileged
// container's /proc/sys) or missing (nf_conntrack not loaded yet) are skipped with one
// warning each kind: the proxy works with the kernel's values. Other errors are returned.
func (c *ConntrackSysctls) Apply(root string, log *slog.Logger) error {
	var writes []struct {
		name  string
		value int
	}
	add := func(name string, value int) {
		writes = append(writes, struct {
			name  string
			value int
		}{name, value})
	}
	maxEntries := c.Max(numCPU(root))
	if maxEntries > 0 {
		add("nf_conntrack_max", maxEntries)
	}
	if c.TCPEstablishedTimeout > 0 {
		add("nf_conntrack_tcp_timeout_established", int(c.TCPEstablishedTimeout/time.Second))
	}
	if c.TCPCloseWaitTimeout > 0 {
		add("nf_conntrack_tcp_timeout_close_wait", int(c.TCPCloseWaitTimeout/time.Second))
	}
	if c.TCPBeLiberal {
		add("nf_conntrack_tcp_be_liberal", 1)
	}
	if c.UDPTimeout > 0 {
		add("nf_conntrack_udp_timeout", int(c.UDPTimeout/time.Second))
	}
	if c.UDPStreamTimeout > 0 {
		add("nf_conntrack_udp_timeout_stream", int(c.UDPStreamTimeout/time.Second))
	}
	var readOnly, missing []string
	for _, w := range writes {
		path := filepath.Join(root, sysctlNetfilterDir, w.name)
		// As kube-proxy: nf_conntrack_max is only ever raised, never lowered below what the
		// node was given.
		err := writeInt(path, w.value, w.name == "nf_conntrack_max", log)
		switch {
		case errors.Is(err, errReadOnly):
			readOnly = append(readOnly, w.name)
			continue
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, w.name)
			continue
		case err != nil:
			return fmt.Errorf("conntrack sysctl %s: %w", w.name, err)
		}
		if w.name != "nf_conntrack_max" {
			continue
		}
		// As kube-proxy: a hash table of at least a quarter of the entries.
		hashsize := filepath.Join(root, conntrackHashsize)
		cur, err := readInt(hashsize)
		if err != nil {
			log.Warn("cannot read the conntrack hash size", logkey.Error, err)
			continue
		}
		if cur >= w.value/4 {
			continue
		}
		if err := writeInt(hashsize, w.value/4, true, log); err != nil {
			log.Warn("cannot raise the conntrack hash size", logkey.Value, w.value/4, logkey.Error, err)
		}
	}
	if len(readOnly) > 0 {
		// An unprivileged container's /proc/sys, or nf_conntrack_max in a network namespace
		// other than the host's.
		log.Warn("skipping conntrack sysctls that are read-only here (--conntrack-* need a privileged container, or a privileged --init-only run)", logkey.Sysctls, readOnly)
	}
	if len(missing) > 0 {
		log.Warn("skipping conntrack sysctls that do not exist (nf_conntrack not loaded?)", logkey.Sysctls, missing)
	}
	return nil
}

// writeInt writes value to the sysctl file at path unless it holds value already, or (with
// raiseOnly) more.
func writeInt(path string, value int, raiseOnly bool, log *slog.Logger) error {
	cur, err := readInt(path)
	if err != nil {
		return err
	}
	if cur == value || (raiseOnly && cur > value) {
		return nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(value)+"\n"), 0o644); err != nil {
		if errors.Is(err, syscall.EROFS) || errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("%w: %w", errReadOnly, err)
		}
		return err
	}
	log.Info("set sysctl", logkey.Sysctl, path, logkey.Value, value, logkey.Was, cur)
	return nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// numCPU counts the machine's online CPUs from root/sys (as kube-proxy, not the process's
// CPU affinity, which a container's cpuset narrows), else returns runtime.NumCPU.
func numCPU(root string) int {
	b, err := os.ReadFile(filepath.Join(root, cpusOnline))
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || b < a {
			return runtime.NumCPU()
		}
		n += b - a + 1
	}
	if n < 1 {
		return runtime.NumCPU()
	}
	return n
}
