// Package nlrecv reads netlink datagrams straight into a caller's buffer, for the readers that
// walk the kernel's replies in place (nftables dumps and acknowledgements, conntrack dumps)
// rather than through a decoded message per reply.
package nlrecv

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Recv reads one datagram of the socket raw into buf and returns its length. It waits as the
// socket's read deadline allows, and fails on a datagram larger than buf.
func Recv(raw syscall.RawConn, buf []byte) (int, error) {
	var n, flags int
	var rerr error
	err := raw.Read(func(fd uintptr) bool {
		for {
			n, _, flags, _, rerr = unix.Recvmsg(int(fd), buf, nil, unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, fmt.Errorf("receive netlink reply: %w", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return 0, errors.New("receive netlink reply: truncated")
	}
	return n, nil
}
