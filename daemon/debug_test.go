package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/nft"
)

// badService is a Service default/NAME whose ClusterIP is not an address: it cannot be
// turned into rules.
func badService(name string) string {
	return `
apiVersion: v1
kind: Service
metadata: {namespace: default, name: ` + name + `}
spec: {clusterIP: 10.96.0.300, clusterIPs: [10.96.0.300], ports: [{name: http, protocol: TCP, port: 80}]}
---`
}

// withBad returns proxyObjects(endpoint) plus the bad Services and events.
func withBad(endpoint string, ev cluster.Events, bad ...string) cluster.Objects {
	objs := proxyObjects(endpoint)
	var docs strings.Builder
	for _, name := range bad {
		docs.WriteString(badService(name))
	}
	objs.Services = append(objs.Services, cluster.DecodeManifest("bad.yaml", []byte(docs.String())).Services...)
	objs.Events = ev
	return objs
}

// getDebugServices asks h for /debug/services as an operator's curl would, and decodes it.
func getDebugServices(t *testing.T, h http.Handler) DebugServices {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, DebugServicesPath, nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s answered %d (%s):\n%s", DebugServicesPath, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	var d DebugServices
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("GET %s: %v", DebugServicesPath, err)
	}
	return d
}

// lastSyncs summarizes the families' last syncs as "IPv4 ok full 12 objects, IPv6 ...".
func lastSyncs(d DebugServices) string {
	var out []string
	for _, f := range d.Families {
		s := f.Family + " never"
		if a := f.LastSync; a != nil {
			s = fmt.Sprintf("%s %s %s %d objects", f.Family, a.Result, a.Kind, a.Objects)
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// TestDebugServices drives a proxy through a failed sync, a successful full one and a
// partial one, and checks what /debug/services (on the metrics handler, without
// --profiling) says after each: the last sync per family with its result, kind and objects,
// what is pending, and the skipped object with its reason.
func TestDebugServices(t *testing.T) {
	fake := nft.NewFake(1)
	p := newTestProxy(fake)
	h := MetricsHandler(prometheus.NewRegistry(), p, false)

	d := getDebugServices(t, h)
	if d.Node != "node1" || lastSyncs(d) != "IPv4 never, IPv6 never" || d.Pending.NextSync != NextSyncNone ||
		d.Pending.Since != nil || d.Skipped.Total != 0 || d.Skipped.Objects == nil {
		t.Errorf("before anything: %+v", d)
	}

	p.Update(cluster.FullDelta(withBad("10.244.1.2", cluster.Events{Services: 2, EndpointSlices: 1}, "broken")))
	d = getDebugServices(t, h)
	if d.Pending.ServiceChanges != 2 || d.Pending.EndpointSliceChanges != 1 || d.Pending.Since == nil || d.Pending.NextSync != NextSyncNow {
		t.Errorf("a snapshot not yet synced: pending %+v, want 2 Service and 1 EndpointSlice changes since now, sync now", d.Pending)
	}

	fake.FailRate = 1
	if err := p.SyncOnce(); err == nil {
		t.Fatal("the injected failure was not reported")
	}
	d = getDebugServices(t, h)
	if got := lastSyncs(d); got != "IPv4 failed full 0 objects, IPv6 failed full 0 objects" {
		t.Errorf("after a failed sync the last syncs are %q", got)
	}
	if f := d.Families[0]; f.LastSync.Error == "" || f.LastSuccess != nil || f.ConsecutiveFailures != 1 {
		t.Errorf("after a failed sync: %+v, want its error, no success and 1 failure", f)
	}
	if pe := d.Pending; pe.ServiceChanges != 0 || strings.Join(pe.Services, " ") != "default/web" || pe.Since == nil {
		t.Errorf("after a failed sync: pending %+v, want the changes taken and default/web waiting", pe)
	}
	want := []SkippedObject{{Kind: "Service", Namespace: "default", Name: "broken", Reason: `spec.clusterIPs: ParseAddr("10.96.0.300"): IPv4 field has value >255`}}
	if fmt.Sprint(d.Skipped.Objects) != fmt.Sprint(want) || d.Skipped.Total != 1 || d.Skipped.Omitted != 0 {
		t.Errorf("skipped: %+v, want %+v", d.Skipped, want)
	}

	fake.FailRate = 0
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	d = getDebugServices(t, h)
	for _, f := range d.Families {
		// The Fake held no table: the full sync wrote both whole.
		if a := f.LastSync; a.Result != ResultOK || a.Kind != KindFull || a.Objects == 0 || a.Error != "" ||
			f.LastSuccess == nil || !f.LastSuccess.Equal(a.Time) || f.ConsecutiveFailures != 0 {
			t.Errorf("after the first successful sync, %s: %+v, last sync %+v", f.Family, f, a)
		}
	}
	if pe := d.Pending; pe.Since != nil || pe.Services != nil || pe.NextSync != NextSyncNone {
		t.Errorf("after a successful sync: pending %+v, want nothing", pe)
	}

	p.Update(cluster.FullDelta(withBad("10.244.1.3", cluster.Events{EndpointSlices: 1}, "broken")))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	d = getDebugServices(t, h)
	// The endpoint moved: its slot (and hairpin pair) changed in the IPv4 table only.
	if got := lastSyncs(d); got != "IPv4 ok partial 4 objects, IPv6 ok partial 0 objects" {
		t.Errorf("after an endpoint moved the last syncs are %q", got)
	}
	if d.Families[0].LastSync.Services != 1 {
		t.Errorf("an endpoint change rebuilt %d Services, want 1", d.Families[0].LastSync.Services)
	}
}

// TestDebugServicesBounded checks that the skipped list stays short however many objects are
// bad: the first 100 by name, and the count of the others.
func TestDebugServicesBounded(t *testing.T) {
	p := newTestProxy(nft.NewFake(1))
	var names []string
	for i := range 250 {
		names = append(names, fmt.Sprintf("bad-%03d", i))
	}
	p.Update(cluster.FullDelta(withBad("10.244.1.2", cluster.Events{}, names...)))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	d := getDebugServices(t, DebugServicesHandler(p))
	s := d.Skipped
	if s.Total != 250 || len(s.Objects) != 100 || s.Omitted != 150 || s.Objects[0].Name != "bad-000" || s.Objects[99].Name != "bad-099" {
		t.Errorf("250 bad Services: total %d, %d listed (%s .. %s), %d omitted; want 250, 100 (bad-000 .. bad-099), 150",
			s.Total, len(s.Objects), s.Objects[0].Name, s.Objects[len(s.Objects)-1].Name, s.Omitted)
	}
	rec := httptest.NewRecorder()
	DebugServicesHandler(p).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, DebugServicesPath, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST %s answered %d, want 405", DebugServicesPath, rec.Code)
	}
}

// TestDebugServicesSchedule runs the sync loop (--min-sync-period 1s) and checks what
// /debug/services says the next sync is: a retry 0.5 s after a failure, then rate-limited
// until 1 s after the last attempt, then none but the periodic one, --sync-period later.
func TestDebugServicesSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := nft.NewFake(1)
		fake.SetFailRate(1)
		p := newTestProxy(fake)
		p.MinSyncPeriod = time.Second
		p.SyncPeriod = time.Minute
		h := DebugServicesHandler(p)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		start := time.Now()
		go func() { _ = p.Run(ctx) }()
		p.Update(cluster.FullDelta(proxyObjects("10.244.1.2")))
		synctest.Wait()
		check := func(when, next string, at time.Duration) {
			t.Helper()
			pe := getDebugServices(t, h).Pending
			got := "no time"
			if pe.NextSyncAt != nil {
				got = pe.NextSyncAt.Sub(start).String()
			}
			if pe.NextSync != next || got != at.String() && !(at == 0 && got == "no time") {
				t.Errorf("%s: next sync %s at %s after the start, want %s at %v", when, pe.NextSync, got, next, at)
			}
		}
		check("after the first sync failed", NextSyncRetry, 500*time.Millisecond)
		fake.SetFailRate(0)
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		check("at the retry, 0.5 s after the last attempt", NextSyncRateLimited, time.Second)
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		check("after the retry succeeded", NextSyncNone, time.Minute)
		if f := getDebugServices(t, h).Families[0]; f.LastSync.Result != ResultOK || f.ConsecutiveFailures != 0 {
			t.Errorf("after the retry succeeded: last sync %+v, %d consecutive failures", f.LastSync, f.ConsecutiveFailures)
		}
	})
}
