package sync

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

func proxyObjects(endpoint string) Objects {
	ready := true
	name, port := "http", int32(8080)
	return Objects{
		Services: []*corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
				Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
		}},
		EndpointSlices: []*discoveryv1.EndpointSlice{{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{endpoint}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		}},
	}
}

func TestProxySyncOnce(t *testing.T) {
	fake := nft.NewFake(1)
	p := &Proxy{
		Config:         &Config{},
		NodeName:       "node1",
		Backend:        fake,
		Log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		LocalAddresses: func() ([]netip.Addr, error) { return nil, nil },
	}
	if err := p.SyncOnce(); err != nil || fake.Calls != 0 {
		t.Fatalf("before any snapshot: err=%v, %d commits; want nothing", err, fake.Calls)
	}

	p.Update(proxyObjects("10.244.1.2"))
	fake.FailRate = 1
	if err := p.SyncOnce(); err == nil {
		t.Fatal("a failed commit was not reported")
	}
	if got := fake.Render(model.IPv4); got != "" {
		t.Fatalf("a failed commit changed the tables:\n%s", got)
	}

	fake.FailRate = 0
	if err := p.SyncOnce(); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got := fake.Render(model.IPv4); !strings.Contains(got, "dnat to 10.244.1.2:8080") {
		t.Fatalf("after the retry the table has no DNAT to the endpoint:\n%s", got)
	}
	calls := fake.Calls
	if err := p.SyncOnce(); err != nil || fake.Calls != calls {
		t.Errorf("a sync with nothing changed committed again (err=%v, commits %d -> %d)", err, calls, fake.Calls)
	}

	p.Update(proxyObjects("10.244.1.3"))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	if got := fake.Render(model.IPv4); !strings.Contains(got, "dnat to 10.244.1.3:8080") || strings.Contains(got, "10.244.1.2") {
		t.Errorf("after the endpoint moved the table is:\n%s", got)
	}
}
