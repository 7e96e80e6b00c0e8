// Package kubeclient owns nftproxy's client of the Kubernetes API: REST clients of the three
// API groups it uses (core/v1 for Services and Nodes, discovery.k8s.io/v1 for EndpointSlices,
// events.k8s.io/v1 for the events it writes) over one HTTP connection pool, and a scheme that
// holds only their types.
//
// client-go's Clientset has a client of every API group, and its scheme registers every API
// type: linked into the proxy they cost about 10 MB of resident memory on every node (the
// code and type data of forty-odd API groups the proxy never reads) and their start-up
// registration. The clients here are what the Clientset's three would be: same paths,
// serializers, user agent and shared rate limiter; the content type is the configuration's
// (the daemon asks for protobuf, as kube-proxy does).
package kubeclient

import (
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

var (
	// Scheme holds the types of core/v1, discovery.k8s.io/v1 and events.k8s.io/v1, and the
	// option types of metav1 (ListOptions and the like) that requests carry.
	Scheme = runtime.NewScheme()
	// Codecs are Scheme's serializers: protobuf, JSON and YAML.
	Codecs = serializer.NewCodecFactory(Scheme)
	// ParameterCodec encodes request options (ListOptions) as query parameters.
	ParameterCodec = runtime.NewParameterCodec(Scheme)
)

func init() {
	utilruntime.Must(corev1.AddToScheme(Scheme))
	utilruntime.Must(discoveryv1.AddToScheme(Scheme))
	utilruntime.Must(eventsv1.AddToScheme(Scheme))
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
}

// Client holds a REST client of each API group the proxy uses.
type Client struct {
	// Core is the client of the core group's v1 (/api/v1): Services and Nodes.
	Core *rest.RESTClient
	// Discovery is the client of discovery.k8s.io/v1: EndpointSlices.
	Discovery *rest.RESTClient
	// Events is the client of events.k8s.io/v1: Events.
	Events *rest.RESTClient
}

// New returns the clients of cfg's API server. As client-go's Clientset, they share one HTTP
// client and, when cfg sets QPS without a rate limiter, one token bucket of QPS and Burst.
func New(cfg *rest.Config) (*Client, error) {
	c := *cfg
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent() // before the HTTP client, which sends it
	}
	if c.RateLimiter == nil && c.QPS > 0 {
		if c.Burst <= 0 {
			return nil, fmt.Errorf("kubernetes client: a QPS of %v needs a burst greater than 0", c.QPS)
		}
		c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	}
	hc, err := rest.HTTPClientFor(&c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	var out Client
	for _, g := range []struct {
		into    **rest.RESTClient
		apiPath string
		gv      schema.GroupVersion
	}{
		{&out.Core, "/api", corev1.SchemeGroupVersion},
		{&out.Discovery, "/apis", discoveryv1.SchemeGroupVersion},
		{&out.Events, "/apis", eventsv1.SchemeGroupVersion},
	} {
		if *g.into, err = groupClient(c, hc, g.apiPath, g.gv); err != nil {
			return nil, fmt.Errorf("kubernetes client of %s: %w", g.gv, err)
		}
	}
	return &out, nil
}

// groupClient returns the REST client of group version gv at apiPath, as the Clientset's
// client of that group sets it up.
func groupClient(c rest.Config, hc *http.Client, apiPath string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c.APIPath = apiPath
	c.GroupVersion = &gv
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(Scheme, Codecs).WithoutConversion()
	return rest.RESTClientForConfigAndClient(&c, hc)
}
