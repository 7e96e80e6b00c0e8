// Package daemon owns running nftproxy on a node: its configuration (kube-proxy's flags and
// its KubeProxyConfiguration file, and the conntrack sysctls they set), the API client's
// configuration (package kubeclient builds it), the loop that feeds the changes a source
// delivers to the syncer (rate limit, periodic resync, backoff), the process's memory around
// the first sync (collectBeforeFirstSync, settleMemory), the Prometheus
// metrics, the /healthz and /livez endpoints, the events it records about the node and the
// Services it cannot proxy, and the health check node port servers of Services with
// externalTrafficPolicy Local.
package daemon
