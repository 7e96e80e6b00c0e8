// Package nlrecv reads netlink datagrams straight into a caller's buffer (one at a time, or
// many with recvmmsg) and walks their attributes in place, for the readers that decode the
// kernel's replies without a decoded message per reply (nftables dumps, lookups and
// acknowledgements, conntrack dumps).
package nlrecv

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Recv reads one datagram of the socket raw into buf and returns its length. It waits as the
// socket's read deadline allows, and fails on a datagram larger than buf.
func Recv(raw syscall.RawConn, buf []byte) (int, error) {
	var n, flags int
	err := read(raw, func(fd int) (err error) {
		n, _, flags, _, err = unix.Recvmsg(fd, buf, nil, unix.MSG_DONTWAIT)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("receive netlink reply: %w", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return 0, errors.New("receive netlink reply: truncated")
	}
	return n, nil
}

// read runs recv on the socket raw until it succeeds or fails with other than EINTR,
// waiting for data (EAGAIN) as the socket's read deadline allows.
func read(raw syscall.RawConn, recv func(fd int) error) error {
	var rerr error
	err := raw.Read(func(fd uintptr) bool {
		for {
			if rerr = recv(int(fd)); rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	return err
}

// Batch receives many datagrams in one system call (recvmmsg), for replies of one message a
// datagram (the kernel answers each element lookup that way), where a read per datagram
// would cost more than the kernel's work.
type Batch struct {
	hdrs []mmsghdr
	iovs []unix.Iovec
	bufs [][]byte
	got  [][]byte
}

// mmsghdr is the kernel's struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// NewBatch returns a Batch of n buffers of size bytes each.
func NewBatch(n, size int) *Batch {
	b := &Batch{hdrs: make([]mmsghdr, n), iovs: make([]unix.Iovec, n), bufs: make([][]byte, n)}
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].hdr.Iov = &b.iovs[i]
		b.hdrs[i].hdr.SetIovlen(1)
	}
	return b
}

// Recv reads the datagrams waiting on the socket raw, at least one, at most as many as the
// Batch has buffers, waiting as the socket's read deadline allows. The datagrams returned
// alias the Batch's buffers until the next Recv. It fails on a datagram larger than a
// buffer.
func (b *Batch) Recv(raw syscall.RawConn) ([][]byte, error) {
	var n int
	err := read(raw, func(fd int) error {
		r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])),
			uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		n = int(r)
		if errno != 0 {
			return errno
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("receive netlink replies: %w", err)
	}
	b.got = b.got[:0]
	for i := range n {
		h := &b.hdrs[i]
		if h.hdr.Flags&unix.MSG_TRUNC != 0 {
			return nil, errors.New("receive netlink replies: truncated")
		}
		b.got = append(b.got, b.bufs[i][:h.n])
	}
	return b.got, nil
}
