package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/nlrecv"
	"github.com/nftproxy/nftproxy/model"
)

// The endpoint maps are read by key once larger than Netlink.DumpMax, not dumped. A dump of a
// set is quadratic in the kernel:
// each part of it (about 32 KiB, some 300 elements) walks the set from its start and skips
// the elements sent before. Reading 100,000 endpoints that way took 0.6 s, 200,000 took
// 3.7 s, 400,000 took 24 s, and a million never finished. A lookup (NFT_MSG_GETSETELEM
// without NLM_F_DUMP) finds one element by its key in constant time, and the kernel takes
// many of them in one datagram, answering each with a message of its own.
//
// Which keys: every key the caller expects the map to hold, and, for every frontend of the
// table (a key of a map keyed like the endpoint map without its slot, as the kernel holds
// it, or a frontend the caller expects), the slots after the last expected one until one is
// missing. nftproxy writes the slots of a frontend as 0 to n-1 in the same commit as the
// frontend, so this finds every element nftproxy wrote. What it cannot find is an element
// whose frontend no map names or that lies beyond a missing slot: one only someone else can
// have added, and one no packet reaches, since the picking chains draw slots below n and
// the frontend maps lead to them.

// dumpMax is the default of Netlink.DumpMax: below it a dump's quadratic cost is less than the
// lookups' round trips (a lookup costs the kernel about 3 us; a dump of 300 Services x 4
// endpoints read in 4-7 ms, by key in 15-30 ms). A dump gives up at twice as many elements,
// and the map is looked up instead.
const dumpMax = 32 << 10

// lookupBatch is how many lookups go to the kernel in one datagram. The kernel answers each
// found element with a buffer of its own of one page (NLMSG_GOODSIZE), all queued on the
// socket before the datagram's send returns: lookupRcvBuf must hold them all.
const lookupBatch = 512

// lookupRcvBuf is the receive buffer of a socket that looks elements up (SO_RCVBUFFORCE; the
// kernel doubles it).
const lookupRcvBuf = 8 << 20

// isEndpointMap reports whether s is read by key: a map of the table whose key ends in a
// slot.
func isEndpointMap(s *model.Set) bool { return model.IsEndpointMap(s) }

// isFrontendSet reports whether f holds frontends of the endpoint map m: keyed like m without
// its slot.
func isFrontendSet(f, m *model.Set) bool {
	return !f.Dynamic && !isEndpointMap(f) && slices.Equal(f.Key, m.Key[:len(m.Key)-1])
}

// frontendKey is k without its slot.
func frontendKey(k model.Key) model.Key {
	k.Slot = 0
	return k
}

// slotKey is the key of slot of frontend f.
func slotKey(f model.Key, slot uint32) model.Key {
	f.Slot = slot
	return f
}

// lookupEndpointMap reads the elements of the endpoint map s by key, over sockets of its
// own: the keys want yields (nil: none; about n of them), and, from the frontends of those keys and of the
// elements of frontendSets (the table's maps keyed like s without its slot, already read),
// the slots after the last wanted one until one is missing. It returns what the kernel
// holds, in batches and in no particular order: each element is the answer to the lookup of
// its own key, and no key is looked up twice, so none is there twice.
func (c *conn) lookupEndpointMap(exp *expectation, s *model.Set, want iter.Seq[model.Key], n int, frontendSets []*model.Set) ([][]model.Element, error) {
	l, err := c.newLookuper(exp, s, n)
	if err != nil {
		return nil, err
	}
	defer l.close()
	// The wanted keys, a chunk at a time; next is, per frontend, the first slot past them.
	next := map[model.Key]uint32{}
	keys := make([]model.Key, 0, lookupChunk)
	if want != nil {
		for k := range want {
			keys = append(keys, k)
			f := frontendKey(k)
			next[f] = max(next[f], k.Slot+1)
			if len(keys) == lookupChunk {
				if err := l.lookup(keys, nil); err != nil {
					return nil, err
				}
				keys = keys[:0]
			}
		}
	}
	for _, fs := range frontendSets {
		for _, e := range fs.Elements {
			f := frontendKey(e.Key())
			if _, ok := next[f]; !ok {
				next[f] = 0
			}
		}
	}
	// With the last wanted keys, one slot past them for every frontend; then, for each
	// frontend whose last probe was found, twice as many slots after it, until none is.
	probe := make(map[model.Key]uint32, len(next)) // frontend: the first slot probed
	for f, n := range next {
		probe[f] = n
		keys = append(keys, slotKey(f, n))
	}
	width := uint32(1)
	for len(keys) > 0 {
		var more []model.Key
		err := l.lookup(keys, func(e *model.Element) {
			k := e.Key()
			f := frontendKey(k)
			if from, ok := probe[f]; ok && k.Slot == from+width-1 {
				more = append(more, f)
			}
		})
		if err != nil {
			return nil, err
		}
		keys = slices.Grow(keys[:0], 2*int(width)*len(more))
		for _, f := range more {
			from := probe[f] + width
			probe[f] = from
			for slot := from; slot < from+2*width; slot++ {
				keys = append(keys, slotKey(f, slot))
			}
		}
		width *= 2
	}
	return l.elements(), nil
}

