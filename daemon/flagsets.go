package daemon

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
)

// namedFlagSets groups flags for help the way Kubernetes components do
// (k8s.io/component-base/cli/flag.NamedFlagSets, which would pull in cobra): one section per
// set, in the order the sets were first asked for.
type namedFlagSets struct {
	order []string
	sets  map[string]*pflag.FlagSet
}

// FlagSet returns the set named name, creating it.
func (n *namedFlagSets) FlagSet(name string) *pflag.FlagSet {
	if n.sets == nil {
		n.sets = map[string]*pflag.FlagSet{}
	}
	fs, ok := n.sets[name]
	if !ok {
		fs = pflag.NewFlagSet(name, pflag.ContinueOnError)
		n.sets[name] = fs
		n.order = append(n.order, name)
	}
	return fs
}

// print writes every non-empty set as "<Name> flags:" and its flags' usage.
func (n *namedFlagSets) print(w io.Writer) {
	for _, name := range n.order {
		fs := n.sets[name]
		if !fs.HasFlags() {
			continue
		}
		fmt.Fprintf(w, "\n%s flags:\n\n%s", strings.ToUpper(name[:1])+name[1:], fs.FlagUsagesWrapped(0))
	}
}
