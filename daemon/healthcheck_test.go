package daemon_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	gosync "sync"
	"sync/atomic"
	"testing"

	"github.com/nftproxy/nftproxy/daemon"
	"github.com/nftproxy/nftproxy/model"
)

// hcListener hands out loopback listeners on random ports and remembers which test port each
// stands for, and which addresses were asked for.
type hcListener struct {
	mu    gosync.Mutex
	addrs map[uint16]string
	asked []string
}

func (l *hcListener) listen(addr string) (net.Listener, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.addrs[uint16(port)] = ln.Addr().String()
	l.asked = append(l.asked, addr)
	l.mu.Unlock()
	return ln, nil
}

func (l *hcListener) get(t *testing.T, port uint16) (int, map[string]any, error) {
	t.Helper()
	l.mu.Lock()
	addr, ok := l.addrs[port]
	l.mu.Unlock()
	if !ok {
		t.Fatalf("no server was ever started on port %d", port)
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get("http://" + addr + "/")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("port %d: body %q is not JSON: %v", port, b, err)
	}
	return resp.StatusCode, body, nil
}

func lbLocal(name string, hcPort uint16, eps ...model.Endpoint) *model.Service {
	return &model.Service{
		Name: model.ServiceName{Namespace: "default", Name: name}, Type: model.LoadBalancer,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}, ExternalPolicyLocal: true,
		HealthCheckNodePort: hcPort,
		Ports: []model.ServicePort{
			{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080, Endpoints: eps},
			{Name: "https", Protocol: model.TCP, Port: 443, NodePort: 30443, Endpoints: eps},
		},
	}
}

func ep(addr, node string, ready, terminating bool) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddr(addr), Port: 8080, Ready: ready, Serving: ready || terminating,
		Terminating: terminating, NodeName: node}
}

// TestServiceHealthServers: a server per LoadBalancer Service with externalTrafficPolicy Local
// answers 200 with kube-proxy's JSON body while this node has a ready endpoint and the proxy is
// healthy, 503 otherwise; servers follow the Services.
func TestServiceHealthServers(t *testing.T) {
	l := &hcListener{addrs: map[uint16]string{}}
	var unhealthy atomic.Bool
	h := &daemon.ServiceHealthServers{NodeName: "node1", Listen: l.listen, Log: slog.New(slog.DiscardHandler),
		ProxyHealthy: func() bool { return !unhealthy.Load() }}
	defer h.Close()
	web := model.ServiceName{Namespace: "default", Name: "web"}
	drain := model.ServiceName{Namespace: "default", Name: "drain"}
	cluster := model.ServiceName{Namespace: "default", Name: "cluster-policy"}
	clusterSvc := lbLocal("cluster-policy", 32003, ep("10.244.1.3", "node1", true, false))
	clusterSvc.ExternalPolicyLocal = false
	h.Update(map[model.ServiceName]*model.Service{
		// Two ready local endpoints (one listed in both ports), one elsewhere.
		web: lbLocal("web", 32001, ep("10.244.1.1", "node1", true, false), ep("10.244.1.2", "node1", true, false),
			ep("10.244.2.1", "node2", true, false)),
		// Only a terminating local endpoint: it does not count.
		drain:   lbLocal("drain", 32002, ep("10.244.1.9", "node1", false, true), ep("10.244.2.9", "node2", true, false)),
		cluster: clusterSvc,
	})
	if got := h.Ports(); len(got) != 2 || got[32001] != web || got[32002] != drain {
		t.Fatalf("servers on %v, want 32001 (web) and 32002 (drain) only", got)
	}

	check := func(row string, port uint16, wantCode int, wantLocal int, wantHealthy bool) {
		t.Helper()
		code, body, err := l.get(t, port)
		if err != nil {
			t.Fatalf("%s: GET: %v", row, err)
		}
		svc, _ := body["service"].(map[string]any)
		if code != wantCode || body["localEndpoints"] != float64(wantLocal) || body["serviceProxyHealthy"] != wantHealthy ||
			svc["namespace"] != "default" || svc["name"] == "" {
			t.Errorf("%s: %d %v, want %d with localEndpoints %d, serviceProxyHealthy %t", row, code, body, wantCode, wantLocal, wantHealthy)
		}
	}
	check("web", 32001, http.StatusOK, 2, true)
	check("drain (terminating only)", 32002, http.StatusServiceUnavailable, 0, true)

	unhealthy.Store(true)
	check("web, proxy unhealthy", 32001, http.StatusServiceUnavailable, 2, false)
	unhealthy.Store(false)

	// The local endpoints go; then the Service moves to another port; then it is deleted.
	h.Update(map[model.ServiceName]*model.Service{web: lbLocal("web", 32001, ep("10.244.2.1", "node2", true, false))})
	check("web without local endpoints", 32001, http.StatusServiceUnavailable, 0, true)
	h.Update(map[model.ServiceName]*model.Service{web: lbLocal("web", 32011, ep("10.244.1.1", "node1", true, false))})
	check("web on its new port", 32011, http.StatusOK, 1, true)
	if _, _, err := l.get(t, 32001); err == nil {
		t.Error("the server on web's old port still answers")
	}
	h.Update(map[model.ServiceName]*model.Service{web: nil, drain: nil})
	if got := h.Ports(); len(got) != 0 {
		t.Errorf("servers on %v after the Services went, want none", got)
	}
	if _, _, err := l.get(t, 32011); err == nil {
		t.Error("the server of a deleted Service still answers")
	}
}

