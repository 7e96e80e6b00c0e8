package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	gosync "sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	netutils "k8s.io/utils/net"

	"github.com/nftproxy/nftproxy/model"
)

// Labels that decide whether a Service is ours to proxy.
const (
	// LabelServiceProxyName marks a Service as belonging to the named proxy.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks a Service as headless; the proxy ignores it.
	LabelHeadless = corev1.IsHeadlessService
)

// ConvertOptions tunes which Services Convert keeps.
type ConvertOptions struct {
	// ServiceProxyName is this proxy's name. Services labelled
	// service.kubernetes.io/service-proxy-name belong to another proxy and are ignored unless
	// the label equals this name (and this name is non-empty).
	ServiceProxyName string
}

// Convert turns Services and their EndpointSlices into model Services, sorted by
// namespace/name with ports in spec order, and returns the objects it skipped because they
// cannot be turned into rules: first objs.Bad and the duplicate Services, then those of each
// Service in name order. Services the proxy must ignore (ExternalName, headless, owned by
// another proxy) are dropped without a BadObject. Convert performs no I/O.
func Convert(objs Objects, opts ConvertOptions) ([]model.Service, []BadObject) {
	snap := NewSnapshot(objs)
	c := Converter{Options: opts}
	c.Update(Delta{Store: snap, Full: true})
	return c.Services(), append(slices.Clone(snap.Bad()), c.Bad()...)
}

// Converter converts the Services a Delta names, and keeps each Service's conversion: the
// cost of a change is that of the Services it names, however many others there are. A
// Service whose object and EndpointSlices are the very objects of its last conversion
// (informer caches hand out the same pointers until an object changes) is not converted
// again.
type Converter struct {
	Options ConvertOptions
	// TriggerTimesAfter is the proxy's start: EndpointSlice trigger times not after it are
	// ignored (kube-proxy's trackerStartTime), since a proxy that starts programs everything
	// and a latency measured from before it started says nothing about it.
	TriggerTimesAfter time.Time
	// cache holds the last conversion of every Service in the store.
	cache map[model.ServiceName]*converted
	// bad names the cached Services with bad objects.
	bad map[model.ServiceName]struct{}
	// opts are the Options of the cached conversions.
	opts     ConvertOptions
	triggers map[model.ServiceName]map[model.Family][]time.Time
}

// converted is one Service's conversion and the objects it came from.
type converted struct {
	svc    *corev1.Service
	slices []*discoveryv1.EndpointSlice // sorted by name
	out    *model.Service               // nil when ignored or bad
	bad    []BadObject
}

// Update converts the Services d names (every Service of d.Store, and every one converted
// before, when d is Full or the Options changed) and returns those whose conversion differs
// from the previous one: nil for the ones gone, ignored or bad now.
func (c *Converter) Update(d Delta) map[model.ServiceName]*model.Service {
	force := c.cache != nil && c.Options != c.opts
	if c.cache == nil {
		c.cache = map[model.ServiceName]*converted{}
		c.bad = map[model.ServiceName]struct{}{}
	}
	c.opts = c.Options
	var todo []model.ServiceName
	if d.Full || force {
		objs := d.Store.Objects()
		todo = make([]model.ServiceName, 0, len(objs.Services)+len(c.cache))
		seen := make(map[model.ServiceName]bool, len(objs.Services)+len(c.cache))
		for _, s := range objs.Services {
			if s == nil {
				continue
			}
			name := model.ServiceName{Namespace: s.Namespace, Name: s.Name}
			if !seen[name] {
				seen[name] = true
				todo = append(todo, name)
			}
		}
		for name := range c.cache {
			if !seen[name] {
				todo = append(todo, name)
			}
		}
	} else {
		todo = make([]model.ServiceName, 0, len(d.Services))
		for name := range d.Services {
			todo = append(todo, name)
		}
	}

	// Look up and convert on every CPU when there are many (a start has thousands). The
	// cache is only read meanwhile.
	fresh := make([]*converted, len(todo))
	workers := min(runtime.GOMAXPROCS(0), 8, len(todo)/64+1)
	one := func(i int) { fresh[i] = c.lookup(d.Store, todo[i], force) }
	if workers == 1 {
		for i := range todo {
			one(i)
		}
	} else {
		var wg gosync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < len(todo); i += workers {
					one(i)
				}
			})
		}
		wg.Wait()
	}

	changes := make(map[model.ServiceName]*model.Service, len(todo))
	c.triggers = map[model.ServiceName]map[model.Family][]time.Time{}
	for i, name := range todo {
		cv := fresh[i]
		if cv == nil {
			continue // the very objects of the last conversion
		}
		prev := c.cache[name]
		if cv.svc == nil {
			delete(c.cache, name)
			delete(c.bad, name)
			if prev != nil && prev.out != nil {
				changes[name] = nil
			}
			continue
		}
		c.cache[name] = cv
		if len(cv.bad) > 0 {
			c.bad[name] = struct{}{}
		} else {
			delete(c.bad, name)
		}
		if prev != nil && equalConverted(prev.out, cv.out) {
			continue
		}
		if prev == nil && cv.out == nil {
			continue // new, but ignored or bad: nothing to program or remove
		}
		changes[name] = cv.out
		var before []*discoveryv1.EndpointSlice
		if prev != nil {
			before = prev.slices
		}
		if ts := c.sliceTriggers(cv.slices, before, nil); ts != nil {
			c.triggers[name] = ts
		}
	}
	return changes
}

