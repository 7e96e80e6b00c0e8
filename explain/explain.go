package explain

import (
	"cmp"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// Origin is where a packet comes from, which decides the hooks it passes and what "fib saddr
// type local" and "iifname" see.
type Origin string

// The origins of a packet.
const (
	// FromPod is a pod: the packet arrives (prerouting) on the pods' interface unless
	// Packet.InInterface names another.
	FromPod Origin = "pod"
	// FromNode is this node itself: the packet is sent locally (output) and has no input
	// interface.
	FromNode Origin = "node"
	// FromExternal is anything else: the packet arrives (prerouting) on Packet.InInterface,
	// or on an interface that is not the pods' when it is empty.
	FromExternal Origin = "external"
)

// Packet is the first packet of a new connection.
type Packet struct {
	Src   netip.Addr
	Dst   netip.AddrPort
	Proto model.Protocol
	From  Origin
	// InInterface is the interface the packet arrives on ("" when unknown: for a pod the
	// pods' interface, for an external source one that is not the pods').
	InInterface string
}

// AffinityEntry is one entry of the kernel's affinity map, as nft lists it: new connections
// from Client to Dst (protocol Proto) go to Endpoint while it lives.
type AffinityEntry = nft.AffinityEntry

// State is what the walk reads besides the packet.
type State struct {
	// Ruleset is nftproxy's table of the packet's family, as the kernel holds it or as the
	// model renders it.
	Ruleset *model.Ruleset
	// LocalAddrs are the node's own addresses: "fib daddr type local" and "fib saddr type
	// local" are true for them (and for loopback addresses).
	LocalAddrs []netip.Addr
	// Affinity is the affinity map's content (empty when predicting offline).
	Affinity []AffinityEntry
	// Kinds tells ExternalIPs from LoadBalancer IPs, which the table does not distinguish:
	// address to FrontendExternalIP or FrontendLoadBalancer. Optional.
	Kinds map[netip.Addr]string
}

// The kinds of frontend.
const (
	FrontendClusterIP    = "ClusterIP"
	FrontendNodePort     = "NodePort"
	FrontendLoadBalancer = "LoadBalancer IP"
	FrontendExternalIP   = "ExternalIP"
	// FrontendExternal is an ExternalIP or a LoadBalancer IP, when nothing tells which.
	FrontendExternal = "ExternalIP or LoadBalancer IP"
)

// Verdict is what happens to a new connection.
type Verdict string

// The verdicts of an outcome.
const (
	// Forward: DNATed to an endpoint.
	Forward Verdict = "forward"
	// Reject: refused (TCP reset or ICMP port unreachable), the client fails at once.
	Reject Verdict = "reject"
	// Drop: dropped, the client times out.
	Drop Verdict = "drop"
	// Untouched: nftproxy's rules do not change the packet; it goes where routing sends it.
	Untouched Verdict = "untouched"
	// Mixed: the branches end differently (Outcomes says how); only in Explanation.Verdict.
	Mixed Verdict = "mixed"
)

// Explanation is what nftproxy's rules do with a new connection (`nftproxy explain --output
// json`). The fields are stable; new ones may be added.
type Explanation struct {
	// Family is "ip" or "ip6"; Source, Destination ("addr:port"), Protocol and From
	// repeat the packet.
	Family      string `json:"family"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Protocol    string `json:"protocol"`
	From        Origin `json:"from"`
	InInterface string `json:"inInterface,omitempty"`
	// Service is the Service port the destination belongs to ("namespace/name:port"), from
	// the comment of the map element that matched; for a ClusterIP on a port the Service does
	// not define, "namespace/name" of a Service holding the address.
	Service string `json:"service,omitempty"`
	// Frontend is the kind of destination: ClusterIP, NodePort, LoadBalancer IP, ExternalIP.
	Frontend string `json:"frontend,omitempty"`
	// Verdict is the outcome of every branch, or "mixed" when they differ.
	Verdict Verdict `json:"verdict"`
	// Reason says why, in words, when the verdict is reject, drop or untouched.
	Reason string `json:"reason,omitempty"`
	// SourceRanges is the loadBalancerSourceRanges check, when the destination has one.
	SourceRanges *SourceRanges `json:"sourceRanges,omitempty"`
	// Affinity is the session affinity of the frontend, when it has some.
	Affinity *Affinity `json:"affinity,omitempty"`
	// Outcomes lists where new connections end, most likely first; their probabilities
	// add up to 1. Forwarded ones name their endpoint and slots.
	Outcomes []Outcome `json:"outcomes"`
	// Notes are things the walk could not be sure of (an unrecognized rule, a missing
	// chain or slot).
	Notes []string `json:"notes,omitempty"`
}

// SourceRanges is the verdict of a firewall chain (loadBalancerSourceRanges).
type SourceRanges struct {
	Allowed bool `json:"allowed"`
	// Ranges are the prefixes the chain lets through.
	Ranges []string `json:"ranges"`
}

// Affinity is the session affinity a frontend has.
type Affinity struct {
	// TimeoutSeconds is how long the chosen endpoint is remembered after the client's last
	// new connection; 0 when the walk saw the client's entry but no recording rule.
	TimeoutSeconds uint32 `json:"timeoutSeconds,omitempty"`
	// Endpoint is the endpoint the affinity map holds for this client, "" when none.
	Endpoint string `json:"endpoint,omitempty"`
	// ExpiresSeconds is the time that entry had left, 0 when unknown.
	ExpiresSeconds int64 `json:"expiresSeconds,omitempty"`
}

// Outcome is one way new connections end, with its probability.
type Outcome struct {
	Verdict Verdict `json:"verdict"`
	// Endpoint is the address:port the connection is DNATed to (Forward only).
	Endpoint string `json:"endpoint,omitempty"`
	// Slots of Of slots of the slot draw lead here (Forward by a draw only).
	Slots int `json:"slots,omitempty"`
	Of    int `json:"of,omitempty"`
	// Probability is the share of new connections that end here, and Chance the same as a
	// fraction ("2/3").
	Probability float64 `json:"probability"`
	Chance      string  `json:"chance"`
	// Masquerade says whether the connection is source-NATed to the node's address, and
	// MasqueradeReason why or why not.
	Masquerade       bool   `json:"masquerade"`
	MasqueradeReason string `json:"masqueradeReason,omitempty"`
	// Reason says why for a reject, drop or untouched outcome.
	Reason string `json:"reason,omitempty"`
}

// Explain walks st.Ruleset for the first packet of a new connection p and says what happens
// to it. It returns an error only for a packet it cannot walk (a family other than the
// table's, an unknown origin); problems of the table itself become Notes.
func Explain(st State, p Packet) (Explanation, error) {
	if st.Ruleset == nil {
		return Explanation{}, fmt.Errorf("explain: no table")
	}
	fam := st.Ruleset.Family
	if !fam.Contains(p.Src) || !fam.Contains(p.Dst.Addr()) {
		return Explanation{}, fmt.Errorf("explain %s -> %s: not both addresses of family %s", p.Src, p.Dst, fam)
	}
	switch p.From {
	case FromPod, FromNode, FromExternal:
	default:
		return Explanation{}, fmt.Errorf("explain: unknown origin %q (want pod, node or external)", p.From)
	}
	w := newWalker(st, p)
	branches := w.walk()
	return w.summarize(branches), nil
}

// summarize turns the ended branches into an Explanation.
func (w *walker) summarize(branches []*branch) Explanation {
	p := w.p
	ex := Explanation{
		Family:      w.st.Ruleset.Family.String(),
		Source:      p.Src.String(),
		Destination: p.Dst.String(),
		Protocol:    p.Proto.String(),
		From:        p.From,
		InInterface: p.InInterface,
		Notes:       w.notes,
	}
	type key struct {
		v      Verdict
		ep     netip.AddrPort
		masq   bool
		reason string
		of     int
	}
	type agg struct {
		o     Outcome
		prob  *big.Rat
		slots int
	}
	byKey := map[key]*agg{}
	var order []key
	for _, b := range branches {
		if b.service != "" && ex.Service == "" {
			ex.Service, ex.Frontend = b.service, b.frontend
		}
		if ex.Frontend == "" {
			ex.Frontend = b.frontend
		}
		if b.ranges != nil && ex.SourceRanges == nil {
			ex.SourceRanges = b.ranges
		}
		if b.affinity != nil && (ex.Affinity == nil || ex.Affinity.TimeoutSeconds == 0) {
			a := *b.affinity
			if ex.Affinity != nil && a.Endpoint == "" {
				a.Endpoint, a.ExpiresSeconds = ex.Affinity.Endpoint, ex.Affinity.ExpiresSeconds
			}
			ex.Affinity = &a
		}
		k := key{v: b.verdict, reason: b.reason}
		if b.verdict == Forward {
			k = key{v: Forward, ep: b.endpoint, masq: b.masq, reason: b.masqReason, of: b.of}
		}
		a := byKey[k]
		if a == nil {
			a = &agg{prob: new(big.Rat)}
			a.o = Outcome{Verdict: b.verdict, Reason: b.reason}
			if b.verdict == Forward {
				a.o = Outcome{Verdict: Forward, Endpoint: b.endpoint.String(), Of: b.of,
					Masquerade: b.masq, MasqueradeReason: b.masqReason}
			}
			byKey[k] = a
			order = append(order, k)
		}
		a.prob.Add(a.prob, b.prob)
		if b.of > 0 {
			a.slots++
		}
	}
	for _, k := range order {
		a := byKey[k]
		a.o.Probability, _ = a.prob.Float64()
		a.o.Chance = a.prob.RatString()
		if a.o.Of > 0 {
			a.o.Slots = a.slots
		}
		ex.Outcomes = append(ex.Outcomes, a.o)
	}
	slices.SortStableFunc(ex.Outcomes, func(x, y Outcome) int {
		return cmp.Or(cmp.Compare(y.Probability, x.Probability), compareEndpoints(x.Endpoint, y.Endpoint))
	})
	ex.Verdict = Mixed
	for i, o := range ex.Outcomes {
		if i == 0 {
			ex.Verdict, ex.Reason = o.Verdict, o.Reason
		} else if o.Verdict != ex.Verdict {
			ex.Verdict, ex.Reason = Mixed, ""
			break
		}
	}
	if ex.Verdict == Forward {
		ex.Reason = ""
	}
	if ex.Affinity != nil && ex.Affinity.Endpoint == "" && ex.Affinity.TimeoutSeconds == 0 {
		ex.Affinity = nil
	}
	return ex
}

// compareEndpoints orders "addr:port" strings as addresses and ports.
func compareEndpoints(a, b string) int {
	x, errX := netip.ParseAddrPort(a)
	y, errY := netip.ParseAddrPort(b)
	if errX != nil || errY != nil {
		return strings.Compare(a, b)
	}
	return x.Compare(y)
}

// Endpoints returns the endpoints new connections may be forwarded to, sorted.
func (ex Explanation) Endpoints() []netip.AddrPort {
	var out []netip.AddrPort
	for _, o := range ex.Outcomes {
		if ap, err := netip.ParseAddrPort(o.Endpoint); err == nil && o.Verdict == Forward {
			out = append(out, ap)
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}
