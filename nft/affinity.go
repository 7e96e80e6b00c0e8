package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/nlrecv"
	"github.com/nftproxy/nftproxy/model"
)

// nftMsgDestroySetElem is NFT_MSG_DESTROYSETELEM (Linux 6.3): delete set elements, ignoring
// the ones that do not exist. Affinity entries expire in the kernel on their own, so one may
// be gone by the time it is deleted.
const nftMsgDestroySetElem = 30

// AffinityEntry is one client the affinity map remembers: new connections from Client to
// Dst (a Service address and port, or a node address and NodePort) of protocol Proto go to
// Endpoint while the entry lives.
type AffinityEntry struct {
	Client   netip.Addr
	Dst      netip.AddrPort
	Proto    model.Protocol
	Endpoint netip.AddrPort
	// Expires is the time the entry has left when listed, 0 when the kernel did not say.
	Expires time.Duration
}

// AffinityEntries lists fam's affinity map: the clients the packet path remembers, with
// the time each entry has left. A missing table or map is an error (ENOENT).
func (n *Netlink) AffinityEntries(fam model.Family) ([]AffinityEntry, error) {
	var out []AffinityEntry
	err := n.control(func(c *conn) error {
		out = nil
		return listAffinity(c, fam, func(e AffinityEntry, _ []byte) { out = append(out, e) })
	})
	return out, err
}

// listAffinity lists fam's affinity map over c, calling fn with each entry and its key bytes,
// which alias the conn's buffer (the next message reuses it).
func listAffinity(c *conn, fam model.Family, fn func(e AffinityEntry, key []byte)) error {
	addrLen := model.KeyFieldLen(fam, model.KeyAddr, false)
	ae := newAttrs()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, model.TableName)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, model.MapAffinity)
	err := c.request(unix.NFT_MSG_GETSETELEM, netlink.Dump, nfproto(fam), ae, func(data []byte) error {
		return eachElement(data, func(elem []byte) error {
			key, value := elementKeyData(elem)
			e, ok := decodeAffinity(key, value, addrLen)
			if !ok {
				return fmt.Errorf("affinity element %x : %x: %w", key, value, ErrIncompatible)
			}
			e.Expires = elementExpiration(elem)
			fn(e, key)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("list %s affinity map: %w", fam, err)
	}
	return nil
}

// PruneAffinity deletes the entries of fam's affinity map for which keep returns false and
// returns how many it deleted. It lists the map (the packet path fills it) and deletes in one
// batch; entries that expire meanwhile are no error.
func (n *Netlink) PruneAffinity(fam model.Family, keep func(AffinityEntry) bool) (int, error) {
	deleted := 0
	err := n.control(func(c *conn) error {
		destroy, err := n.destroy.get(c)
		if err != nil {
			return err
		}
		deleted, err = pruneAffinity(c, fam, keep, destroy)
		return err
	})
	return deleted, err
}

// pruneAffinity is PruneAffinity over c.
// With destroy the kernel has NFT_MSG_DESTROYSETELEM.
func pruneAffinity(c *conn, fam model.Family, keep func(AffinityEntry) bool, destroy bool) (int, error) {
	var drop []wireElement
	err := listAffinity(c, fam, func(e AffinityEntry, key []byte) {
		if !keep(e) {
			// The key aliases the conn's buffer, which the next message reuses.
			drop = append(drop, wireElement{key: slices.Clone(key)})
		}
	})
	if err != nil {
		return 0, err
	}
	if len(drop) == 0 {
		return 0, nil
	}
	deleted, err := deleteAffinityElems(c, fam, drop, destroy)
	if err != nil {
		return deleted, fmt.Errorf("delete %d %s affinity entries: %w", len(drop), fam, err)
	}
	return deleted, nil
}

// elementKeyData returns the key and data values of one dumped set element. They alias b.
func elementKeyData(b []byte) (key, data []byte) {
	it := nlrecv.Attrs{B: b}
	for it.Next() {
		if it.Type != unix.NFTA_SET_ELEM_KEY && it.Type != unix.NFTA_SET_ELEM_DATA {
			continue
		}
		v := nlrecv.Attrs{B: it.Data}
		for v.Next() {
			if v.Type == unix.NFTA_DATA_VALUE {
				if it.Type == unix.NFTA_SET_ELEM_KEY {
					key = v.Data
				} else {
					data = v.Data
				}
			}
		}
	}
	return key, data
}

// elementExpiration returns the time a dumped set element has left
// (NFTA_SET_ELEM_EXPIRATION, milliseconds), or 0 when it carries none.
func elementExpiration(b []byte) time.Duration {
	it := nlrecv.Attrs{B: b}
	for it.Next() {
		if it.Type == unix.NFTA_SET_ELEM_EXPIRATION && len(it.Data) == 8 {
			return time.Duration(binary.BigEndian.Uint64(it.Data)) * time.Millisecond
		}
	}
	return 0
}

// decodeAffinity decodes an affinity map element: key client . address . protocol . port
// (the last two padded to four bytes), data endpoint address . port (padded).
func decodeAffinity(key, data []byte, addrLen int) (AffinityEntry, bool) {
	if len(key) != 2*addrLen+8 || len(data) != addrLen+4 {
		return AffinityEntry{}, false
	}
	client, _ := netip.AddrFromSlice(key[:addrLen])
	dst, _ := netip.AddrFromSlice(key[addrLen : 2*addrLen])
	proto := model.Protocol(key[2*addrLen])
	port := binary.BigEndian.Uint16(key[2*addrLen+4:])
	ep, _ := netip.AddrFromSlice(data[:addrLen])
	epPort := binary.BigEndian.Uint16(data[addrLen:])
	return AffinityEntry{Client: client, Dst: netip.AddrPortFrom(dst, port), Proto: proto,
		Endpoint: netip.AddrPortFrom(ep, epPort)}, true
}
