package daemon

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// Options is everything `nftproxy run` and `nftproxy render` are told on their command line:
// the rule-shaping Config, where the cluster's objects come from, logging, and (run only) the
// sync periods and the servers' addresses.
type Options struct {
	Config Config
	// Manifests is a directory of manifests to proxy instead of a cluster's objects.
	Manifests string
	// Kubeconfig is the API server's kubeconfig file; "" means the in-cluster configuration.
	Kubeconfig string
	// LogFormat is "text" or "json"; Verbosity above 0 adds debug records.
	LogFormat string
	Verbosity int
	// MinSyncPeriod and SyncPeriod are Proxy's.
	MinSyncPeriod time.Duration
	SyncPeriod    time.Duration
	// MetricsAddress serves /metrics (and with Profiling /debug/pprof/); "" disables it.
	MetricsAddress string
	Profiling      bool
	// HealthzAddress serves /healthz and /livez; "" disables them.
	HealthzAddress string

	// run is set by BindRunFlags: the options are run's.
	run bool
}

// BindFlags registers the flags shared by run and render on fs.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	o.Config.BindFlags(fs)
	fs.StringVar(&o.Manifests, "manifests", "", "directory of Service, EndpointSlice and Node manifests (YAML or JSON) to proxy instead of a cluster's")
	fs.StringVar(&o.LogFormat, "log-format", "text", "log format: text or json")
	fs.IntVar(&o.Verbosity, "v", 0, "log verbosity: 0 logs info and above, 1 or more adds debug")
}

// BindRunFlags registers the flags of run only on fs.
func (o *Options) BindRunFlags(fs *flag.FlagSet) {
	o.run = true
	fs.DurationVar(&o.MinSyncPeriod, "min-sync-period", DefaultMinSyncPeriod, "least time between two syncs; changes arriving meanwhile are programmed together (0 syncs on every change)")
	fs.DurationVar(&o.SyncPeriod, "sync-period", DefaultSyncPeriod, "longest time between two syncs; each checks the kernel's tables against the last commit and repairs them")
	fs.StringVar(&o.MetricsAddress, "metrics-bind-address", "127.0.0.1:10249", "address of the Prometheus /metrics endpoint (empty disables it)")
	fs.BoolVar(&o.Profiling, "profiling", false, "also serve Go's profiles (net/http/pprof) under /debug/pprof/ on --metrics-bind-address")
	fs.StringVar(&o.HealthzAddress, "healthz-bind-address", "0.0.0.0:10256", "address of the /healthz and /livez endpoints (empty disables them)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file of the API server to watch (default: the in-cluster configuration); ignored with --manifests")
}

// Validate checks the options that only make sense together.
func (o *Options) Validate() error {
	if o.run && (o.MinSyncPeriod < 0 || o.SyncPeriod <= 0) {
		return fmt.Errorf("--min-sync-period must be at least 0 and --sync-period more than 0")
	}
	return o.Config.Validate()
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

// NodeName returns this node's name: --hostname-override, else $NODE_NAME, else the hostname.
func (o *Options) NodeName() (string, error) {
	if o.Config.HostnameOverride != "" {
		return o.Config.HostnameOverride, nil
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name: %w", err)
	}
	return h, nil
}
