package cluster

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftproxy/nftproxy/model"
)

// Test conventions: service CIDRs 10.96.0.0/16 and fd00:10:96::/112, pod CIDRs 10.244.0.0/16
// and fd00:10:244::/64, nodes node-a (192.168.0.2) and node-b, namespace "default".

func ptr[T any](v T) *T { return &v }

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, addr(s))
	}
	return out
}

// service builds a ClusterIP Service in "default" with the given cluster IPs and ports.
func service(name string, clusterIPs []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIPs: clusterIPs, Ports: ports},
	}
	if len(clusterIPs) > 0 {
		s.Spec.ClusterIP = clusterIPs[0]
	}
	return s
}

func with(s *corev1.Service, f func(*corev1.Service)) *corev1.Service { f(s); return s }

func svcPort(name string, proto corev1.Protocol, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(port)}
}

// slice builds an EndpointSlice in "default" for Service svc.
func slice(name, svc string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func slicePortOf(name *string, proto *corev1.Protocol, port *int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: name, Protocol: proto, Port: port}
}

// sp is a named TCP slice port.
func sp(name string, port int32) discoveryv1.EndpointPort {
	return slicePortOf(ptr(name), ptr(corev1.ProtocolTCP), ptr(port))
}

// ep is an endpoint with nil conditions (ready) on node.
func ep(ip, node string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}}
	if node != "" {
		e.NodeName = ptr(node)
	}
	return e
}

func withConditions(e discoveryv1.Endpoint, ready, serving, terminating *bool) discoveryv1.Endpoint {
	e.Conditions = discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	return e
}

// ready is a model endpoint whose conditions are all "ready".
func ready(ip string, port uint16, node string) model.Endpoint {
	return model.Endpoint{Addr: addr(ip), Port: port, Ready: true, Serving: true, NodeName: node}
}

func name(n string) model.ServiceName { return model.ServiceName{Namespace: "default", Name: n} }

