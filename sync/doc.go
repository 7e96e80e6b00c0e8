// Package sync owns everything between the cluster and the model: sources of Kubernetes
// objects (manifest files now, the API server later), their conversion into model input,
// change tracking and the sync loop that commits rulesets.
package sync
