// Package deploy holds nftproxy's Kubernetes manifests; this test keeps them to their contract.
//
// Every *.yaml here except kustomization.yaml is decoded strictly with client-go's scheme (an
// unknown kind, an unknown or duplicate field fails), and the objects are checked against what
// nftproxy needs and no more: host network, node-critical priority, NET_ADMIN as the only
// capability, probes on the health port, read-only access to Services, EndpointSlices and
// Nodes. TestChecksCatchBreakages breaks each rule on a copy of the manifests to show that the
// check for it fires.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

const (
	namespace       = "kube-system"
	kustomization   = "kustomization.yaml"
	healthzPort     = 10256
	nodeNameEnv     = "NODE_NAME"
	containerName   = "nftproxy"
	imageRepository = "ghcr.io/nftproxy/nftproxy"
)

// strictDecoder decodes the kinds client-go knows, failing on unknown and duplicate fields.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// decodeStrict returns the objects in a (possibly multi-document) YAML file. Documents holding
// nothing but comments are skipped.
func decodeStrict(data []byte) ([]runtime.Object, error) {
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if j, err := yaml.YAMLToJSON(doc); err == nil && (string(j) == "null" || len(bytes.TrimSpace(j)) == 0) {
			continue
		}
		obj, gvk, err := strictDecoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if gvk == nil || gvk.Kind == "" {
			return nil, fmt.Errorf("document %d: no kind", i)
		}
		objs = append(objs, obj)
	}
}

// bundle is the decoded deploy/ directory: exactly one object of each kind.
type bundle struct {
	ds  *appsv1.DaemonSet
	sa  *corev1.ServiceAccount
	cr  *rbacv1.ClusterRole
	crb *rbacv1.ClusterRoleBinding
}

func (b *bundle) deepCopy() *bundle {
	return &bundle{ds: b.ds.DeepCopy(), sa: b.sa.DeepCopy(), cr: b.cr.DeepCopy(), crb: b.crb.DeepCopy()}
}

// manifestFiles returns the YAML files of deploy/ other than kustomization.yaml.
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.yaml", "*.yml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return f == kustomization })
	sort.Strings(files)
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/")
	}
	return files
}

// load decodes every manifest and sorts the objects into a bundle. Anything it cannot place (a
// kind the contract does not cover, a second object of a kind, a missing kind) fails the test.
func load(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{}
	for _, f := range manifestFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeStrict(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(objs) == 0 {
			t.Errorf("%s: no objects", f)
		}
		for _, obj := range objs {
			var dup bool
			switch o := obj.(type) {
			case *appsv1.DaemonSet:
				dup, b.ds = b.ds != nil, o
			case *corev1.ServiceAccount:
				dup, b.sa = b.sa != nil, o
			case *rbacv1.ClusterRole:
				dup, b.cr = b.cr != nil, o
			case *rbacv1.ClusterRoleBinding:
				dup, b.crb = b.crb != nil, o
			default:
				t.Fatalf("%s: %T is not part of the contract (add checks for it to deploy_test.go)", f, obj)
			}
			if dup {
				t.Fatalf("%s: a second %T", f, obj)
			}
		}
	}
	for kind, missing := range map[string]bool{
		"DaemonSet": b.ds == nil, "ServiceAccount": b.sa == nil,
		"ClusterRole": b.cr == nil, "ClusterRoleBinding": b.crb == nil,
	} {
		if missing {
			t.Fatalf("no %s in deploy/", kind)
		}
	}
	return b
}

// check is one rule of the contract; it returns one message per violation.
type check struct {
	name string
	fn   func(*bundle) []string
}

func violation(format string, args ...any) []string { return []string{fmt.Sprintf(format, args...)} }

// container returns the DaemonSet's one container (nil when it has not exactly one).
func container(b *bundle) *corev1.Container {
	cs := b.ds.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		return nil
	}
	return &cs[0]
}

// containerChecks wraps a check of the nftproxy container.
func containerCheck(fn func(*corev1.Container) []string) func(*bundle) []string {
	return func(b *bundle) []string {
		c := container(b)
		if c == nil {
			return violation("DaemonSet has %d containers, want 1", len(b.ds.Spec.Template.Spec.Containers))
		}
		return fn(c)
	}
}

