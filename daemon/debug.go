package daemon

import (
	"cmp"
	"net/http"
	"slices"
	"strings"
	gosync "sync"
	"time"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/sync"
)

// DebugServicesPath is where the metrics address serves DebugServices.
const DebugServicesPath = "/debug/services"

// Bounds of the lists in DebugServices, so that an answer stays small with any number of bad
// objects or pending changes; the rest is only counted.
const (
	maxSkippedListed = 100
	maxPendingListed = 100
)

// Values of SyncAttempt.Result, SyncAttempt.Kind and PendingChanges.NextSync.
const (
	ResultOK     = "ok"
	ResultFailed = "failed"

	KindFull    = "full"
	KindPartial = "partial"

	// NextSyncNone: nothing waits; the next sync is the periodic one (NextSyncAt).
	NextSyncNone = "none"
	// NextSyncNow: a sync is running, or starts as soon as the loop takes the change.
	NextSyncNow = "now"
	// NextSyncRateLimited: a sync waits for --min-sync-period to pass since the last one
	// (until NextSyncAt).
	NextSyncRateLimited = "rate-limited"
	// NextSyncRetry: the last sync failed, or left stale chains to delete; the next one is
	// at NextSyncAt (after a failure, with exponential backoff).
	NextSyncRetry = "retry"
)

// DebugServices is the answer of GET /debug/services on the metrics address: what the
// running daemon last did, what waits to be programmed, and which objects it skips and why.
// nftproxy commits both IP families in one transaction, so the families' last syncs share
// their time, result, duration and kind; the objects written are each family's own. Pending
// changes and skipped objects are the cluster's objects, before any family is known (a
// Service may be dual-stack), so they are not per family.
type DebugServices struct {
	// Node is the name of this node's Node object (--hostname-override).
	Node string `json:"node"`
	// CurrentTime is the daemon's clock when it answered; compare the other times with it.
	CurrentTime time.Time `json:"currentTime"`
	// Families holds the last sync of each family the daemon programs, IPv4 first.
	Families []FamilySync `json:"families"`
	// Pending is what the source delivered and the kernel does not hold yet.
	Pending PendingChanges `json:"pending"`
	// Skipped lists the objects that cannot be turned into rules, as of the last sync.
	Skipped SkippedObjects `json:"skipped"`
}

// FamilySync is the last sync of one IP family.
type FamilySync struct {
	// Family is "IPv4" or "IPv6", as the metrics' ip_family label.
	Family string `json:"family"`
	// LastSync is the last sync attempt, successful or not; absent before the first.
	LastSync *SyncAttempt `json:"lastSync,omitempty"`
	// LastSuccess is when the last successful sync finished; absent before the first.
	LastSuccess *time.Time `json:"lastSuccess,omitempty"`
	// ConsecutiveFailures counts the failed attempts since the last successful sync.
	ConsecutiveFailures int `json:"consecutiveFailures"`
}

// SyncAttempt is one sync: the rules built from a snapshot and committed in one
// transaction.
type SyncAttempt struct {
	// Time is when the attempt finished.
	Time time.Time `json:"time"`
	// Result is "ok" or "failed" (nothing was applied; the next sync is a full one).
	Result string `json:"result"`
	// Error says why it failed.
	Error string `json:"error,omitempty"`
	// DurationSeconds is the time the syncer took, as kubeproxy_sync_proxy_rules_duration_seconds.
	DurationSeconds float64 `json:"durationSeconds"`
	// Kind is "full" (the tables were read back from the kernel and compared whole) or
	// "partial" (only the changed Services were rebuilt); absent when the attempt failed
	// before it started (listing the node's addresses).
	Kind string `json:"kind,omitempty"`
	// Objects counts the kernel objects (tables, sets, chains, rules, elements) the commit
	// wrote into this family's table: 0 when nothing had changed, or when it failed.
	Objects int `json:"objects"`
	// Services counts the Services the sync rebuilt (every Service in a full sync).
	Services int `json:"services"`
}

