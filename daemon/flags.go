package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	netutils "k8s.io/utils/net"
)

// Options is everything `nftproxy run` and `nftproxy render` are told on their command line
// or in a kube-proxy configuration file (--config): the rule-shaping Config, where the
// cluster's objects come from, logging, and (run only) the sync periods, the servers'
// addresses and the conntrack sysctls.
type Options struct {
	Config Config
	// ConfigFile is a KubeProxyConfiguration file (kube-proxy's --config); flags given on the
	// command line override it.
	ConfigFile string
	// Manifests is a directory of manifests to proxy instead of a cluster's objects.
	Manifests string
	// Client is how to reach the API server.
	Client ClientOptions
	// LogFormat is "text" or "json"; Verbosity above 0 adds debug records.
	LogFormat string
	Verbosity int
	// MinSyncPeriod and SyncPeriod are Proxy's.
	MinSyncPeriod time.Duration
	SyncPeriod    time.Duration
	// ConfigSyncPeriod is the informers' resync period; 0 disables resyncs.
	ConfigSyncPeriod time.Duration
	// MetricsAddress serves /metrics (and with Profiling /debug/pprof/); "" disables it.
	MetricsAddress string
	Profiling      bool
	// HealthzAddress serves /healthz and /livez; "" disables them.
	HealthzAddress string
	// Conntrack are the conntrack sysctls written at start.
	Conntrack ConntrackSysctls
	// InitOnly writes the conntrack sysctls and exits (kube-proxy's --init-only).
	InitOnly bool
	// Version prints the version and exits.
	Version bool

	// Ignored names the kube-proxy settings given that have no meaning for nftproxy, for
	// one warning per source (flags, configuration file).
	Ignored struct{ Flags, File []string }

	// run is set by BindRunFlags: the options are run's.
	run bool
	// healthzPort and metricsPort are kube-proxy's deprecated --healthz-port and
	// --metrics-port (completeAddresses).
	healthzPort, metricsPort int32
	// lenient is what strict decoding found wrong in the configuration file, which was then
	// decoded without those checks, as kube-proxy does.
	lenient error
}

// ClientOptions are kube-proxy's clientConnection settings and --master.
type ClientOptions struct {
	// Kubeconfig is the API server's kubeconfig file; "" means the in-cluster configuration.
	Kubeconfig string
	// Master overrides the kubeconfig's API server address.
	Master string
	// ContentType, QPS and Burst are the client's (kube-proxy's --kube-api-* flags).
	ContentType string
	QPS         float32
	Burst       int32
}

// The defaults that differ from a zero value, kube-proxy's where it has the setting.
const (
	DefaultHealthzPort    = 10256
	DefaultMetricsPort    = 10249
	DefaultHealthzAddress = "0.0.0.0:10256"
	DefaultMetricsAddress = "127.0.0.1:10249"
	DefaultContentType    = "application/vnd.kubernetes.protobuf"
	DefaultQPS            = 5
	DefaultBurst          = 10
)

// The names of the flag sets, in the order help prints them.
const (
	flagsGeneric   = "generic"
	flagsRules     = "rules"
	flagsSync      = "sync"
	flagsServers   = "servers"
	flagsConntrack = "conntrack"
	flagsLogging   = "logging"
	flagsIgnored   = "ignored kube-proxy"
)

// flagSets registers the flags of run (or, with run false, of render) and sets o to their
// defaults. The named sets are for help; Parse parses all of them at once.
func (o *Options) flagSets(run bool) *namedFlagSets {
	nfs := &namedFlagSets{}
	o.BindFlags(nfs)
	if run {
		o.BindRunFlags(nfs)
	}
	return nfs
}

