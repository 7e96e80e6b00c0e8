package daemon

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	kubeproxy "k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
	"sigs.k8s.io/yaml"
)

// codecs decodes kube-proxy's published configuration type strictly (an unknown or
// duplicated field is an error), and lenientCodecs without that check.
var codecs, lenientCodecs = func() (serializer.CodecFactory, serializer.CodecFactory) {
	scheme := runtime.NewScheme()
	if err := kubeproxy.AddToScheme(scheme); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict), serializer.NewCodecFactory(scheme, serializer.DisableStrict)
}()

// DecodeKubeProxyConfiguration decodes a KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1, YAML or JSON) as kube-proxy does: strictly, and when
// only the strict checks fail (an unknown or duplicated field), leniently, returning what
// the strict decoding said as strictErr.
func DecodeKubeProxyConfiguration(data []byte) (cfg *kubeproxy.KubeProxyConfiguration, strictErr, err error) {
	obj, gvk, err := codecs.UniversalDeserializer().Decode(data, nil, nil)
	if runtime.IsStrictDecodingError(err) {
		strictErr = err
		obj, gvk, err = lenientCodecs.UniversalDeserializer().Decode(data, nil, nil)
	}
	if err != nil {
		return nil, nil, err
	}
	cfg, ok := obj.(*kubeproxy.KubeProxyConfiguration)
	if !ok {
		return nil, nil, fmt.Errorf("got %v, want a KubeProxyConfiguration", gvk)
	}
	return cfg, strictErr, nil
}

// ApplyConfigFile reads a KubeProxyConfiguration file and applies it to o, which holds the
// flags' defaults. A zero value in the file means kube-proxy's default, as it does for
// kube-proxy (kubeadm writes every field, most of them zero). A mode other than nftables (or
// empty) is an error; the settings that do not apply to nftproxy are listed in
// o.Ignored.File.
func (o *Options) ApplyConfigFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	cfg, strictErr, err := DecodeKubeProxyConfiguration(data)
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	// kube-proxy goes on too after a strict decoding error (a field of another version, say),
	// and only logs it.
	o.lenient = strictErr
	// Which top-level fields the file has: a field nftproxy does not read is named in the
	// warning whenever it is there (kubeadm writes them all, mostly zero).
	var present map[string]any
	if err := yaml.Unmarshal(data, &present); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	o.ConfigFile = path
	if err := o.applyKubeProxyConfiguration(cfg, present); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	return nil
}

