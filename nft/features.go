package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// MinKernel is the oldest Linux nftproxy is meant for: kube-proxy's nftables mode documents
// the same. nftproxy is tested on 6.1 and newer.
const MinKernel = "5.13"

// probeTable is the scratch table the feature probe creates and deletes in the same batch.
const probeTable = "nftproxy-probe"

// Features is what the running kernel's nf_tables offers nftproxy.
type Features struct {
	// Kernel is the kernel's release (uname -r).
	Kernel string
	// DestroyElements is NFT_MSG_DESTROYSETELEM (Linux 6.3): deleting set elements that may be
	// gone already. Without it, session affinity entries are deleted with DELSETELEM.
	DestroyElements bool
}

// String describes the features for the start-up log.
func (f Features) String() string {
	if f.DestroyElements {
		return "nf_tables takes every expression nftproxy writes; destroy set elements: yes"
	}
	return "nf_tables takes every expression nftproxy writes; destroy set elements: no (Linux 6.3), so session affinity entries are deleted with DELSETELEM"
}

// Probe checks that the kernel accepts every kind of object nftproxy writes, in both families,
// and finds the optional features. Each check is a batch that creates a scratch table with
// what is checked and then fails on purpose (see tryBatch): the kernel checks every message,
// loads the modules they need, and then throws the batch away, so nothing is committed, no
// packet sees the table and the ruleset generation does not move (a restarted proxy that
// finds its tables up to date commits nothing at all).
//
// The checks also load the nf_tables modules that nftproxy's rules need, a few per batch. A
// batch that needs a module the kernel has not loaded is aborted, the module loaded and the
// batch replayed; in one batch that needs many, as a first sync does, each replay loads every
// module requested so far again (Linux 6.1 asked modprobe 91 times for 13 modules, 11 s in
// a VM). Rule by rule, each module is asked for about once. The second family's rules need
// the same modules but for a few of its own (fib, reject), so its rulesets are tried whole,
// one batch each, and rule by rule only to name what the kernel refuses. Each batch the kernel
// aborts waits for an RCU grace period: the probe took 0.24 s rule by rule in both families on
// this machine's Linux 6.18, 0.16 s so (0.46 and 0.36 s on 6.1 in a VM, its modules loaded by
// the probe).
//
// A kernel that lacks something nftproxy needs gives an error naming it.
func (n *Netlink) Probe() (Features, error) {
	f := Features{Kernel: kernelRelease()}
	err := n.control(func(c *conn) error {
		for i, fam := range []model.Family{model.IPv4, model.IPv6} {
			if err := probeFamily(c, fam, i > 0); err != nil {
				return err
			}
		}
		destroy, err := probeDestroyElements(c)
		if err != nil {
			return err
		}
		f.DestroyElements = destroy
		n.destroy.set(destroy)
		return nil
	})
	return f, err
}

// probeFamily checks fam's table: first every set and chain (the chain types), then each rule
// that uses an expression no earlier rule used. With whole, each ruleset is tried whole first,
// in one batch, and looked into rule by rule only if the kernel refuses it, to name what it
// refuses: for the second family, whose rules need the modules the first family's loaded (but
// for a few of its own, fib and reject), that is two batches instead of nine.
func probeFamily(c *conn, fam model.Family, whole bool) error {
	rulesets := probeRulesets(fam)
	if whole && !slices.ContainsFunc(rulesets, func(rs *model.Ruleset) bool { return probeWhole(c, fam, rs) != nil }) {
		return nil
	}
	proven := map[string]bool{}
	for _, rs := range rulesets {
		if err := probeCommit(c, fam, rs, nil); err != nil {
			return fmt.Errorf("the kernel refuses nftproxy's %s sets and chains (nf_tables with NAT chains, CONFIG_NFT_NAT; Linux %s or later): %w", fam, MinKernel, err)
		}
		for _, ch := range rs.Chains {
			for _, r := range ch.Rules {
				e := newEncoder(&batch{}, fam)
				exprs, err := e.ruleExprs(r)
				if err != nil {
					return err
				}
				kinds := exprKinds(exprs)
				if !slices.ContainsFunc(kinds, func(k string) bool { return !proven[k] }) {
					continue
				}
				if err := probeCommit(c, fam, rs, &r); err != nil {
					return fmt.Errorf("the kernel refuses the %s rule %q (nf_tables expressions %s; Linux %s or later with CONFIG_NFT_CT, _NAT, _MASQ, _REJECT, _FIB_IPV4/6, _NUMGEN): %w",
						fam, model.RenderRule(fam, r), strings.Join(kinds, ", "), MinKernel, err)
				}
				for _, k := range kinds {
					proven[k] = true
				}
			}
		}
	}
	return nil
}

