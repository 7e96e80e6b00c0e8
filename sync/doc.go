// Package sync owns the transactional syncer: it keeps what it last committed to the kernel,
// works out what changed since, and commits exactly that as one atomic batch per sync, then
// does what must follow a commit (releasing session affinity of clients whose endpoint went
// away, and reconciling the conntrack table: deleting the entries of UDP and SCTP flows that
// the rules no longer send where they went).
//
// Words used here, beside model's:
//   - change: a Service's new model value (nil: gone) handed to Update, kept pending with the
//     time it was first seen, and the trigger times of the EndpointSlice updates behind it
//     (AddTriggerTimes), until a sync commits it.
//   - trigger time: when the change was made in the cluster, as the EndpointSlice controller
//     stamps it; from it to the commit is the network programming latency.
//   - partial sync: a sync that rebuilds only the Parts of the changed Services and diffs only
//     the elements and chains they touch.
//   - full sync: a sync that reads the tables back from the kernel and diffs the whole desired
//     ruleset against them, each element read compared with the desired one of its key (at
//     start, after a failed commit, or when someone else changed the ruleset: drift). A table
//     that is not there, or in another layout, is replaced whole, its claimed elements
//     streamed to the encoder in the order of the Parts that hold them.
//   - claim: a Service's hold on one element of one set; when two Services claim the same key,
//     the first by name wins.
//   - committed: the syncer's view of what the kernel holds: the committed chains by name, and
//     as elements the claimed ones and the skeleton's (what every commit leaves), except the
//     keys whose claims changed since the last commit (prior: their committed elements).
//   - size: the room of an endpoint map (model.EndpointMapSize), which the kernel enforces.
//     The committed sizes are the table's; a sync whose elements outgrow a map (or that
//     follows a commit the kernel refused as full, or adopts a map without a size) replaces
//     that map in its transaction, larger, with every claimed element (growing). Maps never
//     shrink.
//   - sync-state: the set in which every commit records the generation it produces and the
//     digests of the endpoint maps in buckets (model.SyncState, state.go); a full sync that
//     reads it at that generation looks up only the buckets whose digest is not the desired
//     elements' (trusted), so that a restart after which nothing changed reads no endpoint
//     of a map too large to dump.
//   - unread replacement: after replaceAfterReadFailures full syncs in a row that could not
//     read a table back, the next replaces the tables without reading them.
package sync
