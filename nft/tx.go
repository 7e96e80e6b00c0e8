package nft

import (
	"fmt"
	"iter"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nftproxy/nftproxy/model"
)

// OpKind is the kind of one change in a Transaction.
type OpKind uint8

// The changes a Transaction can make to an existing table.
const (
	// AddElements adds Set.Elements to the set or map named Set.Name.
	AddElements OpKind = iota + 1
	// DeleteElements deletes Set.Elements (by key) from the set or map named Set.Name.
	DeleteElements
	// AddChain creates Chain with its rules.
	AddChain
	// RewriteChain replaces the rules of the existing chain Chain.Name with Chain.Rules.
	RewriteChain
	// FlushChain deletes every rule of the chain Chain.Name, which stays.
	FlushChain
	// DeleteChain deletes the empty, unreferenced chain Chain.Name.
	DeleteChain
	// ReplaceSet deletes the set or map named Set.Name and creates it anew as Set describes
	// it (its size, say), holding Set.Elements and those Transaction.More gives for it. The
	// rules that refer to the set are flushed by earlier operations of the transaction and
	// written again by later ones: the kernel deletes no set a rule refers to.
	ReplaceSet
)

// Op is one change to the table of Family.
type Op struct {
	Kind   OpKind
	Family model.Family
	// Set names the set and gives its key and data; Elements are the elements to add or
	// delete.
	Set   *model.Set
	Chain *model.Chain
}

// Transaction is a set of changes applied all or nothing: first the tables in Replace are
// replaced wholesale, then Ops are applied in order.
type Transaction struct {
	Replace []*model.Ruleset
	// More, when set, gives more elements of the replaced tables' sets and of the sets that
	// ReplaceSet operations create: those it yields for such a set are written after the
	// set's own Elements, n of them. A
	// caller that keeps a large table elsewhere (the syncer's claims) streams it from there
	// rather than copying every element into the Ruleset.
	More func(fam model.Family, set string) (elems iter.Seq[*model.Element], n int)
	Ops  []Op
}

// more returns what tx.More gives for set of fam, or nothing.
func (tx *Transaction) more(fam model.Family, set string) (iter.Seq[*model.Element], int) {
	if tx.More == nil {
		return func(func(*model.Element) bool) {}, 0
	}
	return tx.More(fam, set)
}

// Replaced returns the i-th replaced table whole: Replace[i] with the elements More gives
// appended to its sets (Replace[i] itself when there are none). It copies the table.
func (tx *Transaction) Replaced(i int) *model.Ruleset {
	rs := tx.Replace[i]
	if tx.More == nil {
		return rs
	}
	out := *rs
	out.Sets = make([]*model.Set, len(rs.Sets))
	for j, s := range rs.Sets {
		out.Sets[j] = tx.wholeSet(rs.Family, s)
	}
	return &out
}

// wholeSet returns a copy of s, a set of fam that the transaction creates, with the elements
// More gives for it appended.
func (tx *Transaction) wholeSet(fam model.Family, s *model.Set) *model.Set {
	c := *s
	elems, n := tx.more(fam, s.Name)
	c.Elements = slices.Grow(slices.Clone(s.Elements), n)
	for e := range elems {
		c.Elements = append(c.Elements, *e)
	}
	return &c
}

// Empty reports whether the transaction changes nothing.
func (tx *Transaction) Empty() bool { return len(tx.Replace) == 0 && len(tx.Ops) == 0 }

// Objects counts the kernel objects the transaction writes: tables, sets, chains, rules and
// elements created, changed or deleted (a flush counts once).
func (tx *Transaction) Objects() int {
	n := 0
	for _, c := range tx.ObjectsByFamily() {
		n += c
	}
	return n
}

// ObjectsByFamily counts the objects of Objects per family of the table they are in. The
// map is the caller's; a family the transaction does not touch is absent.
func (tx *Transaction) ObjectsByFamily() map[model.Family]int {
	out := map[model.Family]int{}
	for _, rs := range tx.Replace {
		n := 1
		for _, s := range rs.Sets {
			_, more := tx.more(rs.Family, s.Name)
			n += 1 + len(s.Elements) + more
		}
		for _, c := range rs.Chains {
			n += 1 + len(c.Rules)
		}
		out[rs.Family] += n
	}
	for _, op := range tx.Ops {
		switch op.Kind {
		case AddElements, DeleteElements:
			out[op.Family] += len(op.Set.Elements)
		case ReplaceSet:
			_, more := tx.more(op.Family, op.Set.Name)
			out[op.Family] += 2 + len(op.Set.Elements) + more
		case AddChain, RewriteChain:
			out[op.Family] += 1 + len(op.Chain.Rules)
		case FlushChain, DeleteChain:
			out[op.Family]++
		}
	}
	return out
}

