// Package integration sends real packets through nftproxy: it builds the
// network-namespace cluster of package topology, runs the nftproxy binary in
// node1's namespace against a directory of manifests, and checks with echo
// servers which endpoint answered and which source address it saw.
//
// The tests need root and network namespaces; without them they skip (or fail
// when NFTPROXY_PRIVILEGED_TESTS=required, see topology.RequirePrivileged).
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nftproxy/nftproxy/integration/topology"
	"github.com/nftproxy/nftproxy/nft"
)

// binEnv names an environment variable that, when set, points at a prebuilt
// nftproxy binary to test instead of building one.
const binEnv = "NFTPROXY_BIN"

// proxyBin is the nftproxy binary under test, built once by TestMain.
var proxyBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if bin := os.Getenv(binEnv); bin != "" {
		proxyBin = bin
	} else {
		dir, err := os.MkdirTemp("", "nftproxy-integration-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "integration: %v\n", err)
			return 1
		}
		defer os.RemoveAll(dir)
		proxyBin = filepath.Join(dir, "nftproxy")
		if err := buildProxy(proxyBin); err != nil {
			fmt.Fprintf(os.Stderr, "integration: %v\n", err)
			return 1
		}
	}

	if os.Geteuid() == 0 {
		// As a starting daemon does: load the nf_tables modules the rules need, a few per
		// batch (nft.Netlink.Probe), before the first test's table makes the kernel replay
		// its batch once per missing module.
		if _, err := nft.NewNetlink("").Probe(); err != nil {
			fmt.Fprintf(os.Stderr, "integration: %v\n", err)
			return 1
		}
	}
	code := m.Run()

	// Every namespace this process created must be gone.
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), topology.NamePrefix()) {
				fmt.Fprintf(os.Stderr, "integration: leaked network namespace %s\n", e.Name())
				code = 1
			}
		}
	}
	return code
}

// buildProxy compiles cmd/nftproxy to out.
func buildProxy(out string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "build", "-o", out, "github.com/nftproxy/nftproxy/cmd/nftproxy")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/nftproxy: %v\n%s", err, b)
	}
	return nil
}
