// Package model owns the desired nftables ruleset of a node: the value that describes one
// family's table, the pure function that derives it from cluster state, and its nft text.
//
// Build takes the Services this node proxies, already converted from Kubernetes objects, and
// the node's configuration, and returns the Ruleset of one IP family. It performs no I/O,
// keeps no clock and produces sorted, deterministic output, so the same input always yields
// byte-identical rules. Render turns a Ruleset into the text `nft list table` prints; package
// nft turns the same value into netlink messages, using the key layout defined here.
//
// The files follow the package's seams: input.go is Build's input, ruleset.go the value it
// returns, build.go Build itself, names.go the derived names of chains and comments, keys.go
// element keys and their bytes in the kernel, render.go the nft text.
//
// # Glossary
//
//   - table: nftproxy's nftables table of one family (TableName); nftproxy touches no other.
//   - ruleset: the desired content of one family's table: sets, maps and chains (Ruleset).
//   - skeleton: what a ruleset holds with no Services: all sets and maps, base and fixed chains.
//   - set: a named collection of elements (Set); with NoData a plain set, else a map.
//   - map: a set whose elements carry data: a verdict map or an endpoint map (DataKind).
//   - dynamic map: a map the packet path fills and nftproxy never writes (the affinity map).
//   - element: one entry of a set or map: a key, and in a map a verdict or endpoint (Element).
//   - key: what identifies an element in its set (Key), laid out in the set's key fields.
//   - key field: address, protocol, port, slot or source address (KeyField); several concatenate.
//   - frontend: what clients connect to: a Service address, protocol and port, or a NodePort.
//   - endpoint: an address and port that serves a Service port (Endpoint).
//   - cluster, local endpoints: usable ones on any node (topology permitting), on this node.
//   - slot: an element of an endpoint map: frontend and index (numgen's draw) to one endpoint.
//   - part: what one Service contributes: its elements of the skeleton's sets, its chains (Part).
//   - claim: a part's element for a key; of Services claiming one key, the first by name wins.
//   - base chain: a chain attached to a netfilter hook at a priority (a Chain with a Hook).
//   - fixed chain: a skeleton chain without a hook, named by a Chain constant.
//   - service chain: a chain that exists for Services (IsServiceChain), reached from map elements.
//   - picking chain: a service chain that DNATs to a drawn slot; one per kind, protocol, slots.
//   - pick kind: the frontend a picking chain serves: cluster, external or NodePort (PickKind).
//   - affinity: sessionAffinity ClientIP; the affinity map remembers each client's endpoint.
//   - firewall chain: drops sources outside a Service's loadBalancerSourceRanges.
//   - hairpin: a pod reaching itself through a Service; masqueraded so that it can answer.
package model