// skipFrontends returns keys and frontendSets without the keys and frontends for which skip
// reports true, for lookupEndpointMap to look none of their slots up.
func skipFrontends(keys iter.Seq[model.Key], frontendSets []*model.Set, skip func(model.Key) bool) (iter.Seq[model.Key], []*model.Set) {
	if keys != nil {
		all := keys
		keys = func(yield func(model.Key) bool) {
			for k := range all {
				if !skip(frontendKey(k)) && !yield(k) {
					return
				}
			}
		}
	}
	out := make([]*model.Set, len(frontendSets))
	for i, fs := range frontendSets {
		kept := *fs
		kept.Elements = slices.DeleteFunc(slices.Clone(fs.Elements), func(e model.Element) bool { return skip(frontendKey(e.Key())) })
		out[i] = &kept
	}
	return keys, out
}

// lookupChunk is how many wanted keys are looked up at a time.
const lookupChunk = 32 << 10

// lookupElemChunk is how many elements a worker keeps in one slice of those it found (the
// elements come apart in such slices, never copied as they accumulate). Each worker's last
// slice is partly empty: with slices of lookupChunk elements (3.4 MB) a restart at 10,000
// Services x 10 endpoints held 19.5 MB for 10.4 MB of elements; at 4,096 (426 KB) a worker
// leaves at most that unused.
const lookupElemChunk = 4 << 10

// lookuper looks up elements of one set over sockets of its own, one per worker, and keeps
// what it finds.
type lookuper struct {
	exp     *expectation
	set     *model.Set
	dial    func() (*netlink.Conn, error)
	hint    int // elements expected in all
	workers []*lookupWorker
}

type lookupWorker struct {
	c  *conn
	rb *nlrecv.Batch
	d  *elemDecoder
}

// lookupWorkers is how many sockets look elements up at once: the kernel's work is done in
// the sending thread, so more CPUs share it.
func lookupWorkers() int { return min(runtime.GOMAXPROCS(0), 4) }

// newLookuper returns a lookuper of about n elements of s, with one worker; lookup adds the
// others when it has enough keys to share (a socket in another namespace costs a few hundred
// microseconds to open).
func (c *conn) newLookuper(exp *expectation, s *model.Set, n int) (*lookuper, error) {
	l := &lookuper{exp: exp, set: s, dial: c.dial, hint: n}
	if err := l.addWorker(); err != nil {
		return nil, err
	}
	return l, nil
}

// addWorker opens one more socket.
func (l *lookuper) addWorker() error {
	sock, err := l.dial()
	if err != nil {
		return err
	}
	sub, err := newConn(sock, l.dial)
	if err == nil {
		err = sub.growReceiveBuffer()
	}
	if err != nil {
		sock.Close()
		return err
	}
	d := newElemDecoder(l.exp, l.set, min(l.hint/lookupWorkers()+lookupBatch, lookupElemChunk))
	d.chunk = lookupElemChunk
	l.workers = append(l.workers, &lookupWorker{c: sub, rb: nlrecv.NewBatch(64, 4096), d: d})
	return nil
}

func (l *lookuper) close() {
	for _, w := range l.workers {
		w.c.sock.Close()
	}
}

// lookup looks up the keys, which the workers share, and calls found (if not nil) with each
// element found.
func (l *lookuper) lookup(keys []model.Key, found func(*model.Element)) error {
	want := min(lookupWorkers(), max(1, len(keys)/(4*lookupBatch)))
	for len(l.workers) < want {
		if err := l.addWorker(); err != nil {
			return err
		}
	}
	workers := l.workers[:want]
	per := (len(keys) + len(workers) - 1) / len(workers)
	before := make([]int, len(workers))
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		chunk := keys[min(len(keys), i*per):min(len(keys), (i+1)*per)]
		before[i] = w.d.count()
		wg.Go(func() { errs[i] = w.c.lookupElements(l.exp, l.set.Name, chunk, w.rb, w.d) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if found != nil {
		for i, w := range workers {
			w.d.each(before[i], found)
		}
	}
	return nil
}

// elements returns every element found, in the workers' batches, and lets the workers
// forget them.
func (l *lookuper) elements() [][]model.Element {
	var out [][]model.Element
	for _, w := range l.workers {
		out = append(out, w.d.take()...)
	}
	return out
}

// growReceiveBuffer sets the socket's receive buffer to lookupRcvBuf.
func (c *conn) growReceiveBuffer() error {
	var serr error
	err := c.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, lookupRcvBuf)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set the receive buffer of a netlink socket: %w", err)
	}
	return nil
}

