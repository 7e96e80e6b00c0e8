// Command nftproxy is a Kubernetes service proxy that programs nftables over netlink.
//
//	nftproxy run [--kubeconfig FILE] [flags] keep the node's rules in line with the cluster
//	nftproxy run --manifests DIR [flags]     ... or with manifests in a directory
//	nftproxy render --manifests DIR [flags]  print the rules that run would program
//	nftproxy cleanup                         remove nftproxy's tables
//	nftproxy version                         print the version
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `nftproxy: a Kubernetes service proxy on nftables

Usage:
  nftproxy run [--kubeconfig FILE] [flags] program this node's Services and keep them in sync
  nftproxy run --manifests DIR [flags]     ... taking them from manifests instead of a cluster
  nftproxy render --manifests DIR [flags]  print the ruleset run would program (no root needed)
  nftproxy cleanup                         remove nftproxy's tables (ip and ip6 nftproxy)
  nftproxy version                         print the version

Run "nftproxy COMMAND -h" for the flags of a command.
`

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "nftproxy:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "run":
		return runDaemon(ctx, args[1:], stderr)
	case "render":
		return runRender(args[1:], stdout, stderr)
	case "cleanup":
		return runCleanup(args[1:], stderr)
	case "version":
		fmt.Fprintln(stdout, "nftproxy", version)
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// commonFlags are the flags shared by run and render.
type commonFlags struct {
	cfg       sync.Config
	manifests string
	logFormat string
	verbosity int
}

func (c *commonFlags) bind(fs *flag.FlagSet) {
	c.cfg.BindFlags(fs)
	fs.StringVar(&c.manifests, "manifests", "", "directory of Service, EndpointSlice and Node manifests (YAML or JSON) to proxy instead of a cluster's")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.IntVar(&c.verbosity, "v", 0, "log verbosity: 0 logs info and above, 1 or more adds debug")
}

func (c *commonFlags) logger(w io.Writer) (*slog.Logger, error) {
	level := slog.LevelInfo
	if c.verbosity > 0 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", c.logFormat)
}