// probeViolations checks that p is an HTTP GET of path on the health port.
func probeViolations(kind string, c *corev1.Container, p *corev1.Probe, path string) []string {
	if p == nil {
		return violation("no %s probe", kind)
	}
	g := p.HTTPGet
	if g == nil {
		return violation("%s probe is not httpGet", kind)
	}
	var out []string
	if g.Path != path {
		out = append(out, fmt.Sprintf("%s probe path is %q, want %q", kind, g.Path, path))
	}
	if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
		out = append(out, fmt.Sprintf("%s probe scheme is %s, want HTTP", kind, g.Scheme))
	}
	if g.Host != "" {
		out = append(out, fmt.Sprintf("%s probe host is %q, want empty (the node's address)", kind, g.Host))
	}
	port := int32(-1)
	switch g.Port.Type {
	case intstr.Int:
		port = g.Port.IntVal
	case intstr.String:
		for _, cp := range c.Ports {
			if cp.Name == g.Port.StrVal {
				port = cp.ContainerPort
			}
		}
	}
	if port != healthzPort {
		out = append(out, fmt.Sprintf("%s probe port is %s, want %d", kind, g.Port.String(), healthzPort))
	}
	return out
}

func quantitySet(l corev1.ResourceList, name corev1.ResourceName) bool {
	q, ok := l[name]
	return ok && q.Cmp(resource.Quantity{}) > 0
}

var daemonSetChecks = []check{
	{"namespace", func(b *bundle) []string {
		var out []string
		if b.ds.Namespace != namespace {
			out = append(out, fmt.Sprintf("DaemonSet namespace is %q, want %q", b.ds.Namespace, namespace))
		}
		if b.sa.Namespace != namespace {
			out = append(out, fmt.Sprintf("ServiceAccount namespace is %q, want %q", b.sa.Namespace, namespace))
		}
		return out
	}},
	{"selector matches template", func(b *bundle) []string {
		sel := b.ds.Spec.Selector
		if sel == nil || len(sel.MatchLabels) == 0 {
			return violation("DaemonSet has no selector matchLabels")
		}
		for k, v := range sel.MatchLabels {
			if b.ds.Spec.Template.Labels[k] != v {
				return violation("selector %s=%s does not match the pod template's labels", k, v)
			}
		}
		return nil
	}},
	{"hostNetwork", func(b *bundle) []string {
		if !b.ds.Spec.Template.Spec.HostNetwork {
			return violation("hostNetwork is not true: the rules would go into the pod's network namespace")
		}
		return nil
	}},
	{"no other host namespaces or host paths", func(b *bundle) []string {
		ps := b.ds.Spec.Template.Spec
		var out []string
		if ps.HostPID {
			out = append(out, "hostPID is true")
		}
		if ps.HostIPC {
			out = append(out, "hostIPC is true")
		}
		for _, v := range ps.Volumes {
			if v.HostPath != nil {
				out = append(out, fmt.Sprintf("volume %q is a hostPath (%s); nftproxy needs none", v.Name, v.HostPath.Path))
			}
		}
		return out
	}},
	{"priorityClassName", func(b *bundle) []string {
		if p := b.ds.Spec.Template.Spec.PriorityClassName; p != "system-node-critical" {
			return violation("priorityClassName is %q, want system-node-critical", p)
		}
		return nil
	}},
	{"tolerates every taint", func(b *bundle) []string {
		for _, tol := range b.ds.Spec.Template.Spec.Tolerations {
			if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
				return nil
			}
		}
		return violation("no toleration {operator: Exists} without key and effect: the proxy would not run on tainted nodes")
	}},
	{"serviceAccountName", func(b *bundle) []string {
		if n := b.ds.Spec.Template.Spec.ServiceAccountName; n != b.sa.Name {
			return violation("serviceAccountName is %q, want the ServiceAccount %q", n, b.sa.Name)
		}
		return nil
	}},
	{"one container, no init containers", func(b *bundle) []string {
		ps := b.ds.Spec.Template.Spec
		var out []string
		if len(ps.Containers) != 1 || ps.Containers[0].Name != containerName {
			out = append(out, fmt.Sprintf("want exactly one container named %q", containerName))
		}
		if len(ps.InitContainers) > 0 {
			out = append(out, "init containers are not covered by the security checks")
		}
		return out
	}},
	{"image", containerCheck(func(c *corev1.Container) []string {
		if !strings.HasPrefix(c.Image, imageRepository+":") && !strings.HasPrefix(c.Image, imageRepository+"@") {
			return violation("image is %q, want %s:TAG or @DIGEST", c.Image, imageRepository)
		}
		return nil
	})},
	{"args", containerCheck(func(c *corev1.Container) []string {
		// The image's entrypoint is nftproxy; its first argument is the command.
		if len(c.Command) > 0 {
			return violation("command is set (%q); the image's entrypoint runs nftproxy", c.Command)
		}
		if len(c.Args) == 0 || c.Args[0] != "run" {
			return violation("args %q do not start with \"run\"", c.Args)
		}
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--hostname-override="); ok && v != "$("+nodeNameEnv+")" {
				return violation("--hostname-override is %q, want $(%s): every node has its own name", v, nodeNameEnv)
			}
			if a == "--hostname-override" || a == "-hostname-override" {
				return violation("write --hostname-override=$(%s) as one argument", nodeNameEnv)
			}
		}
		return nil
	})},
	{"NODE_NAME from spec.nodeName", containerCheck(func(c *corev1.Container) []string {
		for _, e := range c.Env {
			if e.Name != nodeNameEnv {
				continue
			}
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
				return violation("env %s is not from fieldRef spec.nodeName", nodeNameEnv)
			}
			return nil
		}
		return violation("no env %s (from fieldRef spec.nodeName)", nodeNameEnv)
	})},
	{"not privileged", containerCheck(func(c *corev1.Container) []string {
		sc := c.SecurityContext
		if sc == nil {
			return violation("container has no securityContext")
		}
		var out []string
		if sc.Privileged != nil && *sc.Privileged {
			out = append(out, "container is privileged")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			out = append(out, "allowPrivilegeEscalation is not false")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			out = append(out, "readOnlyRootFilesystem is not true")
		}
		if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
			out = append(out, "procMount is not Default")
		}
		return out
	})},
	{"capabilities: NET_ADMIN only", containerCheck(func(c *corev1.Container) []string {
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			return violation("container has no capabilities (want drop [ALL], add [NET_ADMIN])")
		}
		var out []string
		if add := sc.Capabilities.Add; !slices.Equal(add, []corev1.Capability{"NET_ADMIN"}) {
			out = append(out, fmt.Sprintf("capabilities add %q, want exactly [NET_ADMIN]", add))
		}
		if drop := sc.Capabilities.Drop; !slices.Equal(drop, []corev1.Capability{"ALL"}) {
			out = append(out, fmt.Sprintf("capabilities drop %q, want exactly [ALL]", drop))
		}
		return out
	})},
	{"readiness probe", containerCheck(func(c *corev1.Container) []string {
		return probeViolations("readiness", c, c.ReadinessProbe, "/healthz")
	})},
	{"liveness probe", containerCheck(func(c *corev1.Container) []string {
		return probeViolations("liveness", c, c.LivenessProbe, "/livez")
	})},
	{"resources", containerCheck(func(c *corev1.Container) []string {
		var out []string
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if !quantitySet(c.Resources.Requests, r) {
				out = append(out, fmt.Sprintf("no %s request", r))
			}
		}
		if !quantitySet(c.Resources.Limits, corev1.ResourceMemory) {
			out = append(out, "no memory limit")
		}
		return out
	})},
}