// BindFlags registers the flags shared by run, render and diff: where the objects come from
// and how they become rules.
func (o *Options) BindFlags(nfs *namedFlagSets) {
	fs := nfs.FlagSet(flagsGeneric)
	fs.StringVar(&o.ConfigFile, "config", "", "a kube-proxy configuration file (KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1), as kubeadm writes it; flags given on the command line override it")
	fs.StringVar(&o.Manifests, "manifests", "", "directory of Service, EndpointSlice and Node manifests (YAML or JSON) to proxy instead of a cluster's")
	fs.Func("proxy-mode", "kube-proxy's proxy mode: only 'nftables' (or empty) is accepted; 'iptables', 'ipvs' and 'kernelspace' are refused", checkProxyMode)
	fs.StringVar(&o.Client.Kubeconfig, "kubeconfig", "", "kubeconfig file of the API server to watch (default: the in-cluster configuration); ignored with --manifests")
	fs.StringVar(&o.Client.Master, "master", "", "the API server's address (overrides the kubeconfig's)")
	fs.StringVar(&o.Client.ContentType, "kube-api-content-type", DefaultContentType, "content type of requests sent to the API server")
	fs.Float32Var(&o.Client.QPS, "kube-api-qps", DefaultQPS, "queries per second to the API server")
	fs.Int32Var(&o.Client.Burst, "kube-api-burst", DefaultBurst, "burst of queries to the API server")
	o.Config.BindFlags(nfs.FlagSet(flagsRules))
	fs.BoolVar(&o.Version, "version", false, "print the version and exit")

	fs = nfs.FlagSet(flagsLogging)
	fs.Var(newLogFormatValue(&o.LogFormat), "log-format", "log format: text or json")
	fs.Var(newLogFormatValue(&o.LogFormat), "logging-format", "the same as --log-format (kube-proxy's name)")
	fs.IntVarP(&o.Verbosity, "v", "v", 0, "log verbosity: 0 logs info and above, 1 or more adds debug")
	for _, name := range []string{"vmodule", "log-flush-frequency", "log-text-split-stream", "log-text-info-buffer-size", "log-json-split-stream", "log-json-info-buffer-size"} {
		o.ignoredFlag(fs, name, "kube-proxy's logging flag; nftproxy logs through log/slog and ignores it")
	}
}

// BindRunFlags registers the flags of run only.
func (o *Options) BindRunFlags(nfs *namedFlagSets) {
	o.run = true
	fs := nfs.FlagSet(flagsGeneric)
	fs.BoolVar(&o.InitOnly, "init-only", false, "write the conntrack sysctls (the steps that need more than CAP_NET_ADMIN) and exit")
	refusedFlag(fs, "cleanup", "kube-proxy's --cleanup: refused; run 'nftproxy cleanup' to remove nftproxy's tables, 'nftproxy cleanup --kube-proxy' for kube-proxy's nftables tables too (its iptables rules need kube-proxy --cleanup)")
	refusedFlag(fs, "write-config-to", "kube-proxy's --write-config-to: refused (nftproxy writes no configuration)")

	fs = nfs.FlagSet(flagsSync)
	fs.DurationVar(&o.MinSyncPeriod, "min-sync-period", DefaultMinSyncPeriod, "least time between two syncs; changes arriving meanwhile are programmed together (0 syncs on every change)")
	fs.DurationVar(&o.SyncPeriod, "sync-period", DefaultSyncPeriod, "longest time between two syncs; each checks the kernel's tables against the last commit and repairs them")
	fs.Var(durationAlias{&o.MinSyncPeriod}, "iptables-min-sync-period", "the same as --min-sync-period (kube-proxy's name, which its nftables mode uses too)")
	fs.Var(durationAlias{&o.SyncPeriod}, "iptables-sync-period", "the same as --sync-period (kube-proxy's name, which its nftables mode uses too)")
	fs.DurationVar(&o.ConfigSyncPeriod, "config-sync-period", 0, "how often the informers resync from their caches (0, the default, never: --sync-period already repairs the kernel's tables; kube-proxy's default is 15m)")

	fs = nfs.FlagSet(flagsServers)
	fs.StringVar(&o.MetricsAddress, "metrics-bind-address", DefaultMetricsAddress, "address of the Prometheus /metrics endpoint (empty disables it)")
	fs.BoolVar(&o.Profiling, "profiling", false, "also serve Go's profiles (net/http/pprof) under /debug/pprof/ on --metrics-bind-address")
	fs.StringVar(&o.HealthzAddress, "healthz-bind-address", DefaultHealthzAddress, "address of the /healthz and /livez endpoints (empty disables them)")

	o.Conntrack.BindFlags(nfs.FlagSet(flagsConntrack))

	fs = nfs.FlagSet(flagsIgnored)
	for _, f := range []struct{ name, why string }{
		{"feature-gates", "nftproxy has no feature gates"},
		{"bind-address", "nftproxy takes the primary IPs from the Node object"},
		{"bind-address-hard-fail", "nftproxy always exits when it cannot open --metrics-bind-address or --healthz-bind-address"},
		{"show-hidden-metrics-for-version", "nftproxy hides no metrics"},
		{"oom-score-adj", "set the container's OOM score instead"},
		{"iptables-masquerade-bit", "nftproxy's masquerade mark is its own"},
		{"iptables-localhost-nodeports", "iptables mode only: NodePorts are never served on loopback"},
		{"ipvs-scheduler", "ipvs mode only"},
		{"ipvs-exclude-cidrs", "ipvs mode only"},
		{"ipvs-strict-arp", "ipvs mode only"},
		{"ipvs-sync-period", "ipvs mode only"},
		{"ipvs-min-sync-period", "ipvs mode only"},
		{"ipvs-tcp-timeout", "ipvs mode only"},
		{"ipvs-tcpfin-timeout", "ipvs mode only"},
		{"ipvs-udp-timeout", "ipvs mode only"},
	} {
		o.ignoredFlag(fs, f.name, f.why)
	}
	// Deprecated in kube-proxy, and read as it reads them (completeAddresses).
	fs.Int32Var(&o.healthzPort, "healthz-port", DefaultHealthzPort, "port of --healthz-bind-address when it has none; 0 disables /healthz and /livez (without --config)")
	fs.Int32Var(&o.metricsPort, "metrics-port", DefaultMetricsPort, "port of --metrics-bind-address when it has none; 0 disables /metrics (without --config)")
	_ = fs.MarkDeprecated("healthz-port", "use --healthz-bind-address")
	_ = fs.MarkDeprecated("metrics-port", "use --metrics-bind-address")
}

