// Command nftproxy is a Kubernetes service proxy that programs nftables over netlink.
//
//	nftproxy run [--kubeconfig FILE] [flags] keep the node's rules in line with the cluster
//	nftproxy run --config FILE [flags]       ... configured by a kube-proxy configuration file
//	nftproxy run --manifests DIR [flags]     ... or with manifests in a directory
//	nftproxy render [flags]                  print the rules run would program (--manifests or a cluster)
//	nftproxy diff [flags]                    compare them with the kernel's, by Service
//	nftproxy services [flags] [NS/NAME]      list the Services the kernel's tables hold
//	nftproxy explain [flags] SRC DST:PORT    what the rules do with a new connection
//	nftproxy cleanup [--kube-proxy]          remove nftproxy's tables (and kube-proxy's)
//	nftproxy version                         print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/daemon"
	"github.com/nftproxy/nftproxy/internal/logkey"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `nftproxy: a Kubernetes service proxy on nftables

Usage:
  nftproxy run [--kubeconfig FILE] [flags] program this node's Services and keep them in sync
  nftproxy run --config FILE [flags]       ... configured by a kube-proxy configuration file
                                           (KubeProxyConfiguration, as kubeadm writes it)
  nftproxy run --manifests DIR [flags]     ... taking them from manifests instead of a cluster
  nftproxy render [flags]                  print the ruleset run would program for the node,
                                           from --manifests DIR or the cluster (no root needed)
  nftproxy diff [flags]                    compare it with the tables the kernel holds, by
                                           Service; exit status 1 when they differ
  nftproxy services [flags] [NS/NAME]      list the Service ports the kernel's tables hold:
                                           frontends, endpoints, policy, affinity (--output json),
                                           and the daemon's last sync, pending changes and
                                           skipped objects (--daemon URL)
  nftproxy explain [flags] SRC DST:PORT[/PROTO]
                                           what the kernel's rules (or, --offline, the cluster's)
                                           do with a new connection from SRC (a pod, --from node
                                           or external): Service, endpoints and their chances,
                                           masquerade, affinity, or reject/drop and why
  nftproxy cleanup [--kube-proxy]          remove nftproxy's tables (ip and ip6 nftproxy); with
                                           --kube-proxy also kube-proxy's (ip and ip6 kube-proxy),
                                           and report its iptables mode's KUBE- chains
  nftproxy version                         print the version

Run "nftproxy COMMAND --help" for the flags of a command.
`

// errDiffer is what diff returns when the rules differ: exit status 1, as diff(1).
var errDiffer = errors.New("the kernel's rules differ from the cluster's")

// snapshotTimeout bounds how long render and diff wait for the API server's objects.
const snapshotTimeout = time.Minute

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, errDiffer) {
			os.Exit(1)
		}
		if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "nftproxy:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "run":
		return runDaemon(ctx, args[1:], stdout, stderr)
	case "render":
		return runRender(ctx, args[1:], stdout, stderr)
	case "diff":
		return runDiff(ctx, args[1:], stdout, stderr)
	case "services":
		return runServices(ctx, args[1:], stdout, stderr)
	case "explain":
		return runExplain(ctx, args[1:], stdout, stderr)
	case "cleanup":
		return runCleanup(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "nftproxy", version)
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// setup parses the flags of run, render or diff (and the --config file under them) and returns
// them with the logger and node name they select. --help prints the flags, in sections, to
// stdout.
func setup(name string, args []string, stdout, stderr io.Writer) (*daemon.Options, *slog.Logger, string, error) {
	o, log, node, _, err := setupArgs(name, args, 0, stdout, stderr)
	return o, log, node, err
}

// setupArgs is setup for a command that takes up to maxArgs arguments besides the flags
// (services), which it returns.
func setupArgs(name string, args []string, maxArgs int, stdout, stderr io.Writer) (*daemon.Options, *slog.Logger, string, []string, error) {
	run := name == "run"
	o, fs, err := daemon.Parse(args, run, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintf(stdout, "Usage:\n  nftproxy %s [flags]\n", name)
		daemon.PrintUsage(stdout, run)
		return nil, nil, "", nil, err
	}
	if err != nil {
		fmt.Fprintf(stderr, "Run \"nftproxy %s --help\" for the flags.\n", name)
		return nil, nil, "", nil, err
	}
	if o.Version {
		fmt.Fprintln(stdout, "nftproxy", version)
		return nil, nil, "", nil, flag.ErrHelp
	}
	if fs.NArg() > maxArgs {
		return nil, nil, "", nil, fmt.Errorf("unexpected arguments: %v", fs.Args()[maxArgs:])
	}
	if err := o.Validate(); err != nil {
		return nil, nil, "", nil, err
	}
	log, err := o.Logger(stderr)
	if err != nil {
		return nil, nil, "", nil, err
	}
	for _, w := range o.Warnings() {
		log.Warn(w)
	}
	node, err := o.NodeName()
	if err != nil {
		return nil, nil, "", nil, err
	}
	return o, log, node, fs.Args(), nil
}

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, log, node, err := setup("run", args, stdout, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, o, node, log, version)
}

func runRender(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, log, node, err := setup("render", args, stdout, stderr)
	if err != nil {
		return err
	}
	objs, err := snapshot(ctx, o, node, log)
	if err != nil {
		return err
	}
	rulesets, bad := o.Config.Preview(objs, node)
	warnBad(log, bad)
	for _, rs := range rulesets {
		fmt.Fprint(stdout, model.Render(rs))
	}
	return nil
}

