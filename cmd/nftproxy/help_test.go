package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunHelp: `run --help` prints the flags in sections, kube-proxy's spelled with two
// dashes, --config among them, and exits without error output.
func TestRunHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"run", "--help"}, &stdout, &stderr)
	if err == nil {
		t.Fatal("run --help returned no error, want ErrHelp (exit status 2, as before)")
	}
	out := stdout.String()
	for _, want := range []string{"Usage:\n  nftproxy run [flags]", "Generic flags:", "Conntrack flags:",
		"      --config string", "      --proxy-mode", "      --nodeport-addresses strings", "(default primary)", "  -v, --v int"} {
		if !strings.Contains(out, want) {
			t.Errorf("run --help does not print %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Usage of run:") || stderr.Len() > 0 {
		t.Errorf("run --help prints Go's bare usage or writes to stderr:\n%s\n%s", out, stderr.String())
	}
}

// TestRenderFromCluster: render takes the API client's flags, and without --manifests lists
// the cluster --kubeconfig names (here a file that does not exist: the error says so).
func TestRenderFromCluster(t *testing.T) {
	var stdout, stderr bytes.Buffer
	_ = run(context.Background(), []string{"render", "--help"}, &stdout, &stderr)
	for _, want := range []string{"      --kubeconfig string", "      --master string"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("render --help does not print %q:\n%s", want, stdout.String())
		}
	}
	missing := filepath.Join(t.TempDir(), "kubeconfig")
	err := run(context.Background(), []string{"render", "--kubeconfig", missing, "--hostname-override", "node1"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "kubernetes client configuration") || !strings.Contains(err.Error(), missing) {
		t.Errorf("render --kubeconfig %s: error %v, want one about the client configuration naming the file", missing, err)
	}
}