// ignoredFlag registers a kube-proxy flag that is accepted with any value and only noted in
// o.Ignored.Flags.
func (o *Options) ignoredFlag(fs *pflag.FlagSet, name, why string) {
	fs.Var(&ignoredValue{name: name, list: &o.Ignored.Flags}, name, why)
	if boolFlags[name] {
		// kube-proxy's boolean flags may come without a value.
		fs.Lookup(name).NoOptDefVal = "true"
	}
}

// boolFlags are kube-proxy's boolean flags among those nftproxy ignores.
var boolFlags = map[string]bool{
	"bind-address-hard-fail": true, "iptables-localhost-nodeports": true, "ipvs-strict-arp": true,
	"log-text-split-stream": true, "log-json-split-stream": true,
}

// refusedFlag registers a kube-proxy flag whose use is an error: ignoring it would do
// something other than what the operator asked for.
func refusedFlag(fs *pflag.FlagSet, name, usage string) {
	fs.Func(name, usage, func(string) error { return errors.New("not supported by nftproxy") })
	fs.Lookup(name).NoOptDefVal = "true"
}

// ProxyMode is the proxy mode nftproxy runs in, as kube-proxy's /proxyMode names it.
const ProxyMode = "nftables"

// checkProxyMode accepts kube-proxy's --proxy-mode (and mode:) values that mean nftables.
func checkProxyMode(mode string) error {
	switch mode {
	case "", ProxyMode:
		return nil
	}
	return fmt.Errorf("proxy mode %q: nftproxy is an nftables proxy; want \"nftables\" or empty", mode)
}

type ignoredValue struct {
	name, value string
	list        *[]string
}

func (v *ignoredValue) Set(s string) error {
	v.value = s
	if !slices.Contains(*v.list, "--"+v.name) {
		*v.list = append(*v.list, "--"+v.name)
	}
	return nil
}
func (v *ignoredValue) String() string { return v.value }
func (v *ignoredValue) Type() string   { return "string" }

// durationAlias is a second name of a duration flag.
type durationAlias struct{ d *time.Duration }

func (a durationAlias) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*a.d = d
	return nil
}
func (a durationAlias) String() string {
	if a.d == nil {
		return ""
	}
	return a.d.String()
}
func (a durationAlias) Type() string { return "duration" }

type logFormatValue struct{ p *string }

func newLogFormatValue(p *string) logFormatValue {
	*p = "text"
	return logFormatValue{p}
}

func (v logFormatValue) Set(s string) error {
	if s != "text" && s != "json" {
		return fmt.Errorf("want text or json")
	}
	*v.p = s
	return nil
}
func (v logFormatValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}
func (v logFormatValue) Type() string { return "string" }

