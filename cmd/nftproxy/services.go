package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/daemon"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// The kinds of frontend a Service port has.
const (
	kindClusterIP    = "ClusterIP"
	kindExternalIP   = "ExternalIP"
	kindLoadBalancer = "LoadBalancer"
	// kindExternal is an address of service-ips that is neither a ClusterIP of the kernel
	// nor an ExternalIP or LoadBalancer IP the cluster knows of.
	kindExternal = "External"
	kindNodePort = "NodePort"
)

// Policies of a frontend, from its picking chain's name.
const (
	policyCluster = "Cluster"
	policyLocal   = "Local"
)

// What a frontend does with new connections when it has no endpoint to send them to.
const (
	noEndpointsReject = "reject" // no endpoint at all (reject-chain)
	noEndpointsDrop   = "drop"   // no endpoint on this node under a Local policy
)

// servicePort is one Service port as the kernel's table holds it (`services --output json`).
type servicePort struct {
	Family string `json:"family"`
	// Service is "namespace/name", Port the port's name (or number), from element comments.
	Service   string     `json:"service"`
	Port      string     `json:"port"`
	Protocol  string     `json:"protocol"`
	Frontends []frontend `json:"frontends"`
}

// frontend is one address and port (or NodePort) of a Service port, with what the kernel
// does with new connections to it.
type frontend struct {
	Kind string `json:"kind"`
	// Address is empty for a NodePort (any address that accepts NodePorts).
	Address string `json:"address,omitempty"`
	Port    uint16 `json:"port"`
	// Chain is the chain the frontend's element sends packets to.
	Chain string `json:"chain,omitempty"`
	// Policy is the traffic policy its picking chain implements: Cluster or Local.
	Policy string `json:"policy,omitempty"`
	// NoEndpoints is "reject" (no endpoints) or "drop" (no local endpoints) when new
	// connections (under Local: those from outside the node) are refused.
	NoEndpoints string `json:"noEndpoints,omitempty"`
	// AffinityTimeoutSeconds is the session affinity timeout of its picking chain.
	AffinityTimeoutSeconds uint32 `json:"affinityTimeoutSeconds,omitempty"`
	// SourceRanges are the sources a LoadBalancer IP's firewall chain lets through.
	SourceRanges []string `json:"sourceRanges,omitempty"`
	Endpoints    []slot   `json:"endpoints,omitempty"`
	// Clients are the live entries of the affinity map for the frontend.
	Clients []affinityClient `json:"affinityClients,omitempty"`
}

// slot is one element of an endpoint map.
type slot struct {
	Slot     uint32 `json:"slot"`
	Endpoint string `json:"endpoint"`
	// Local marks the slots after the cluster endpoints under a Local policy: this node's.
	Local bool `json:"local,omitempty"`
}

// affinityClient is one entry of the affinity map.
type affinityClient struct {
	Client   string `json:"client"`
	Endpoint string `json:"endpoint"`
	// ExpiresSeconds is the time the entry had left, 0 when the kernel did not say.
	ExpiresSeconds int64 `json:"expiresSeconds,omitempty"`
}

// pickChain is what the name of a picking chain says.
type pickChain struct {
	policy string
	// slots is the number of cluster endpoints, local that of this node's (Local policy).
	slots, local uint32
	timeout      uint32
}

// parsePickChain parses the name of a picking chain (see model.PickChainName and friends).
func parsePickChain(name string) (pickChain, bool) {
	if !model.IsServiceChain(name) || strings.HasPrefix(name, "firewall-") || strings.HasPrefix(name, "affinity-record-") {
		return pickChain{}, false
	}
	var p pickChain
	base := name
	if i := strings.LastIndex(name, "-affinity-"); i > 0 {
		t, _ := strconv.ParseUint(name[i+len("-affinity-"):], 10, 32)
		p.timeout, base = uint32(t), name[:i]
	}
	words := strings.Split(base, "-")
	num := func(s string) uint32 { n, _ := strconv.ParseUint(s, 10, 32); return uint32(n) }
	p.policy = policyCluster
	if len(words) == 5 {
		p.policy, p.slots, p.local = policyLocal, num(words[3]), num(words[4])
	} else {
		p.slots = num(words[2])
	}
	return p, true
}

// frontendKey identifies a frontend in the maps: address (invalid for a NodePort), protocol
// and port.
type frontendKey struct {
	addr  netip.Addr
	proto model.Protocol
	port  uint16
}

