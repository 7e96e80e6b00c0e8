package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	gosync "sync"
	"time"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/internal/logkey"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
	"github.com/nftproxy/nftproxy/sync"
)

// Backoff bounds for retrying a failed sync.
const (
	minRetryDelay = 500 * time.Millisecond
	maxRetryDelay = 30 * time.Second
)

// Default periods, as kube-proxy's.
const (
	DefaultMinSyncPeriod = time.Second
	DefaultSyncPeriod    = 30 * time.Second
)

// Proxy is the sync loop: it converts the Services that the Deltas of a source name into
// changed Services for a sync.Syncer, and runs the sync.Syncer no more often than MinSyncPeriod, at
// least every SyncPeriod (to repair drift), and with exponential backoff after a failure.
type Proxy struct {
	Config   *Config
	NodeName string
	Backend  nft.Backend
	Log      *slog.Logger
	// LocalAddresses lists this node's interface addresses; nil means LocalAddresses().
	LocalAddresses func() ([]netip.Addr, error)
	// MinSyncPeriod is the least time between two syncs (0 syncs on every change).
	MinSyncPeriod time.Duration
	// SyncPeriod is the longest time between two syncs; each one checks the kernel's
	// tables against the last commit. 0 means DefaultSyncPeriod.
	SyncPeriod time.Duration
	// Metrics, when set, receive the figures of each sync.
	Metrics *Metrics
	// Conntrack, when set, deletes the conntrack entries of stale UDP and SCTP flows.
	Conntrack sync.Conntrack
	// ServiceHealth, when set, runs the health check servers of Services with
	// externalTrafficPolicy Local.
	ServiceHealth *ServiceHealthServers
	// NodeRequired is set when the source is the API server: while this node's Node object
	// is missing the node is not eligible for load-balanced traffic (kube-proxy's
	// nodeEligible is false without a Node). Manifests need not hold one.
	NodeRequired bool
	// Events, when set, receives the events about Services that cannot be proxied.
	Events EventRecorder
	// BeforeFirstSync, when set, is called before each sync until one succeeds, once the
	// changes are converted (the daemon collects the garbage of listing the cluster:
	// collectBeforeFirstSync).
	BeforeFirstSync func()
	// AfterFirstSync, when set, is called once, after the first sync that succeeds (the
	// daemon sets its garbage collector's steady target: settleMemory).
	AfterFirstSync func()

	mu gosync.Mutex
	// delta folds the Deltas not yet taken by a sync; its Store is nil before the first.
	delta   cluster.Delta
	deltaAt time.Time
	changed chan struct{}
	// conntrackDue is set by the periodic tick: the next sync reconciles conntrack.
	conntrackDue bool
	// nodeCfgs is the node configuration of the last sync, by family.
	nodeCfgs map[model.Family]model.NodeConfig

	syncer    *sync.Syncer
	converter cluster.Converter
	warned    map[string]bool
	// started is when Run started: EndpointSlice trigger times before it are ignored.
	started time.Time
	// synced is set by the first sync that succeeds.
	synced bool
	// health tracks, for health checks, the oldest change not yet programmed (zero when
	// none), the last successful sync and whether this node may receive load-balanced
	// traffic.
	health struct {
		gosync.Mutex
		pendingSince time.Time
		lastSuccess  time.Time
		nodeKnown    bool
		nodeEligible bool
	}
	// debug is what /debug/services reports.
	debug debugState
}

// families are the IP families the proxy programs, both in every commit.
var families = []model.Family{model.IPv4, model.IPv6}

// Health reports whether the proxy is healthy at now, for /livez: a sync has succeeded, and
// nothing waits to be programmed or the oldest waiting change is younger than twice the sync
// period (as kube-proxy's). It also returns the time of the last successful sync. Before the
// first sync the proxy is not healthy: no rule of the cluster's is in place yet.
func (p *Proxy) Health(now time.Time) (bool, time.Time) {
	p.health.Lock()
	defer p.health.Unlock()
	period := p.SyncPeriod
	if period <= 0 {
		period = DefaultSyncPeriod
	}
	ok := !p.health.lastSuccess.IsZero() &&
		(p.health.pendingSince.IsZero() || now.Sub(p.health.pendingSince) < 2*period)
	return ok, p.health.lastSuccess
}

// NodeEligible reports whether this node may receive load-balanced traffic, for /healthz:
// its Node object is neither being deleted (deletionTimestamp) nor tainted
// ToBeDeletedByClusterAutoscaler. Without a Node object it is eligible only when the source
// does not require one (NodeRequired).
func (p *Proxy) NodeEligible() bool {
	p.health.Lock()
	defer p.health.Unlock()
	if !p.health.nodeKnown {
		return !p.NodeRequired
	}
	return p.health.nodeEligible
}