// Parse parses args for run (or render, with run false) and, with --config, the
// configuration file under them: the flags given on the command line override the file. The
// returned flag set is the one parsed, for its remaining arguments.
func Parse(args []string, run bool, output io.Writer) (*Options, *pflag.FlagSet, error) {
	o := &Options{}
	fs := o.flagSet(run, output)
	if err := fs.Parse(args); err != nil {
		return nil, fs, err
	}
	if o.ConfigFile == "" {
		o.completeAddresses()
		return o, fs, nil
	}
	// Start again from the defaults, apply the file, then the command line over it.
	file := &Options{}
	fs = file.flagSet(run, output)
	if err := file.ApplyConfigFile(o.ConfigFile); err != nil {
		return nil, fs, err
	}
	if err := fs.Parse(args); err != nil {
		return nil, fs, err
	}
	file.completeAddresses()
	return file, fs, nil
}

// completeAddresses finishes the servers' addresses as kube-proxy does: an address without
// a port (an IP alone) gets its server's port; without --config, that port is the deprecated
// --healthz-port's or --metrics-port's, and 0 turns the server off.
func (o *Options) completeAddresses() {
	healthz, metrics := int32(DefaultHealthzPort), int32(DefaultMetricsPort)
	if o.ConfigFile == "" && o.run {
		healthz, metrics = o.healthzPort, o.metricsPort
		if healthz == 0 {
			o.HealthzAddress = ""
		}
		if metrics == 0 {
			o.MetricsAddress = ""
		}
	}
	o.HealthzAddress = appendPortIfNeeded(o.HealthzAddress, healthz)
	o.MetricsAddress = appendPortIfNeeded(o.MetricsAddress, metrics)
}

// appendPortIfNeeded returns addr with port appended when addr is an IP address alone.
func appendPortIfNeeded(addr string, port int32) string {
	if _, _, err := net.SplitHostPort(addr); err == nil || netutils.ParseIPSloppy(addr) == nil {
		return addr
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}

// flagSet binds o's flags in one flag set, named after the command.
func (o *Options) flagSet(run bool, output io.Writer) *pflag.FlagSet {
	name := "render"
	if run {
		name = "run"
	}
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(output)
	fs.Usage = func() {}
	for _, set := range o.flagSets(run).sets {
		fs.AddFlagSet(set)
	}
	return fs
}

// PrintUsage prints the flags of run (or render) as Kubernetes components do: one section
// per flag set.
func PrintUsage(w io.Writer, run bool) {
	var o Options
	o.flagSets(run).print(w)
}

// Validate checks the options that only make sense together.
func (o *Options) Validate() error {
	if o.run && (o.MinSyncPeriod < 0 || o.SyncPeriod <= 0) {
		return fmt.Errorf("--min-sync-period must be at least 0 and --sync-period more than 0")
	}
	if o.ConfigSyncPeriod < 0 {
		return fmt.Errorf("--config-sync-period must be at least 0")
	}
	if err := o.Conntrack.Validate(); err != nil {
		return err
	}
	return o.Config.Validate()
}

// Warnings returns the warnings the options deserve, one per source of ignored settings.
func (o *Options) Warnings() []string {
	var out []string
	if o.lenient != nil {
		out = append(out, fmt.Sprintf("%s: read without strict checks, as kube-proxy does, after: %v (a field of another version, or a typo whose setting is not applied)", o.ConfigFile, o.lenient))
	}
	if len(o.Ignored.File) > 0 {
		out = append(out, fmt.Sprintf("%s: ignoring settings that do not apply to nftproxy: %s", o.ConfigFile, strings.Join(o.Ignored.File, ", ")))
	}
	if len(o.Ignored.Flags) > 0 {
		out = append(out, "ignoring kube-proxy flags that do not apply to nftproxy: "+strings.Join(o.Ignored.Flags, ", "))
	}
	return out
}

// Logger returns the logger the options select, writing to w.
func (o *Options) Logger(w io.Writer) (*slog.Logger, error) {
	level := slog.LevelInfo
	if o.Verbosity > 0 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	switch o.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.LogFormat)
}

// NodeName returns this node's name: --hostname-override, else $NODE_NAME, else the hostname,
// trimmed and lower-cased as kube-proxy takes it; blank is an error.
func (o *Options) NodeName() (string, error) {
	name, from := o.Config.HostnameOverride, "--hostname-override"
	if name == "" {
		name, from = os.Getenv("NODE_NAME"), "NODE_NAME"
	}
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("node name: %w", err)
		}
		name, from = h, "the hostname"
	}
	// As kube-proxy (GetHostname): trimmed and lower-cased, as Node names are.
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" {
		return "", fmt.Errorf("node name: %s is blank", from)
	}
	return name, nil
}
