package nft

import (
	"bytes"
	"iter"
	"net/netip"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/model"
)

// TestTransactionString checks the nft text of a transaction with a replaced table and one Op
// of each kind: commands in the order the batch sends them (the table, then the chains the
// Ops add, then the Ops), elements and rules as model renders them, deletions by key only.
// (Given an ip6 table with the endpoint map, `nft -c -f` accepts the text.)
func TestTransactionString(t *testing.T) {
	a, ap := netip.MustParseAddr, netip.MustParseAddrPort
	ipsKey := []model.KeyField{model.KeyAddr, model.KeyProto, model.KeyPort}
	slotKey := []model.KeyField{model.KeyAddr, model.KeyProto, model.KeyPort, model.KeySlot}
	jumpMark := model.Rule{Exprs: []model.Expr{model.Verdict{Kind: model.Jump, Chain: model.ChainMarkForMasquerade}}}
	tx := &Transaction{
		Replace: []*model.Ruleset{{
			Family: model.IPv4,
			Sets: []*model.Set{{Name: model.MapServiceIPs, Key: ipsKey, Data: model.VerdictData, Elements: []model.Element{
				{Addr: a("10.96.0.2"), Proto: model.UDP, Port: 53, Verdict: model.Verdict{Kind: model.Goto, Chain: "cluster-udp-1"}},
			}}},
			Chains: []*model.Chain{
				{Name: model.ChainServices, Rules: []model.Rule{
					{Exprs: []model.Expr{model.VmapLookup{Key: ipsKey, Map: model.MapServiceIPs}}},
				}},
				{Name: model.ChainMarkForMasquerade},
				{Name: "cluster-udp-1", Rules: []model.Rule{jumpMark}},
			},
		}},
		Ops: []Op{
			{Kind: AddElements, Family: model.IPv4, Set: &model.Set{Name: model.MapServiceIPs, Key: ipsKey, Data: model.VerdictData,
				Elements: []model.Element{{Addr: a("10.96.0.1"), Proto: model.TCP, Port: 80, Comment: "ns/web:http",
					Verdict: model.Verdict{Kind: model.Goto, Chain: "cluster-tcp-1"}}}}},
			{Kind: AddChain, Family: model.IPv4, Chain: &model.Chain{Name: "cluster-tcp-1", Rules: []model.Rule{jumpMark}}},
			{Kind: AddElements, Family: model.IPv6, Set: &model.Set{Name: model.MapServiceEndpoints, Key: slotKey, Data: model.EndpointData,
				Elements: []model.Element{
					{Addr: a("fd00:96::1"), Proto: model.TCP, Port: 80, Slot: 0, Endpoint: ap("[fd00:244::a]:8080")},
					{Addr: a("fd00:96::1"), Proto: model.TCP, Port: 80, Slot: 1, Endpoint: ap("[fd00:244::b]:8080")},
				}}},
			{Kind: DeleteElements, Family: model.IPv4, Set: &model.Set{Name: model.MapServiceIPs, Key: ipsKey, Data: model.VerdictData,
				Elements: []model.Element{{Addr: a("10.96.0.2"), Proto: model.UDP, Port: 53, Comment: "kube-system/dns:dns",
					Verdict: model.Verdict{Kind: model.Goto, Chain: "cluster-udp-1"}}}}},
			{Kind: RewriteChain, Family: model.IPv4, Chain: &model.Chain{Name: model.ChainServices, Rules: []model.Rule{jumpMark}}},
			{Kind: FlushChain, Family: model.IPv4, Chain: &model.Chain{Name: "cluster-udp-1"}},
			{Kind: DeleteChain, Family: model.IPv4, Chain: &model.Chain{Name: "cluster-udp-1"}},
			{Kind: AddChain, Family: model.IPv4, Chain: &model.Chain{Name: model.ChainNATPrerouting,
				Hook: &model.Hook{Type: "nat", Hook: "prerouting", Priority: -100}}},
		},
	}
	want := `add table ip nftproxy
delete table ip nftproxy
table ip nftproxy {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.2 . udp . 53 : goto cluster-udp-1 }
	}

	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
	}

	chain mark-for-masquerade {
	}

	chain cluster-udp-1 {
		jump mark-for-masquerade
	}
}
add chain ip nftproxy cluster-tcp-1
add chain ip nftproxy nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }
add element ip nftproxy service-ips { 10.96.0.1 . tcp . 80 comment "ns/web:http" : goto cluster-tcp-1 }
add rule ip nftproxy cluster-tcp-1 jump mark-for-masquerade
add element ip6 nftproxy service-endpoints { fd00:96::1 . tcp . 80 . 0 : fd00:244::a . 8080 }
add element ip6 nftproxy service-endpoints { fd00:96::1 . tcp . 80 . 1 : fd00:244::b . 8080 }
delete element ip nftproxy service-ips { 10.96.0.2 . udp . 53 }
flush chain ip nftproxy services
add rule ip nftproxy services jump mark-for-masquerade
flush chain ip nftproxy cluster-udp-1
delete chain ip nftproxy cluster-udp-1
`
	if got := tx.String(); got != want {
		t.Errorf("Transaction.String():\n%s", lineDiff(want, got))
	}
}