// lookup reads name's Service and slices from store and converts them; nil when they are the
// objects of the cached conversion (and force is not set), a conversion without svc when the
// Service is gone.
func (c *Converter) lookup(store Store, name model.ServiceName, force bool) *converted {
	prev := c.cache[name]
	svc := store.Service(name)
	if svc == nil {
		if prev == nil {
			return nil
		}
		return &converted{}
	}
	esl := slices.Clone(store.EndpointSlices(name))
	slices.SortFunc(esl, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	if !force && prev != nil && prev.svc == svc && slices.Equal(prev.slices, esl) {
		return nil
	}
	return convertOne(svc, esl, c.opts)
}

// Services returns the converted Services, sorted by name. It costs as much as their number.
func (c *Converter) Services() []model.Service {
	out := make([]model.Service, 0, len(c.cache))
	for _, cv := range c.cache {
		if cv.out != nil {
			out = append(out, *cv.out)
		}
	}
	slices.SortFunc(out, func(a, b model.Service) int {
		return cmp.Or(cmp.Compare(a.Name.Namespace, b.Name.Namespace), cmp.Compare(a.Name.Name, b.Name.Name))
	})
	return out
}

// Bad returns the objects of the converted Services that cannot be turned into rules, by
// Service name. It costs as much as the number of Services with bad objects.
func (c *Converter) Bad() []BadObject {
	names := slices.SortedFunc(maps.Keys(c.bad), func(a, b model.ServiceName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var out []BadObject
	for _, name := range names {
		out = append(out, c.cache[name].bad...)
	}
	return out
}

// TriggerTimes returns, for the Services the last Update reported as changed, the trigger
// times (annotation endpoints.kubernetes.io/last-change-trigger-time) of their EndpointSlices
// that are new or changed since their previous conversion, by the slices' address family. A
// slice without the annotation, with a value that does not parse as RFC 3339, or stamped
// before TriggerTimesAfter gives none; so does a removed slice (its stamp is from its last
// update, not the removal). The map is the caller's.
func (c *Converter) TriggerTimes() map[model.ServiceName]map[model.Family][]time.Time {
	return c.triggers
}

// ParseTriggerTime returns the EndpointSlice's last-change trigger time and true, or false
// when the annotation is absent or does not parse (RFC 3339 with optional fraction, as the
// EndpointSlice controller writes it).
func ParseTriggerTime(es *discoveryv1.EndpointSlice) (time.Time, bool) {
	v, ok := es.Annotations[corev1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// sliceFamily returns the IP family of a slice's addresses; false for FQDN and unknown
// address types.
func sliceFamily(es *discoveryv1.EndpointSlice) (model.Family, bool) {
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4:
		return model.IPv4, true
	case discoveryv1.AddressTypeIPv6:
		return model.IPv6, true
	}
	return 0, false
}

// sliceTriggers adds to out the trigger times of the slices in now that are not in prev.
func (c *Converter) sliceTriggers(now, prev []*discoveryv1.EndpointSlice, out map[model.Family][]time.Time) map[model.Family][]time.Time {
	for _, es := range now {
		if slices.Contains(prev, es) {
			continue
		}
		fam, ok := sliceFamily(es)
		if !ok {
			continue
		}
		t, ok := ParseTriggerTime(es)
		if !ok || !t.After(c.TriggerTimesAfter) {
			continue
		}
		if out == nil {
			out = map[model.Family][]time.Time{}
		}
		out[fam] = append(out[fam], t)
	}
	return out
}

// convertOne converts one Service with its EndpointSlices.
func convertOne(s *corev1.Service, esl []*discoveryv1.EndpointSlice, opts ConvertOptions) *converted {
	cv := &converted{svc: s, slices: esl}
	if ignoreService(s, opts) {
		return cv
	}
	ms, err := convertService(s)
	if err != nil {
		cv.bad = append(cv.bad, BadObject{Kind: KindService, Namespace: s.Namespace, Name: s.Name, UID: s.UID, Err: err})
		return cv
	}
	eps := parseSlices(esl, &cv.bad)
	for i := range ms.Ports {
		ms.Ports[i].Endpoints = portEndpoints(ms.Ports[i], eps)
	}
	cv.out = &ms
	return cv
}

func equalConverted(a, b *model.Service) bool {
	if a == nil || b == nil {
		return a == b
	}
	return reflect.DeepEqual(a, b)
}

// ignoreService reports whether s is not for this proxy to program.
func ignoreService(s *corev1.Service, opts ConvertOptions) bool {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return true
	}
	if s.Spec.ClusterIP == corev1.ClusterIPNone ||
		(len(s.Spec.ClusterIPs) > 0 && s.Spec.ClusterIPs[0] == corev1.ClusterIPNone) {
		return true
	}
	if _, ok := s.Labels[LabelHeadless]; ok {
		return true
	}
	if proxy, ok := s.Labels[LabelServiceProxyName]; ok {
		return opts.ServiceProxyName == "" || proxy != opts.ServiceProxyName
	}
	return false
}

// maxAffinitySeconds is the longest session affinity timeout the API accepts (one day).
const maxAffinitySeconds = 86400

// convertService converts everything of s but its endpoints.
func convertService(s *corev1.Service) (model.Service, error) {
	ms := model.Service{Name: model.ServiceName{Namespace: s.Namespace, Name: s.Name}}
	switch s.Spec.Type {
	case "", corev1.ServiceTypeClusterIP:
		ms.Type = model.ClusterIP
	case corev1.ServiceTypeNodePort:
		ms.Type = model.NodePort
	case corev1.ServiceTypeLoadBalancer:
		ms.Type = model.LoadBalancer
	default:
		return ms, fmt.Errorf("unknown service type %q", s.Spec.Type)
	}

	clusterIPs := s.Spec.ClusterIPs
	if len(clusterIPs) == 0 && s.Spec.ClusterIP != "" {
		clusterIPs = []string{s.Spec.ClusterIP}
	}
	var err error
	if ms.ClusterIPs, err = parseAddrs(clusterIPs); err != nil {
		return ms, fmt.Errorf("spec.clusterIPs: %w", err)
	}
	if ms.ExternalIPs, err = parseAddrs(s.Spec.ExternalIPs); err != nil {
		return ms, fmt.Errorf("spec.externalIPs: %w", err)
	}
	for i, ing := range s.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
			continue
		}
		addr, err := parseAddr(ing.IP)
		if err != nil {
			return ms, fmt.Errorf("status.loadBalancer.ingress[%d].ip: %w", i, err)
		}
		ms.LoadBalancerIPs = append(ms.LoadBalancerIPs, addr)
	}

	// externalTrafficPolicy applies to a Service reachable from outside the cluster: a
	// NodePort or LoadBalancer one, or one with external IPs (kube-proxy's
	// ExternallyAccessible; the API server takes Local on no other).
	if ms.Type == model.NodePort || ms.Type == model.LoadBalancer || len(ms.ExternalIPs) > 0 {
		ms.ExternalPolicyLocal = s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
		if ms.ExternalPolicyLocal && ms.Type == model.LoadBalancer {
			if p := s.Spec.HealthCheckNodePort; p < 0 || p > 65535 {
				return ms, fmt.Errorf("spec.healthCheckNodePort %d out of range 0-65535", p)
			}
			ms.HealthCheckNodePort = uint16(s.Spec.HealthCheckNodePort)
		}
	}
	if p := s.Spec.InternalTrafficPolicy; p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal {
		ms.InternalPolicyLocal = true
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		ms.AffinityTimeout = uint32(corev1.DefaultClientIPServiceAffinitySeconds)
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			t := *c.ClientIP.TimeoutSeconds
			if t < 1 || t > maxAffinitySeconds {
				return ms, fmt.Errorf("spec.sessionAffinityConfig.clientIP.timeoutSeconds %d out of range 1-%d", t, maxAffinitySeconds)
			}
			ms.AffinityTimeout = uint32(t)
		}
	}
	if ms.Type == model.LoadBalancer {
		for i, r := range s.Spec.LoadBalancerSourceRanges {
			// The API server accepts surrounding spaces, as kube-proxy does.
			p, err := parsePrefix(strings.TrimSpace(r))
			if err != nil {
				return ms, fmt.Errorf("spec.loadBalancerSourceRanges[%d]: %w", i, err)
			}
			ms.LoadBalancerSourceRanges = append(ms.LoadBalancerSourceRanges, p.Masked())
		}
	}

	type protoPort struct {
		proto model.Protocol
		port  int32
	}
	seen := make(map[protoPort]bool, len(s.Spec.Ports))
	for i, p := range s.Spec.Ports {
		proto, err := parseProtocol(p.Protocol)
		if err != nil {
			return ms, fmt.Errorf("spec.ports[%d]: %w", i, err)
		}
		if p.Port < 1 || p.Port > 65535 {
			return ms, fmt.Errorf("spec.ports[%d]: port %d out of range 1-65535", i, p.Port)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			return ms, fmt.Errorf("spec.ports[%d]: nodePort %d out of range 0-65535", i, p.NodePort)
		}
		key := protoPort{proto, p.Port}
		if seen[key] {
			return ms, fmt.Errorf("spec.ports[%d]: duplicate port %s/%d", i, proto, p.Port)
		}
		seen[key] = true
		sp := model.ServicePort{Name: p.Name, Protocol: proto, Port: uint16(p.Port)}
		if ms.Type == model.NodePort || ms.Type == model.LoadBalancer {
			sp.NodePort = uint16(p.NodePort)
		}
		ms.Ports = append(ms.Ports, sp)
	}
	return ms, nil
}

