package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/nlrecv"
)

// readTimeout bounds each wait for a datagram of a reply.
const readTimeout = 30 * time.Second

// recvBufSize is the receive buffer for replies. Passing the kernel a buffer of at least 32 KiB
// makes it fill each part of a dump up to its limit of about 32 KiB instead of one page: the
// kernel restarts every part of a set element dump from the start of the set, so fewer parts
// matter for large sets.
const recvBufSize = 64 << 10

// openConn opens a socket in the backend's namespace and a conn on it; closing c.sock
// closes both.
func (n *Netlink) openConn() (*conn, error) {
	sock, err := n.dial()
	if err != nil {
		return nil, err
	}
	c, err := newConn(sock, n.dial)
	if err != nil {
		sock.Close()
		return nil, err
	}
	return c, nil
}

// conn is one netfilter netlink socket of the backend's namespace and what talking over it
// needs: it sends nftables requests and walks their replies in place (reads), and batches are
// committed over it (writes).
type conn struct {
	sock *netlink.Conn
	raw  syscall.RawConn
	buf  []byte
	// dial opens another socket like sock.
	dial func() (*netlink.Conn, error)
	// interrupted is set when the kernel flagged a dump as inconsistent (NLM_F_DUMP_INTR).
	interrupted atomic.Bool
}

// newConn returns a conn on sock; dial opens more sockets like it, for reads done apart.
func newConn(sock *netlink.Conn, dial func() (*netlink.Conn, error)) (*conn, error) {
	raw, err := sock.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &conn{sock: sock, raw: raw, buf: make([]byte, recvBufSize), dial: dial}, nil
}

// generation returns the current ruleset generation.
func (c *conn) generation() (uint32, error) {
	var gen uint32
	found := false
	err := c.request(unix.NFT_MSG_GETGEN, 0, unix.AF_UNSPEC, nil, func(data []byte) error {
		ad, err := netlink.NewAttributeDecoder(data)
		if err != nil {
			return err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				gen, found = ad.Uint32(), true
			}
		}
		return ad.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("get ruleset generation: %w", err)
	}
	if !found {
		return 0, errors.New("get ruleset generation: no generation in the reply")
	}
	return gen, nil
}

// atOneGeneration runs read between two reads of the ruleset generation, the first followed
// by a wait for any commit in progress, and returns the generation read ran at with read's
// error. It returns ErrGenerationChanged when anything committed meanwhile or a dump was
// flagged inconsistent: then what read saw may mix two generations. Other errors are those
// of the generation reads.
func (c *conn) atOneGeneration(read func(gen uint32) error) (gen uint32, readErr, err error) {
	if gen, err = c.generation(); err != nil {
		return 0, nil, err
	}
	if err := c.barrier(); err != nil {
		return 0, nil, err
	}
	c.interrupted.Store(false)
	readErr = read(gen)
	after, err := c.generation()
	if err != nil {
		return 0, nil, err
	}
	if after != gen || c.interrupted.Load() {
		return 0, nil, ErrGenerationChanged
	}
	return gen, readErr, nil
}

// barrier returns once no commit is in progress. The kernel bumps the generation early in a
// commit, before the new ruleset becomes visible: a generation read inside that window is
// the new one while the dump that follows may still see the old ruleset, and no later
// generation read would tell. An empty batch takes and releases the commit lock, so the
// commit that generation belongs to, if any, has finished when it returns; sending to the
// kernel is synchronous and an empty batch is acknowledged by nothing.
func (c *conn) barrier() error {
	seq := batchSeq.Add(2) - 1
	err := sendBuffers(c.sock, [][]byte{
		batchMessage(unix.NFNL_MSG_BATCH_BEGIN, seq, 0),
		batchMessage(unix.NFNL_MSG_BATCH_END, seq+1, 0),
	})
	if err != nil {
		return fmt.Errorf("wait for commits in progress: %w", err)
	}
	return nil
}

// request sends an nftables request of type typ (NFT_MSG_GET*) and calls fn with the
// attributes of each reply message (after its nfgenmsg header). A dump request lists every
// object; others get one reply. Once fn fails, the rest of the reply is read and discarded, so
// that the socket stays usable, and fn's error is returned; except errDumpTooLarge, returned at
// once.
func (c *conn) request(typ uint16, flags netlink.HeaderFlags, family byte, attrs *netlink.AttributeEncoder, fn func(data []byte) error) error {
	var payload []byte
	if attrs != nil {
		var err error
		if payload, err = attrs.Encode(); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	dump := flags&netlink.Dump != 0
	if !dump {
		// The acknowledgement marks the end of the reply.
		flags |= netlink.Acknowledge
	}
	req, err := c.sock.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
			Flags: netlink.Request | flags,
		},
		Data: append([]byte{family, unix.NFNETLINK_V0, 0, 0}, payload...),
	})
	if err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	reply := replyParser{seq: req.Header.Sequence, dump: dump, fn: fn, interrupted: &c.interrupted}
	for {
		// The deadline bounds each wait, not the reply: a dump may take long in all.
		if err := c.sock.SetReadDeadline(time.Now().Add(readTimeout)); err != nil {
			return fmt.Errorf("set netlink read deadline: %w", err)
		}
		n, err := c.recv(c.buf)
		if err != nil {
			return err
		}
		if done, err := reply.parse(c.buf[:n]); done || err != nil {
			return err
		}
		if errors.Is(reply.fnErr, errDumpTooLarge) {
			// The rest of the dump would cost more than what it stopped for.
			return reply.fnErr
		}
	}
}

// replyParser walks the messages of the reply to one request.
type replyParser struct {
	seq         uint32
	dump        bool
	fn          func(data []byte) error
	fnErr       error
	interrupted *atomic.Bool
}

// parse handles the messages of one datagram, and reports whether the reply is complete: then
// err is the kernel's error or fn's.
func (p *replyParser) parse(b []byte) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		length := int(binary.NativeEndian.Uint32(b[0:4]))
		if length < unix.NLMSG_HDRLEN || length > len(b) {
			return true, fmt.Errorf("netlink reply of %d bytes claims %d", len(b), length)
		}
		mtype := binary.NativeEndian.Uint16(b[4:6])
		mflags := binary.NativeEndian.Uint16(b[6:8])
		seq := binary.NativeEndian.Uint32(b[8:12])
		data := b[unix.NLMSG_HDRLEN:length]
		b = b[min(len(b), nlmsgAlign(length)):]
		if seq != p.seq {
			continue // a late reply to an earlier request
		}
		switch mtype {
		case unix.NLMSG_ERROR, unix.NLMSG_DONE:
			if mtype == unix.NLMSG_DONE && !p.dump {
				continue
			}
			if len(data) >= 4 {
				if errno := int32(binary.NativeEndian.Uint32(data)); errno != 0 {
					return true, syscall.Errno(-errno)
				}
			}
			if mtype == unix.NLMSG_DONE || !p.dump {
				return true, p.fnErr
			}
		default:
			if mflags&unix.NLM_F_DUMP_INTR != 0 {
				p.interrupted.Store(true)
			}
			if p.fnErr != nil {
				continue
			}
			if len(data) < 4 {
				p.fnErr = errors.New("netlink reply without nfgenmsg header")
				continue
			}
			p.fnErr = p.fn(data[4:])
		}
	}
	return false, nil
}

func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// recv reads one datagram into buf.
func (c *conn) recv(buf []byte) (int, error) { return nlrecv.Recv(c.raw, buf) }