// grant is one verb on one resource of one API group.
type grant struct{ group, resource, verb string }

func (g grant) String() string {
	group := g.group
	if group == "" {
		group = "core"
	}
	return fmt.Sprintf("%s on %s (%s)", g.verb, g.resource, group)
}

// wantGrants is everything the ClusterRole may grant, and must.
var wantGrants = func() map[grant]bool {
	m := map[grant]bool{}
	read := []string{"get", "list", "watch"}
	for _, gr := range [][2]string{{"", "services"}, {"", "nodes"}, {"discovery.k8s.io", "endpointslices"}} {
		for _, v := range read {
			m[grant{gr[0], gr[1], v}] = true
		}
	}
	// nftproxy's event writer only creates events.k8s.io/v1 Events.
	m[grant{"events.k8s.io", "events", "create"}] = true
	return m
}()

var rbacChecks = []check{
	{"ClusterRole grants exactly the contract", func(b *bundle) []string {
		var out []string
		got := map[grant]bool{}
		for i, r := range b.cr.Rules {
			if len(r.NonResourceURLs) > 0 {
				out = append(out, fmt.Sprintf("rule %d grants nonResourceURLs %q", i, r.NonResourceURLs))
			}
			if len(r.ResourceNames) > 0 {
				out = append(out, fmt.Sprintf("rule %d is limited to resourceNames %q", i, r.ResourceNames))
			}
			for field, vals := range map[string][]string{"apiGroups": r.APIGroups, "resources": r.Resources, "verbs": r.Verbs} {
				if slices.ContainsFunc(vals, func(s string) bool { return strings.Contains(s, "*") }) {
					out = append(out, fmt.Sprintf("rule %d has a wildcard in %s: %q", i, field, vals))
				}
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						got[grant{g, res, v}] = true
					}
				}
			}
		}
		if b.cr.AggregationRule != nil {
			out = append(out, "ClusterRole aggregates other roles")
		}
		var extra, missing []string
		for g := range got {
			if !wantGrants[g] {
				extra = append(extra, "grants "+g.String()+" beyond the contract")
			}
		}
		for g := range wantGrants {
			if !got[g] {
				missing = append(missing, "does not grant "+g.String())
			}
		}
		sort.Strings(extra)
		sort.Strings(missing)
		return append(append(out, extra...), missing...)
	}},
	{"ClusterRoleBinding binds the ClusterRole to the ServiceAccount", func(b *bundle) []string {
		var out []string
		ref := b.crb.RoleRef
		if ref.APIGroup != rbacv1.GroupName || ref.Kind != "ClusterRole" || ref.Name != b.cr.Name {
			out = append(out, fmt.Sprintf("roleRef is %s/%s %q, want ClusterRole %q", ref.APIGroup, ref.Kind, ref.Name, b.cr.Name))
		}
		want := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: b.sa.Name, Namespace: namespace}
		if len(b.crb.Subjects) != 1 || b.crb.Subjects[0] != want {
			out = append(out, fmt.Sprintf("subjects are %+v, want only ServiceAccount %s/%s", b.crb.Subjects, namespace, b.sa.Name))
		}
		return out
	}},
	{"cluster-scoped objects have no namespace", func(b *bundle) []string {
		var out []string
		if b.cr.Namespace != "" {
			out = append(out, "ClusterRole has a namespace")
		}
		if b.crb.Namespace != "" {
			out = append(out, "ClusterRoleBinding has a namespace")
		}
		return out
	}},
}

