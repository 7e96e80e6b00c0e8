// Package logkey holds the keys of nftproxy's structured log records, so that every package
// names the same thing the same way (an operator's log query on "service" finds every record
// about a Service, whichever package wrote it).
package logkey

// Keys of log attributes.
const (
	// Address is a listening address.
	Address = "address"
	// Addresses lists listening addresses.
	Addresses = "addresses"
	// Count is a number of objects.
	Count = "count"
	// Dir is a directory.
	Dir = "dir"
	// Duration is how long an operation took.
	Duration = "duration"
	// EndpointsRead is a number of endpoint map elements a full sync read back.
	EndpointsRead = "endpointsRead"
	// Entries is a number of kernel entries (affinity, conntrack).
	Entries = "entries"
	// Error is an error.
	Error = "err"
	// Features describes what the kernel offers.
	Features = "features"
	// Full tells whether a sync was a full one.
	Full = "full"
	// GOGC is the garbage collector's target (as the GOGC variable says it).
	GOGC = "gogc"
	// Kernel is the kernel's release.
	Kernel = "kernel"
	// Kubeconfig is the kubeconfig file in use.
	Kubeconfig = "kubeconfig"
	// Manifests is the manifest directory in use.
	Manifests = "manifests"
	// Node is this node's name.
	Node = "node"
	// Note is an event's note.
	Note = "note"
	// Object names an object from the cluster, as "Kind namespace/name: reason".
	Object = "object"
	// Objects is a number of nftables objects written.
	Objects = "objects"
	// Port is a port number.
	Port = "port"
	// Reason is an event's reason.
	Reason = "reason"
	// RetryIn is the delay before a retry.
	RetryIn = "retryIn"
	// Regarding is the kind of object an event is about.
	Regarding = "regarding"
	// Service names a Service as namespace/name.
	Service = "service"
	// Services is a number of Services.
	Services = "services"
	// Sysctl is a sysctl's path; Sysctls lists sysctl names.
	Sysctl  = "sysctl"
	Sysctls = "sysctls"
	// Tries is a number of attempts.
	Tries = "tries"
	// Value is the value written; Was the one it replaced.
	Value = "value"
	Was   = "was"
	// Version is nftproxy's version.
	Version = "version"
)