// TestServiceHealthServersBusyPort: a port that cannot be listened on is retried on the
// next update.
func TestServiceHealthServersBusyPort(t *testing.T) {
	l := &hcListener{addrs: map[uint16]string{}}
	fail := true
	h := &daemon.ServiceHealthServers{NodeName: "node1", Log: slog.New(slog.DiscardHandler),
		Listen: func(addr string) (net.Listener, error) {
			if fail {
				return nil, &net.OpError{Op: "listen", Err: io.ErrClosedPipe}
			}
			return l.listen(addr)
		}}
	defer h.Close()
	web := model.ServiceName{Namespace: "default", Name: "web"}
	h.Update(map[model.ServiceName]*model.Service{web: lbLocal("web", 32001, ep("10.244.1.1", "node1", true, false))})
	if len(h.Ports()) != 0 {
		t.Fatal("a server runs although listening failed")
	}
	fail = false
	h.Update(nil)
	if got := h.Ports(); got[32001] != web {
		t.Fatalf("servers on %v after listening works again, want 32001", got)
	}
	code, _, err := l.get(t, 32001)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET: %d, %v; want 200", code, err)
	}
}

// TestServiceHealthServersAddresses: with Addresses set (--nodeport-addresses), a server
// listens on each of those addresses, and on none when there is none; without it, on every
// address.
func TestServiceHealthServersAddresses(t *testing.T) {
	web := model.ServiceName{Namespace: "default", Name: "web"}
	svc := lbLocal("web", 32002, ep("10.244.1.1", "node1", true, false))
	for _, tc := range []struct {
		name  string
		addrs func() []netip.Addr
		want  []string
	}{
		{"every address", nil, []string{":32002"}},
		{"node port addresses", func() []netip.Addr {
			return []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}
		}, []string{"192.0.2.10:32002", "[2001:db8::10]:32002"}},
		{"no matching address", func() []netip.Addr { return nil }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &hcListener{addrs: map[uint16]string{}}
			h := &daemon.ServiceHealthServers{NodeName: "node1", Log: slog.New(slog.DiscardHandler),
				Addresses: tc.addrs, Listen: l.listen}
			defer h.Close()
			h.Update(map[model.ServiceName]*model.Service{web: svc})
			if !slices.Equal(l.asked, tc.want) {
				t.Errorf("listened on %q, want %q", l.asked, tc.want)
			}
			if running := h.Ports()[32002] == web; running != (tc.want != nil) {
				t.Errorf("server running: %v, want %v", running, tc.want != nil)
			}
		})
	}
}