// nodeName returns this node's name: --hostname-override, else $NODE_NAME, else the hostname.
func (c *commonFlags) nodeName() (string, error) {
	if c.cfg.HostnameOverride != "" {
		return c.cfg.HostnameOverride, nil
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

// daemonFlags are the flags of run only.
type daemonFlags struct {
	kubeconfig     string
	minSyncPeriod  time.Duration
	syncPeriod     time.Duration
	metricsAddress string
	healthzAddress string
	profiling      bool
}

func (d *daemonFlags) bind(fs *flag.FlagSet) {
	fs.DurationVar(&d.minSyncPeriod, "min-sync-period", sync.DefaultMinSyncPeriod, "least time between two syncs; changes arriving meanwhile are programmed together (0 syncs on every change)")
	fs.DurationVar(&d.syncPeriod, "sync-period", sync.DefaultSyncPeriod, "longest time between two syncs; each checks the kernel's tables against the last commit and repairs them")
	fs.StringVar(&d.metricsAddress, "metrics-bind-address", "127.0.0.1:10249", "address of the Prometheus /metrics endpoint (empty disables it)")
	fs.BoolVar(&d.profiling, "profiling", false, "also serve Go's profiles (net/http/pprof) under /debug/pprof/ on --metrics-bind-address")
	fs.StringVar(&d.healthzAddress, "healthz-bind-address", "0.0.0.0:10256", "address of the /healthz and /livez endpoints (empty disables them)")
	fs.StringVar(&d.kubeconfig, "kubeconfig", "", "kubeconfig file of the API server to watch (default: the in-cluster configuration); ignored with --manifests")
}

// setup parses the flags of run or render (with extra, the command's own flags) and returns
// them with the logger and node name they select.
func setup(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (*commonFlags, *slog.Logger, string, error) {
	c := &commonFlags{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.bind(fs)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, "", err
	}
	if fs.NArg() > 0 {
		return nil, nil, "", fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.manifests == "" && extra == nil {
		return nil, nil, "", errors.New("--manifests is required")
	}
	if err := c.cfg.Validate(); err != nil {
		return nil, nil, "", err
	}
	log, err := c.logger(stderr)
	if err != nil {
		return nil, nil, "", err
	}
	node, err := c.nodeName()
	if err != nil {
		return nil, nil, "", err
	}
	return c, log, node, nil
}

func runDaemon(ctx context.Context, args []string, stderr io.Writer) error {
	d := &daemonFlags{}
	c, log, node, err := setup("run", args, stderr, d.bind)
	if err != nil {
		return err
	}
	if d.minSyncPeriod < 0 || d.syncPeriod <= 0 {
		return fmt.Errorf("--min-sync-period must be at least 0 and --sync-period more than 0")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	backend := nft.NewNetlink("")
	defer backend.Close()
	proxy := &sync.Proxy{
		Config:        &c.cfg,
		NodeName:      node,
		Backend:       backend,
		Log:           log,
		MinSyncPeriod: d.minSyncPeriod,
		SyncPeriod:    d.syncPeriod,
		Metrics:       sync.NewMetrics(reg),
		Conntrack:     sync.NewNetlinkConntrack(""),
	}
	proxy.ServiceHealth = &sync.ServiceHealthServers{
		NodeName: node,
		Log:      log,
		ProxyHealthy: func() bool {
			ok, _ := proxy.Health(time.Now())
			return ok
		},
	}
	if c.cfg.NodePortPrimary || len(c.cfg.NodePortAddresses) > 0 {
		// As kube-proxy: health check node ports listen where NodePorts are served.
		proxy.ServiceHealth.Addresses = proxy.NodePortIPs
	}
	defer proxy.ServiceHealth.Close()
	if d.metricsAddress != "" {
		srv, err := serve(d.metricsAddress, "--metrics-bind-address", metricsHandler(reg, d.profiling))
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	if d.healthzAddress != "" {
		mux := http.NewServeMux()
		mux.Handle("/healthz", healthHandler(proxy))
		mux.Handle("/livez", healthHandler(proxy))
		srv, err := serve(d.healthzAddress, "--healthz-bind-address", mux)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	errc := make(chan error, 1)
	if c.manifests != "" {
		source := &sync.ManifestSource{Dir: c.manifests, Log: log}
		log.Info("starting nftproxy", "version", version, "node", node, "manifests", c.manifests)
		go func() { errc <- source.Run(ctx, func(objs sync.Objects, _ []sync.BadObject) { proxy.Update(objs) }) }()
	} else {
		client, err := kubeClient(d.kubeconfig)
		if err != nil {
			return err
		}
		// client-go logs through klog: send it to the same handler.
		klog.SetSlogLogger(log)
		source := &sync.KubeSource{Client: client, NodeName: node, Log: log}
		log.Info("starting nftproxy", "version", version, "node", node, "kubeconfig", d.kubeconfig)
		go func() { errc <- source.Run(ctx, proxy.Update) }()
	}
	if err := proxy.Run(ctx); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	log.Info("stopping; rules stay in place")
	return nil
}

// metricsHandler serves /metrics from reg and, with profiling, the runtime profiles under
// /debug/pprof/ as kube-proxy's enableProfiling does.
func metricsHandler(reg *prometheus.Registry, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// serve serves h on addr (the value of flag) until the returned server is closed.
func serve(addr, flag string, h http.Handler) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// healthHandler answers 200 while the proxy is healthy and 503 otherwise, with kube-proxy's
// JSON body.
func healthHandler(p *sync.Proxy) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		ok, last := p.Health(now)
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(struct {
			LastUpdated  time.Time `json:"lastUpdated"`
			CurrentTime  time.Time `json:"currentTime"`
			NodeEligible bool      `json:"nodeEligible"`
		}{last, now, true})
	})
}

// kubeClient returns a client for the kubeconfig file, or for the in-cluster configuration
// when path is empty.
func kubeClient(path string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = "nftproxy/" + version
	// Protocol buffers, as kube-proxy: lists of thousands of Services and EndpointSlices
	// decode several times faster, into less memory, than JSON.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

func runRender(args []string, stdout, stderr io.Writer) error {
	c, log, node, err := setup("render", args, stderr, nil)
	if err != nil {
		return err
	}
	rulesets, bad, err := c.cfg.RenderDir(c.manifests, node)
	if err != nil {
		return err
	}
	for _, b := range bad {
		log.Warn("skipping object that cannot be turned into rules", "object", b.String())
	}
	for _, rs := range rulesets {
		fmt.Fprint(stdout, model.Render(rs))
	}
	return nil
}

func runCleanup(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	backend := nft.NewNetlink("")
	defer backend.Close()
	if err := backend.Delete(model.IPv4, model.IPv6); err != nil {
		return err
	}
	fmt.Fprintln(stderr, "removed tables ip nftproxy and ip6 nftproxy")
	return nil
}
