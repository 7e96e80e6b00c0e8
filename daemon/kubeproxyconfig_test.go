package daemon

import (
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// parse parses run's args, with the configuration file content written to a temporary
// file and given as --config first when it is not "".
func parse(t *testing.T, file string, args ...string) (*Options, error) {
	t.Helper()
	if file != "" {
		path := filepath.Join(t.TempDir(), "config.conf")
		if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", path}, args...)
	}
	o, _, err := Parse(args, true, io.Discard)
	if err == nil {
		err = o.Validate()
	}
	return o, err
}

const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

// TestConfigFileMatchesFlags checks, field by field, that a configuration file setting and
// the kube-proxy flag of the same meaning give the same options, and that both differ from
// the defaults (so that the row proves the setting takes effect).
func TestConfigFileMatchesFlags(t *testing.T) {
	defaults, err := parse(t, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field string
		file  string
		flags []string
	}{
		{"hostnameOverride", "hostnameOverride: Node-7", []string{"--hostname-override", "node-7"}},
		{"clusterCIDR", "clusterCIDR: 10.244.0.0/16,fd00:244::/32", []string{"--cluster-cidr", "10.244.0.0/16,fd00:244::/32"}},
		{"nodePortAddresses", "nodePortAddresses: [192.168.0.0/24, primary]", []string{"--nodeport-addresses", "192.168.0.0/24,primary"}},
		{"nodePortAddresses all", "nodePortAddresses: [all]", []string{"--nodeport-addresses", "0.0.0.0/0,::/0"}},
		{"detectLocalMode NodeCIDR", "detectLocalMode: NodeCIDR", []string{"--detect-local-mode", "NodeCIDR"}},
		{"detectLocal.bridgeInterface", "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}", []string{"--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0"}},
		{"detectLocal.interfaceNamePrefix", "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: cali}", []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=cali"}},
		{"metricsBindAddress", "metricsBindAddress: 0.0.0.0:10249", []string{"--metrics-bind-address", "0.0.0.0:10249"}},
		{"healthzBindAddress", "healthzBindAddress: 127.0.0.1:10256", []string{"--healthz-bind-address", "127.0.0.1:10256"}},
		{"enableProfiling", "enableProfiling: true", []string{"--profiling"}},
		{"nftables.masqueradeAll", "mode: nftables\nnftables: {masqueradeAll: true}", []string{"--masquerade-all", "--proxy-mode", "nftables"}},
		{"iptables.masqueradeAll with mode \"\"", "mode: \"\"\niptables: {masqueradeAll: true}", []string{"--masquerade-all"}},
		{"nftables.syncPeriod", "nftables: {syncPeriod: 40s}", []string{"--sync-period", "40s"}},
		{"nftables.minSyncPeriod", "nftables: {minSyncPeriod: 5s}", []string{"--iptables-min-sync-period", "5s"}},
		{"iptables.syncPeriod with mode \"\"", "iptables: {syncPeriod: 45s}", []string{"--iptables-sync-period", "45s"}},
		{"clientConnection.kubeconfig", "clientConnection: {kubeconfig: /k.conf}", []string{"--kubeconfig", "/k.conf"}},
		{"clientConnection.qps", "clientConnection: {qps: 50}", []string{"--kube-api-qps", "50"}},
		{"clientConnection.burst", "clientConnection: {burst: 100}", []string{"--kube-api-burst", "100"}},
		{"clientConnection.contentType", "clientConnection: {contentType: application/json}", []string{"--kube-api-content-type", "application/json"}},
		{"logging.format", "logging: {format: json}", []string{"--logging-format", "json"}},
		{"logging.verbosity", "logging: {verbosity: 4}", []string{"-v", "4"}},
		{"configSyncPeriod", "configSyncPeriod: 15m", []string{"--config-sync-period", "15m"}},
		{"conntrack.maxPerCore", "conntrack: {maxPerCore: 0}", []string{"--conntrack-max-per-core", "0"}},
		{"conntrack.min", "conntrack: {min: 1000}", []string{"--conntrack-min", "1000"}},
		{"conntrack.tcpEstablishedTimeout", "conntrack: {tcpEstablishedTimeout: 2h}", []string{"--conntrack-tcp-timeout-established", "2h"}},
		{"conntrack.tcpCloseWaitTimeout", "conntrack: {tcpCloseWaitTimeout: 0s}", []string{"--conntrack-tcp-timeout-close-wait", "0"}},
		{"conntrack.tcpBeLiberal", "conntrack: {tcpBeLiberal: true}", []string{"--conntrack-tcp-be-liberal"}},
		{"conntrack.udpTimeout", "conntrack: {udpTimeout: 30s}", []string{"--conntrack-udp-timeout", "30s"}},
		{"conntrack.udpStreamTimeout", "conntrack: {udpStreamTimeout: 2m}", []string{"--conntrack-udp-timeout-stream", "2m"}},
	} {
		fromFile, err := parse(t, header+tc.file)
		if err != nil {
			t.Errorf("%s: file: %v", tc.field, err)
			continue
		}
		fromFlags, err := parse(t, "", tc.flags...)
		if err != nil {
			t.Errorf("%s: flags: %v", tc.field, err)
			continue
		}
		fromFile.ConfigFile, fromFile.Ignored = "", fromFlags.Ignored
		if !reflect.DeepEqual(fromFile, fromFlags) {
			t.Errorf("%s: the file gives\n%+v\nthe flags give\n%+v", tc.field, fromFile, fromFlags)
		}
		if reflect.DeepEqual(fromFlags, defaults) {
			t.Errorf("%s: %v changes nothing", tc.field, tc.flags)
		}
	}
}

// TestKubeadmConfig checks that the KubeProxyConfiguration kubeadm writes into the
// kube-proxy ConfigMap (every field, most of them zero) starts nftproxy as it is: the
// defaults, kubeadm's kubeconfig and cluster CIDR, and one warning naming what is ignored.
func TestKubeadmConfig(t *testing.T) {
	o, _, err := Parse([]string{"--config", "testdata/kubeadm-config.conf", "--hostname-override", "node1"}, true, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	want, _, err := Parse([]string{"--kubeconfig", "/var/lib/kube-proxy/kubeconfig.conf", "--cluster-cidr", "10.244.0.0/16", "--hostname-override", "node1"}, true, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want.ConfigFile = "testdata/kubeadm-config.conf"
	want.Ignored.File = o.Ignored.File
	if !reflect.DeepEqual(o, want) {
		t.Errorf("kubeadm's configuration gives\n%+v\nwant\n%+v", o, want)
	}
	if !o.Config.NodePortPrimary || len(o.Config.NodePortAddresses) > 0 {
		t.Errorf("NodePorts on %v (primary %v), want the primary IPs only", o.Config.NodePortAddresses, o.Config.NodePortPrimary)
	}
	warnings := o.Warnings()
	if len(warnings) != 1 {
		t.Fatalf("warnings %q, want one", warnings)
	}
	for _, f := range []string{"iptables", "ipvs", "winkernel", "bindAddress", "oomScoreAdj"} {
		if !strings.Contains(warnings[0], f) {
			t.Errorf("warning %q does not name %s", warnings[0], f)
		}
	}
	for _, f := range []string{"nftables", "conntrack", "clusterCIDR", "logging", "clientConnection"} {
		if strings.Contains(warnings[0], f) {
			t.Errorf("warning %q names %s, which nftproxy reads", warnings[0], f)
		}
	}
}

// TestFlagsOverrideConfigFile: a flag on the command line wins over the file, whichever
// comes first; what the command line leaves alone comes from the file.
func TestFlagsOverrideConfigFile(t *testing.T) {
	file := header + `clusterCIDR: 10.244.0.0/16
hostnameOverride: from-file
nodePortAddresses: [192.168.0.0/24]
nftables: {syncPeriod: 30s, masqueradeAll: true}
conntrack: {maxPerCore: 100}
`
	o, err := parse(t, file, "--cluster-cidr=10.1.0.0/16", "--nodeport-addresses=all", "--sync-period=2m", "--masquerade-all=false", "--hostname-override", "from-flag")
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Config.ClusterCIDRs; len(got) != 1 || got[0] != netip.MustParsePrefix("10.1.0.0/16") {
		t.Errorf("cluster CIDRs %v, want the flag's", got)
	}
	if o.Config.NodePortPrimary || o.Config.NodePortsRestricted() {
		t.Errorf("nodeport addresses %v (primary %v), want all (the flag's)", o.Config.NodePortAddresses, o.Config.NodePortPrimary)
	}
	if o.SyncPeriod != 2*time.Minute || o.Config.MasqueradeAll || o.Config.HostnameOverride != "from-flag" {
		t.Errorf("sync period %v, masquerade all %v, hostname %q: want the flags' 2m, false, from-flag", o.SyncPeriod, o.Config.MasqueradeAll, o.Config.HostnameOverride)
	}
	if o.Conntrack.MaxPerCore != 100 {
		t.Errorf("conntrack max per core %d, want the file's 100", o.Conntrack.MaxPerCore)
	}
}

// TestConfigRefused: what nftproxy cannot do is an error, not a warning.
func TestConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		args       []string
		err        string
	}{
		{"mode ipvs", header + "mode: ipvs", nil, `proxy mode "ipvs"`},
		{"mode iptables", header + "mode: iptables", nil, `proxy mode "iptables"`},
		{"mode kernelspace", header + "mode: kernelspace", nil, `proxy mode "kernelspace"`},
		{"--proxy-mode=ipvs", "", []string{"--proxy-mode=ipvs"}, `proxy mode "ipvs"`},
		{"--proxy-mode iptables", "", []string{"--proxy-mode", "iptables"}, `proxy mode "iptables"`},
		{"wrong kind", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration", nil, "no kind"},
		{"bad CIDR", header + "clusterCIDR: 10.244.0.0", nil, "clusterCIDR"},
		{"nodeport localhost", header + "nodePortAddresses: [localhost]", nil, "loopback"},
		{"bad detectLocalMode", header + "detectLocalMode: Pods", nil, "detectLocalMode"},
		{"--cleanup", "", []string{"--cleanup"}, "not supported"},
		{"--write-config-to", "", []string{"--write-config-to", "/tmp/x"}, "not supported"},
		{"negative conntrack", "", []string{"--conntrack-min=-1"}, "at least 0"},
	} {
		_, err := parse(t, tc.file, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.err)
		}
	}
}

// TestNodePortAddressesRepeated: --nodeport-addresses given twice means both lists, as
// kube-proxy's string-slice flag has it; once, it replaces the file's.
func TestNodePortAddressesRepeated(t *testing.T) {
	o, err := parse(t, header+"nodePortAddresses: [192.168.0.0/24]\n", "--nodeport-addresses=10.0.0.0/8", "--nodeport-addresses", "primary,fd00::/64")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64")}
	if !slices.Equal(o.Config.NodePortAddresses, want) || !o.Config.NodePortPrimary {
		t.Errorf("nodeport addresses %v (primary %v), want %v and primary", o.Config.NodePortAddresses, o.Config.NodePortPrimary, want)
	}
}

// TestConfigLenient: a file that strict decoding refuses only for an unknown or duplicated
// field is read anyway, as kube-proxy reads it, with a warning that quotes the error.
func TestConfigLenient(t *testing.T) {
	for _, tc := range []struct {
		name, file, warning string
		cidr                string
	}{
		{"unknown field", "clusterCidr: 10.0.0.0/8\nclusterCIDR: 10.244.0.0/16", `unknown field "clusterCidr"`, "10.244.0.0/16"},
		{"unknown nested field", "nftables: {masqueradeAl: true}\nclusterCIDR: 10.244.0.0/16", `unknown field "nftables.masqueradeAl"`, "10.244.0.0/16"},
		{"duplicate field", "clusterCIDR: 10.0.0.0/8\nclusterCIDR: 10.244.0.0/16", `already set`, "10.244.0.0/16"},
	} {
		o, err := parse(t, header+tc.file)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := o.Config.ClusterCIDRs; len(got) != 1 || got[0].String() != tc.cidr {
			t.Errorf("%s: cluster CIDRs %v, want %s", tc.name, got, tc.cidr)
		}
		if w := strings.Join(o.Warnings(), "\n"); !strings.Contains(w, tc.warning) || !strings.Contains(w, "without strict checks") {
			t.Errorf("%s: warnings %q, want one quoting %q", tc.name, w, tc.warning)
		}
	}
	if o, err := parse(t, header+"clusterCIDR: 10.244.0.0/16"); err != nil {
		t.Errorf("a clean file: %v", err)
	} else if w := o.Warnings(); len(w) != 0 {
		t.Errorf("a clean file: warnings %q", w)
	}
}

// TestIgnoredFlags: kube-proxy flags without meaning here are accepted, in both spellings,
// and named in one warning.
func TestIgnoredFlags(t *testing.T) {
	o, err := parse(t, "", "--ipvs-scheduler", "rr", "--ipvs-strict-arp", "--feature-gates=A=true,B=false", "--oom-score-adj=-999", "--bind-address", "0.0.0.0", "--ipvs-scheduler=wrr")
	if err != nil {
		t.Fatal(err)
	}
	w := o.Warnings()
	want := "ignoring kube-proxy flags that do not apply to nftproxy: --ipvs-scheduler, --ipvs-strict-arp, --feature-gates, --oom-score-adj, --bind-address"
	if len(w) != 1 || w[0] != want {
		t.Errorf("warnings %q, want [%q]", w, want)
	}
}

// TestServerAddresses: the health and metrics servers' addresses as kube-proxy finishes them:
// an IP alone gets the server's port (the deprecated --healthz-port or --metrics-port's
// without --config, where 0 turns the server off), and a file whose bindAddress is IPv6
// defaults them to [::] and [::1].
func TestServerAddresses(t *testing.T) {
	for _, tc := range []struct {
		name             string
		file             string
		flags            []string
		healthz, metrics string
	}{
		{"defaults", "", nil, "0.0.0.0:10256", "127.0.0.1:10249"},
		{"IPs without ports", "", []string{"--healthz-bind-address=0.0.0.0", "--metrics-bind-address=::1"}, "0.0.0.0:10256", "[::1]:10249"},
		{"the deprecated port flags", "", []string{"--healthz-bind-address=10.0.0.1", "--healthz-port=12345", "--metrics-port=0"}, "10.0.0.1:12345", ""},
		{"an IPv6 bindAddress", "bindAddress: \"::\"\n", nil, "[::]:10256", "[::1]:10249"},
		{"a file's IP without port", "metricsBindAddress: 0.0.0.0\nhealthzBindAddress: \"::\"\n", nil, "[::]:10256", "0.0.0.0:10249"},
		{"port flags with --config", "clusterCIDR: 10.244.0.0/16\n", []string{"--healthz-port=0"}, "0.0.0.0:10256", "127.0.0.1:10249"},
	} {
		file := ""
		if tc.file != "" {
			file = header + tc.file
		}
		o, err := parse(t, file, tc.flags...)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if o.HealthzAddress != tc.healthz || o.MetricsAddress != tc.metrics {
			t.Errorf("%s: healthz %q, metrics %q; want %q, %q", tc.name, o.HealthzAddress, o.MetricsAddress, tc.healthz, tc.metrics)
		}
	}
}
