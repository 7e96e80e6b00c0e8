// Package daemon owns running nftproxy on a node: its configuration from command-line flags,
// the loop that feeds a source's snapshots to the syncer (rate limit, periodic resync,
// backoff), the Prometheus metrics, the /healthz and /livez endpoints, the events it records
// about the node and the Services it cannot proxy, and the health check node port servers of
// Services with externalTrafficPolicy Local.
package daemon