// kernelServices lists the Service ports of a table read from the kernel (rs, nil when there
// is none), each with its frontends, their endpoint slots, their firewall's source ranges and
// the affinity entries for them. external tells ExternalIPs from LoadBalancer IPs (the table
// does not); only names the Service ("namespace/name") to list, "" for all.
func kernelServices(rs *model.Ruleset, entries []nft.AffinityEntry, external map[netip.Addr]string, only string) []servicePort {
	if rs == nil {
		return nil
	}
	elements := func(name string) []model.Element {
		if s := rs.Set(name); s != nil {
			return s.Elements
		}
		return nil
	}
	clusterIPs := map[netip.Addr]bool{}
	for _, e := range elements(model.SetClusterIPs) {
		clusterIPs[e.Addr] = true
	}
	firewalls := map[frontendKey]string{}
	for _, e := range elements(model.MapFirewallIPs) {
		firewalls[frontendKey{e.Addr, e.Proto, e.Port}] = e.Verdict.Chain
	}
	slots := map[frontendKey][]model.Element{}
	for _, m := range []string{model.MapServiceEndpoints, model.MapNodePortEndpoints} {
		for _, e := range elements(m) {
			k := frontendKey{e.Addr, e.Proto, e.Port}
			slots[k] = append(slots[k], e)
		}
	}
	serviceAddrs := map[frontendKey]bool{}

	ports := map[string]*servicePort{}
	add := func(e model.Element, nodePort bool) {
		svc, port, ok := strings.Cut(e.Comment, ":")
		if !ok || only != "" && svc != only {
			return
		}
		sp := ports[e.Comment]
		if sp == nil {
			sp = &servicePort{Family: rs.Family.String(), Service: svc, Port: port, Protocol: e.Proto.String()}
			ports[e.Comment] = sp
		}
		k := frontendKey{e.Addr, e.Proto, e.Port}
		f := frontend{Port: e.Port}
		switch {
		case nodePort:
			f.Kind = kindNodePort
		case clusterIPs[e.Addr]:
			f.Kind = kindClusterIP
		case external[e.Addr] != "":
			f.Kind = external[e.Addr]
		case firewalls[k] != "":
			f.Kind = kindLoadBalancer
		default:
			f.Kind = kindExternal
		}
		if !nodePort {
			f.Address = e.Addr.String()
			serviceAddrs[k] = true
		}
		var pick pickChain
		switch e.Verdict.Kind {
		case model.Drop:
			f.NoEndpoints = noEndpointsDrop
		case model.Goto, model.Jump:
			f.Chain = e.Verdict.Chain
			var ok bool
			if e.Verdict.Chain == model.ChainReject {
				f.NoEndpoints = noEndpointsReject
			} else if pick, ok = parsePickChain(e.Verdict.Chain); ok {
				f.Policy, f.AffinityTimeoutSeconds = pick.policy, pick.timeout
				if pick.policy == policyLocal && pick.local == 0 {
					f.NoEndpoints = noEndpointsDrop
				}
			}
		}
		for _, s := range slots[k] {
			local := pick.policy == policyLocal && s.Slot >= pick.slots
			f.Endpoints = append(f.Endpoints, slot{Slot: s.Slot, Endpoint: s.Endpoint.String(), Local: local})
		}
		slices.SortFunc(f.Endpoints, func(a, b slot) int { return cmp.Compare(a.Slot, b.Slot) })
		if fw := firewalls[k]; fw != "" {
			f.SourceRanges = firewallRanges(rs.Chain(fw))
		}
		sp.Frontends = append(sp.Frontends, f)
	}
	for _, m := range []string{model.MapServiceIPs, model.MapNoEndpointServices} {
		for _, e := range elements(m) {
			add(e, false)
		}
	}
	for _, m := range []string{model.MapServiceNodePorts, model.MapNoEndpointNodePorts} {
		for _, e := range elements(m) {
			add(e, true)
		}
	}

	out := make([]servicePort, 0, len(ports))
	for _, sp := range ports {
		for i := range sp.Frontends {
			f := &sp.Frontends[i]
			proto, _ := parseProtocol(sp.Protocol)
			for _, a := range entries {
				if a.Proto != proto || a.Dst.Port() != f.Port {
					continue
				}
				if f.Kind == kindNodePort {
					// A NodePort's entries are for node addresses: those that are no Service's.
					if serviceAddrs[frontendKey{a.Dst.Addr(), a.Proto, a.Dst.Port()}] {
						continue
					}
				} else if a.Dst.Addr().String() != f.Address {
					continue
				}
				f.Clients = append(f.Clients, affinityClient{Client: a.Client.String(), Endpoint: a.Endpoint.String(),
					ExpiresSeconds: int64(a.Expires.Round(time.Second) / time.Second)})
			}
			slices.SortFunc(f.Clients, func(a, b affinityClient) int {
				return cmp.Or(compareAddrs(a.Client, b.Client), strings.Compare(a.Endpoint, b.Endpoint))
			})
		}
		slices.SortFunc(sp.Frontends, compareFrontends)
		out = append(out, *sp)
	}
	slices.SortFunc(out, func(a, b servicePort) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Port, b.Port))
	})
	return out
}

