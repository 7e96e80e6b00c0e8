// Keys: what identifies an element of a set or map, and how the kernel stores it.
//
// A set's key is a list of fields (KeyField): one makes a plain key ("ipv4_addr"), more make a
// concatenation ("ipv4_addr . inet_proto . inet_service"). In the kernel a key is a byte
// string: each field in network byte order (except a slot, which numgen writes in host byte
// order), and in a concatenation every field padded to a multiple of 4 bytes. Package nft
// builds and parses netlink keys with KeyFieldLen and ElementKey, and Render lists elements in
// the order nft sorts those bytes. Within model and the syncer an element is known by its Key,
// the same fields as a comparable value.

package model

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"net/netip"
)

// KeyField is one field of a set key.
type KeyField uint8

// The key fields nftproxy's sets use.
const (
	// KeyAddr is an address of the table's family (ipv4_addr or ipv6_addr).
	KeyAddr KeyField = iota + 1
	// KeyProto is a transport protocol (inet_proto).
	KeyProto
	// KeyPort is a transport port (inet_service).
	KeyPort
	// KeySlot is an endpoint slot: the number "numgen random mod N" draws for a Service port.
	KeySlot
	// KeySaddr is a source address of the table's family: a client, in the affinity map.
	KeySaddr
)

// Key is the key of an element: two elements of a set with the same Key are the same element
// as far as the kernel is concerned. It is much smaller than an Element, which matters for
// maps of hundreds of thousands of elements.
type Key struct {
	Addr  netip.Addr
	Proto Protocol
	Port  uint16
	Slot  uint32
}

// Key returns the element's key.
func (e Element) Key() Key {
	return Key{Addr: e.Addr, Proto: e.Proto, Port: e.Port, Slot: e.Slot}
}

// CompareElements orders elements by key: address, then protocol, port and slot.
func CompareElements(a, b Element) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Slot, b.Slot))
}

// KeyFieldLen is the length in bytes of a key field in a set key: every field of a
// concatenation is padded to a multiple of 4 bytes.
func KeyFieldLen(fam Family, k KeyField, concat bool) int {
	n := 2
	switch k {
	case KeySlot:
		return 4
	case KeyAddr, KeySaddr:
		if fam == IPv6 {
			return 16
		}
		return 4
	case KeyProto:
		n = 1
	}
	if concat {
		return 4
	}
	return n
}

// ElementKey returns the element's key as the kernel stores it.
func ElementKey(fam Family, key []KeyField, e Element) []byte {
	return AppendElementKey(nil, fam, key, e)
}

// AppendElementKey appends ElementKey(fam, key, e) to dst.
func AppendElementKey(dst []byte, fam Family, key []KeyField, e Element) []byte {
	concat := len(key) > 1
	for _, k := range key {
		start := len(dst)
		dst = append(dst, make([]byte, KeyFieldLen(fam, k, concat))...)
		field := dst[start:]
		switch k {
		case KeyAddr:
			copy(field, e.Addr.AsSlice())
		case KeyProto:
			field[0] = byte(e.Proto)
		case KeyPort:
			field[0], field[1] = byte(e.Port>>8), byte(e.Port)
		case KeySlot:
			// numgen writes its result in host byte order.
			binary.NativeEndian.PutUint32(field, e.Slot)
		}
	}
	return dst
}

// compareKeyBytes orders keys as nft sorts elements for listing: single values as big-endian
// numbers, concatenations as one number in host (little-endian) byte order.
func compareKeyBytes(key []KeyField, a, b []byte) int {
	if len(key) > 1 {
		for i := len(a) - 1; i >= 0; i-- {
			if a[i] != b[i] {
				if a[i] < b[i] {
					return -1
				}
				return 1
			}
		}
		return 0
	}
	return bytes.Compare(a, b)
}
