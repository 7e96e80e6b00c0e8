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
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/daemon"
	"github.com/nftproxy/nftproxy/explain"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// explainUsage follows run's flags in `explain --help`.
const explainUsage = `
Arguments and flags of explain:
  SRC                    the client's address (a pod's, by default)
  DST:PORT[/PROTO]       the destination, [v6]:PORT for IPv6; PROTO tcp (default), udp or sctp
  --from string          where the packet comes from: pod (default; it arrives on the pods'
                         interface), node (this node sends it) or external
  --in-interface string  the interface it arrives on (implies --from external unless --from
                         says otherwise)
  --offline              predict from the cluster's objects through the model (as render),
                         instead of reading the kernel's tables and affinity map
  -o, --output string    table or json (default table)
`

// explainFlags are the flags of explain that run's flag set does not know.
type explainFlags struct {
	format, from, iif string
	offline           bool
}

// splitExplainFlags takes explain's own flags out of args, which go to the flags of run.
func splitExplainFlags(args []string) ([]string, explainFlags, error) {
	args, format, err := splitOutputFlag(args)
	if err != nil {
		return nil, explainFlags{}, err
	}
	f := explainFlags{format: format}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, value, hasValue := strings.Cut(a, "=")
		var dst *string
		switch name {
		case "--from":
			dst = &f.from
		case "--in-interface":
			dst = &f.iif
		case "--offline":
			f.offline = !hasValue || value == "true"
			if hasValue && value != "true" && value != "false" {
				return nil, f, fmt.Errorf("--offline=%q: want true or false", value)
			}
			continue
		default:
			rest = append(rest, a)
			continue
		}
		if !hasValue {
			if i+1 == len(args) {
				return nil, f, fmt.Errorf("flag needs an argument: %s", name)
			}
			i++
			value = args[i]
		}
		*dst = value
	}
	return rest, f, nil
}

// parsePacket reads explain's arguments: SRC and DST:PORT[/PROTO].
func parsePacket(src, dst string, f explainFlags) (explain.Packet, error) {
	var p explain.Packet
	a, err := netip.ParseAddr(src)
	if err != nil {
		return p, fmt.Errorf("source %q: %w", src, err)
	}
	p.Src = a.Unmap()
	dst, proto, hasProto := strings.Cut(dst, "/")
	p.Proto = model.TCP
	if hasProto {
		var ok bool
		if p.Proto, ok = parseProtocol(strings.ToLower(proto)); !ok {
			return p, fmt.Errorf("protocol %q: want tcp, udp or sctp", proto)
		}
	}
	ap, err := netip.ParseAddrPort(dst)
	if err != nil {
		return p, fmt.Errorf("destination %q: want ADDRESS:PORT or [IPv6]:PORT: %w", dst, err)
	}
	p.Dst = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if p.Src.Is4() != p.Dst.Addr().Is4() {
		return p, fmt.Errorf("%s and %s are of different families", p.Src, p.Dst.Addr())
	}
	p.InInterface = f.iif
	switch f.from {
	case "":
		p.From = explain.FromPod
		if f.iif != "" {
			p.From = explain.FromExternal
		}
	case "pod", "node", "external":
		p.From = explain.Origin(f.from)
	default:
		return p, fmt.Errorf("--from %q: want pod, node or external", f.from)
	}
	if p.From == explain.FromNode && f.iif != "" {
		return p, errors.New("--in-interface: a packet this node sends arrives on no interface")
	}
	return p, nil
}

// runExplain says what nftproxy's rules do with a new connection: from the kernel's tables
// (read against the rules the cluster asks for, as services reads them) or, --offline,
// from the rules the model builds for the cluster's objects.
func runExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args, f, err := splitExplainFlags(args)
	if err != nil {
		return err
	}
	o, log, node, rest, err := setupArgs("explain", args, 2, stdout, stderr)
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, explainUsage)
		}
		return err
	}
	if len(rest) != 2 {
		return errors.New("want SRC DST:PORT[/PROTO] (see nftproxy explain --help)")
	}
	p, err := parsePacket(rest[0], rest[1], f)
	if err != nil {
		return err
	}
	fam := model.IPv4
	if p.Dst.Addr().Is6() {
		fam = model.IPv6
	}

	var st explain.State
	var source string
	objs, err := snapshot(ctx, o, node, log)
	if err != nil {
		return err
	}
	services, _ := cluster.Convert(objs, cluster.ConvertOptions{ServiceProxyName: o.Config.ServiceProxyName})
	st.Kinds = frontendKinds(services)
	if f.offline {
		// As render: the Node object's addresses are the node's.
		info, _ := cluster.FindNode(objs.Nodes, node)
		st.LocalAddrs = append(slices.Clone(info.InternalIPs), info.ExternalIPs...)
		rulesets, bad := o.Config.Desired(objs, node, st.LocalAddrs)
		warnBad(log, bad)
		st.Ruleset = familyTable(rulesets, fam)
		source = "predicted from the cluster's objects"
	} else {
		_, desired, err := desiredHere(ctx, o, node, log)
		if err != nil {
			return err
		}
		want := familyTable(desired, fam)
		if want == nil {
			want = &model.Ruleset{Family: fam}
		}
		backend := nft.NewNetlink("")
		defer backend.Close()
		got, _, err := backend.Read(fam, want)
		if err != nil {
			return fmt.Errorf("read the kernel's table %s %s: %w", fam, model.TableName, err)
		}
		if got == nil {
			return fmt.Errorf("the kernel holds no table %s %s in this network namespace (use --offline to predict)", fam, model.TableName)
		}
		entries, err := backend.AffinityEntries(fam)
		if err != nil {
			return fmt.Errorf("list the affinity map: %w", err)
		}
		st.Ruleset, st.Affinity = got, entries
		if st.LocalAddrs, err = daemon.LocalAddresses(); err != nil {
			return err
		}
		source = "the kernel's table"
	}
	if st.Ruleset == nil {
		return fmt.Errorf("no %s table to explain with", fam)
	}
	ex, err := explain.Explain(st, p)
	if err != nil {
		return err
	}
	if f.format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ex)
	}
	printExplanation(stdout, ex, source)
	return nil
}