// PendingChanges is what waits to be programmed.
type PendingChanges struct {
	// Since is when the oldest change not yet programmed arrived; absent when none waits.
	Since *time.Time `json:"since,omitempty"`
	// ServiceChanges and EndpointSliceChanges count the changes the source saw (informer
	// events; with manifests, objects added, changed or removed) that no sync has taken
	// yet, as kubeproxy_sync_proxy_rules_service_changes_pending and
	// ..._endpoint_changes_pending.
	ServiceChanges       int `json:"serviceChanges"`
	EndpointSliceChanges int `json:"endpointSliceChanges"`
	// Services names ("namespace/name") the Services a sync took but did not program: its
	// commit failed, and the next sync retries them. At most 100, sorted; ServicesOmitted
	// counts the others.
	Services        []string `json:"services,omitempty"`
	ServicesOmitted int      `json:"servicesOmitted,omitempty"`
	// NextSync says when the daemon syncs next: "none" (nothing waits: the periodic sync at
	// NextSyncAt), "now" (running, or about to), "rate-limited" (waiting for
	// --min-sync-period, until NextSyncAt) or "retry" (after a failure, with backoff, at
	// NextSyncAt).
	NextSync   string     `json:"nextSync"`
	NextSyncAt *time.Time `json:"nextSyncAt,omitempty"`
}

// SkippedObjects lists the objects skipped as bad input (nftproxy_skipped_objects).
type SkippedObjects struct {
	// Total counts them all.
	Total int `json:"total"`
	// Objects lists at most 100 of them, sorted by kind, namespace and name; Omitted counts
	// the others.
	Objects []SkippedObject `json:"objects"`
	Omitted int             `json:"omitted,omitempty"`
}

// SkippedObject is one object that cannot be turned into rules. Skipping it never affects
// any other object.
type SkippedObject struct {
	// Kind is Service, EndpointSlice or Node; with manifests also Document (one that does
	// not decode) or File (one that cannot be read).
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Reason says what is wrong with it, as the log line and the event say.
	Reason string `json:"reason"`
}

// debugState is what /debug/services reports, recorded by the sync loop as it goes. The
// loop owns the syncer; the handler reads only this.
type debugState struct {
	gosync.Mutex
	last        *SyncAttempt
	objects     map[model.Family]int
	lastSuccess time.Time
	failures    int
	// changes counts the source's changes since a sync last took a snapshot.
	changes cluster.Events
	// pendingServices lists (capped) the Services a failed sync left pending.
	pendingServices []string
	pendingTotal    int
	// next is what the loop waits for, and until when.
	next   string
	nextAt time.Time
	// skipped lists (capped) the bad objects of the last sync.
	skipped      []SkippedObject
	skippedTotal int
}

// schedule records what the sync loop waits for next, and until when (zero: no set time).
func (p *Proxy) schedule(next string, at time.Time) {
	p.debug.Lock()
	defer p.debug.Unlock()
	p.debug.next, p.debug.nextAt = next, at
}

// recordChanges records changes the source saw, not yet taken by a sync.
func (p *Proxy) recordChanges(ev cluster.Events) {
	p.debug.Lock()
	defer p.debug.Unlock()
	p.debug.changes.Services += ev.Services
	p.debug.changes.EndpointSlices += ev.EndpointSlices
}

// recordCheckout records that a sync took every change seen so far.
func (p *Proxy) recordCheckout() {
	p.debug.Lock()
	defer p.debug.Unlock()
	p.debug.changes = cluster.Events{}
}