// parseProtocol returns the protocol named s ("tcp").
func parseProtocol(s string) (model.Protocol, bool) {
	for _, p := range []model.Protocol{model.TCP, model.UDP, model.SCTP} {
		if p.String() == s {
			return p, true
		}
	}
	return 0, false
}

// compareAddrs orders address strings as addresses.
func compareAddrs(a, b string) int {
	x, errX := netip.ParseAddr(a)
	y, errY := netip.ParseAddr(b)
	if errX != nil || errY != nil {
		return strings.Compare(a, b)
	}
	return x.Compare(y)
}

// compareFrontends orders ClusterIPs first, then ExternalIPs, LoadBalancer IPs and other
// addresses, then NodePorts; by address and port within a kind.
func compareFrontends(a, b frontend) int {
	rank := func(kind string) int {
		return slices.Index([]string{kindClusterIP, kindExternalIP, kindLoadBalancer, kindExternal, kindNodePort}, kind)
	}
	return cmp.Or(cmp.Compare(rank(a.Kind), rank(b.Kind)), compareAddrs(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
}

// firewallRanges returns the sources a firewall chain returns for (lets through), and a
// note for each rule it holds that nftproxy did not recognize.
func firewallRanges(c *model.Chain) []string {
	if c == nil {
		return []string{"(firewall chain missing)"}
	}
	allowed, others := model.FirewallAllowed(c)
	var out []string
	for _, p := range allowed {
		out = append(out, p.String())
	}
	for _, r := range others {
		if len(r.Exprs) == 0 && r.Comment != "" && !strings.Contains(r.Comment, "loadBalancerSourceRanges") {
			out = append(out, "("+r.Comment+")")
		}
	}
	return out
}

// externalKinds tells the cluster's ExternalIPs from its LoadBalancer IPs, which the
// kernel's table does not distinguish.
func externalKinds(services []model.Service) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, s := range services {
		for _, a := range s.ExternalIPs {
			out[a] = kindExternalIP
		}
		if s.Type == model.LoadBalancer {
			for _, a := range s.LoadBalancerIPs {
				out[a] = kindLoadBalancer
			}
		}
	}
	return out
}

// printServices prints Service ports as text: a line per Service port, then a line per
// frontend with its endpoint slots, source ranges and affinity clients under it.
func printServices(w io.Writer, ports []servicePort) {
	for _, sp := range ports {
		fmt.Fprintf(w, "%s:%s (%s %s)\n", sp.Service, sp.Port, sp.Family, sp.Protocol)
		width := 0
		for _, f := range sp.Frontends {
			width = max(width, len(frontendAddr(f)))
		}
		for _, f := range sp.Frontends {
			var what []string
			if f.Policy != "" {
				what = append(what, "policy "+f.Policy)
			}
			switch f.NoEndpoints {
			case noEndpointsReject:
				what = append(what, "reject (no endpoints)")
			case noEndpointsDrop:
				what = append(what, "drop (no local endpoints)")
			}
			if f.AffinityTimeoutSeconds != 0 {
				what = append(what, fmt.Sprintf("affinity %ds", f.AffinityTimeoutSeconds))
			}
			if f.Chain != "" && f.NoEndpoints != noEndpointsReject {
				what = append(what, "via "+f.Chain)
			}
			fmt.Fprintf(w, "  %-12s  %-*s  %s\n", f.Kind, width, frontendAddr(f), strings.Join(what, ", "))
			if len(f.SourceRanges) > 0 {
				fmt.Fprintf(w, "      source ranges %s\n", strings.Join(f.SourceRanges, " "))
			}
			for _, s := range f.Endpoints {
				local := ""
				if s.Local {
					local = " (local)"
				}
				fmt.Fprintf(w, "      %d => %s%s\n", s.Slot, s.Endpoint, local)
			}
			for _, c := range f.Clients {
				left := ""
				if c.ExpiresSeconds > 0 {
					left = fmt.Sprintf(" (%v left)", time.Duration(c.ExpiresSeconds)*time.Second)
				}
				fmt.Fprintf(w, "      client %s => %s%s\n", c.Client, c.Endpoint, left)
			}
		}
	}
}

// frontendAddr prints a frontend's address and port, ":port" for a NodePort.
func frontendAddr(f frontend) string {
	if f.Address == "" {
		return ":" + strconv.Itoa(int(f.Port))
	}
	a, err := netip.ParseAddr(f.Address)
	if err != nil {
		return f.Address + ":" + strconv.Itoa(int(f.Port))
	}
	return netip.AddrPortFrom(a, f.Port).String()
}

// splitOutputFlag takes --output (-o) FORMAT out of args, which go to the flags of run.
func splitOutputFlag(args []string) (rest []string, format string, err error) {
	rest, format, found, err := takeFlag(args, "--output", "-o")
	if err != nil {
		return nil, "", err
	}
	if !found {
		format = "table"
	}
	if format != "table" && format != "json" {
		return nil, "", fmt.Errorf("--output %q: want table or json", format)
	}
	return rest, format, nil
}

// takeFlag takes the flag called by one of names, with its value (as --name=value or
// --name value; the last one given counts), out of args, which go to the flags of run.
func takeFlag(args []string, names ...string) (rest []string, value string, found bool, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, v, hasValue := strings.Cut(a, "=")
		if !slices.Contains(names, name) {
			rest = append(rest, a)
			continue
		}
		if !hasValue {
			if i+1 == len(args) {
				return nil, "", false, fmt.Errorf("flag needs an argument: %s", name)
			}
			i++
			v = args[i]
		}
		value, found = v, true
	}
	return rest, value, found, nil
}