// probeChain is the chain a probe batch puts its rule in.
const probeChain = "probe"

// probeCommit tries one probe batch: the scratch table with rs's sets (no elements) and,
// without r, all its chains; with r, its regular chains (what r may jump to) and r in a
// regular chain of its own. Base chains register netfilter hooks, and taking them down again
// waits for an RCU grace period (5-15 ms): only the first batch of a ruleset has them.
func probeCommit(c *conn, fam model.Family, rs *model.Ruleset, r *model.Rule) error {
	b, e := probeBatch(fam, rs, r == nil)
	if r != nil {
		e.addChain(&model.Chain{Name: probeChain})
		if err := e.addRule(probeChain, *r); err != nil {
			return err
		}
	}
	return tryBatch(c, b, e.fam)
}

// probeBatch starts a probe batch: the scratch table with rs's sets (no elements) and its
// chains, the base chains only with base.
func probeBatch(fam model.Family, rs *model.Ruleset, base bool) (*batch, *encoder) {
	b := &batch{}
	e := newEncoder(b, fam)
	e.table = probeTable
	b.addTable(e.fam, probeTable)
	for _, s := range rs.Sets {
		e.addSet(s)
	}
	for _, ch := range rs.Chains {
		if base || ch.Hook == nil {
			e.addChain(ch)
		}
	}
	return b, e
}

// probeWhole tries rs in one batch: the scratch table with its sets, its chains and their
// rules.
func probeWhole(c *conn, fam model.Family, rs *model.Ruleset) error {
	b, e := probeBatch(fam, rs, true)
	for _, ch := range rs.Chains {
		if err := e.addRules(ch); err != nil {
			return err
		}
	}
	return tryBatch(c, b, e.fam)
}

// tryBatch sends b, which starts by creating the probe table in family fam, with one more
// message that fails on purpose: creating that table again, exclusively (EEXIST). The kernel
// goes through every message of a batch, reporting each failure in order, and aborts a batch
// with any, committing nothing. So b's own messages were accepted exactly when the first
// error is that EEXIST; a module a message needed was loaded either way.
func tryBatch(c *conn, b *batch, fam byte) error {
	ae := newAttrs()
	ae.String(unix.NFTA_TABLE_NAME, probeTable)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, 0)
	b.add(fam, unix.NFT_MSG_NEWTABLE, netlink.Create|netlink.Excl, ae)
	err := b.commit(c, 0)
	switch {
	case errors.Is(err, unix.EEXIST):
		return nil
	case err == nil:
		return errors.New("the kernel committed a probe batch that had to fail")
	}
	return err
}

