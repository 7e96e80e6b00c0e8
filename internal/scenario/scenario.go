// Package scenario owns the layout of the golden scenarios in testdata/: each folder holds
// manifests (*.yaml), an optional "flags" file with the render flags, and the expected tables
// expected-ip.nft and expected-ip6.nft. The golden test and the kernel round trip both read
// scenarios through it, and show a table that differs from its golden file with LineDiff.
package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/nftproxy/nftproxy/cluster"
	"github.com/nftproxy/nftproxy/daemon"
	"github.com/nftproxy/nftproxy/model"
)

// NodeName is the node every scenario is rendered for.
const NodeName = "node1"

// Scenario is one golden scenario.
type Scenario struct {
	Name string
	Dir  string
	// Args are the render flags, --hostname-override included.
	Args []string
}

// Load returns the scenarios under root, sorted by name.
func Load(root string) ([]Scenario, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("read scenarios: %w", err)
	}
	var out []Scenario
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		args := []string{"--hostname-override", NodeName}
		if b, err := os.ReadFile(filepath.Join(dir, "flags")); err == nil {
			args = append(args, strings.Fields(string(b))...)
		}
		out = append(out, Scenario{Name: e.Name(), Dir: dir, Args: args})
	}
	return out, nil
}

// Render builds the scenario's rulesets as `nftproxy render` does.
func (s Scenario) Render() ([]*model.Ruleset, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	rulesets, _, err := cfg.RenderDir(s.Dir, cfg.HostnameOverride)
	return rulesets, err
}

// Input returns the scenario's Services and node configuration per family, as `nftproxy
// render` computes them before building the rulesets.
func (s Scenario) Input() ([]model.Service, map[model.Family]model.NodeConfig, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, nil, err
	}
	objs, _, err := cluster.LoadManifests(s.Dir)
	if err != nil {
		return nil, nil, err
	}
	node, _ := cluster.FindNode(objs.Nodes, cfg.HostnameOverride)
	local := append(slices.Clone(node.InternalIPs), node.ExternalIPs...)
	services, _ := cluster.Convert(objs, cluster.ConvertOptions{ServiceProxyName: cfg.ServiceProxyName})
	nodes := map[model.Family]model.NodeConfig{}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		nodes[fam] = cfg.NodeConfig(fam, cfg.HostnameOverride, node, local)
	}
	return services, nodes, nil
}

// config parses the scenario's flags.
func (s Scenario) config() (*daemon.Config, error) {
	var cfg daemon.Config
	fs := pflag.NewFlagSet(s.Name, pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(s.Args); err != nil {
		return nil, fmt.Errorf("scenario %s flags: %w", s.Name, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("scenario %s flags: %w", s.Name, err)
	}
	return &cfg, nil
}

// GoldenPath returns the expected-table file of a family.
func (s Scenario) GoldenPath(fam model.Family) string {
	return filepath.Join(s.Dir, "expected-"+fam.String()+".nft")
}
