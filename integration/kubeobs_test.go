package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftproxy/nftproxy/integration/topology"
)

// What the proxy tells the cluster and its operators, through the real API server: the
// network programming latency SLI from an EndpointSlice's trigger time, /healthz and /livez
// for a node on its way out, and events. The proxy serves /metrics on 127.0.0.1:10249 and
// health on :10256 inside node1 (their defaults).

const (
	metricsURL = "http://127.0.0.1:10249/metrics"
	healthURL  = "http://127.0.0.1:10256"
)

// nsGet sends GET url from inside ns and returns the status and body.
func nsGet(ns *topology.NetNS, url string) (int, string, error) {
	tr := &http.Transport{DisableKeepAlives: true, Dial: func(network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = net.DialTimeout(network, addr, probeTimeout)
			return err
		})
		return c, err
	}}
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// scrape returns the samples of /metrics whose name (with labels, as printed) starts with
// prefix.
func scrape(t *testing.T, ns *topology.NetNS, prefix string) map[string]float64 {
	t.Helper()
	code, body, err := nsGet(ns, metricsURL)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s: %d %v", metricsURL, code, err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}

// waitFor polls cond until it holds or timeout passes; then it fails t with what cond said.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, timeout, state)
		}
		time.Sleep(pollInterval)
	}
}

// healthOf returns /healthz's or /livez's status and nodeEligible ("" when absent).
func healthOf(ns *topology.NetNS, path string) (int, string) {
	code, body, err := nsGet(ns, healthURL+path)
	if err != nil {
		return 0, err.Error()
	}
	var b struct {
		NodeEligible *bool `json:"nodeEligible"`
	}
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		return code, "undecodable: " + body
	}
	if b.NodeEligible == nil {
		return code, ""
	}
	return code, strconv.FormatBool(*b.NodeEligible)
}

