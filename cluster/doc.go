// Package cluster owns reading the cluster: the sources of the Kubernetes objects a node's
// proxy needs (the API server through client-go informers, or a directory of manifests),
// behind one Source interface that delivers Deltas (a Store to read the objects from and the
// Services whose objects changed), and the conversion of those objects into model input, one
// changed Service at a time. Objects that cannot be used are reported as BadObjects naming
// the object and the reason; they never affect any other object.
package cluster
