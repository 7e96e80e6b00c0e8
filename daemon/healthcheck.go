package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	gosync "sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftproxy/nftproxy/internal/logkey"
	"github.com/nftproxy/nftproxy/model"
)

// ServiceHealthServers runs the health check servers of LoadBalancer Services with
// externalTrafficPolicy Local: one HTTP server per spec.healthCheckNodePort, answering every
// GET with 200 while this node has a ready endpoint of the Service and the proxy is healthy,
// and 503 otherwise, so that load balancers send external traffic only to nodes that can take
// it. Servers start and stop as such Services come and go.
type ServiceHealthServers struct {
	// NodeName is this node's name: endpoints with it are local.
	NodeName string
	// ProxyHealthy reports the proxy's own health (nil: always healthy).
	ProxyHealthy func() bool
	// Addresses, when set, gives the addresses a server listens on when it starts, as
	// kube-proxy's listen on --nodeport-addresses; nil means every address of both families.
	Addresses func() []netip.Addr
	// Listen opens a server's listener on addr ("host:port", or ":port" for every address);
	// nil means net.Listen("tcp", addr).
	Listen func(addr string) (net.Listener, error)
	Log    *slog.Logger
	// Events, when set, receives a Warning on a Service whose server cannot start (once per
	// distinct error, as long as it lasts).
	Events EventRecorder

	mu gosync.Mutex
	// failed holds the error last reported for each Service whose server could not start.
	failed map[model.ServiceName]string
	// services are the Services that want a server, by name.
	services map[model.ServiceName]hcService
	// servers are the running servers, by port.
	servers map[uint16]*hcServer
}

// hcService is what a health check server needs to know of its Service.
type hcService struct {
	port  uint16
	local int
}

// hcServer is one running health check server.
type hcServer struct {
	name model.ServiceName
	srv  *http.Server
	// local is the number of ready endpoints on this node, read by the handler.
	mu    gosync.Mutex
	local int
}

// want returns the port and local endpoint count of svc if it needs a health check server.
func (h *ServiceHealthServers) want(svc *model.Service) (hcService, bool) {
	if svc == nil || svc.Type != model.LoadBalancer || !svc.ExternalPolicyLocal || svc.HealthCheckNodePort == 0 {
		return hcService{}, false
	}
	return hcService{port: svc.HealthCheckNodePort, local: LocalReadyEndpoints(svc, h.NodeName)}, true
}

// LocalReadyEndpoints counts the ready endpoints of svc on node: distinct addresses, per
// family, the larger count of the two (a dual-stack pod has one address of each). Endpoints
// that are only serving while terminating do not count: a load balancer should move new
// traffic away from a node whose endpoints are going.
func LocalReadyEndpoints(svc *model.Service, node string) int {
	if node == "" {
		return 0
	}
	seen := map[netip.Addr]bool{}
	var v4, v6 int
	for _, p := range svc.Ports {
		for _, ep := range p.Endpoints {
			if !ep.Ready || ep.NodeName != node || seen[ep.Addr] {
				continue
			}
			seen[ep.Addr] = true
			if ep.Addr.Is4() {
				v4++
			} else {
				v6++
			}
		}
	}
	return max(v4, v6)
}

// Update applies changed Services (nil for those gone): servers start, stop or move to a
// new port, and local endpoint counts change. A server that cannot listen is logged and tried
// again on the next Update.
func (h *ServiceHealthServers) Update(changes map[model.ServiceName]*model.Service) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.services == nil {
		h.services = map[model.ServiceName]hcService{}
		h.servers = map[uint16]*hcServer{}
	}
	for name, svc := range changes {
		if want, ok := h.want(svc); ok {
			h.services[name] = want
		} else {
			delete(h.services, name)
		}
	}
	h.reconcile()
}