// parseProtocol maps a Kubernetes protocol to the model's; empty means TCP.
func parseProtocol(p corev1.Protocol) (model.Protocol, error) {
	switch p {
	case "", corev1.ProtocolTCP:
		return model.TCP, nil
	case corev1.ProtocolUDP:
		return model.UDP, nil
	case corev1.ProtocolSCTP:
		return model.SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", p)
}

// parseAddr parses an IP address, unmapping IPv4-in-IPv6 and refusing zones. An IPv4
// address with leading zeros in an octet ("010.0.0.5"), which the API server took before
// its strict validation and still holds in old objects, is read as decimal, as kube-proxy
// reads it (ParseIPSloppy).
func parseAddr(s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		ip := netutils.ParseIPSloppy(s)
		if ip == nil {
			return netip.Addr{}, err
		}
		addr, _ = netip.AddrFromSlice(ip)
	}
	if addr.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("address %q has a zone", s)
	}
	return addr.Unmap(), nil
}

// parsePrefix parses a CIDR prefix, legacy IPv4 with leading zeros included (as parseAddr).
func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err == nil {
		return p, nil
	}
	_, ipNet, sloppyErr := netutils.ParseCIDRSloppy(s)
	if sloppyErr != nil {
		return netip.Prefix{}, err
	}
	addr, _ := netip.AddrFromSlice(ipNet.IP)
	ones, _ := ipNet.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones), nil
}

