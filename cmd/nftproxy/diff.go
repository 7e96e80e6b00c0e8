package main

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/nftproxy/nftproxy/internal/scenario"
	"github.com/nftproxy/nftproxy/model"
)

// The groups of a diff that no Service owns.
const (
	// groupSkeleton holds the table itself, its sets and fixed chains, and the elements that
	// name no Service (the node's addresses).
	groupSkeleton = "(skeleton)"
	// groupShared holds the picking and affinity chains that Services share.
	groupShared = "(shared chains)"
)

// tableDiff is the difference of one group of lines of a table.
type tableDiff struct {
	// Group is a Service ("namespace/name"), groupSkeleton or groupShared.
	Group string
	// Diff is a unified diff from the cluster's lines to the kernel's.
	Diff string
}

// diffTables compares the table the cluster asks for (want) with the one the kernel holds
// (got, nil when there is none; the elements of its sync-state set aside), line by line
// within each group, and returns the groups
// that differ: the skeleton, then the shared chains, then Services by name.
func diffTables(want, got *model.Ruleset) []tableDiff {
	// The sync-state set's elements are nftproxy's note of its last commit, no Service's.
	got = model.WithoutSyncState(got)
	o := elementOwners(want, got)
	a, b := groupLines(want, o), groupLines(got, o)
	names := make([]string, 0, len(a)+len(b))
	for g := range a {
		names = append(names, g)
	}
	for g := range b {
		names = append(names, g)
	}
	slices.SortFunc(names, compareGroups)
	names = slices.Compact(names)
	var out []tableDiff
	for _, g := range names {
		d := scenario.LineDiff(strings.Join(a[g], ""), strings.Join(b[g], ""))
		if d == "" {
			continue
		}
		// LineDiff's header names want and got: here they are the cluster and the kernel.
		_, d, _ = strings.Cut(d, "\n")
		_, d, _ = strings.Cut(d, "\n")
		out = append(out, tableDiff{Group: g, Diff: "--- cluster\n+++ kernel\n" + d})
	}
	return out
}

// compareGroups orders the skeleton first, the shared chains next, then Services by name.
func compareGroups(x, y string) int {
	rank := func(g string) int {
		switch g {
		case groupSkeleton:
			return 0
		case groupShared:
			return 1
		}
		return 2
	}
	return cmp.Or(cmp.Compare(rank(x), rank(y)), strings.Compare(x, y))
}

// owners attributes the elements without a comment (ClusterIPs, hairpin pairs, endpoint
// slots) to Services, by the addresses and the frontends of the elements with one. A key
// or address of several Services goes to the first by name, whichever table holds it.
type owners struct {
	// addrs maps the addresses of the Services' elements (their frontends, and the
	// endpoints of their slots) to the Service.
	addrs map[netip.Addr]string
	// frontends maps the keys of the Services' frontends (address, protocol and port, or
	// protocol and NodePort) to the Service: an endpoint slot's key is its frontend's and
	// a slot number.
	frontends map[model.Key]string
}

// elementOwners collects the owners of tables' elements.
func elementOwners(tables ...*model.Ruleset) owners {
	o := owners{addrs: map[netip.Addr]string{}, frontends: map[model.Key]string{}}
	own := func(a netip.Addr, svc string) {
		if a.IsValid() {
			firstByName(o.addrs, a, svc)
		}
	}
	for _, rs := range tables {
		if rs == nil {
			continue
		}
		for _, s := range rs.Sets {
			for _, e := range s.Elements {
				svc, ok := elementService(e)
				if !ok {
					continue
				}
				if slices.Contains(s.Key, model.KeyProto) && !slices.Contains(s.Key, model.KeySlot) {
					firstByName(o.frontends, e.Key(), svc)
				}
				if slices.Contains(s.Key, model.KeyAddr) {
					own(e.Addr, svc)
				}
			}
		}
	}
	// The endpoints, by their slots' frontends: a hairpin pair is two of them.
	for _, rs := range tables {
		if rs == nil {
			continue
		}
		for _, s := range rs.Sets {
			if s.Data != model.EndpointData {
				continue
			}
			for _, e := range s.Elements {
				if svc, ok := o.frontend(e); ok {
					own(e.Endpoint.Addr(), svc)
				}
			}
		}
	}
	return o
}

// firstByName makes svc the owner of k in m unless a Service first by name owns it.
func firstByName[K comparable](m map[K]string, k K, svc string) {
	if cur, ok := m[k]; !ok || svc < cur {
		m[k] = svc
	}
}

// frontend returns the Service of an endpoint slot's frontend, if any.
func (o owners) frontend(e model.Element) (string, bool) {
	f := e.Key()
	f.Slot = 0
	svc, ok := o.frontends[f]
	return svc, ok
}

// of returns the Service an element of set s without a comment belongs to, if any.
func (o owners) of(s *model.Set, e model.Element) (string, bool) {
	if slices.Contains(s.Key, model.KeySlot) {
		if svc, ok := o.frontend(e); ok {
			return svc, true
		}
	}
	svc, ok := o.addrs[e.Addr]
	return svc, ok
}

// elementService returns the Service ("namespace/name") an element's comment names.
func elementService(e model.Element) (string, bool) {
	svc, _, ok := strings.Cut(e.Comment, ":")
	return svc, ok && strings.Contains(svc, "/")
}

// groupLines splits a table into lines by group: each element on a line of its own, as
// `nft add element` takes it, sorted within its set; each chain as `nft list table` prints it.
func groupLines(rs *model.Ruleset, o owners) map[string][]string {
	groups := map[string][]string{}
	if rs == nil {
		return groups
	}
	add := func(g, line string) { groups[g] = append(groups[g], line) }
	add(groupSkeleton, fmt.Sprintf("table %s %s\n", rs.Family, model.TableName))
	for _, s := range rs.Sets {
		kind := "set"
		if s.IsMap() {
			kind = "map"
		}
		add(groupSkeleton, fmt.Sprintf("%s %s\n", kind, s.Name))
		lines := map[string][]string{}
		for _, e := range s.Elements {
			g, ok := elementService(e)
			if !ok {
				g, ok = o.of(s, e)
			}
			if !ok {
				g = groupSkeleton
			}
			lines[g] = append(lines[g], fmt.Sprintf("element %s %s %s { %s }\n", rs.Family, model.TableName, s.Name, model.RenderElement(s, e)))
		}
		for g, l := range lines {
			slices.Sort(l)
			groups[g] = append(groups[g], l...)
		}
	}
	for _, c := range rs.Chains {
		g := groupSkeleton
		if model.IsServiceChain(c.Name) {
			g = groupShared
			if svc, ok := strings.CutPrefix(c.Name, "firewall-"); ok {
				g = svc
			}
		}
		for line := range strings.Lines(model.RenderChain(rs.Family, c)) {
			add(g, strings.TrimPrefix(line, "\t"))
		}
	}
	return groups
}
