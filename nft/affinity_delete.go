package nft

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// noDestroySetElem is set once the kernel rejected an NFT_MSG_DESTROYSETELEM batch with
// EINVAL: kernels before 6.3 do not know the message (nfnetlink finds no handler for a type
// past NFT_MSG_MAX, 24 on Linux 6.1) and reject the whole batch. The kernel is the same for
// every network namespace, so one flag serves the process.
var noDestroySetElem atomic.Bool

// deleteAffinityElems deletes the elements drop (keys only) from fam's affinity map and
// returns how many of them it deleted (with DESTROYSETELEM, which does not say which
// elements it found: all of them). Entries expire in the kernel on their own, so any of
// them may be gone by now, and that is no error.
//
// Linux 6.3 and later: one batch of NFT_MSG_DESTROYSETELEM, which skips missing elements.
// Before: one batch of NFT_MSG_DELSETELEM; a missing element fails it with ENOENT and the
// kernel rolls back the whole batch, so then each element goes in a batch of its own and
// an ENOENT counts that element as gone already. Each rejected batch costs the 200 ms
// receiveAcks waits for further errors, which the one-batch attempt keeps to the rare case
// of an entry that expired between the listing and the deletion.
func deleteAffinityElems(c *conn, fam model.Family, drop []wireElement) (int, error) {
	if !noDestroySetElem.Load() {
		err := commitElemDeletes(c, fam, nftMsgDestroySetElem, drop)
		switch {
		case err == nil:
			return len(drop), nil
		case !errors.Is(err, unix.EINVAL):
			return 0, err
		}
		// Also EINVAL for a malformed element; then the DELSETELEM batch fails alike and
		// its error is returned. DELSETELEM is right on every kernel either way.
		noDestroySetElem.Store(true)
	}
	err := commitElemDeletes(c, fam, unix.NFT_MSG_DELSETELEM, drop)
	switch {
	case err == nil:
		return len(drop), nil
	case !errors.Is(err, unix.ENOENT):
		return 0, err
	case len(drop) == 1:
		return 0, nil
	}
	deleted := 0
	for i := range drop {
		err := commitElemDeletes(c, fam, unix.NFT_MSG_DELSETELEM, drop[i:i+1])
		switch {
		case err == nil:
			deleted++
		case !errors.Is(err, unix.ENOENT):
			return deleted, err
		}
	}
	return deleted, nil
}

// commitElemDeletes deletes els from fam's affinity map in one batch of messages of type typ.
func commitElemDeletes(c *conn, fam model.Family, typ uint16, els []wireElement) error {
	b := &batch{}
	w := b.elemWriter(nfproto(fam), typ, model.TableName, model.MapAffinity)
	for i := range els {
		w.add(&els[i])
	}
	w.close()
	return b.commit(c, 0)
}