// reportFailure records a Warning event, as kube-proxy does, when a Service's server fails
// to start with an error not reported before.
func (h *ServiceHealthServers) reportFailure(name model.ServiceName, port uint16, err error) {
	if h.Events == nil || h.failed[name] == err.Error() {
		return
	}
	if h.failed == nil {
		h.failed = map[model.ServiceName]string{}
	}
	h.failed[name] = err.Error()
	// Without a UID, as kube-proxy's (the model does not keep it).
	h.Events.Eventf(serviceRef(name.Namespace, name.Name, ""), nil, corev1.EventTypeWarning,
		ReasonFailedToStartServiceHealthcheck, actionListen,
		"node %s failed to start healthcheck %q on port %d: %v", h.NodeName, name.String(), port, err)
}

// reconcile starts, stops and updates servers to match h.services.
func (h *ServiceHealthServers) reconcile() {
	byPort := make(map[uint16]model.ServiceName, len(h.services))
	for name, s := range h.services {
		if other, taken := byPort[s.port]; taken {
			// Two Services cannot share a healthCheckNodePort (the API server allocates
			// them); if they claim one anyway, the first by name keeps it.
			if model.CompareNames(other, name) < 0 {
				continue
			}
		}
		byPort[s.port] = name
	}
	for name := range h.failed {
		if _, ok := h.services[name]; !ok {
			delete(h.failed, name)
		}
	}
	for port, srv := range h.servers {
		if name, ok := byPort[port]; !ok || name != srv.name {
			h.stop(port, srv)
		}
	}
	for port, name := range byPort {
		srv := h.servers[port]
		if srv == nil {
			var err error
			if srv, err = h.start(port, name); err != nil {
				h.Log.Error("cannot serve health checks for Service", logkey.Service, name.String(), logkey.Port, port, logkey.Error, err)
				h.reportFailure(name, port, err)
				continue
			}
			delete(h.failed, name)
			h.servers[port] = srv
		}
		srv.mu.Lock()
		srv.local = h.services[name].local
		srv.mu.Unlock()
	}
}

func (h *ServiceHealthServers) start(port uint16, name model.ServiceName) (*hcServer, error) {
	listen := h.Listen
	if listen == nil {
		listen = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	}
	addrs := []string{":" + strconv.Itoa(int(port))}
	if h.Addresses != nil {
		addrs = nil
		for _, a := range h.Addresses() {
			addrs = append(addrs, netip.AddrPortFrom(a, port).String())
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("listen on health check node port %d: no local address matches --nodeport-addresses", port)
		}
	}
	var lns []net.Listener
	for _, addr := range addrs {
		ln, err := listen(addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen on health check node port %s: %w", addr, err)
		}
		lns = append(lns, ln)
	}
	s := &hcServer{name: name}
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		local := s.local
		s.mu.Unlock()
		h.respond(w, name, local)
	}), ReadHeaderTimeout: 5 * time.Second}
	for _, ln := range lns {
		go func() {
			if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				h.Log.Error("health check server stopped", logkey.Service, name.String(), logkey.Address, ln.Addr().String(), logkey.Error, err)
			}
		}()
	}
	h.Log.Info("serving health checks for Service", logkey.Service, name.String(), logkey.Addresses, addrs)
	return s, nil
}

func (h *ServiceHealthServers) stop(port uint16, s *hcServer) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	delete(h.servers, port)
	h.Log.Info("stopped health checks for Service", logkey.Service, s.name.String(), logkey.Port, port)
}

// Close stops every server.
func (h *ServiceHealthServers) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		h.stop(port, s)
	}
}

// Ports returns the ports of the running servers.
func (h *ServiceHealthServers) Ports() map[uint16]model.ServiceName {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[uint16]model.ServiceName, len(h.servers))
	for port, s := range h.servers {
		out[port] = s.name
	}
	return out
}

// serviceHealth is the JSON body of a health check answer, as kube-proxy's.
type serviceHealth struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (h *ServiceHealthServers) respond(w http.ResponseWriter, name model.ServiceName, local int) {
	var body serviceHealth
	body.Service.Namespace, body.Service.Name = name.Namespace, name.Name
	body.LocalEndpoints = local
	body.ServiceProxyHealthy = h.ProxyHealthy == nil || h.ProxyHealthy()
	// Load balancers that weigh nodes by it (as with kube-proxy) see the local count.
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(local))
	writeJSON(w, statusFor(local > 0 && body.ServiceProxyHealthy), body)
}
