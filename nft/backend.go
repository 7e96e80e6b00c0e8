package nft

import (
	"fmt"
	"os"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// Backend reads and writes nftproxy's tables. Every write is atomic: either all of it takes
// effect or none of it does.
type Backend interface {
	// Apply commits tx as one transaction. When genID is not zero the transaction is applied
	// only if the ruleset generation still equals genID; otherwise it fails with
	// ErrGenerationChanged and changes nothing.
	Apply(tx *Transaction, genID uint32) error
	// ReadTable returns the table of fam as it is, decoded against the layout nftproxy would
	// write (the sets given, and what expected returns: it is called once, maybe after some
	// sets' elements were read, and may block), and the generation it was read at; nil when
	// there is no table. A table in another layout gives an error matching ErrIncompatible.
	// No set holds a key twice; the order of a set's elements is the backend's.
	ReadTable(fam model.Family, sets []*model.Set, expected func() Expected) (*model.Ruleset, uint32, error)
	// Generation returns the current ruleset generation, which every commit by anyone
	// changes.
	Generation() (uint32, error)
	// Delete removes nftproxy's tables of the given families, if they exist.
	Delete(families ...model.Family) error
	// PruneAffinity deletes the entries of fam's session affinity map for which keep
	// returns false, and returns how many it deleted.
	PruneAffinity(fam model.Family, keep func(AffinityEntry) bool) (int, error)
}

// Netlink is the Backend that talks to the kernel over netlink.
type Netlink struct {
	// DumpMax is the largest endpoint map, in expected elements, that a read dumps rather
	// than looks up by key (0: 32,768; negative: none). A dump costs the kernel time that
	// grows with the square of the map's size, a lookup a constant time per element, but
	// the lookups' round trips cost more below this size.
	DumpMax int

	// netnsPath is the network namespace to program ("" for the caller's own).
	netnsPath string

	// mu serializes the operations on ctl.
	mu sync.Mutex
	// ctl is the socket that commits and short requests (the generation, the affinity map)
	// go over. It stays open between them: closing a netfilter socket after a commit waits
	// until the kernel has released the committed transaction, an RCU grace period of 5-15 ms
	// on some machines, which would otherwise be most of a small sync's time. It is nil
	// until first needed, and again after an operation on it failed, so that no reply of a
	// failed exchange is ever read as part of the next one.
	ctl *conn

	// destroy is whether the kernel can destroy set elements (Probe).
	destroy destroySupport

	// pmu guards prefetched, the endpoint map reads Prefetch started, by family.
	pmu        sync.Mutex
	prefetched map[model.Family]*prefetch
}

var _ Backend = (*Netlink)(nil)

// NewNetlink returns a Backend that programs the network namespace at netnsPath (a file such
// as /run/netns/NAME or /proc/PID/ns/net), or the current one when netnsPath is empty.
func NewNetlink(netnsPath string) *Netlink {
	return &Netlink{netnsPath: netnsPath}
}

// dial opens a netfilter netlink socket in the backend's namespace.
func (n *Netlink) dial() (*netlink.Conn, error) {
	cfg := &netlink.Config{}
	if n.netnsPath != "" {
		f, err := os.Open(n.netnsPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace: %w", err)
		}
		defer f.Close()
		cfg.NetNS = int(f.Fd())
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	// No extended acknowledgements: netlink cannot decode capped errors that carry them
	// and would lose the error number.
	if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("cap acknowledgements: %w", err)
	}
	return c, nil
}

// control runs fn with the backend's long-lived socket, opening it when there is none, and
// closes the socket when fn fails.
func (n *Netlink) control(fn func(c *conn) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctl == nil {
		c, err := n.openConn()
		if err != nil {
			return err
		}
		n.ctl = c
	}
	err := fn(n.ctl)
	if err != nil {
		_ = n.ctl.sock.Close()
		n.ctl = nil
	}
	return err
}

// Close closes the backend's long-lived socket. The backend remains usable: its next
// operation opens a new one.
func (n *Netlink) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctl == nil {
		return nil
	}
	err := n.ctl.sock.Close()
	n.ctl = nil
	return err
}

// commit sends b over the long-lived socket; genID as in batch.commit.
func (n *Netlink) commit(b *batch, genID uint32) error {
	return n.control(func(c *conn) error { return b.commit(c, genID) })
}

// Replace implements Backend. The batch first makes sure each table exists (so deleting it
// cannot fail), deletes it, and creates it anew with its whole content.
func (n *Netlink) Replace(rulesets ...*model.Ruleset) error {
	if err := n.Apply(&Transaction{Replace: rulesets}, 0); err != nil {
		return fmt.Errorf("replace nftproxy tables: %w", err)
	}
	return nil
}

// Delete implements Backend.
func (n *Netlink) Delete(families ...model.Family) error {
	b := &batch{}
	for _, fam := range families {
		b.addTable(nfproto(fam), model.TableName)
		b.delTable(nfproto(fam), model.TableName)
	}
	if err := n.commit(b, 0); err != nil {
		return fmt.Errorf("delete nftproxy tables: %w", err)
	}
	return nil
}
