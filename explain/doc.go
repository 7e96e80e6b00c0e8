// Package explain owns the answer to "what will nftproxy's rules do with this new
// connection?": it walks one family's nftproxy table (a model.Ruleset, as read back from the
// kernel or as the model renders it) the way the kernel walks it for the first packet of a
// connection, and says the outcome in an operator's words.
//
// The walk is an interpreter of the rules, not a re-derivation from Services: it runs the
// base chains of the packet's path (prerouting or output, then postrouting) in priority
// order, looks elements up in the maps and sets the rules name, follows jumps, gotos and
// returns, forks at "numgen random mod N" into one branch per slot, and applies the packet
// mark, DNAT, masquerade, reject and drop as the kernel would. A wrong rule therefore shows
// up as a wrong explanation. It performs no I/O: the caller supplies the table, the node's
// local addresses (what "fib daddr type local" answers) and the affinity map's entries.
//
// # Words
//
//   - packet: the first packet of a new connection: source, destination, protocol, port, and
//     where it comes from (a pod, this node itself, or outside through an interface).
//   - path: the hooks the packet passes: prerouting (it arrives) or output (this node sends
//     it), then postrouting unless it is delivered to this node.
//   - branch: one way through the rules; a slot draw forks a branch into one per slot, each
//     with its share of the probability.
//   - outcome: where a branch ends: forwarded to an endpoint (masqueraded or not), rejected,
//     dropped, or left alone (not a Service).
//   - frontend: the Service address or NodePort a map element matched, and its kind
//     (ClusterIP, NodePort, LoadBalancer IP, ExternalIP).
package explain