// applyKubeProxyConfiguration applies the fields of cfg that nftproxy has (see the README's
// table) and notes the others that are set.
// present holds the file's top-level fields, nil for all.
func (o *Options) applyKubeProxyConfiguration(cfg *kubeproxy.KubeProxyConfiguration, present map[string]any) error {
	if err := checkProxyMode(string(cfg.Mode)); err != nil {
		return fmt.Errorf("mode: %w", err)
	}
	ignore := func(field string, set bool) {
		if set {
			o.Ignored.File = append(o.Ignored.File, field)
		}
	}
	has := func(field string) bool {
		_, ok := present[field]
		return ok || present == nil
	}
	unread := []string{"bindAddress", "bindAddressHardFail", "featureGates", "oomScoreAdj", "portRange",
		"showHiddenMetricsForVersion", "windowsRunAsService", "ipvs", "winkernel"}
	if cfg.Mode != "" {
		// With mode "" (kube-proxy's iptables mode) the iptables section is read, below.
		unread = append(unread, "iptables")
	}
	for _, f := range unread {
		ignore(f, has(f))
	}

	// clientConnection
	cc := cfg.ClientConnection
	setString(&o.Client.Kubeconfig, cc.Kubeconfig)
	setString(&o.Client.ContentType, cc.ContentType)
	if cc.QPS != 0 {
		o.Client.QPS = cc.QPS
	}
	if cc.Burst != 0 {
		o.Client.Burst = cc.Burst
	}
	ignore("clientConnection.acceptContentTypes", cc.AcceptContentTypes != "")

	// logging
	switch cfg.Logging.Format {
	case "":
	case "text", "json":
		o.LogFormat = cfg.Logging.Format
	default:
		return fmt.Errorf("logging.format %q: want text or json", cfg.Logging.Format)
	}
	o.Verbosity = int(cfg.Logging.Verbosity)
	ignore("logging.flushFrequency", cfg.Logging.FlushFrequency.SerializeAsString || cfg.Logging.FlushFrequency.Duration.Duration != 0)
	ignore("logging.vmodule", len(cfg.Logging.VModule) > 0)
	ignore("logging.options", cfg.Logging.Options.Text.SplitStream || cfg.Logging.Options.JSON.SplitStream ||
		cfg.Logging.Options.Text.InfoBufferSize.Value() != 0 || cfg.Logging.Options.JSON.InfoBufferSize.Value() != 0)

	// The node and its servers.
	if h := strings.TrimSpace(cfg.HostnameOverride); h != "" {
		o.Config.HostnameOverride = strings.ToLower(h)
	}
	// kube-proxy's default addresses follow bindAddress's family: on an IPv6 node (kubeadm
	// writes bindAddress "::" there, and no server address) they are [::] and [::1].
	if ip := netutils.ParseIPSloppy(cfg.BindAddress); ip != nil && ip.To4() == nil {
		o.HealthzAddress = net.JoinHostPort("::", strconv.Itoa(DefaultHealthzPort))
		o.MetricsAddress = net.JoinHostPort("::1", strconv.Itoa(DefaultMetricsPort))
	}
	setString(&o.HealthzAddress, cfg.HealthzBindAddress)
	setString(&o.MetricsAddress, cfg.MetricsBindAddress)
	o.Profiling = cfg.EnableProfiling

	// The rules.
	if cfg.ClusterCIDR != "" {
		cidrs, err := ParseClusterCIDRs(cfg.ClusterCIDR)
		if err != nil {
			return fmt.Errorf("clusterCIDR: %w", err)
		}
		o.Config.ClusterCIDRs = cidrs
	}
	if len(cfg.NodePortAddresses) > 0 {
		prefixes, primary, err := ParseNodePortAddresses(cfg.NodePortAddresses)
		if err != nil {
			return fmt.Errorf("nodePortAddresses: %w", err)
		}
		o.Config.NodePortAddresses, o.Config.NodePortPrimary = prefixes, primary
	}
	switch mode := string(cfg.DetectLocalMode); mode {
	case "":
	case DetectLocalClusterCIDR, DetectLocalNodeCIDR, DetectLocalBridgeInterface, DetectLocalInterfaceNamePrefix:
		o.Config.DetectLocalMode = mode
	default:
		return fmt.Errorf("detectLocalMode %q: want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix", mode)
	}
	if s := cfg.DetectLocal.BridgeInterface; s != "" {
		if err := validInterfaceName(s); err != nil {
			return fmt.Errorf("detectLocal.bridgeInterface: %w", err)
		}
		o.Config.PodBridgeInterface = s
	}
	if s := cfg.DetectLocal.InterfaceNamePrefix; s != "" {
		if err := validInterfaceName(s); err != nil {
			return fmt.Errorf("detectLocal.interfaceNamePrefix: %w", err)
		}
		o.Config.PodInterfaceNamePrefix = s
	}

	// The nftables section; with mode "" (kube-proxy's iptables mode) the iptables section
	// held the same settings, so it counts where the nftables one is not set: an operator
	// moving from iptables mode keeps its masqueradeAll and sync periods.
	nft, ipt := cfg.NFTables, cfg.IPTables
	o.Config.MasqueradeAll = nft.MasqueradeAll
	syncPeriod, minSyncPeriod := nft.SyncPeriod.Duration, nft.MinSyncPeriod.Duration
	if cfg.Mode == "" {
		o.Config.MasqueradeAll = o.Config.MasqueradeAll || ipt.MasqueradeAll
		syncPeriod = cmpOr(syncPeriod, ipt.SyncPeriod.Duration)
		minSyncPeriod = cmpOr(minSyncPeriod, ipt.MinSyncPeriod.Duration)
	}
	if syncPeriod != 0 {
		o.SyncPeriod = syncPeriod
	}
	if minSyncPeriod != 0 {
		o.MinSyncPeriod = minSyncPeriod
	}
	ignore("nftables.masqueradeBit", nft.MasqueradeBit != nil)
	if cfg.Mode == "" {
		ignore("iptables.masqueradeBit", ipt.MasqueradeBit != nil)
		ignore("iptables.localhostNodePorts", ipt.LocalhostNodePorts != nil)
	}

	// conntrack: a nil pointer is kube-proxy's default, kept from the flags.
	ct := cfg.Conntrack
	if ct.MaxPerCore != nil {
		o.Conntrack.MaxPerCore = *ct.MaxPerCore
	}
	if ct.Min != nil {
		o.Conntrack.Min = *ct.Min
	}
	if ct.TCPEstablishedTimeout != nil {
		o.Conntrack.TCPEstablishedTimeout = ct.TCPEstablishedTimeout.Duration
	}
	if ct.TCPCloseWaitTimeout != nil {
		o.Conntrack.TCPCloseWaitTimeout = ct.TCPCloseWaitTimeout.Duration
	}
	o.Conntrack.TCPBeLiberal = ct.TCPBeLiberal
	o.Conntrack.UDPTimeout = ct.UDPTimeout.Duration
	o.Conntrack.UDPStreamTimeout = ct.UDPStreamTimeout.Duration

	o.ConfigSyncPeriod = cfg.ConfigSyncPeriod.Duration
	return nil
}

// setString sets *p to v unless v is empty (kube-proxy's default).
func setString(p *string, v string) {
	if v != "" {
		*p = v
	}
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}