// familyTable returns the ruleset of fam among rulesets, or nil.
func familyTable(rulesets []*model.Ruleset, fam model.Family) *model.Ruleset {
	for _, rs := range rulesets {
		if rs.Family == fam {
			return rs
		}
	}
	return nil
}

// frontendKinds tells the cluster's ExternalIPs from its LoadBalancer IPs, in explain's words.
func frontendKinds(services []model.Service) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for a, k := range externalKinds(services) {
		out[a] = explain.FrontendExternalIP
		if k == kindLoadBalancer {
			out[a] = explain.FrontendLoadBalancer
		}
	}
	return out
}

// printExplanation prints an explanation as text: the packet, the Service and frontend,
// the source ranges and affinity, then one line per outcome.
func printExplanation(w io.Writer, ex explain.Explanation, source string) {
	from := "from a pod"
	switch ex.From {
	case explain.FromNode:
		from = "from this node"
	case explain.FromExternal:
		from = "from outside"
	}
	if ex.InInterface != "" {
		from += " on " + ex.InInterface
	}
	fmt.Fprintf(w, "%s -> %s/%s, %s (%s %s, %s)\n", ex.Source, ex.Destination, ex.Protocol, from, ex.Family, model.TableName, source)
	if ex.Service != "" || ex.Frontend != "" {
		fmt.Fprintf(w, "  service        %s (%s)\n", cmp.Or(ex.Service, "?"), cmp.Or(ex.Frontend, "?"))
	}
	if r := ex.SourceRanges; r != nil {
		verdict := "source allowed"
		if !r.Allowed {
			verdict = "source NOT allowed"
		}
		fmt.Fprintf(w, "  source ranges  %s (%s)\n", verdict, strings.Join(r.Ranges, " "))
	}
	if a := ex.Affinity; a != nil {
		line := "ClientIP"
		if a.TimeoutSeconds > 0 {
			line += fmt.Sprintf(", %v after the last new connection", time.Duration(a.TimeoutSeconds)*time.Second)
		}
		if a.Endpoint != "" {
			line += "; this client is remembered on " + a.Endpoint
			if a.ExpiresSeconds > 0 {
				line += fmt.Sprintf(" for another %v", time.Duration(a.ExpiresSeconds)*time.Second)
			}
		} else if strings.HasPrefix(source, "predicted") {
			line += "; offline, the kernel's entries are not read"
		} else {
			line += "; no entry for this client yet"
		}
		fmt.Fprintf(w, "  affinity       %s\n", line)
	}
	switch ex.Verdict {
	case explain.Forward:
		n := len(ex.Outcomes)
		if n == 1 {
			fmt.Fprintln(w, "  verdict        forward to 1 endpoint")
		} else {
			fmt.Fprintf(w, "  verdict        forward to one of %d endpoints\n", n)
		}
	case explain.Mixed:
		fmt.Fprintln(w, "  verdict        it depends on the slot drawn")
	default:
		fmt.Fprintf(w, "  verdict        %s: %s\n", ex.Verdict, ex.Reason)
	}
	if ex.Verdict == explain.Forward || ex.Verdict == explain.Mixed {
		width := 0
		for _, o := range ex.Outcomes {
			width = max(width, len(o.Endpoint))
		}
		for _, o := range ex.Outcomes {
			chance := "affinity"
			if o.Of > 0 {
				chance = fmt.Sprintf("%d/%d slots", o.Slots, o.Of)
			}
			if o.Verdict != explain.Forward {
				fmt.Fprintf(w, "    %-9s %s: %s\n", o.Chance, o.Verdict, o.Reason)
				continue
			}
			masq := "source kept"
			if o.Masquerade {
				masq = "masqueraded"
			}
			fmt.Fprintf(w, "    %5.1f%%  %-*s  %-9s  %s: %s\n", 100*o.Probability, width, o.Endpoint, chance, masq, o.MasqueradeReason)
		}
	}
	for _, n := range ex.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
}