// lookupElements looks the keys up in set, lookupBatch to a datagram, and has d decode the
// elements found; a key the set lacks is skipped.
func (c *conn) lookupElements(exp *expectation, set string, keys []model.Key, rb *nlrecv.Batch, d *elemDecoder) error {
	var msgs []byte
	var key []byte
	for start := 0; start < len(keys); start += lookupBatch {
		batch := keys[start:min(len(keys), start+lookupBatch)]
		msgs = msgs[:0]
		// Each lookup is a message of its own: the kernel stops at the first missing key of a
		// message, but goes on with the next message of the datagram after an error.
		first := batchSeq.Add(uint32(len(batch)+1)) - uint32(len(batch))
		for i, k := range batch {
			m := len(msgs)
			msgs = appendNlmsghdr(msgs, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, netlink.Request)
			msgs = append(msgs, exp.nfproto, unix.NFNETLINK_V0, 0, 0)
			msgs = appendNLAString(msgs, unix.NFTA_SET_ELEM_LIST_TABLE, model.TableName)
			msgs = appendNLAString(msgs, unix.NFTA_SET_ELEM_LIST_SET, set)
			list := len(msgs)
			msgs = appendNLAHeader(msgs, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_LIST_ELEMENTS)
			elem := len(msgs)
			msgs = appendNLAHeader(msgs, unix.NLA_F_NESTED|1)
			kn := len(msgs)
			msgs = appendNLAHeader(msgs, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_KEY)
			key = model.AppendElementKey(key[:0], exp.fam, d.set.Key, model.Element{Addr: k.Addr, Proto: k.Proto, Port: k.Port, Slot: k.Slot})
			msgs = appendNLA(msgs, unix.NFTA_DATA_VALUE, key)
			msgs = endNested(msgs, kn)
			msgs = endNested(msgs, elem)
			msgs = endNested(msgs, list)
			binary.NativeEndian.PutUint32(msgs[m:], uint32(len(msgs)-m))
			binary.NativeEndian.PutUint32(msgs[m+8:], first+uint32(i))
		}
		// The last message asks for the generation: its answer ends the batch's.
		last := first + uint32(len(batch))
		m := len(msgs)
		msgs = appendNlmsghdr(msgs, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, netlink.Request)
		msgs = append(msgs, unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0)
		binary.NativeEndian.PutUint32(msgs[m:], uint32(len(msgs)-m))
		binary.NativeEndian.PutUint32(msgs[m+8:], last)
		if err := sendBuffers(c.sock, [][]byte{msgs}); err != nil {
			return fmt.Errorf("look up elements of set %s: %w", set, err)
		}
		if err := c.lookupReplies(set, batch, first, last, rb, d); err != nil {
			return err
		}
	}
	return nil
}

// lookupReplies reads the answers to one datagram of lookups, whose sequence numbers run
// from first, up to the answer to its last message (sequence number last).
func (c *conn) lookupReplies(set string, batch []model.Key, first, last uint32, rb *nlrecv.Batch, d *elemDecoder) error {
	for {
		if err := c.sock.SetReadDeadline(time.Now().Add(readTimeout)); err != nil {
			return fmt.Errorf("set netlink read deadline: %w", err)
		}
		dgrams, err := rb.Recv(c.raw)
		if err != nil {
			return fmt.Errorf("look up elements of set %s: %w", set, err)
		}
		for _, b := range dgrams {
			done, err := parseLookupReplies(b, set, batch, first, last, d)
			if done || err != nil {
				return err
			}
		}
	}
}

// parseLookupReplies handles the messages of one datagram of answers to lookups, and reports
// whether it held the answer to the last message.
func parseLookupReplies(b []byte, set string, batch []model.Key, first, last uint32, d *elemDecoder) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		length := int(binary.NativeEndian.Uint32(b[0:4]))
		if length < unix.NLMSG_HDRLEN || length > len(b) {
			return false, fmt.Errorf("look up elements of set %s: netlink reply of %d bytes claims %d", set, len(b), length)
		}
		mtype := binary.NativeEndian.Uint16(b[4:6])
		seq := binary.NativeEndian.Uint32(b[8:12])
		data := b[unix.NLMSG_HDRLEN:length]
		b = b[min(len(b), nlmsgAlign(length)):]
		i := seq - first
		if i > last-first {
			continue // a late reply to an earlier request
		}
		switch {
		case i == last-first:
			return true, nil
		case mtype == unix.NLMSG_ERROR:
			if len(data) < 4 {
				return false, fmt.Errorf("look up elements of set %s: short error message", set)
			}
			errno := syscall.Errno(-int32(binary.NativeEndian.Uint32(data)))
			if errno != 0 && errno != unix.ENOENT {
				return false, fmt.Errorf("look up element %v of set %s: %w", batch[i], set, errno)
			}
		case mtype == unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSETELEM:
			if len(data) < 4 {
				return false, fmt.Errorf("look up elements of set %s: reply without nfgenmsg header", set)
			}
			n := d.count()
			if err := d.decodeMessage(data[4:]); err != nil {
				return false, fmt.Errorf("look up element %v of set %s: %w", batch[i], set, err)
			}
			// The answer must be the one element looked up: the caller counts on finding
			// no key twice.
			if d.count() != n+1 || d.last().Key() != batch[i] {
				return false, fmt.Errorf("look up element %v of set %s: the kernel answered with another", batch[i], set)
			}
		default:
			// Not an answer to a lookup: taken for "not found", it would hide an element.
			return false, fmt.Errorf("look up element %v of set %s: unexpected netlink message type %#x", batch[i], set, mtype)
		}
	}
	return false, nil
}