// lineDiff returns the lines of want and got that differ, "-" for want's and "+" for got's,
// between the lines they share (a longest common subsequence), with two lines of context.
// (internal/scenario's diff imports nft.)
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	// common[i][j] is the length of the longest common subsequence of w[i:] and g[j:].
	common := make([][]int, len(w)+1)
	for i := range common {
		common[i] = make([]int, len(g)+1)
	}
	for i := len(w) - 1; i >= 0; i-- {
		for j := len(g) - 1; j >= 0; j-- {
			if w[i] == g[j] {
				common[i][j] = common[i+1][j+1] + 1
			} else {
				common[i][j] = max(common[i+1][j], common[i][j+1])
			}
		}
	}
	type line struct {
		mark byte
		text string
	}
	var lines []line
	i, j := 0, 0
	for i < len(w) || j < len(g) {
		switch {
		case i < len(w) && j < len(g) && w[i] == g[j]:
			lines = append(lines, line{' ', w[i]})
			i, j = i+1, j+1
		case i < len(w) && (j == len(g) || common[i+1][j] >= common[i][j+1]):
			lines = append(lines, line{'-', w[i]})
			i++
		default:
			lines = append(lines, line{'+', g[j]})
			j++
		}
	}
	var b strings.Builder
	for k, l := range lines {
		near := false
		for d := max(0, k-2); d <= min(len(lines)-1, k+2); d++ {
			near = near || lines[d].mark != ' '
		}
		if near {
			b.WriteByte(l.mark)
			b.WriteString(l.text)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// TestReplaceMore checks that a replaced table whose elements come from More is the same
// transaction as one that holds them: the same batch, byte for byte, the same object counts
// and text, and the same table in the Fake.
func TestReplaceMore(t *testing.T) {
	for _, whole := range readTestRulesets() {
		skeleton := &model.Ruleset{Family: whole.Family, Chains: whole.Chains}
		rest := map[string][]model.Element{}
		for _, s := range whole.Sets {
			c := *s
			// Keep one element in the Ruleset (where there are two), stream the others.
			keep := min(len(s.Elements), 1)
			c.Elements = s.Elements[:keep]
			rest[s.Name] = s.Elements[keep:]
			skeleton.Sets = append(skeleton.Sets, &c)
		}
		streamed := &Transaction{Replace: []*model.Ruleset{skeleton},
			More: func(fam model.Family, set string) (iter.Seq[*model.Element], int) {
				if fam != whole.Family {
					t.Errorf("More asked for family %s, want %s", fam, whole.Family)
				}
				els := rest[set]
				return func(yield func(*model.Element) bool) {
					for i := range els {
						if !yield(&els[i]) {
							return
						}
					}
				}, len(els)
			}}
		copied := &Transaction{Replace: []*model.Ruleset{whole}}

		var bs, bc batch
		if err := streamed.encode(&bs); err != nil {
			t.Fatal(err)
		}
		if err := copied.encode(&bc); err != nil {
			t.Fatal(err)
		}
		if bs.n != bc.n || !bytes.Equal(bytes.Join(append(bs.chunks, bs.buf), nil), bytes.Join(append(bc.chunks, bc.buf), nil)) {
			t.Errorf("%s: streamed batch (%d messages) differs from the copied one (%d)", whole.Family, bs.n, bc.n)
		}
		if s, c := streamed.Objects(), copied.Objects(); s != c {
			t.Errorf("%s: streamed transaction counts %d objects, copied %d", whole.Family, s, c)
		}
		if s, c := streamed.String(), copied.String(); s != c {
			t.Errorf("%s: streamed transaction reads\n%s\nwant\n%s", whole.Family, s, c)
		}
		fs, fc := NewFake(1), NewFake(1)
		if err := fs.Apply(streamed, 0); err != nil {
			t.Fatal(err)
		}
		if err := fc.Apply(copied, 0); err != nil {
			t.Fatal(err)
		}
		if s, c := fs.Render(whole.Family), fc.Render(whole.Family); s != c {
			t.Errorf("%s: the Fake holds\n%s\nwant\n%s", whole.Family, s, c)
		}
	}
}
