package daemon

import (
	"fmt"
	"os"

	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nftproxy/nftproxy/internal/kubeclient"
)

// NewClient returns a client of the API server the options name: --kubeconfig (else the
// in-cluster configuration), --master over its address, and kube-proxy's content type, QPS
// and burst. userAgent names nftproxy and its version.
func (c ClientOptions) NewClient(userAgent string) (*kubeclient.Client, error) {
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
	if err := preferList(); err != nil {
		return nil, err
	}
	return kubeclient.New(cfg)
}

// watchListEnv is client-go's environment variable for its WatchListClient feature.
const watchListEnv = "KUBE_FEATURE_" + string(clientfeatures.WatchListClient)

// preferList has the informers fill their caches with one LIST, as before client-go 1.35,
// rather than with a WatchList stream (sendInitialEvents), unless $KUBE_FEATURE_WatchListClient
// says otherwise. The API server serves the LIST from its watch cache in one response; the
// stream costs it an encoded event per object. At 10,000 Services x 10 endpoints the API
// server spent 0.8-1.3 s of CPU on the stream against 0.2-0.3 s on the LIST, and nftproxy
// had its caches earlier. The feature gates are the process's: this holds for every client.
func preferList() error {
	if _, set := os.LookupEnv(watchListEnv); set {
		return nil
	}
	gates, ok := clientfeatures.FeatureGates().(interface {
		Set(clientfeatures.Feature, bool) error
	})
	if !ok {
		return nil // gates replaced by someone else: theirs to decide
	}
	if err := gates.Set(clientfeatures.WatchListClient, false); err != nil {
		return fmt.Errorf("kubernetes client: disable %s: %w", clientfeatures.WatchListClient, err)
	}
	return nil
}
