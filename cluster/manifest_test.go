package cluster

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftproxy/nftproxy/model"
)

// Manifests use the conventions at the top of convert_test.go.

const multiDoc = `# services and slices
apiVersion: v1
kind: Service
metadata:
  namespace: default
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: default
  name: web-abc
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: ["10.244.1.5"]
  nodeName: node-a
---
# only a comment
---
apiVersion: v1
kind: Service
metadata:
  namespace: default
  name: broken
spec:
  ports: "not a list"
---
kind: Service
metadata: {name: [unclosed
---
apiVersion: v1
kind: ConfigMap
metadata:
  namespace: default
  name: settings
data:
  a: b
---
apiVersion: apps/v1
kind: Deployment
metadata:
  namespace: default
  name: web
---
# the API server and kubectl match field names by case: this Service has no name
apiVersion: v1
kind: Service
metadata:
  namespace: default
  Name: web2
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80}]
`

const listDoc = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    namespace: kube-system
    name: dns
  spec:
    clusterIPs: [10.96.0.53]
    ports:
    - {name: dns, port: 53, protocol: UDP}
- apiVersion: v1
  kind: Node
  metadata:
    name: node-a
    labels:
      topology.kubernetes.io/zone: zone-1
  status:
    addresses:
    - {type: InternalIP, address: 192.168.0.2}
- apiVersion: v1
  kind: Secret
  metadata:
    namespace: kube-system
    name: token