func TestConvert(t *testing.T) {
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	webSvc := service("web", []string{"10.96.0.10"}, svcPort("", "", 80))
	webModel := model.Service{Name: name("web"), ClusterIPs: addrs("10.96.0.10"),
		Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80}}}

	tests := []struct {
		name    string
		objs    Objects
		opts    ConvertOptions
		want    []model.Service
		wantBad []string // BadObject "Kind ns/name" prefixes
	}{{
		name: "clusterip single port",
		objs: Objects{
			Services: []*corev1.Service{webSvc},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-1", "web", v4, []discoveryv1.EndpointPort{slicePortOf(nil, nil, ptr[int32](8080))},
					ep("10.244.2.6", "node-b"), ep("10.244.1.5", "node-a")),
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("10.96.0.10"),
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				ready("10.244.1.5", 8080, "node-a"), ready("10.244.2.6", 8080, "node-b")}}}}},
	}, {
		name: "multi-port named ports matched by name across two slices",
		objs: Objects{
			Services: []*corev1.Service{service("dns", []string{"10.96.0.53"},
				svcPort("dns", udp, 53), svcPort("dns-tcp", tcp, 53), svcPort("metrics", tcp, 9153))},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("dns-b", "dns", v4, []discoveryv1.EndpointPort{
					slicePortOf(ptr("dns"), ptr(udp), ptr[int32](5353)), sp("dns-tcp", 5353), sp("metrics", 9153)},
					ep("10.244.2.7", "")),
				slice("dns-a", "dns", v4, []discoveryv1.EndpointPort{
					slicePortOf(ptr("dns"), ptr(udp), ptr[int32](53)), sp("dns-tcp", 53),
					sp("dns", 1053)}, // TCP "dns" must not match the UDP port
					ep("10.244.1.7", "")),
			},
		},
		want: []model.Service{{Name: name("dns"), ClusterIPs: addrs("10.96.0.53"), Ports: []model.ServicePort{
			{Name: "dns", Protocol: model.UDP, Port: 53, Endpoints: []model.Endpoint{
				ready("10.244.1.7", 53, ""), ready("10.244.2.7", 5353, "")}},
			{Name: "dns-tcp", Protocol: model.TCP, Port: 53, Endpoints: []model.Endpoint{
				ready("10.244.1.7", 53, ""), ready("10.244.2.7", 5353, "")}},
			{Name: "metrics", Protocol: model.TCP, Port: 9153, Endpoints: []model.Endpoint{
				ready("10.244.2.7", 9153, "")}},
		}}},
	}, {
		name: "targetPort by name takes the slice port number",
		objs: Objects{
			Services: []*corev1.Service{service("web", []string{"10.96.0.10"},
				corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http")})},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-1", "web", v4, []discoveryv1.EndpointPort{sp("http", 8080)}, ep("10.244.1.5", "node-a")),
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("10.96.0.10"), Ports: []model.ServicePort{
			{Name: "http", Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{ready("10.244.1.5", 8080, "node-a")}}}}},
	}, {
		name: "same endpoint in two slices: not terminating wins, then ready",
		objs: Objects{
			Services: []*corev1.Service{webSvc},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-b", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)},
					ep("10.244.1.5", "node-a"), withConditions(ep("10.244.1.6", "node-a"), ptr(false), ptr(false), nil),
					// A new pod, not ready yet, on the IP a terminating pod still serves from.
					withConditions(ep("10.244.1.7", "node-a"), ptr(false), ptr(false), ptr(false))),
				slice("web-a", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)},
					withConditions(ep("10.244.1.5", "node-a"), ptr(false), ptr(true), ptr(true)),
					withConditions(ep("10.244.1.6", "node-a"), ptr(false), ptr(true), nil),
					withConditions(ep("10.244.1.7", "node-a"), ptr(false), ptr(true), ptr(true))),
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("10.96.0.10"), Ports: []model.ServicePort{
			{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				ready("10.244.1.5", 8080, "node-a"),
				{Addr: addr("10.244.1.6"), Port: 8080, Serving: true, NodeName: "node-a"},
				{Addr: addr("10.244.1.7"), Port: 8080, NodeName: "node-a"}}}}}},
	}, {
		name: "conditions carried, nil ready and nil serving mean true",
		objs: Objects{
			Services: []*corev1.Service{webSvc},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-1", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)},
					withConditions(ep("10.244.1.1", ""), nil, nil, nil),
					withConditions(ep("10.244.1.2", ""), ptr(false), nil, nil),
					withConditions(ep("10.244.1.3", ""), ptr(false), ptr(true), ptr(true)),
					withConditions(ep("10.244.1.4", ""), ptr(true), ptr(false), ptr(false)),
					// Terminating, serving by default: the fallback when nothing is ready.
					withConditions(ep("10.244.1.5", ""), ptr(false), nil, ptr(true)),
					withConditions(ep("10.244.1.6", ""), ptr(false), ptr(false), ptr(true))),
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("10.96.0.10"), Ports: []model.ServicePort{
			{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				{Addr: addr("10.244.1.1"), Port: 8080, Ready: true, Serving: true},
				{Addr: addr("10.244.1.2"), Port: 8080, Serving: true},
				{Addr: addr("10.244.1.3"), Port: 8080, Serving: true, Terminating: true},
				{Addr: addr("10.244.1.4"), Port: 8080, Ready: true},
				{Addr: addr("10.244.1.5"), Port: 8080, Serving: true, Terminating: true},
				{Addr: addr("10.244.1.6"), Port: 8080, Terminating: true},
			}}}}},
	}, {
		name: "ignored services and their slices",
		opts: ConvertOptions{ServiceProxyName: "nftproxy"},
		objs: Objects{
			Services: []*corev1.Service{
				service("headless", []string{"None"}, svcPort("", "", 80)),
				with(service("headless-ip", nil, svcPort("", "", 80)), func(s *corev1.Service) { s.Spec.ClusterIP = "None" }),
				with(service("extname", nil), func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeExternalName
					s.Spec.ExternalName = "example.com"
				}),
				with(service("other-proxy", []string{"10.96.0.2"}, svcPort("", "", 80)), func(s *corev1.Service) {
					s.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
				}),
				with(service("headless-label", []string{"10.96.0.3"}, svcPort("", "", 80)), func(s *corev1.Service) {
					s.Labels = map[string]string{LabelHeadless: ""}
				}),
				with(service("ours", []string{"10.96.0.4"}, svcPort("", "", 80)), func(s *corev1.Service) {
					s.Labels = map[string]string{LabelServiceProxyName: "nftproxy"}
				}),
			},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				// Broken, but belongs to an ignored Service: no warning.
				slice("headless-1", "headless", v4, []discoveryv1.EndpointPort{slicePortOf(nil, nil, nil)}, ep("bogus", "")),
			},
		},
		want: []model.Service{{Name: name("ours"), ClusterIPs: addrs("10.96.0.4"),
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80}}}},
	}, {
		name: "service-proxy-name label ignored when no name is configured",
		objs: Objects{Services: []*corev1.Service{
			with(service("ours", []string{"10.96.0.4"}, svcPort("", "", 80)), func(s *corev1.Service) {
				s.Labels = map[string]string{LabelServiceProxyName: ""}
			}),
		}},
	}, {
		name: "bad addresses and ports make only their Service bad",
		objs: Objects{
			Services: []*corev1.Service{
				webSvc,
				service("bad-ip", []string{"10.96.0.300"}, svcPort("", "", 80)),
				with(service("bad-ip-fallback", nil, svcPort("", "", 80)), func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.x" }),
				with(service("bad-external", []string{"10.96.0.11"}, svcPort("", "", 80)), func(s *corev1.Service) {
					s.Spec.ExternalIPs = []string{"203.0.113.10", "nope"}
				}),
				service("port-0", []string{"10.96.0.12"}, svcPort("", "", 0)),
				service("port-70000", []string{"10.96.0.13"}, svcPort("", "", 70000)),
				with(service("nodeport-70000", []string{"10.96.0.14"}, svcPort("", "", 80)), func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeNodePort
					s.Spec.Ports[0].NodePort = 70000
				}),
				service("icmp", []string{"10.96.0.15"}, svcPort("", "ICMP", 80)),
				service("dup-port", []string{"10.96.0.16"}, svcPort("a", tcp, 80), svcPort("b", "", 80)),
				with(service("bad-type", []string{"10.96.0.17"}, svcPort("", "", 80)), func(s *corev1.Service) { s.Spec.Type = "Magic" }),
				with(service("bad-lb", []string{"10.96.0.18"}, svcPort("", "", 80)), func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeLoadBalancer
					s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "1.2.3"}}
				}),
			},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-1", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)}, ep("10.244.1.5", "")),
				slice("bad-ip-1", "bad-ip", v4, []discoveryv1.EndpointPort{sp("", 8080)}, ep("10.244.1.6", "")),
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("10.96.0.10"), Ports: []model.ServicePort{
			{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{ready("10.244.1.5", 8080, "")}}}}},
		wantBad: []string{"Service default/bad-external", "Service default/bad-ip", "Service default/bad-ip-fallback",
			"Service default/bad-lb", "Service default/bad-type", "Service default/dup-port", "Service default/icmp",
			"Service default/nodeport-70000", "Service default/port-0", "Service default/port-70000"},
	}, {
		name: "load balancer and node port addresses",
		objs: Objects{Services: []*corev1.Service{
			with(service("lb", []string{"10.96.0.20"}, svcPort("http", "", 80), svcPort("dns", udp, 53)), func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalIPs = []string{"203.0.113.10"}
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
					{IP: "198.51.100.1"},
					{IP: "198.51.100.2", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example.com"},
					{IP: "198.51.100.3", IPMode: ptr(corev1.LoadBalancerIPModeVIP)},
				}
			}),
			with(service("np", []string{"10.96.0.21"}, svcPort("", "", 80)), func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30081
			}),
			with(service("cip", []string{"10.96.0.22"}, svcPort("", "", 80)), func(s *corev1.Service) {
				s.Spec.Type = ""
				s.Spec.Ports[0].NodePort = 30082 // not a NodePort Service: dropped
				// Not reachable from outside: no external policy (a manifest may say it).
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			}),
			with(service("cip-ext", []string{"10.96.0.23"}, svcPort("", "", 80)), func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.11"}
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			}),
			// Legacy IPv4 with leading zeros, which old objects may hold: decimal.
			with(service("legacy", []string{"10.96.0.024"}, svcPort("", "", 80)), func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30083
				s.Spec.ExternalIPs = []string{"203.0.113.012"}
				s.Spec.LoadBalancerSourceRanges = []string{"010.0.0.0/8"}
			}),
		}},
		want: []model.Service{
			{Name: name("cip"), Type: model.ClusterIP, ClusterIPs: addrs("10.96.0.22"),
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80}}},
			{Name: name("cip-ext"), Type: model.ClusterIP, ClusterIPs: addrs("10.96.0.23"),
				ExternalIPs: addrs("203.0.113.11"), ExternalPolicyLocal: true,
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80}}},
			{Name: name("lb"), Type: model.LoadBalancer, ClusterIPs: addrs("10.96.0.20"), ExternalIPs: addrs("203.0.113.10"),
				LoadBalancerIPs: addrs("198.51.100.1", "198.51.100.3"),
				Ports: []model.ServicePort{
					{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080},
					{Name: "dns", Protocol: model.UDP, Port: 53}}},
			{Name: name("legacy"), Type: model.LoadBalancer, ClusterIPs: addrs("10.96.0.24"), ExternalIPs: addrs("203.0.113.12"),
				LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
				Ports:                    []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: 30083}}},
			{Name: name("np"), Type: model.NodePort, ClusterIPs: addrs("10.96.0.21"),
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: 30081}}},
		},
	}, {
		name: "dual-stack service with IPv4 and IPv6 slices",
		objs: Objects{
			Services: []*corev1.Service{service("web", []string{"fd00:10:96::a", "::ffff:10.96.0.10"}, svcPort("", "", 80))},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-v6", "web", v6, []discoveryv1.EndpointPort{sp("", 8080)}, ep("fd00:10:244:1::5", "node-a")),
				slice("web-v4", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)}, ep("10.244.1.5", "node-a")),
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("fd00:10:96::a", "10.96.0.10"),
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				ready("10.244.1.5", 8080, "node-a"), ready("fd00:10:244:1::5", 8080, "node-a")}}}}},
	}, {
		name: "bad slice entries are skipped, the rest is kept",
		objs: Objects{
			Services: []*corev1.Service{webSvc},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-1", "web", v4, []discoveryv1.EndpointPort{slicePortOf(nil, nil, nil)}, ep("10.244.1.1", "")),
				slice("web-2", "web", v4, []discoveryv1.EndpointPort{sp("", 70000)}, ep("10.244.1.2", "")),
				slice("web-3", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)},
					ep("10.244.1.3", ""), ep("fd00:10:244:1::3", ""), ep("not-an-ip", ""),
					discoveryv1.Endpoint{}, ep("10.244.1.4", "")),
				slice("web-fqdn", "web", discoveryv1.AddressTypeFQDN, []discoveryv1.EndpointPort{sp("", 8080)}, ep("pod.example.com", "")),
				slice("web-other", "web", "IPX", []discoveryv1.EndpointPort{sp("", 8080)}, ep("10.244.1.9", "")),
				slice("orphan", "missing", v4, []discoveryv1.EndpointPort{slicePortOf(nil, nil, nil)}, ep("bogus", "")),
				{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "unlabelled"}},
				nil,
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("10.96.0.10"),
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				ready("10.244.1.3", 8080, ""), ready("10.244.1.4", 8080, "")}}}}},
		wantBad: []string{"EndpointSlice default/web-1", "EndpointSlice default/web-2",
			"EndpointSlice default/web-3", "EndpointSlice default/web-other"},
	}, {
		name: "nil entries, empty services, duplicates",
		objs: Objects{
			Services: []*corev1.Service{nil, {}, webSvc, service("web", []string{"10.96.0.99"})},
		},
		want:    []model.Service{{}, webModel},
		wantBad: []string{"Service default/web"},
	}, {
		name: "an endpoint in several slices is kept once: ready wins, else the first slice's",
		objs: Objects{
			Services: []*corev1.Service{webSvc},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				slice("web-3", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)}, ep("10.244.1.5", "node-c"), ep("10.244.1.6", "node-c")),
				slice("web-1", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)},
					with3(ep("10.244.1.5", "node-a"), false), ep("10.244.1.6", "node-a")),
				slice("web-2", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)}, ep("10.244.1.5", "node-b"), ep("10.244.1.6", "node-b")),
			},
		},
		want: []model.Service{{Name: name("web"), ClusterIPs: addrs("10.96.0.10"),
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				ready("10.244.1.5", 8080, "node-b"), ready("10.244.1.6", 8080, "node-a")}}}}},
	}, {
		name: "slices in another namespace do not match",
		objs: Objects{
			Services: []*corev1.Service{webSvc},
			EndpointSlices: []*discoveryv1.EndpointSlice{
				with2(slice("web-1", "web", v4, []discoveryv1.EndpointPort{sp("", 8080)}, ep("10.244.1.5", "")),
					func(es *discoveryv1.EndpointSlice) { es.Namespace = "other" }),
			},
		},
		want: []model.Service{webModel},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, bad := Convert(tt.objs, tt.opts)
			if (len(got) != 0 || len(tt.want) != 0) && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Convert services:\n got %s\nwant %s", dump(got), dump(tt.want))
			}
			var gotBad []string
			for _, b := range bad {
				if b.Err == nil {
					t.Errorf("BadObject %s has no error", b)
				}
				gotBad = append(gotBad, b.Kind+" "+b.Namespace+"/"+b.Name)
			}
			slices.Sort(gotBad)
			if !slices.Equal(gotBad, tt.wantBad) {
				t.Errorf("Convert bad objects:\n got %q\nwant %q\n(%v)", gotBad, tt.wantBad, bad)
			}
		})
	}
}