var allChecks = slices.Concat(daemonSetChecks, rbacChecks)

func TestManifests(t *testing.T) {
	b := load(t)
	for _, c := range allChecks {
		t.Run(c.name, func(t *testing.T) {
			for _, v := range c.fn(b) {
				t.Error(v)
			}
		})
	}
}

// TestChecksCatchBreakages breaks the manifests one way at a time, on a copy, and expects a
// violation that names the breakage.
func TestChecksCatchBreakages(t *testing.T) {
	ptr := func(v bool) *bool { return &v }
	ctr := func(b *bundle) *corev1.Container { return &b.ds.Spec.Template.Spec.Containers[0] }
	tests := []struct {
		name   string
		break_ func(*bundle)
		want   string
	}{
		{"no hostNetwork", func(b *bundle) { b.ds.Spec.Template.Spec.HostNetwork = false }, "hostNetwork is not true"},
		{"hostPath volume", func(b *bundle) {
			b.ds.Spec.Template.Spec.Volumes = append(b.ds.Spec.Template.Spec.Volumes, corev1.Volume{Name: "xtables-lock",
				VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/xtables.lock"}}})
		}, `volume "xtables-lock" is a hostPath`},
		{"other priority", func(b *bundle) { b.ds.Spec.Template.Spec.PriorityClassName = "system-cluster-critical" }, "priorityClassName"},
		{"toleration with key", func(b *bundle) {
			b.ds.Spec.Template.Spec.Tolerations = []corev1.Toleration{{Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists}}
		}, "no toleration"},
		{"other service account", func(b *bundle) { b.ds.Spec.Template.Spec.ServiceAccountName = "default" }, "serviceAccountName"},
		{"privileged", func(b *bundle) { ctr(b).SecurityContext.Privileged = ptr(true) }, "container is privileged"},
		{"privilege escalation unset", func(b *bundle) { ctr(b).SecurityContext.AllowPrivilegeEscalation = nil }, "allowPrivilegeEscalation"},
		{"writable root", func(b *bundle) { ctr(b).SecurityContext.ReadOnlyRootFilesystem = ptr(false) }, "readOnlyRootFilesystem"},
		{"SYS_ADMIN added", func(b *bundle) {
			ctr(b).SecurityContext.Capabilities.Add = append(ctr(b).SecurityContext.Capabilities.Add, "SYS_ADMIN")
		}, "capabilities add"},
		{"nothing dropped", func(b *bundle) { ctr(b).SecurityContext.Capabilities.Drop = nil }, "capabilities drop"},
		{"readiness on /livez", func(b *bundle) { ctr(b).ReadinessProbe.HTTPGet.Path = "/livez" }, "readiness probe path"},
		{"liveness on the metrics port", func(b *bundle) { ctr(b).LivenessProbe.HTTPGet.Port = intstr.FromInt32(10249) }, "liveness probe port"},
		{"liveness by exec", func(b *bundle) {
			ctr(b).LivenessProbe.ProbeHandler = corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}
		}, "liveness probe is not httpGet"},
		{"no NODE_NAME", func(b *bundle) {
			ctr(b).Env = slices.DeleteFunc(ctr(b).Env, func(e corev1.EnvVar) bool { return e.Name == nodeNameEnv })
		}, "no env NODE_NAME"},
		{"fixed hostname", func(b *bundle) { ctr(b).Args = []string{"run", "--hostname-override=node-1"} }, "--hostname-override"},
		{"no requests", func(b *bundle) { ctr(b).Resources.Requests = nil }, "no cpu request"},
		{"role writes services", func(b *bundle) {
			b.cr.Rules = append(b.cr.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"update"}})
		}, "grants update on services (core) beyond the contract"},
		{"role reads secrets", func(b *bundle) {
			b.cr.Rules = append(b.cr.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}})
		}, "grants get on secrets (core)"},
		{"role wildcard", func(b *bundle) {
			b.cr.Rules = append(b.cr.Rules, rbacv1.PolicyRule{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"*"}, Verbs: []string{"list"}})
		}, "wildcard in resources"},
		{"endpointslices in the wrong group", func(b *bundle) {
			for i := range b.cr.Rules {
				if slices.Contains(b.cr.Rules[i].Resources, "endpointslices") {
					b.cr.Rules[i].APIGroups = []string{""}
				}
			}
		}, "does not grant get on endpointslices (discovery.k8s.io)"},
		{"binding to another role", func(b *bundle) { b.crb.RoleRef.Name = "cluster-admin" }, "roleRef"},
		{"binding to another namespace", func(b *bundle) { b.crb.Subjects[0].Namespace = "default" }, "subjects"},
	}
	orig := load(t)
	if got := violations(orig); len(got) > 0 {
		t.Fatalf("the manifests break the contract already: %q", got)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := orig.deepCopy()
			tt.break_(b)
			got := violations(b)
			if !slices.ContainsFunc(got, func(v string) bool { return strings.Contains(v, tt.want) }) {
				t.Errorf("no violation mentions %q; got %q", tt.want, got)
			}
		})
	}
}

