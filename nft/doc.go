// Package nft owns nftproxy's conversation with the kernel: it encodes model rulesets as
// netlink messages (with google/nftables' expression encoders), commits them as single atomic
// netlink batches in a given network namespace, reads nftproxy's tables back, and removes them
// on cleanup. It never runs the nft binary. Fake is an in-memory Backend with the same
// all-or-nothing semantics, for tests of the layers above.
//
// # Words
//
// Each of these words has one meaning in this package:
//
//   - table: nftproxy's table of one family, held as a *model.Ruleset. The desired table is
//     what the caller wants; the table state is what Read and ReadTable return, the kernel's
//     table decoded against the desired one.
//   - element: one element of a set or map, a model.Element: its key fields, and a verdict or
//     an endpoint. A wire element (wireElement) is one as netlink carries it, as bytes. An
//     affinity entry (AffinityEntry) is an element of the affinity map, which the packet path
//     adds and expires.
//   - transaction: a Transaction, the changes of one sync in model terms: tables to replace,
//     then Ops (add or delete elements; add, rewrite, flush or delete a chain; replace a set,
//     to give it another size).
//   - batch: the netlink messages one transaction encodes to, between a batch-begin and a
//     batch-end message. The kernel applies a batch all or nothing.
//   - commit: sending one batch in one sendmsg and reading the kernel's acknowledgement.
//   - conn: one netfilter netlink socket and its receive buffer. Requests (reads) and batches
//     (commits) go over it; the Netlink backend keeps one open between operations.
//   - dump: a request for every object of a kind (the sets, chains or rules of the table, the
//     elements of a set), whose reply spans many messages.
//   - generation: the ruleset generation, which every commit by anyone changes. A read is
//     consistent when it ran at one generation; a batch conditional on a generation is
//     applied only if it is still current.
//   - expectation: what nftproxy would write for a desired table: the definitions of its sets
//     and chains and a fingerprint of each rule, taken from the encoder's own messages. The
//     table state is decoded against it.
//   - definition (setDef, chainDef): the properties of a set or chain as a NEWSET or NEWCHAIN
//     message carries them, compared between the expectation and the kernel (but a set's
//     size, which the table state reports as the kernel has it). A spec
//     (setSpec, chainSpec) is what the batch writes such a message from.
//   - lookup: a request for set elements by key (NFT_MSG_GETSETELEM without NLM_F_DUMP).
//     The endpoint maps, keyed by a frontend and a slot, are read by lookups of the keys
//     expected and of the slots past them, not dumped: a dump is quadratic in the kernel.
//     The elements found stay in the batches they were decoded into (a million of them are
//     100 MB): a caller that only compares them takes the batches (Expected.Elements),
//     handed over once the read is known to be of one generation, never those of a read
//     that saw a commit and started over. The caller may spare the lookups of the frontends
//     it knows unchanged (Expected.Unchanged, from the table's sync-state set).
//   - prefetch: the endpoint maps read ahead of the read that needs them, by walking the slots
//     of the frontends the table holds; not read when the table's sync-state set records the
//     current generation (model.SyncState): the read that needs them then looks up only what
//     changed.
package nft