func with2(es *discoveryv1.EndpointSlice, f func(*discoveryv1.EndpointSlice)) *discoveryv1.EndpointSlice {
	f(es)
	return es
}

// with3 returns e with its ready condition set to r.
func with3(e discoveryv1.Endpoint, r bool) discoveryv1.Endpoint {
	e.Conditions.Ready = &r
	return e
}

func dump(svcs []model.Service) string {
	var b strings.Builder
	for _, s := range svcs {
		fmt.Fprintf(&b, "\n  %s type=%d cip=%v ext=%v lb=%v", s.Name, s.Type, s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs)
		for _, p := range s.Ports {
			fmt.Fprintf(&b, "\n    %q %s/%d np=%d", p.Name, p.Protocol, p.Port, p.NodePort)
			for _, e := range p.Endpoints {
				fmt.Fprintf(&b, "\n      %+v", e)
			}
		}
	}
	return b.String()
}

func TestBadObjectString(t *testing.T) {
	for _, tt := range []struct {
		b    BadObject
		want string
	}{
		{BadObject{Kind: "Service", Namespace: "default", Name: "foo", Err: errors.New("boom")}, "Service default/foo: boom"},
		{BadObject{Kind: "Node", Name: "node-a", Err: errors.New("boom")}, "Node node-a: boom"},
		{BadObject{Kind: "Document", Err: errors.New("a.yaml:2: boom")}, "Document: a.yaml:2: boom"},
		{BadObject{}, "Object"},
	} {
		if got := tt.b.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.b, got, tt.want)
		}
	}
}