// recordSync records a sync attempt that ended at end after took, with the syncer's result
// (res is meaningful only when started is set: the syncer ran).
func (p *Proxy) recordSync(end time.Time, took time.Duration, started bool, res sync.SyncResult, err error) {
	a := &SyncAttempt{Time: end, Result: ResultOK, DurationSeconds: took.Seconds(), Services: res.Services}
	if started {
		a.Kind = KindPartial
		if res.Full {
			a.Kind = KindFull
		}
	}
	var pending []model.ServiceName
	if p.syncer != nil {
		pending = p.syncer.PendingServices()
	}
	names := make([]string, 0, min(len(pending), maxPendingListed))
	for _, n := range pending[:min(len(pending), maxPendingListed)] {
		names = append(names, n.String())
	}
	p.debug.Lock()
	defer p.debug.Unlock()
	p.debug.pendingServices, p.debug.pendingTotal = names, len(pending)
	p.debug.last = a
	if err != nil {
		a.Result, a.Error = ResultFailed, err.Error()
		p.debug.objects = nil
		p.debug.failures++
		return
	}
	p.debug.objects = res.FamilyObjects
	p.debug.lastSuccess = end
	p.debug.failures = 0
}

// recordSkipped records the bad objects of a sync, sorted and capped.
func (p *Proxy) recordSkipped(bad []cluster.BadObject) {
	list := make([]SkippedObject, 0, len(bad))
	for _, b := range bad {
		o := SkippedObject{Kind: cmp.Or(b.Kind, "Object"), Namespace: b.Namespace, Name: b.Name}
		if b.Err != nil {
			o.Reason = b.Err.Error()
		}
		list = append(list, o)
	}
	slices.SortFunc(list, func(a, b SkippedObject) int {
		return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Namespace, b.Namespace),
			strings.Compare(a.Name, b.Name), strings.Compare(a.Reason, b.Reason))
	})
	list = slices.Clip(list[:min(len(list), maxSkippedListed)])
	p.debug.Lock()
	defer p.debug.Unlock()
	p.debug.skipped, p.debug.skippedTotal = list, len(bad)
}

// DebugServices returns what /debug/services answers at now.
func (p *Proxy) DebugServices(now time.Time) DebugServices {
	p.health.Lock()
	since := p.health.pendingSince
	p.health.Unlock()
	p.debug.Lock()
	defer p.debug.Unlock()
	d := &p.debug
	out := DebugServices{
		Node:        p.NodeName,
		CurrentTime: now,
		Pending: PendingChanges{
			ServiceChanges:       d.changes.Services,
			EndpointSliceChanges: d.changes.EndpointSlices,
			Services:             slices.Clone(d.pendingServices),
			ServicesOmitted:      d.pendingTotal - len(d.pendingServices),
			NextSync:             cmp.Or(d.next, NextSyncNone),
			NextSyncAt:           timePtr(d.nextAt),
		},
		Skipped: SkippedObjects{
			Total:   d.skippedTotal,
			Objects: append([]SkippedObject{}, d.skipped...),
			Omitted: d.skippedTotal - len(d.skipped),
		},
	}
	out.Pending.Since = timePtr(since)
	if !since.IsZero() && out.Pending.NextSync == NextSyncNone {
		// A change arrived and the loop has not taken it yet: it does at once.
		out.Pending.NextSync, out.Pending.NextSyncAt = NextSyncNow, nil
	}
	for _, fam := range families {
		fs := FamilySync{Family: ipFamily(fam), LastSuccess: timePtr(d.lastSuccess), ConsecutiveFailures: d.failures}
		if d.last != nil {
			a := *d.last
			a.Objects = d.objects[fam]
			fs.LastSync = &a
		}
		out.Families = append(out.Families, fs)
	}
	return out
}

// timePtr returns &t, or nil for the zero time (omitted from the JSON).
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// DebugServicesHandler serves DebugServices as JSON. It is read-only and cheap (a copy of
// a few bounded lists under a lock), so it is served on the metrics address always, unlike
// the runtime profiles.
func DebugServicesHandler(p *Proxy) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "only GET", http.StatusMethodNotAllowed)
			return
		}
		writeJSON(w, http.StatusOK, p.DebugServices(time.Now()))
	})
}
