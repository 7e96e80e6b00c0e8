package daemon

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// NewClient returns a client of the API server the options name: --kubeconfig (else the
// in-cluster configuration), --master over its address, and kube-proxy's content type, QPS
// and burst. userAgent names nftproxy and its version.
func (c ClientOptions) NewClient(userAgent string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if c.Kubeconfig == "" && c.Master == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags(c.Master, c.Kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = userAgent
	// Protocol buffers by default, as kube-proxy: lists of thousands of Services and
	// EndpointSlices decode several times faster, into less memory, than JSON.
	cfg.ContentType = c.ContentType
	if cfg.ContentType == "" {
		cfg.ContentType = DefaultContentType
	}
	cfg.AcceptContentTypes = cfg.ContentType
	if cfg.ContentType != "application/json" {
		cfg.AcceptContentTypes += ",application/json"
	}
	cfg.QPS, cfg.Burst = c.QPS, int(c.Burst)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}