// Update hands the proxy what a source delivered. It never blocks, and costs as much as the
// Services d names.
func (p *Proxy) Update(d cluster.Delta) {
	now := time.Now()
	p.mu.Lock()
	p.delta.Merge(d)
	p.deltaAt = now
	// Under mu: a sync taking the delta checks these changes out.
	p.Metrics.queued(families, d.Events)
	p.recordChanges(d.Events)
	p.mu.Unlock()
	p.health.Lock()
	if p.health.pendingSince.IsZero() {
		p.health.pendingSince = now
	}
	if d.Full || d.Node {
		node, known := cluster.FindNode(d.Store.Nodes(), p.NodeName)
		p.health.nodeKnown, p.health.nodeEligible = known, node.Eligible()
	}
	p.health.Unlock()
	select {
	case p.signal() <- struct{}{}:
	default:
	}
}

func (p *Proxy) signal() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed == nil {
		p.changed = make(chan struct{}, 1)
	}
	return p.changed
}

// Run syncs until ctx is done. Rules stay in the kernel when it returns.
func (p *Proxy) Run(ctx context.Context) error {
	p.mu.Lock()
	p.started = time.Now()
	p.mu.Unlock()
	changed := p.signal()
	period := p.SyncPeriod
	if period <= 0 {
		period = DefaultSyncPeriod
	}
	periodic := time.NewTicker(period)
	defer periodic.Stop()
	nextPeriodic := time.Now().Add(period)
	delay := minRetryDelay
	var retry <-chan time.Time
	var retryAt, lastSync time.Time
	for {
		if retry != nil {
			p.schedule(NextSyncRetry, retryAt)
		} else {
			p.schedule(NextSyncNone, nextPeriodic)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry:
		case <-periodic.C:
			p.conntrackDue = true
			nextPeriodic = time.Now().Add(period)
		}
		retry = nil
		// Rate limit: changes arriving meanwhile are folded into this sync.
		if wait := p.MinSyncPeriod - time.Since(lastSync); !lastSync.IsZero() && wait > 0 {
			p.schedule(NextSyncRateLimited, lastSync.Add(p.MinSyncPeriod))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		p.schedule(NextSyncNow, time.Time{})
		lastSync = time.Now()
		if err := p.SyncOnce(); err != nil {
			p.Log.Error("sync failed; will retry with a full sync", logkey.Error, err, logkey.RetryIn, delay)
			retry, retryAt = time.After(delay), time.Now().Add(delay)
			delay = min(2*delay, maxRetryDelay)
			continue
		}
		delay = minRetryDelay
		if p.syncer != nil && p.syncer.Pending() {
			// Stale chains are deleted by the next commit.
			wait := max(p.MinSyncPeriod, minRetryDelay)
			retry, retryAt = time.After(wait), time.Now().Add(wait)
		}
	}
}

// NodePortIPs returns the local addresses inside --nodeport-addresses as of the last sync,
// IPv4 first (none when that flag is not set: then every address accepts NodePorts).
func (p *Proxy) NodePortIPs() []netip.Addr {
	p.mu.Lock()
	cfgs := p.nodeCfgs
	p.mu.Unlock()
	return append(cfgs[model.IPv4].NodePortIPs(), cfgs[model.IPv6].NodePortIPs()...)
}

// SyncOnce converts the Services changed since the last sync, tells the syncer what changed
// and syncs. Before the first delivery it does nothing.
func (p *Proxy) SyncOnce() error {
	p.mu.Lock()
	store := p.delta.Store
	p.mu.Unlock()
	if store == nil {
		return nil
	}
	if p.syncer == nil {
		p.syncer = sync.NewSyncer(p.Backend, families...)
		p.syncer.Conntrack = p.Conntrack
	}
	if p.conntrackDue {
		// What changed while the daemon was down or a reconcile failed is cleaned here.
		p.syncer.RequestConntrackReconcile()
		p.conntrackDue = false
	}
	at, err := p.prepare()
	if err != nil {
		p.recordSync(time.Now(), 0, false, sync.SyncResult{}, err)
		return err
	}
	if !p.synced && p.BeforeFirstSync != nil {
		p.BeforeFirstSync()
	}
	start := time.Now()
	res, err := p.syncer.Sync()
	took := time.Since(start)
	p.recordSync(start.Add(took), took, true, res, err)
	p.reportSideEffects()
	if err != nil {
		p.Metrics.failed(families)
		return err
	}
	p.markSynced(at)
	p.Metrics.observe(families, res, took)
	p.logResult(res, took)
	if !p.synced {
		p.synced = true
		if p.AfterFirstSync != nil {
			p.AfterFirstSync()
		}
	}
	return nil
}

// prepare takes the Deltas delivered so far, converts the Services they name, works out this
// node's configuration, and hands both to the syncer and the health check servers. It returns
// when the last Delta it took arrived.
func (p *Proxy) prepare() (time.Time, error) {
	list := p.LocalAddresses
	if list == nil {
		list = LocalAddresses
	}
	addrs, err := list()
	if err != nil {
		return time.Time{}, err
	}
	p.mu.Lock()
	d, at, started := p.delta, p.deltaAt, p.started
	p.delta = cluster.Delta{Store: d.Store, Bad: d.Bad}
	p.Metrics.checkedOut()
	p.recordCheckout()
	p.mu.Unlock()
	p.converter.TriggerTimesAfter = started
	p.converter.Options = cluster.ConvertOptions{ServiceProxyName: p.Config.ServiceProxyName}
	changes := p.converter.Update(d)
	p.reportBad(append(slices.Clone(d.Bad), p.converter.Bad()...))
	node, _ := cluster.FindNode(d.Store.Nodes(), p.NodeName)
	cfgs := map[model.Family]model.NodeConfig{
		model.IPv4: p.Config.NodeConfig(model.IPv4, p.NodeName, node, addrs),
		model.IPv6: p.Config.NodeConfig(model.IPv6, p.NodeName, node, addrs),
	}
	p.mu.Lock()
	p.nodeCfgs = cfgs
	p.mu.Unlock()
	if p.ServiceHealth != nil {
		p.ServiceHealth.Update(changes)
	}
	p.syncer.SetNode(cfgs)
	p.syncer.Update(changes, at)
	p.syncer.AddTriggerTimes(p.converter.TriggerTimes())
	return at, nil
}

// reportSideEffects logs (and counts) what failed after the last commit: releasing session
// affinity and clearing conntrack entries. The rules are right either way.
func (p *Proxy) reportSideEffects() {
	for _, err := range p.syncer.AffinityErrors() {
		p.Log.Warn("releasing session affinity failed", logkey.Error, err)
	}
	for _, err := range p.syncer.ConntrackErrors() {
		// Counted by family in Metrics.observe.
		p.Log.Warn("deleting stale conntrack entries failed", logkey.Error, err)
	}
}

// markSynced records for the health checks that what was delivered up to at is programmed.
func (p *Proxy) markSynced(at time.Time) {
	p.mu.Lock()
	latest := p.deltaAt
	p.mu.Unlock()
	p.health.Lock()
	defer p.health.Unlock()
	switch {
	case latest.After(at):
		// A Delta arrived during the sync; it is what waits now.
		p.health.pendingSince = latest
	case !p.syncer.Pending():
		p.health.pendingSince = time.Time{}
	}
	p.health.lastSuccess = time.Now()
}

// logResult logs a sync that wrote something, or a full one.
func (p *Proxy) logResult(res sync.SyncResult, took time.Duration) {
	if res.DriftRepaired {
		p.Log.Warn("nftproxy's tables were changed behind its back; repaired them", logkey.Objects, res.Objects)
	}
	for _, err := range res.ReplacedUnread {
		p.Log.Error("replaced a table that could not be read back, session affinity entries included", logkey.Error, err)
	}
	if res.AffinityReleased > 0 {
		p.Log.Info("released session affinity of clients whose endpoint went away", logkey.Entries, res.AffinityReleased)
	}
	for _, r := range res.Conntrack {
		if r.Deleted > 0 {
			p.Log.Info("deleted stale "+ipFamily(r.Family)+" conntrack entries", logkey.Entries, r.Deleted, logkey.Duration, r.Took)
		}
	}
	if res.Objects > 0 || res.Full {
		attrs := []any{logkey.Full, res.Full, logkey.Services, res.Services, logkey.Objects, res.Objects}
		if res.Full {
			attrs = append(attrs, logkey.EndpointsRead, res.EndpointsRead)
		}
		p.Log.Info("synced rules", append(attrs, logkey.Duration, took, logkey.Node, p.NodeName)...)
	}
}

// reportBad logs each bad object once, until it is fixed or gone.
func (p *Proxy) reportBad(bad []cluster.BadObject) {
	now := make(map[string]bool, len(bad))
	for _, b := range bad {
		msg := b.String()
		now[msg] = true
		if !p.warned[msg] {
			p.Log.Warn("skipping object that cannot be turned into rules", logkey.Object, msg)
			p.badObjectEvent(b)
		}
	}
	p.warned = now
	p.recordSkipped(bad)
	if p.Metrics != nil {
		p.Metrics.SkippedObjects.Set(float64(len(bad)))
	}
}
