package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/conntrack"
	"github.com/nftproxy/nftproxy/internal/kubeclient"
	"github.com/nftproxy/nftproxy/internal/logkey"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

var _ sync.Conntrack = (*conntrack.Netlink)(nil)

// Run runs nftproxy on this node until ctx is done: it programs the kernel's tables from the
// source the options name (manifests, or the API server), serves metrics, health and the
// Services' health check node ports, and leaves the rules in place when it returns. version
// is nftproxy's, for the log and the API client's user agent.
func Run(ctx context.Context, o *Options, node string, log *slog.Logger, version string) error {
	if err := o.Conntrack.Apply("/", log); err != nil {
		return err
	}
	if o.InitOnly {
		log.Info("--init-only: conntrack sysctls written, exiting")
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		NewBuildInfo(version))
	RegisterClientMetrics(reg)
	// With the API server as source: the client, and events (none from manifests: no API).
	var client *kubeclient.Client
	var recorder EventRecorder
	if o.Manifests == "" {
		var err error
		if client, err = o.Client.NewClient("nftproxy/" + version); err != nil {
			return err
		}
		// client-go logs through klog: send it to the same handler.
		klog.SetSlogLogger(log)
		events := newEventWriter(client.Events, log)
		go events.Run(ctx)
		recorder = events
	}
	backend := nft.NewNetlink("")
	defer backend.Close()
	proxy := newProxy(o, node, backend, log, NewMetrics(reg), recorder)
	proxy.NodeRequired = client != nil
	proxy.BeforeFirstSync = func() { collectBeforeFirstSync(backend.PrefetchFound()) }
	proxy.AfterFirstSync = func() { settleMemory(log) }
	defer proxy.ServiceHealth.Close()

	var source cluster.Source
	if o.Manifests != "" {
		source = &cluster.ManifestSource{Dir: o.Manifests, Log: log}
		log.Info("starting nftproxy", logkey.Version, version, logkey.Node, node, logkey.Manifests, o.Manifests)
	} else {
		source = &cluster.KubeSource{Client: client, NodeName: node, Log: log, Resync: o.ConfigSyncPeriod}
		log.Info("starting nftproxy", logkey.Version, version, logkey.Node, node, logkey.Kubeconfig, o.Client.Kubeconfig)
		// kube-proxy's "birth cry".
		nodeEvent(recorder, node, corev1.EventTypeNormal, ReasonStarting, "")
	}
	// The source starts first: listing the cluster takes longest, and the proxy only keeps
	// what it delivers until its loop runs, after the kernel check.
	sourceCtx, stopSource := context.WithCancel(ctx)
	defer stopSource()
	errc := make(chan error, 1)
	go func() { errc <- source.Run(sourceCtx, proxy.Update) }()
	abort := func(err error) error {
		stopSource()
		<-errc
		return err
	}
	// A restarted proxy finds its tables in place: their endpoint maps, the bulk of what the
	// first (full) sync reads back, are read meanwhile too. The kernel check commits nothing,
	// so what is read stays current.
	backend.Prefetch(model.IPv4)
	backend.Prefetch(model.IPv6)
	if err := checkKernel(backend, log); err != nil {
		return abort(err)
	}
	closeServers, err := serveHTTP(o, reg, proxy, recorder)
	if err != nil {
		return abort(err)
	}
	defer closeServers()

	if err := proxy.Run(ctx); err != nil {
		return abort(err)
	}
	if err := <-errc; err != nil {
		return err
	}
	log.Info("stopping; rules stay in place")
	return nil
}

// checkKernel probes the kernel before the first sync and logs what it found. The probe also
// loads the kernel modules the rules need, a few at a time, where the first sync's one batch
// would make the kernel replay it once for each (seconds on Linux 6.1).
func checkKernel(backend *nft.Netlink, log *slog.Logger) error {
	start := time.Now()
	features, err := backend.Probe()
	if err != nil {
		return fmt.Errorf("kernel check: %w", err)
	}
	log.Info("kernel checked", logkey.Kernel, features.Kernel, logkey.Features, features.String(), logkey.Duration, time.Since(start))
	return nil
}

// newProxy returns the sync loop of this node, with its health check node port servers.
func newProxy(o *Options, node string, backend nft.Backend, log *slog.Logger, m *Metrics, recorder EventRecorder) *Proxy {
	proxy := &Proxy{
		Config:        &o.Config,
		NodeName:      node,
		Backend:       backend,
		Log:           log,
		MinSyncPeriod: o.MinSyncPeriod,
		SyncPeriod:    o.SyncPeriod,
		Metrics:       m,
		Conntrack:     conntrack.NewNetlink(""),
		Events:        recorder,
	}
	proxy.ServiceHealth = &ServiceHealthServers{
		NodeName: node,
		Log:      log,
		Events:   recorder,
		ProxyHealthy: func() bool {
			ok, _ := proxy.Health(time.Now())
			return ok
		},
	}
	if o.Config.NodePortsRestricted() {
		// As kube-proxy: health check node ports listen where NodePorts are served.
		proxy.ServiceHealth.Addresses = proxy.NodePortIPs
	}
	return proxy
}

// serveHTTP starts the metrics and the health servers the options ask for, and returns what
// closes them. A server that cannot listen is an error, and an event on the Node.
func serveHTTP(o *Options, reg *prometheus.Registry, proxy *Proxy, recorder EventRecorder) (func(), error) {
	var servers []*http.Server
	closeAll := func() {
		for _, srv := range servers {
			srv.Close()
		}
	}
	for _, s := range []struct {
		addr, flag, reason string
		handler            http.Handler
	}{
		{o.MetricsAddress, "--metrics-bind-address", ReasonFailedToStartMetricServer, MetricsHandler(reg, proxy, o.Profiling)},
		{o.HealthzAddress, "--healthz-bind-address", ReasonFailedToStartProxierHealthcheck, HealthHandler(proxy)},
	} {
		if s.addr == "" {
			continue
		}
		srv, err := serve(s.addr, s.flag, s.handler)
		if err != nil {
			nodeEvent(recorder, proxy.NodeName, corev1.EventTypeWarning, s.reason, err.Error())
			closeAll()
			return nil, err
		}
		servers = append(servers, srv)
	}
	return closeAll, nil
}

// nodeEvent records an event about this node, as kube-proxy's at start; rec may be nil.
func nodeEvent(rec EventRecorder, node, eventType, reason, note string) {
	if rec != nil {
		rec.Eventf(nodeRef(node), nil, eventType, reason, actionStart, "%s", note)
	}
}