func parseAddrs(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		addr, err := parseAddr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, addr)
	}
	return out, nil
}

// slicePort is a valid port entry of an EndpointSlice.
type slicePort struct {
	name  string
	proto model.Protocol
	port  uint16
}

// sliceEndpoint is a valid endpoint of an EndpointSlice, before it is given a port.
type sliceEndpoint struct {
	addr                        netip.Addr
	ready, serving, terminating bool
	nodeName                    string
	hints                       *model.Hints
}

// parsedSlice is the usable content of one EndpointSlice.
type parsedSlice struct {
	ports     []slicePort
	endpoints []sliceEndpoint
}

// parseSlices validates the slices of one Service, in name order, reporting one BadObject per
// slice that had unusable entries. The usable entries of such a slice are kept.
func parseSlices(list []*discoveryv1.EndpointSlice, bad *[]BadObject) []parsedSlice {
	list = slices.Clone(list)
	slices.SortStableFunc(list, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	out := make([]parsedSlice, 0, len(list))
	for _, es := range list {
		ps, err := parseSlice(es)
		if err != nil {
			*bad = append(*bad, BadObject{Kind: KindEndpointSlice, Namespace: es.Namespace, Name: es.Name, UID: es.UID, Err: err})
		}
		if len(ps.ports) > 0 && len(ps.endpoints) > 0 {
			out = append(out, ps)
		}
	}
	return out
}

func parseSlice(es *discoveryv1.EndpointSlice) (parsedSlice, error) {
	var ps parsedSlice
	var errs []error
	family, ok := sliceFamily(es)
	switch {
	case es.AddressType == discoveryv1.AddressTypeFQDN:
		return ps, nil
	case !ok:
		return ps, fmt.Errorf("unknown addressType %q", es.AddressType)
	}
	ps.ports = make([]slicePort, 0, len(es.Ports))
	ps.endpoints = make([]sliceEndpoint, 0, len(es.Endpoints))
	for i, p := range es.Ports {
		var sp slicePort
		if p.Name != nil {
			sp.name = *p.Name
		}
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		var err error
		if sp.proto, err = parseProtocol(proto); err != nil {
			// No Service port can match it; not worth a warning.
			continue
		}
		if p.Port == nil {
			errs = append(errs, fmt.Errorf("ports[%d]: no port number", i))
			continue
		}
		if *p.Port < 1 || *p.Port > 65535 {
			errs = append(errs, fmt.Errorf("ports[%d]: port %d out of range 1-65535", i, *p.Port))
			continue
		}
		sp.port = uint16(*p.Port)
		ps.ports = append(ps.ports, sp)
	}
	for i, ep := range es.Endpoints {
		if len(ep.Addresses) == 0 {
			errs = append(errs, fmt.Errorf("endpoints[%d]: no address", i))
			continue
		}
		addr, err := parseAddr(ep.Addresses[0])
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoints[%d]: %w", i, err))
			continue
		}
		if !family.Contains(addr) {
			errs = append(errs, fmt.Errorf("endpoints[%d]: address %s is not %s", i, addr, es.AddressType))
			continue
		}
		c := ep.Conditions
		// A nil ready or serving means true (the API's documentation, and kube-proxy's).
		se := sliceEndpoint{
			addr:        addr,
			ready:       c.Ready == nil || *c.Ready,
			serving:     c.Serving == nil || *c.Serving,
			terminating: c.Terminating != nil && *c.Terminating,
		}
		if ep.NodeName != nil {
			se.nodeName = *ep.NodeName
		}
		if h := ep.Hints; h != nil && len(h.ForZones)+len(h.ForNodes) > 0 {
			se.hints = &model.Hints{}
			for _, z := range h.ForZones {
				se.hints.Zones = append(se.hints.Zones, z.Name)
			}
			for _, n := range h.ForNodes {
				se.hints.Nodes = append(se.hints.Nodes, n.Name)
			}
		}
		ps.endpoints = append(ps.endpoints, se)
	}
	return ps, errors.Join(errs...)
}