// servicesOutput is what `services --output json` prints.
type servicesOutput struct {
	// Services are the Service ports the kernel's tables hold.
	Services []servicePort `json:"services"`
	// Daemon is what the daemon at --daemon reported (its /debug/services): the last sync,
	// what is pending and the skipped objects. Absent with --daemon= or when it cannot be
	// reached; DaemonError then says why (absent with --daemon=).
	Daemon      *daemon.DebugServices `json:"daemon,omitempty"`
	DaemonError string                `json:"daemonError,omitempty"`
}

// runServices prints the Service ports the kernel's tables hold, read against the rules the
// cluster asks for (as diff reads them), optionally of one Service only.
func runServices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args, format, err := splitOutputFlag(args)
	if err != nil {
		return err
	}
	args, daemonURL, given, err := takeFlag(args, "--daemon")
	if err != nil {
		return err
	}
	if !given {
		daemonURL = defaultDaemonURL
	}
	o, log, node, rest, err := setupArgs("services", args, 1, stdout, stderr)
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, servicesUsage)
		}
		return err
	}
	only := ""
	if len(rest) == 1 {
		ns, name, ok := strings.Cut(rest[0], "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("%q: want NAMESPACE/NAME", rest[0])
		}
		only = rest[0]
	}
	objs, desired, err := desiredHere(ctx, o, node, log)
	if err != nil {
		return err
	}
	services, _ := cluster.Convert(objs, cluster.ConvertOptions{ServiceProxyName: o.Config.ServiceProxyName})
	external := externalKinds(services)
	backend := nft.NewNetlink("")
	defer backend.Close()
	out := servicesOutput{Services: []servicePort{}}
	for _, want := range desired {
		got, _, err := backend.Read(want.Family, want)
		if err != nil {
			return err
		}
		if got == nil {
			continue
		}
		entries, err := backend.AffinityEntries(want.Family)
		if err != nil {
			return err
		}
		out.Services = append(out.Services, kernelServices(got, entries, external, only)...)
	}
	if daemonURL != "" {
		// Not being able to ask the daemon is a note: the kernel's view stands on its own.
		if out.Daemon, err = fetchDaemonStatus(ctx, daemonURL); err != nil {
			out.DaemonError = err.Error()
		}
	}
	var missing error
	if only != "" && len(out.Services) == 0 {
		missing = fmt.Errorf("the kernel's tables hold no Service %s", only)
	}
	if format == "json" {
		if missing != nil {
			return missing
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printServices(stdout, out.Services)
	if out.Daemon != nil {
		// Also when the Service is missing: the daemon may say it skips it, and why.
		if len(out.Services) > 0 {
			fmt.Fprintln(stdout)
		}
		printDaemonStatus(stdout, daemonURL, out.Daemon)
	}
	if out.DaemonError != "" {
		fmt.Fprintf(stderr, "note: no status from the daemon (--daemon=%s): %s\n", daemonURL, out.DaemonError)
	}
	return missing
}

// servicesUsage follows run's flags in `services --help`.
const servicesUsage = `
Arguments and flags of services:
  NAMESPACE/NAME         show only this Service
  -o, --output string    table or json (default table)
      --daemon URL       also show the running daemon's last sync, pending changes and
                         skipped objects, from its /debug/services on the metrics address
                         (default http://127.0.0.1:10249; empty: don't ask)
`
