package integration

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/model"
	"github.com/nftproxy/nftproxy/nft"
)

// affinityTable is an ip nftproxy table with just the affinity map, filled by nft, as the
// packet path would fill it: client . service address . protocol . port : endpoint.
const affinityTable = `table ip nftproxy {
	map affinity {
		typeof ip saddr . ip daddr . meta l4proto . th dport : ip daddr . th dport
		size 1048576
		flags dynamic,timeout
		elements = { 10.244.1.3 . 10.96.30.10 . tcp . 80 timeout 1h : 10.244.1.2 . 8080,
			     10.244.1.4 . 10.96.30.10 . tcp . 80 timeout 1h : 10.244.1.2 . 8080,
			     10.244.1.5 . 10.96.30.10 . tcp . 80 timeout 1h : 10.244.1.2 . 8080,
			     10.244.1.6 . 10.96.30.10 . tcp . 80 timeout 1h : 10.244.2.3 . 8080 }
	}
}
`

// TestPruneAffinityKernel: PruneAffinity deletes the entries to a gone endpoint and keeps
// the others, also when an entry it listed is gone before it deletes it (an entry expiring
// meanwhile). Linux 6.3+ deletes with NFT_MSG_DESTROYSETELEM; older kernels reject that
// message and PruneAffinity falls back to NFT_MSG_DELSETELEM (make test-kernel-6.1 runs
// this on 6.1).
func TestPruneAffinityKernel(t *testing.T) {
	topology.RequirePrivileged(t)
	gone := netip.MustParseAddrPort("10.244.1.2:8080")
	for _, row := range []struct {
		name        string
		vanish      string // a client whose entry nft deletes after the listing
		wantDeleted []int  // DESTROYSETELEM cannot tell which entries it found: 3 on 6.3+
	}{
		{"all-present", "", []int{3}},
		{"one-expired-meanwhile", "10.244.1.4", []int{2, 3}},
	} {
		t.Run(row.name, func(t *testing.T) {
			ns := topology.NewNetNS(t, "aff")
			ns.Run(t, "nft", "-f", writeTemp(t, affinityTable))
			be := kernelBackend(t, ns)
			vanished := false
			deleted, err := be.PruneAffinity(model.IPv4, func(e nft.AffinityEntry) bool {
				if row.vanish != "" && !vanished {
					vanished = true
					ns.Run(t, "nft", "delete", "element", "ip", "nftproxy", "affinity",
						"{ "+row.vanish+" . 10.96.30.10 . tcp . 80 }")
				}
				return e.Endpoint != gone
			})
			if err != nil {
				t.Fatalf("PruneAffinity: %v", err)
			}
			if !slices.Contains(row.wantDeleted, deleted) {
				t.Errorf("PruneAffinity deleted %d entries, want one of %v", deleted, row.wantDeleted)
			}
			left := ns.Run(t, "nft", "list", "map", "ip", "nftproxy", "affinity")
			if strings.Contains(left, gone.Addr().String()+" . ") || !strings.Contains(left, "10.244.1.6 . ") {
				t.Errorf("after pruning the entries to %s, the map is:\n%s", gone, left)
			}
		})
	}
}

// writeTemp writes s to a file in the test's temporary directory and returns its path.
func writeTemp(t *testing.T, s string) string {
	t.Helper()
	p := t.TempDir() + "/input.nft"
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProbe checks the kernel feature probe a starting daemon runs: it passes on this kernel
// in both families, finds NFT_MSG_DESTROYSETELEM exactly on Linux 6.3 and later, leaves no
// table behind and commits nothing (the ruleset generation stays).
func TestProbe(t *testing.T) {
	topology.RequirePrivileged(t)
	ns := topology.NewNetNS(t, "probe")
	be := kernelBackend(t, ns)
	gen, err := be.Generation()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	f, err := be.Probe()
	t.Logf("probe took %v: %s", time.Since(start), f)
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if after, err := be.Generation(); err != nil || after != gen {
		t.Errorf("ruleset generation %d before the probe, %d after (%v): it committed", gen, after, err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(f.Kernel, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", f.Kernel, err)
	}
	if want := major > 6 || major == 6 && minor >= 3; f.DestroyElements != want {
		t.Errorf("Linux %s: DestroyElements = %v, want %v", f.Kernel, f.DestroyElements, want)
	}
	if left := ns.Run(t, "nft", "list", "tables"); strings.TrimSpace(left) != "" {
		t.Errorf("the probe left tables behind:\n%s", left)
	}
}