func TestFindNode(t *testing.T) {
	nodes := []*corev1.Node{
		nil,
		{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{corev1.LabelTopologyZone: "zone-1"}},
			Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64", "bogus"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: "node-a"},
				{Type: corev1.NodeExternalIP, Address: "203.0.113.5"},
				{Type: corev1.NodeExternalIP, Address: "2001:db8::5"},
				{Type: corev1.NodeInternalIP, Address: "192.168.0.2"},
				{Type: corev1.NodeInternalIP, Address: "bogus"},
				{Type: corev1.NodeInternalIP, Address: "192.168.0.3"},
			}},
		},
	}
	got, ok := FindNode(nodes, "node-a")
	want := NodeInfo{
		Name: "node-a", Zone: "zone-1",
		InternalIPs: addrs("192.168.0.2", "192.168.0.3"),
		ExternalIPs: addrs("203.0.113.5", "2001:db8::5"),
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
	}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("FindNode(node-a) = %+v, %v; want %+v", got, ok, want)
	}
	if p, w := got.PrimaryIPs(), addrs("192.168.0.2", "2001:db8::5"); !slices.Equal(p, w) {
		t.Errorf("PrimaryIPs() = %v, want %v", p, w)
	}
	b, ok := FindNode(nodes, "node-b")
	if !ok || b.Name != "node-b" || b.PrimaryIPs() != nil {
		t.Errorf("FindNode(node-b) = %+v, %v; primary %v", b, ok, b.PrimaryIPs())
	}
	if _, ok := FindNode(nodes, "node-c"); ok {
		t.Errorf("FindNode(node-c) found a node")
	}
}
