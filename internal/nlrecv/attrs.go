package nlrecv

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// Attrs walks the netlink attributes in B without copying or allocating: the readers walk
// several levels of attributes for each of hundreds of thousands of set elements or
// conntrack entries, and a netlink.AttributeDecoder allocates once per level and copies
// every attribute it steps on.
type Attrs struct {
	B []byte
	// Type (the nested and byte order flags masked off) and Data are those of the current
	// attribute; Data aliases B.
	Type uint16
	Data []byte
	// Bad is set when the attributes' lengths do not add up; Next then returns false.
	Bad bool
}

// errBadAttrs is Err's error.
var errBadAttrs = errors.New("netlink attributes whose lengths do not add up")

// Next steps to the next attribute and reports whether there is one.
func (it *Attrs) Next() bool {
	if len(it.B) < unix.NLA_HDRLEN {
		it.Bad = it.Bad || len(it.B) != 0
		return false
	}
	n := int(binary.NativeEndian.Uint16(it.B[0:2]))
	if n < unix.NLA_HDRLEN || n > len(it.B) {
		it.Bad = true
		return false
	}
	it.Type = binary.NativeEndian.Uint16(it.B[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	it.Data = it.B[unix.NLA_HDRLEN:n]
	it.B = it.B[min(len(it.B), (n+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
	return true
}

// Err returns an error when the walk stopped at attributes that do not add up.
func (it *Attrs) Err() error {
	if it.Bad {
		return errBadAttrs
	}
	return nil
}