// desiredHere takes a snapshot of the cluster the options name and builds the rulesets run
// would program from it on this machine (with its addresses), warning about what it skips.
func desiredHere(ctx context.Context, o *daemon.Options, node string, log *slog.Logger) (cluster.Objects, []*model.Ruleset, error) {
	objs, err := snapshot(ctx, o, node, log)
	if err != nil {
		return cluster.Objects{}, nil, err
	}
	addrs, err := daemon.LocalAddresses()
	if err != nil {
		return cluster.Objects{}, nil, err
	}
	desired, bad := o.Config.Desired(objs, node, addrs)
	warnBad(log, bad)
	return objs, desired, nil
}

// runDiff prints, group by group, how the tables of the current network namespace differ from
// what the cluster asks for, built as run builds them (with this machine's addresses).
func runDiff(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, log, node, err := setup("diff", args, stdout, stderr)
	if err != nil {
		return err
	}
	_, desired, err := desiredHere(ctx, o, node, log)
	if err != nil {
		return err
	}
	backend := nft.NewNetlink("")
	defer backend.Close()
	differ := false
	for _, want := range desired {
		got, _, err := backend.Read(want.Family, want)
		if errors.Is(err, nft.ErrIncompatible) {
			// Nothing to compare line by line: the table is not in the layout nftproxy writes.
			fmt.Fprintf(stdout, "=== %s %s\n%v\n", want.Family, groupSkeleton, err)
			differ = true
			continue
		}
		if err != nil {
			return err
		}
		for _, d := range diffTables(want, got) {
			fmt.Fprintf(stdout, "=== %s %s\n%s", want.Family, d.Group, d.Diff)
			differ = true
		}
	}
	if differ {
		return errDiffer
	}
	return nil
}

// snapshot returns the objects render and diff work from: --manifests, or one list of the
// cluster's.
func snapshot(ctx context.Context, o *daemon.Options, node string, log *slog.Logger) (cluster.Objects, error) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()
	return o.Objects(ctx, node, log, version)
}

// warnBad logs the objects that were skipped.
func warnBad(log *slog.Logger, bad []cluster.BadObject) {
	for _, b := range bad {
		log.Warn("skipping object that cannot be turned into rules", logkey.Object, b.String())
	}
}

func runCleanup(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeProxy := fs.Bool("kube-proxy", false, "also remove kube-proxy's nftables tables (ip and ip6 kube-proxy) and report the chains its iptables mode left in iptables-nft's tables")
	if err := fs.Parse(args); err != nil {
		return err
	}
	backend := nft.NewNetlink("")
	defer backend.Close()
	if err := backend.Delete(model.IPv4, model.IPv6); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "removed tables ip nftproxy and ip6 nftproxy")
	if !*kubeProxy {
		return nil
	}
	tables, err := backend.ListTables()
	if err != nil {
		return err
	}
	kp, leftovers := kubeProxyTables(tables)
	if err := backend.DeleteTables(kp...); err != nil {
		return err
	}
	for _, t := range kp {
		fmt.Fprintf(stdout, "removed table %s\n", t)
	}
	if len(kp) == 0 {
		fmt.Fprintln(stdout, "no kube-proxy nftables tables (ip and ip6 kube-proxy)")
	}
	if len(leftovers) == 0 {
		fmt.Fprintln(stdout, "no KUBE- chains in iptables-nft's tables")
		return nil
	}
	fmt.Fprintln(stdout, "kube-proxy's iptables mode left chains in iptables-nft's tables:")
	for _, t := range leftovers {
		fmt.Fprintf(stdout, "  table %s: %s\n", t.TableRef, strings.Join(t.Chains, " "))
	}
	fmt.Fprint(stdout, `nftproxy leaves them to their owner, whose base chains jump to them. Remove them with
  kube-proxy --cleanup
or, on a node without kube-proxy's binary,
  iptables-save | grep -v KUBE- | iptables-restore
  ip6tables-save | grep -v KUBE- | ip6tables-restore
`)
	return nil
}

// The names of kube-proxy's objects.
const (
	// kubeProxyTable is the table of kube-proxy's nftables mode, in the ip and ip6 families.
	kubeProxyTable = "kube-proxy"
	// kubeChainPrefix starts the names of the chains of its iptables mode.
	kubeChainPrefix = "KUBE-"
)

// kubeProxyTables picks, from the namespace's tables, kube-proxy's nftables tables and,
// with only their KUBE- chains, the iptables-nft tables (ip and ip6 nat, filter and mangle)
// where its iptables mode left chains.
func kubeProxyTables(tables []nft.TableChains) (own []nft.TableRef, leftovers []nft.TableChains) {
	for _, t := range tables {
		if t.Family != "ip" && t.Family != "ip6" {
			continue
		}
		switch t.Name {
		case kubeProxyTable:
			own = append(own, t.TableRef)
		case "nat", "filter", "mangle":
			var kube []string
			for _, c := range t.Chains {
				if strings.HasPrefix(c, kubeChainPrefix) {
					kube = append(kube, c)
				}
			}
			if len(kube) > 0 {
				leftovers = append(leftovers, nft.TableChains{TableRef: t.TableRef, Chains: kube})
			}
		}
	}
	return own, leftovers
}
