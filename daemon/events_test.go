package daemon

import (
	"testing"

	"k8s.io/client-go/tools/events"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/nft"
)

// TestBadServiceEvent checks that a Service skipped as bad gets one Warning event naming the
// reason, not one per sync, and a new one when the problem comes back after a fix.
func TestBadServiceEvent(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	p := newTestProxy(nft.NewFake(1))
	p.Events = rec
	bad := func() cluster.Objects {
		objs := proxyObjects("10.244.1.2")
		objs.Services[0].Spec.Ports[0].Protocol = "ICMP"
		return objs
	}
	sync := func(objs cluster.Objects) {
		t.Helper()
		p.Update(cluster.FullDelta(objs))
		if err := p.SyncOnce(); err != nil {
			t.Fatal(err)
		}
	}
	want := `Warning InvalidService Service is not proxied: spec.ports[0]: unknown protocol "ICMP"`
	sync(bad())
	sync(bad())
	sync(proxyObjects("10.244.1.2"))
	sync(bad())
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	if len(got) != 2 || got[0] != want || got[1] != want {
		t.Errorf("events: %q, want twice %q (first problem, and its return after a fix)", got, want)
	}
}