func violations(b *bundle) []string {
	var out []string
	for _, c := range allChecks {
		for _, v := range c.fn(b) {
			out = append(out, c.name+": "+v)
		}
	}
	return out
}

// TestStrictDecoding shows that the decoder load uses rejects what a typo would produce.
func TestStrictDecoding(t *testing.T) {
	const sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n"
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown field", sa + "automountToken: false\n", "unknown field"},
		{"misplaced field", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  hostNetwork: true\n", "unknown field"},
		{"duplicate field", sa + "  name: z\n", "already set"},
		{"unknown kind", "apiVersion: v1\nkind: ServiceAcount\nmetadata:\n  name: x\n", "no kind"},
		{"unknown group", "apiVersion: example.com/v1\nkind: Thing\n", "no kind"},
		{"no kind", "apiVersion: v1\nmetadata:\n  name: x\n", "Kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeStrict([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	objs, err := decodeStrict([]byte("# comment only\n---\n" + sa + "---\n"))
	if err != nil || len(objs) != 1 {
		t.Errorf("comment-only and empty documents: got %d objects, err %v; want 1, nil", len(objs), err)
	}
}

// TestKustomization checks that kustomization.yaml applies every other manifest, in kube-system.
func TestKustomization(t *testing.T) {
	data, err := os.ReadFile(kustomization)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatalf("%s: %v", kustomization, err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
			Digest  string `json:"digest"`
		} `json:"images"`
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("%s: %v (fields other than apiVersion, kind, namespace, resources and images need a check here)", kustomization, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("%s is %s %s, want kustomize.config.k8s.io/v1beta1 Kustomization", kustomization, k.APIVersion, k.Kind)
	}
	if k.Namespace != namespace {
		t.Errorf("%s: namespace is %q, want %q", kustomization, k.Namespace, namespace)
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		if listed[r] {
			t.Errorf("%s lists %s twice", kustomization, r)
		}
		listed[r] = true
	}
	for _, f := range manifestFiles(t) {
		if !listed[f] {
			t.Errorf("%s does not list %s", kustomization, f)
		}
		delete(listed, f)
	}
	for r := range listed {
		t.Errorf("%s lists %s, which is not a manifest in deploy/", kustomization, r)
	}
}