// encode adds the transaction's messages to b.
func (tx *Transaction) encode(b *batch) error {
	for _, rs := range tx.Replace {
		fam := nfproto(rs.Family)
		b.addTable(fam, model.TableName)
		b.delTable(fam, model.TableName)
		if err := newEncoder(b, rs.Family).addAll(rs, tx.more); err != nil {
			return fmt.Errorf("encode %s table: %w", rs.Family, err)
		}
	}
	// Chains first, so that elements and rules added later in the batch may refer to them.
	for _, op := range tx.Ops {
		if op.Kind == AddChain {
			newEncoder(b, op.Family).addChain(op.Chain)
		}
	}
	for i, op := range tx.Ops {
		e := newEncoder(b, op.Family)
		var err error
		switch op.Kind {
		case AddElements:
			err = e.writeElements(unix.NFT_MSG_NEWSETELEM, op.Set, op.Set.Elements)
		case DeleteElements:
			err = e.writeElements(unix.NFT_MSG_DELSETELEM, op.Set, op.Set.Elements)
		case AddChain:
			err = e.addRules(op.Chain)
		case RewriteChain:
			b.flushChain(e.fam, model.TableName, op.Chain.Name)
			err = e.addRules(op.Chain)
		case FlushChain:
			b.flushChain(e.fam, model.TableName, op.Chain.Name)
		case DeleteChain:
			b.delChain(e.fam, model.TableName, op.Chain.Name)
		case ReplaceSet:
			b.delSet(e.fam, model.TableName, op.Set.Name)
			e.addSet(op.Set)
			err = e.writeSetElements(op.Set, tx.more)
		default:
			err = fmt.Errorf("unknown operation %d", op.Kind)
		}
		if err != nil {
			return fmt.Errorf("operation %d: %w", i, err)
		}
	}
	return b.err
}

// Apply implements Backend.
func (n *Netlink) Apply(tx *Transaction, genID uint32) error {
	if tx.Empty() {
		return nil
	}
	b := &batch{}
	if err := tx.encode(b); err != nil {
		return fmt.Errorf("encode transaction: %w", err)
	}
	if err := n.commit(b, genID); err != nil {
		return fmt.Errorf("commit transaction of %d messages: %w", b.n, err)
	}
	return nil
}

// String returns the transaction in nft syntax, one command per line in the order its batch
// sends them, as `nft -f` reads them: a replaced table is added, deleted and written whole
// (as model.Render prints it), then the chains the Ops add are created, then each Op is
// written. Elements and rules are printed by model's renderer. A failing test can print what
// would have been sent.
func (tx *Transaction) String() string {
	var b strings.Builder
	for i, rs := range tx.Replace {
		fmt.Fprintf(&b, "add table %s %s\n", rs.Family, model.TableName)
		fmt.Fprintf(&b, "delete table %s %s\n", rs.Family, model.TableName)
		b.WriteString(model.Render(tx.Replaced(i)))
	}
	// As encode: the chains first, so that elements and rules may refer to them.
	for _, op := range tx.Ops {
		if op.Kind == AddChain {
			fmt.Fprintf(&b, "add chain %s %s %s%s\n", op.Family, model.TableName, op.Chain.Name, renderHook(op.Family, op.Chain))
		}
	}
	for _, op := range tx.Ops {
		table := op.Family.String() + " " + model.TableName
		switch op.Kind {
		case AddElements:
			for _, e := range op.Set.Elements {
				fmt.Fprintf(&b, "add element %s %s { %s }\n", table, op.Set.Name, renderElement(op.Family, op.Set, e))
			}
		case DeleteElements:
			// The kernel deletes by key: the batch carries nothing else.
			keys := &model.Set{Name: op.Set.Name, Key: op.Set.Key}
			for _, e := range op.Set.Elements {
				fmt.Fprintf(&b, "delete element %s %s { %s }\n", table, op.Set.Name, renderElement(op.Family, keys, model.Element{Addr: e.Addr, Proto: e.Proto, Port: e.Port, Slot: e.Slot}))
			}
		case AddChain:
			writeRules(&b, table, op.Family, op.Chain)
		case RewriteChain:
			fmt.Fprintf(&b, "flush chain %s %s\n", table, op.Chain.Name)
			writeRules(&b, table, op.Family, op.Chain)
		case FlushChain:
			fmt.Fprintf(&b, "flush chain %s %s\n", table, op.Chain.Name)
		case DeleteChain:
			fmt.Fprintf(&b, "delete chain %s %s\n", table, op.Chain.Name)
		case ReplaceSet:
			kind := "set"
			if op.Set.IsMap() {
				kind = "map"
			}
			fmt.Fprintf(&b, "delete %s %s %s\n", kind, table, op.Set.Name)
			b.WriteString(model.Render(&model.Ruleset{Family: op.Family, Sets: []*model.Set{tx.wholeSet(op.Family, op.Set)}}))
		default:
			fmt.Fprintf(&b, "# unknown operation %d\n", op.Kind)
		}
	}
	return b.String()
}

func writeRules(b *strings.Builder, table string, fam model.Family, c *model.Chain) {
	for _, r := range c.Rules {
		fmt.Fprintf(b, "add rule %s %s %s\n", table, c.Name, model.RenderRule(fam, r))
	}
}

// renderElement returns e as nft prints it in a set like s ("key : data"), cut out of
// model.Render's listing of a set that holds only e: model renders elements only as part of
// a set.
func renderElement(fam model.Family, s *model.Set, e model.Element) string {
	one := &model.Set{Name: s.Name, Key: s.Key, Data: s.Data, Elements: []model.Element{e}}
	text := model.Render(&model.Ruleset{Family: fam, Sets: []*model.Set{one}})
	_, elem, _ := strings.Cut(text, "\t\telements = { ")
	return strings.TrimSuffix(elem, " }\n\t}\n}\n")
}

// renderHook returns " { type ... hook ... priority ...; policy accept; }" for a base chain,
// as model.Render prints its hook, or "" for a regular chain.
func renderHook(fam model.Family, c *model.Chain) string {
	if c.Hook == nil {
		return ""
	}
	text := model.Render(&model.Ruleset{Family: fam, Chains: []*model.Chain{{Name: c.Name, Hook: c.Hook}}})
	_, hook, _ := strings.Cut(text, " {\n\t\t")
	hook, _, _ = strings.Cut(hook, "\n")
	return " { " + hook + " }"
}
