package nft

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// destroySupport remembers whether the kernel has NFT_MSG_DESTROYSETELEM (Linux 6.3): set by
// Probe, or found by the first affinity prune that needs it.
type destroySupport struct {
	mu    sync.Mutex
	known bool
	yes   bool
}

func (d *destroySupport) set(yes bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.known, d.yes = true, yes
}

// get returns whether the kernel has the message, probing over c the first time.
func (d *destroySupport) get(c *conn) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.known {
		yes, err := probeDestroyElements(c)
		if err != nil {
			return false, err
		}
		d.known, d.yes = true, yes
	}
	return d.yes, nil
}

// deleteAffinityElems deletes the elements drop (keys only) from fam's affinity map and
// returns how many of them it deleted (with DESTROYSETELEM, which does not say which
// elements it found: all of them). Entries expire in the kernel on their own, so any of
// them may be gone by now, and that is no error.
//
// With destroy (Linux 6.3 and later): one batch of NFT_MSG_DESTROYSETELEM, which skips
// missing elements. Without: one batch of NFT_MSG_DELSETELEM; a missing element fails it with
// ENOENT and the kernel rolls back the whole batch, so then each element goes in a batch of
// its own and an ENOENT counts that element as gone already. That costs a batch per entry
// only in the rare case of an entry that expired between the listing and the deletion.
func deleteAffinityElems(c *conn, fam model.Family, drop []wireElement, destroy bool) (int, error) {
	if destroy {
		if err := commitElemDeletes(c, fam, nftMsgDestroySetElem, drop); err != nil {
			return 0, err
		}
		return len(drop), nil
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