// exprKinds names the netlink expressions of a rule (ct, nat, fib...), sorted.
func exprKinds(exprs []expr.Any) []string {
	var out []string
	for _, x := range exprs {
		k := strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", x), "*expr."))
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// probeRulesets returns rulesets of fam that between them use every kind of rule nftproxy
// writes: the skeleton with a service range and masquerading by source range, and by input
// interface; Services of each protocol and type, with several endpoints, session affinity,
// both traffic policies Local and source ranges.
func probeRulesets(fam model.Family) []*model.Ruleset {
	addr := func(v4, v6 string) netip.Addr {
		if fam == model.IPv6 {
			return netip.MustParseAddr(v6)
		}
		return netip.MustParseAddr(v4)
	}
	prefix := func(a netip.Addr, bits4, bits6 int) netip.Prefix {
		if fam == model.IPv6 {
			return netip.PrefixFrom(a, bits6).Masked()
		}
		return netip.PrefixFrom(a, bits4).Masked()
	}
	node := addr("192.0.2.1", "2001:db8::1")
	local := model.Endpoint{Addr: addr("10.0.0.1", "fd00::1"), Port: 8080, Ready: true, Serving: true, NodeName: "probe"}
	remote := model.Endpoint{Addr: addr("10.0.0.2", "fd00::2"), Port: 8080, Ready: true, Serving: true, NodeName: "other"}
	var services []model.Service
	for i, proto := range []model.Protocol{model.TCP, model.UDP, model.SCTP} {
		services = append(services, model.Service{
			Name:                     model.ServiceName{Namespace: "probe", Name: proto.String()},
			Type:                     model.LoadBalancer,
			ClusterIPs:               []netip.Addr{addr("10.96.0."+fmt.Sprint(i+1), "fd00:96::"+fmt.Sprint(i+1))},
			ExternalIPs:              []netip.Addr{addr("198.51.100."+fmt.Sprint(i+1), "2001:db8:1::"+fmt.Sprint(i+1))},
			LoadBalancerIPs:          []netip.Addr{addr("203.0.113."+fmt.Sprint(i+1), "2001:db8:2::"+fmt.Sprint(i+1))},
			ExternalPolicyLocal:      i == 0,
			InternalPolicyLocal:      i == 1,
			LoadBalancerSourceRanges: []netip.Prefix{prefix(node, 24, 64)},
			AffinityTimeout:          uint32(10800 * (i % 2)),
			Ports: []model.ServicePort{{Name: "p", Protocol: proto, Port: 80, NodePort: uint16(30000 + i),
				Endpoints: []model.Endpoint{local, remote}}},
		})
	}
	services = append(services, model.Service{
		Name:       model.ServiceName{Namespace: "probe", Name: "none"},
		ClusterIPs: []netip.Addr{addr("10.96.0.9", "fd00:96::9")},
		Ports:      []model.ServicePort{{Name: "p", Protocol: model.TCP, Port: 80}},
	})
	bySource := model.NodeConfig{Family: fam, NodeName: "probe", NodeIPs: []netip.Addr{node},
		ClusterCIDRs: []netip.Prefix{prefix(local.Addr, 16, 64)}, ServiceCIDRs: []netip.Prefix{prefix(addr("10.96.0.0", "fd00:96::"), 12, 112)},
		NodePortAddresses: []netip.Prefix{prefix(node, 32, 128)}, LocalAddresses: []netip.Addr{node}}
	byInterface := model.NodeConfig{Family: fam, NodeName: "probe", PodInterface: "veth", PodInterfacePrefix: true, MasqueradeAll: true}
	return []*model.Ruleset{model.Build(services, bySource), model.Build(services, byInterface)}
}

// probeDestroyElements reports whether the kernel knows NFT_MSG_DESTROYSETELEM: it destroys an
// element that is not there in a scratch set. Kernels before 6.3 have no handler for the
// message type and refuse the batch with EINVAL.
func probeDestroyElements(c *conn) (bool, error) {
	b := &batch{}
	e := newEncoder(b, model.IPv4)
	e.table = probeTable
	set := &model.Set{Name: "probe", Key: []model.KeyField{model.KeyAddr}}
	b.addTable(e.fam, probeTable)
	e.addSet(set)
	if err := e.writeElements(nftMsgDestroySetElem, set, []model.Element{{Addr: netip.IPv4Unspecified()}}); err != nil {
		return false, err
	}
	err := tryBatch(c, b, e.fam)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		return false, nil
	}
	return false, fmt.Errorf("probe for NFT_MSG_DESTROYSETELEM: %w", err)
}

// kernelRelease returns uname's release, "unknown" if it cannot be read.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