// TestKubernetesObservability: an EndpointSlice stamped 9 s in the past (as the EndpointSlice
// controller stamps endpoints.kubernetes.io/last-change-trigger-time) is observed in
// kubeproxy_network_programming_duration_seconds as at least 9 s; a Service the proxy cannot
// use gets a Warning event saying why, readable through events.k8s.io/v1, and the start a
// Normal one on the Node; with the cluster autoscaler's taint on this node's Node, /healthz
// answers 503 with nodeEligible false while /livez stays 200, and 200 again once it is gone.
//
// The API server runs with StrictIPCIDRValidation off, as clusters that still hold objects
// from before it do: it then accepts an externalIP with a leading zero, which nftproxy (like
// Go's net/netip) refuses.
func TestKubernetesObservability(t *testing.T) {
	k := newKubeHarness(t, "--feature-gates=StrictIPCIDRValidation=false")
	ctx := t.Context()
	node1 := k.tp.Node1
	pod1 := k.pod(1, "pod1", 8080)
	started := time.Now()
	k.start("--min-sync-period=0")
	waitFor(t, readyTimeout, "/livez 200 after the first sync", func() (bool, string) {
		code, _ := healthOf(node1, "/livez")
		return code == http.StatusOK, fmt.Sprint(code)
	})

	t.Run("network programming latency", func(t *testing.T) {
		// Trigger times from before the proxy started are ignored: stamp after it.
		if wait := 11*time.Second - time.Since(started); wait > 0 {
			time.Sleep(wait)
		}
		svcs := k.admin.CoreV1().Services("default")
		if _, err := svcs.Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "sli", Namespace: "default"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP,
				Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create service: %v", err)
		}
		es := kubeSlice("sli", 8080, pod1)
		stamp := time.Now().Add(-9 * time.Second)
		es.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: stamp.Format(time.RFC3339Nano)}
		if _, err := k.admin.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create slice: %v", err)
		}
		const h = "kubeproxy_network_programming_duration_seconds"
		var m map[string]float64
		waitFor(t, readyTimeout, "one network programming latency observed", func() (bool, string) {
			m = scrape(t, node1, h)
			return m[h+`_count{ip_family="IPv4"}`] >= 1, fmt.Sprint(m[h+`_count{ip_family="IPv4"}`])
		})
		if n, sum := m[h+`_count{ip_family="IPv4"}`], m[h+`_sum{ip_family="IPv4"}`]; n != 1 || sum < 9 || sum > 9+readyTimeout.Seconds() {
			t.Errorf("%d observations summing to %.3f s, want one of at least 9 s (the slice was stamped 9 s before it was created)", int(n), sum)
		}
		if below := m[h+`_bucket{ip_family="IPv4",le="9"}`]; below != 0 {
			t.Errorf("%v observations at or under 9 s, for a slice stamped 9 s before it was created", below)
		}
	})

	t.Run("events", func(t *testing.T) {
		// The API server takes an EndpointSlice port without a number (slices not derived from
		// a Service may leave it out); nftproxy skips that entry and says so on the slice.
		if _, err := k.admin.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "default"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http",
				Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create service: %v", err)
		}
		es := kubeSlice("bad", 8080, pod1)
		es.Ports[0].Port = nil
		if _, err := k.admin.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create a slice whose port has no number: %v", err)
		}
		find := func(ns, kind, name, reason string) (*eventsv1.Event, string) {
			list, err := k.admin.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, err.Error()
			}
			var seen []string
			for i, e := range list.Items {
				seen = append(seen, e.Regarding.Kind+"/"+e.Regarding.Name+" "+e.Reason)
				if e.Regarding.Kind == kind && e.Regarding.Name == name && e.Reason == reason {
					return &list.Items[i], ""
				}
			}
			return nil, fmt.Sprint(seen)
		}
		var bad *eventsv1.Event
		waitFor(t, readyTimeout, "a Warning InvalidEndpointSlice event on default/bad-1", func() (bool, string) {
			var state string
			bad, state = find("default", "EndpointSlice", "bad-1", "InvalidEndpointSlice")
			return bad != nil, state
		})
		if bad.Type != corev1.EventTypeWarning || !strings.Contains(bad.Note, "no port number") ||
			bad.ReportingController != "nftproxy" || bad.Regarding.UID == "" {
			t.Errorf("the event on default/bad: type %s, note %q, controller %q, regarding %+v", bad.Type, bad.Note, bad.ReportingController, bad.Regarding)
		}
		if start, state := find("default", "Node", nodeName, "Starting"); start == nil || start.Type != corev1.EventTypeNormal {
			t.Errorf("no Normal Starting event on Node %s; events: %s", nodeName, state)
		}
	})

	t.Run("health of a node on its way out", func(t *testing.T) {
		nodes := k.admin.CoreV1().Nodes()
		setTaint := func(on bool) {
			t.Helper()
			n, err := nodes.Get(ctx, nodeName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			n.Spec.Taints = nil
			if on {
				n.Spec.Taints = []corev1.Taint{{Key: "ToBeDeletedByClusterAutoscaler", Value: strconv.FormatInt(time.Now().Unix(), 10), Effect: corev1.TaintEffectNoSchedule}}
			}
			if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if code, eligible := healthOf(node1, "/healthz"); code != http.StatusOK || eligible != "true" {
			t.Fatalf("before the taint /healthz answered %d, nodeEligible %q", code, eligible)
		}
		setTaint(true)
		waitFor(t, readyTimeout, "/healthz 503 with nodeEligible false", func() (bool, string) {
			code, eligible := healthOf(node1, "/healthz")
			return code == http.StatusServiceUnavailable && eligible == "false", fmt.Sprint(code, " nodeEligible ", eligible)
		})
		if code, eligible := healthOf(node1, "/livez"); code != http.StatusOK || eligible != "" {
			t.Errorf("with the taint /livez answered %d, nodeEligible %q; want 200 without it", code, eligible)
		}
		setTaint(false)
		waitFor(t, readyTimeout, "/healthz 200 again without the taint", func() (bool, string) {
			code, eligible := healthOf(node1, "/healthz")
			return code == http.StatusOK && eligible == "true", fmt.Sprint(code, " nodeEligible ", eligible)
		})
	})

	if out := k.proxy.log.String(); strings.Contains(out, "forbidden") {
		t.Errorf("the proxy was refused something by RBAC:\n%s", out)
	}
}
