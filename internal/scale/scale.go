// Package scale generates synthetic clusters of a given size for benchmarks: N Services with M
// endpoints each, every tenth one a NodePort, with addresses that never collide and endpoints
// spread evenly over Nodes nodes.
package scale

import (
	"fmt"
	"net/netip"

	"github.com/nftproxy/nftproxy/model"
)

// ClusterIP returns the ClusterIP of Service i: 10.96.0.0/12 counted from 10.96.0.10.
func ClusterIP(i int) netip.Addr {
	n := 10<<24 | 96<<16 | uint32(i+10)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// EndpointIP returns the address of endpoint j of Service i inside 10.128.0.0/9 (pods of
// 10.244.0.0/16 stay free for real traffic in tests).
func EndpointIP(i, j, m int) netip.Addr {
	n := 10<<24 | 128<<16 | uint32(i*m+j+1)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// Nodes is the number of nodes the endpoints are spread over; the benchmarks run as node 0.
const Nodes = 100

// NodeName returns the name of node n.
func NodeName(n int) string { return fmt.Sprintf("node-%d", n) }

// Name returns the name of Service i.
func Name(i int) model.ServiceName {
	return model.ServiceName{Namespace: fmt.Sprintf("ns%d", i%100), Name: fmt.Sprintf("svc-%d", i)}
}

// NodePort returns the NodePort of Service i, or 0 when it is a ClusterIP Service.
func NodePort(i int) uint16 {
	if i%10 != 0 {
		return 0
	}
	return uint16(30000 + (i/10)%2768)
}

// Service returns Service i with m ready endpoints, generation gen shifting its endpoints'
// port so that a new generation is a changed Service.
func Service(i, m, gen int) model.Service {
	svc := model.Service{Name: Name(i), Type: model.ClusterIP, ClusterIPs: []netip.Addr{ClusterIP(i)}}
	port := model.ServicePort{Name: "http", Protocol: model.TCP, Port: 80}
	if np := NodePort(i); np != 0 {
		svc.Type = model.NodePort
		port.NodePort = np
	}
	for j := range m {
		port.Endpoints = append(port.Endpoints, model.Endpoint{
			Addr: EndpointIP(i, j, m), Port: uint16(8080 + gen), Ready: true, Serving: true,
			NodeName: NodeName((i*m + j) % Nodes),
		})
	}
	svc.Ports = []model.ServicePort{port}
	return svc
}

// Services returns n Services with m endpoints each.
func Services(n, m int) []model.Service {
	out := make([]model.Service, n)
	for i := range out {
		out[i] = Service(i, m, 0)
	}
	return out
}
