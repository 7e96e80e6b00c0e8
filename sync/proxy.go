package sync

import (
	"context"
	"log/slog"
	"net/netip"
	gosync "sync"
	"time"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// Log keys of the sync loop.
const (
	logKeyServices = "services"
	logKeyDuration = "duration"
	logKeyRetryIn  = "retryIn"
	logKeyNode     = "node"
)

// Backoff bounds for retrying a failed commit.
const (
	minRetryDelay = 500 * time.Millisecond
	maxRetryDelay = 30 * time.Second
)

// Proxy keeps nftproxy's tables in the kernel in line with the latest snapshot of objects
// that a source delivered. Sources call Update; Run commits the desired rulesets, retrying
// with exponential backoff when a commit fails, and skips commits that would change nothing.
type Proxy struct {
	Config   *Config
	NodeName string
	Backend  nft.Backend
	Log      *slog.Logger
	// LocalAddresses lists this node's interface addresses; nil means LocalAddresses().
	LocalAddresses func() ([]netip.Addr, error)

	mu      gosync.Mutex
	objs    *Objects
	changed chan struct{}

	// committed holds the rendered tables of the last successful commit, by family.
	committed map[model.Family]string
	// warned holds the objects already reported as bad, so each is reported once while it
	// stays bad.
	warned map[string]bool
}

// Update hands the proxy a new full snapshot of objects. It never blocks. The source has
// already reported the objects it could not decode.
func (p *Proxy) Update(objs Objects) {
	p.mu.Lock()
	p.objs = &objs
	p.mu.Unlock()
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

// Run syncs after every update until ctx is done. Rules stay in the kernel when it returns.
func (p *Proxy) Run(ctx context.Context) error {
	changed := p.signal()
	delay := minRetryDelay
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry:
		}
		retry = nil
		if err := p.SyncOnce(); err != nil {
			p.Log.Error("sync failed; will retry", logKeyError, err, logKeyRetryIn, delay)
			retry = time.After(delay)
			delay = min(2*delay, maxRetryDelay)
			continue
		}
		delay = minRetryDelay
	}
}

// SyncOnce builds the rulesets of the latest snapshot and commits them if they differ from
// the last commit. Before the first snapshot it does nothing.
func (p *Proxy) SyncOnce() error {
	p.mu.Lock()
	objs := p.objs
	p.mu.Unlock()
	if objs == nil {
		return nil
	}
	start := time.Now()
	list := p.LocalAddresses
	if list == nil {
		list = LocalAddresses
	}
	addrs, err := list()
	if err != nil {
		return err
	}
	rulesets, bad := p.Config.Desired(*objs, p.NodeName, addrs)
	p.reportBad(bad)
	rendered := map[model.Family]string{}
	same := p.committed != nil
	for _, rs := range rulesets {
		rendered[rs.Family] = model.Render(rs)
		same = same && rendered[rs.Family] == p.committed[rs.Family]
	}
	if same {
		return nil
	}
	if err := p.Backend.Replace(rulesets...); err != nil {
		return err
	}
	p.committed = rendered
	p.Log.Info("synced rules", logKeyServices, len(objs.Services), logKeyDuration, time.Since(start), logKeyNode, p.NodeName)
	return nil
}

// reportBad logs each bad object once, until it is fixed or gone.
func (p *Proxy) reportBad(bad []BadObject) {
	now := make(map[string]bool, len(bad))
	for _, b := range bad {
		msg := b.String()
		now[msg] = true
		if !p.warned[msg] {
			p.Log.Warn("skipping object that cannot be turned into rules", logKeyObject, msg)
		}
	}
	p.warned = now
}