`

// jsonDoc is indented with tabs, which YAML refuses.
const jsonDoc = "{\n\t\"apiVersion\": \"discovery.k8s.io/v1\",\n\t\"kind\": \"EndpointSlice\",\n" +
	"\t\"metadata\": {\"namespace\": \"kube-system\", \"name\": \"dns-1\",\n" +
	"\t\t\"labels\": {\"kubernetes.io/service-name\": \"dns\"}},\n" +
	"\t\"addressType\": \"IPv4\",\n\t\"ports\": [{\"name\": \"dns\", \"port\": 53, \"protocol\": \"UDP\"}],\n" +
	"\t\"endpoints\": [{\"addresses\": [\"10.244.1.7\"]}]\n}\n"

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadManifests(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "01-web.yaml", multiDoc)
	writeFile(t, dir, "02-list.yml", listDoc)
	writeFile(t, dir, "03-dns.json", jsonDoc)
	writeFile(t, dir, "README.md", "not a manifest")
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sub.yaml"), "x.yaml", listDoc)

	objs, bad, err := LoadManifests(dir)
	if err != nil {
		t.Fatalf("LoadManifests: %v", err)
	}

	var names []string
	for _, s := range objs.Services {
		names = append(names, s.Namespace+"/"+s.Name)
	}
	if want := []string{"default/web", "kube-system/dns"}; !slices.Equal(names, want) {
		t.Errorf("Services = %q, want %q", names, want)
	}
	names = nil
	for _, s := range objs.EndpointSlices {
		names = append(names, s.Namespace+"/"+s.Name)
	}
	if want := []string{"default/web-abc", "kube-system/dns-1"}; !slices.Equal(names, want) {
		t.Errorf("EndpointSlices = %q, want %q", names, want)
	}
	if len(objs.Nodes) != 1 || objs.Nodes[0].Name != "node-a" {
		t.Errorf("Nodes = %v, want node-a", objs.Nodes)
	}

	wantBad := []struct{ kind, ns, name, where string }{
		{"Service", "default", "broken", "01-web.yaml:4"},
		{"Document", "", "", "01-web.yaml:5"},
		{"ConfigMap", "default", "settings", "01-web.yaml:6"},
		{"Deployment", "default", "web", "01-web.yaml:7"},
		{"Service", "default", "", "01-web.yaml:8"},
		{"Secret", "kube-system", "token", "02-list.yml:1 items[2]"},
	}
	if len(bad) != len(wantBad) {
		t.Fatalf("bad objects = %v, want %d", bad, len(wantBad))
	}
	for i, w := range wantBad {
		b := bad[i]
		if b.Kind != w.kind || b.Namespace != w.ns || b.Name != w.name || b.Err == nil ||
			!strings.HasPrefix(b.Err.Error(), w.where+":") {
			t.Errorf("bad[%d] = %q (kind %q ns %q name %q), want %s %s/%s at %s", i, b, b.Kind, b.Namespace, b.Name,
				w.kind, w.ns, w.name, w.where)
		}
	}
	// A kind of an API group nftproxy does not decode is named as one.
	if want := "unsupported kind apps/v1 Deployment"; len(bad) > 3 && !strings.Contains(bad[3].Err.Error(), want) {
		t.Errorf("bad[3] = %q, want it to say %q", bad[3], want)
	}

	// The loaded objects convert end to end.
	svcs, cbad := Convert(objs, ConvertOptions{})
	if len(cbad) != 0 || len(svcs) != 2 {
		t.Fatalf("Convert = %v, %v", dump(svcs), cbad)
	}
	if eps := svcs[0].Ports[0].Endpoints; len(eps) != 1 || eps[0].Port != 8080 || eps[0].NodeName != "node-a" {
		t.Errorf("default/web endpoints = %+v", eps)
	}
	if eps := svcs[1].Ports[0].Endpoints; len(eps) != 1 || eps[0].Addr != addr("10.244.1.7") {
		t.Errorf("kube-system/dns endpoints = %+v", eps)
	}
	if n, ok := FindNode(objs.Nodes, "node-a"); !ok || n.Zone != "zone-1" {
		t.Errorf("FindNode(node-a) = %+v, %v", n, ok)
	}
}

func TestLoadManifestsMissingDir(t *testing.T) {
	if _, _, err := LoadManifests(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("LoadManifests of a missing directory succeeded")
	}
}

const serviceDoc = `apiVersion: v1
kind: Service
metadata: {namespace: default, name: %s}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
`

func TestManifestSourceRun(t *testing.T) {
	const wait = 10 * time.Second
	// The directory does not exist at first: Run must retry until it does.
	dir := filepath.Join(t.TempDir(), "manifests")
	src := &ManifestSource{Dir: dir, Interval: 5 * time.Millisecond, Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
	snapshots := make(chan Delta, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(d Delta) { snapshots <- d })
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(wait):
			t.Errorf("Run did not return after cancel")
		}
	}()

	// next waits for a delivery holding only Service want. Deliveries of a half-written
	// file, or of the directory before the file, are possible and skipped.
	// The first delivery of all must be Full (it may be of the empty directory).
	first := true
	next := func(want string) Delta {
		t.Helper()
		timeout := time.After(wait)
		for {
			select {
			case d := <-snapshots:
				if first && !d.Full {
					t.Errorf("the first delivery is not Full: %+v", d)
				}
				first = false
				if o := d.Store.Objects(); len(o.Services) == 1 && o.Services[0].Name == want {
					return d
				}
				t.Logf("skipping delivery with services %v", d.Store.Objects().Services)
			case <-timeout:
				t.Fatalf("no delivery with %s within %v", want, wait)
				return Delta{}
			}
		}
	}

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "svc.yaml", strings.ReplaceAll(serviceDoc, "%s", "first"))
	next("first")

	// Same size, different content: the Service first goes, secnd comes.
	writeFile(t, dir, "svc.yaml", strings.ReplaceAll(serviceDoc, "%s", "secnd"))
	d := next("secnd")
	if d.Events != (Events{Services: 2}) {
		t.Errorf("a Service replaced by another counts %+v, want 2 Service changes", d.Events)
	}
	wantNames := map[model.ServiceName]struct{}{{Namespace: "default", Name: "first"}: {}, {Namespace: "default", Name: "secnd"}: {}}
	if d.Full || !maps.Equal(d.Services, wantNames) {
		t.Errorf("a Service replaced by another: full %v, Services %v; want %v", d.Full, d.Services, wantNames)
	}

	// No change, no delivery.
	select {
	case d := <-snapshots:
		t.Fatalf("unexpected delivery without change: %v", d.Store.Objects().Services)
	case <-time.After(50 * time.Millisecond):
	}
}