// portEndpoints collects the endpoints serving sp from every slice with a port of the same
// name and protocol, deduplicated by address and port and sorted.
func portEndpoints(sp model.ServicePort, eps []parsedSlice) []model.Endpoint {
	portOf := func(ps parsedSlice) int {
		return slices.IndexFunc(ps.ports, func(p slicePort) bool { return p.name == sp.Name && p.proto == sp.Protocol })
	}
	// Sized once: the conversions are kept, and an array grown by appending would keep up to
	// half of it unused.
	n := 0
	for _, ps := range eps {
		if portOf(ps) >= 0 {
			n += len(ps.endpoints)
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]model.Endpoint, 0, n)
	for _, ps := range eps {
		i := portOf(ps)
		if i < 0 {
			continue
		}
		port := ps.ports[i].port
		for _, se := range ps.endpoints {
			out = append(out, model.Endpoint{
				Addr:        se.addr,
				Port:        port,
				Ready:       se.ready,
				Serving:     se.serving,
				Terminating: se.terminating,
				NodeName:    se.nodeName,
				Hints:       se.hints,
			})
		}
	}
	// Stable, so that the copies of a duplicated endpoint stay in the order they were seen.
	slices.SortStableFunc(out, func(a, b model.Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	kept := out[:1]
	for _, ep := range out[1:] {
		last := &kept[len(kept)-1]
		if ep.Addr != last.Addr || ep.Port != last.Port {
			kept = append(kept, ep)
		} else if better(ep, *last) {
			*last = ep
		}
	}
	return slices.Clip(kept)
}

// better reports whether a should replace b as the copy of a duplicated endpoint: not
// terminating wins (as in kube-proxy: a terminating pod's IP reused by a new pod is the new
// pod's, ready or not), then ready, then serving; otherwise the first seen stays.
func better(a, b model.Endpoint) bool {
	if a.Terminating != b.Terminating {
		return !a.Terminating
	}
	if a.Ready != b.Ready {
		return a.Ready
	}
	if a.Serving != b.Serving {
		return a.Serving
	}
	return false
}
