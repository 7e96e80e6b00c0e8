package integration

import (
	"encoding/json"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftproxy/nftproxy/daemon"
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
 element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 0 : 10.244.2.110 . 8080 }
-element ip nftproxy service-endpoints { 10.96.0.110 . tcp . 80 . 1 : 10.244.3.110 . 8080 }
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

// servicesStatus is what `nftproxy services --output json` prints, as much as the tests read.
type servicesStatus struct {
	Services []struct {
		Service string `json:"service"`
	} `json:"services"`
	Daemon      *daemon.DebugServices `json:"daemon"`
	DaemonError string                `json:"daemonError"`
}

// TestDiffKubeconfig runs `nftproxy diff --kubeconfig` in node1 against a real API server: it
// exits 1 while a change of an EndpointSlice is not programmed (nftproxy not running) and
// names the slot under its Service, and 0 once a daemon has synced, as the daemon's
// /debug/services says (read by `nftproxy services --output json`, which notes an absent
// daemon without failing).
func TestDiffKubeconfig(t *testing.T) {
	k := newKubeHarness(t)
	ctx := t.Context()
	svc, err := k.admin.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP,
			Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	epSlices := k.admin.DiscoveryV1().EndpointSlices("default")
	if _, err := epSlices.Create(ctx, readySlice("web", "10.244.1.10", nodeName, "10.244.2.10", node2Name), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create slice: %v", err)
	}
	// The flags of startKillable, so that diff builds the rules the daemon programs.
	inNode1 := func(args ...string) *exec.Cmd {
		return exec.Command("ip", slices.Concat([]string{"netns", "exec", k.tp.Node1.Name, proxyBin}, args,
			k.source, []string{"--hostname-override", nodeName, "--cluster-cidr", clusterCIDRs})...)
	}
	diff := func(t *testing.T) (string, int) {
		t.Helper()
		out, err := inNode1("diff").Output()
		var exit *exec.ExitError
		if err != nil && (!errors.As(err, &exit) || exit.ExitCode() != 1) {
			t.Fatalf("nftproxy diff --kubeconfig: %v\n%s", err, stderrOf(err))
		}
		return string(out), exitCode(exit)
	}
	status := func(t *testing.T) servicesStatus {
		t.Helper()
		out, err := inNode1("services", "--output", "json").Output()
		if err != nil {
			t.Fatalf("nftproxy services --output json: %v\n%s", err, stderrOf(err))
		}
		var s servicesStatus
		if err := json.Unmarshal(out, &s); err != nil {
			t.Fatalf("nftproxy services --output json: %v\n%s", err, out)
		}
		return s
	}
	// waitSynced waits until the daemon reports a successful sync and nothing pending.
	waitSynced := func(t *testing.T) {
		t.Helper()
		deadline := time.Now().Add(readyTimeout)
		for {
			s := status(t)
			if d := s.Daemon; d != nil && d.Families[0].LastSuccess != nil && d.Pending.Since == nil {
				return
			}
			k.checkProxy(t)
			if time.Now().After(deadline) {
				t.Fatalf("the daemon did not report a sync with nothing pending within %v: %+v", readyTimeout, s)
			}
			time.Sleep(pollInterval)
		}
	}

	if out, code := diff(t); code != 1 || !strings.Contains(out, "=== ip (skeleton)") {
		t.Errorf("before nftproxy ever ran: exit %d, output:\n%s\nwant exit 1 and the whole table missing", code, out)
	}

	first := k.startKillable("first", "--min-sync-period=0")
	waitSynced(t)
	if out, code := diff(t); code != 0 || out != "" {
		t.Errorf("after the daemon synced: exit %d, output:\n%s\nwant exit 0 and nothing", code, out)
	}

	first.kill(t)
	es, err := epSlices.Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints[1].Addresses = []string{"10.244.2.11"}
	if _, err := epSlices.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update slice: %v", err)
	}
	slot := `element ip nftproxy service-endpoints { ` + svc.Spec.ClusterIP + ` . tcp . 80 . 1 : `
	out, code := diff(t)
	for _, want := range []string{"=== ip default/web\n", "\n-" + slot + "10.244.2.11 . 8080 }\n", "\n+" + slot + "10.244.2.10 . 8080 }\n"} {
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("with the slice changed and no daemon: exit %d, output:\n%s\nwant exit 1 and %q", code, out, want)
		}
	}
	if s := status(t); s.Daemon != nil || !strings.Contains(s.DaemonError, "127.0.0.1:10249") || len(s.Services) == 0 {
		t.Errorf("services without a daemon: %+v, want the kernel's Services and a note naming the daemon's address", s)
	}

	k.startKillable("second", "--min-sync-period=0")
	waitSynced(t)
	if out, code := diff(t); code != 0 || out != "" {
		t.Errorf("after the restarted daemon synced: exit %d, output:\n%s\nwant exit 0 and nothing", code, out)
	}
}

// stderrOf returns the standard error of a command that exited with an error.
func stderrOf(err error) []byte {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.Stderr
	}
	return nil
}
