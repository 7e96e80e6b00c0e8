package nft

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/internal/nlrecv"
)

// TableRef names any nftables table of the namespace, nftproxy's or another program's
// (kube-proxy's "ip kube-proxy", iptables-nft's "ip nat"), by its family as nft spells it
// (ip, ip6, inet, arp, bridge, netdev) and its name.
type TableRef struct {
	Family string
	Name   string
}

// String returns the table as nft names it: "ip kube-proxy".
func (t TableRef) String() string { return t.Family + " " + t.Name }

// TableChains is a table and the names of its chains.
type TableChains struct {
	TableRef
	Chains []string
}

// tableFamily is an nftables family: its name in nft and its netlink number.
type tableFamily struct {
	name  string
	proto byte
}

// tableFamilies are the nftables families, in the order ListTables lists them.
var tableFamilies = []tableFamily{
	{"ip", unix.NFPROTO_IPV4},
	{"arp", unix.NFPROTO_ARP},
	{"ip6", unix.NFPROTO_IPV6},
	{"bridge", unix.NFPROTO_BRIDGE},
	{"inet", unix.NFPROTO_INET},
	{"netdev", unix.NFPROTO_NETDEV},
}

// familyProto returns the netlink number of the family nft calls name.
func familyProto(name string) (byte, bool) {
	i := slices.IndexFunc(tableFamilies, func(f tableFamily) bool { return f.name == name })
	if i < 0 {
		return 0, false
	}
	return tableFamilies[i].proto, true
}

// ListTables returns every table of the namespace, whoever owns it, with its chains sorted
// by name: cleanup reports the tables and chains other proxies left behind. Tables come by
// family (ip, arp, ip6, bridge, inet, netdev), then by name.
func (n *Netlink) ListTables() ([]TableChains, error) {
	var out []TableChains
	err := n.control(func(c *conn) error {
		for _, fam := range tableFamilies {
			var tables []TableChains
			err := c.request(unix.NFT_MSG_GETTABLE, netlink.Dump, fam.proto, nil, func(data []byte) error {
				if name, ok := stringAttr(data, unix.NFTA_TABLE_NAME); ok {
					tables = append(tables, TableChains{TableRef: TableRef{Family: fam.name, Name: name}})
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("list %s tables: %w", fam.name, err)
			}
			err = c.request(unix.NFT_MSG_GETCHAIN, netlink.Dump, fam.proto, nil, func(data []byte) error {
				table, _ := stringAttr(data, unix.NFTA_CHAIN_TABLE)
				chain, ok := stringAttr(data, unix.NFTA_CHAIN_NAME)
				if i := slices.IndexFunc(tables, func(t TableChains) bool { return t.Name == table }); ok && i >= 0 {
					tables[i].Chains = append(tables[i].Chains, chain)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("list %s chains: %w", fam.name, err)
			}
			for i := range tables {
				slices.Sort(tables[i].Chains)
			}
			slices.SortFunc(tables, func(x, y TableChains) int { return strings.Compare(x.Name, y.Name) })
			out = append(out, tables...)
		}
		return nil
	})
	return out, err
}

// DeleteTables removes the given tables, with everything in them, in one transaction: all of
// them or, when one does not exist, none.
func (n *Netlink) DeleteTables(tables ...TableRef) error {
	if len(tables) == 0 {
		return nil
	}
	b := &batch{}
	names := make([]string, len(tables))
	for i, t := range tables {
		fam, ok := familyProto(t.Family)
		if !ok {
			return fmt.Errorf("delete table %s: unknown family %q", t, t.Family)
		}
		b.delTable(fam, t.Name)
		names[i] = t.String()
	}
	if err := n.commit(b, 0); err != nil {
		return fmt.Errorf("delete tables %s: %w", strings.Join(names, ", "), err)
	}
	return nil
}

// stringAttr returns the string attribute typ of a message's attributes.
func stringAttr(data []byte, typ uint16) (string, bool) {
	it := nlrecv.Attrs{B: data}
	for it.Next() {
		if it.Type == typ {
			return string(bytes.TrimRight(it.Data, "\x00")), true
		}
	}
	return "", false
}
