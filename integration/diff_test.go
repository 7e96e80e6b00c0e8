package integration

import (
	"errors"
	"os/exec"
	"slices"
	"testing"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/internal/scenario"
)

// TestDiffCommand programs the session-affinity scenario into a network namespace and runs
// `nftproxy diff` there: it prints nothing and exits 0 while the kernel holds exactly the
// scenario's rules; with one endpoint slot deleted behind nftproxy's back it prints that
// line, under its Service, and exits 1.
func TestDiffCommand(t *testing.T) {
	topology.RequirePrivileged(t)
	scs, err := scenario.Load("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	sc := scs[slices.IndexFunc(scs, func(s scenario.Scenario) bool { return s.Name == "session-affinity" })]
	rulesets, err := sc.Render()
	if err != nil {
		t.Fatal(err)
	}
	ns := topology.NewNetNS(t, "diff")
	if err := kernelBackend(t, ns).Replace(rulesets...); err != nil {
		t.Fatal(err)
	}
	diff := func() (string, int) {
		t.Helper()
		args := append([]string{"netns", "exec", ns.Name, proxyBin, "diff", "--manifests", sc.Dir}, sc.Args...)
		out, err := exec.Command("ip", args...).Output()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("nftproxy diff: %v", err)
		}
		if exit != nil && exit.ExitCode() != 1 {
			t.Fatalf("nftproxy diff: %v\n%s", err, exit.Stderr)
		}
		return string(out), exitCode(exit)
	}

	if out, code := diff(); code != 0 || out != "" {
		t.Fatalf("nftproxy diff of the programmed scenario: exit %d, output:\n%s\nwant exit 0 and no output", code, out)
	}

	ns.Run(t, "nft", "delete element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 1 }")
	want := `=== ip default/sticky
--- cluster
+++ kernel
@@ -1,5 +1,4 @@
 element ip nftproxy cluster-ips { 10.96.0.110 }
 element ip nftproxy service-ips { 10.96.0.110 . tcp . 80 comment "default/sticky:p" : goto cluster-tcp-2-affinity-10800 }
 element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 0 comment "default/sticky:p" : 10.244.2.110 . 8080 }
-element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 1 comment "default/sticky:p" : 10.244.3.110 . 8080 }
 element ip nftproxy affinity-services { 10.96.0.110 . tcp . 80 comment "default/sticky:p" : goto affinity-record-tcp-10800 }
`
	if out, code := diff(); code != 1 || out != want {
		t.Errorf("nftproxy diff with a slot deleted: exit %d, output:\n%s\nwant exit 1 and:\n%s", code, out, scenario.LineDiff(want, out))
	}
}

// exitCode returns the exit status of a command that ran: 0, or its exit error's.
func exitCode(exit *exec.ExitError) int {
	if exit == nil {
		return 0
	}
	return exit.ExitCode()
}
